"""`attngan cloud ...`: drive a deployed environment with boto3.

    attngan cloud upload-data DIR [--name NAME]        DIR -> s3://<bucket>/data/NAME/
    attngan cloud train [--data data/NAME/] [--hp K=V ...] [--no-promote] [--follow]
    attngan cloud status [EXECUTION] [--follow]        a training execution (default: the latest)
    attngan cloud promote s3://<bucket>/models/...     set the model URI, then roll the service out
    attngan cloud rollout                              new tasks (they re-read the model URI)

Where things are: flags first (--bucket, --state-machine, --cluster, --service, --parameter), else the
outputs of the environment's CloudFormation stacks (AttnGAN-<Env>-*). The region comes from --region,
else the environment's region in cdk.json. Every AWS error becomes one line (AttnGANError).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError
from infra.config import ConfigError, EnvConfig, load_env_config, read_cdk_context

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
HP_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,256}$")


# --- AWS access -----------------------------------------------------------------------------------------

@dataclass
class Target:
    """A deployed environment: its names, resolved once per command."""

    cfg: EnvConfig
    region: str
    args: argparse.Namespace
    _outputs: dict[str, str] | None = None

    def client(self, service: str):
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.args.endpoint_url or None)

    def outputs(self) -> dict[str, str]:
        """All outputs of the environment's stacks (CloudFormation), read on first use."""
        if self._outputs is None:
            cf = self.client("cloudformation")
            found: dict[str, str] = {}
            for part in ("Storage", "Service", "Training"):
                name = self.cfg.stack_name(part)
                stacks = aws(f"read stack {name}", lambda n=name: cf.describe_stacks(StackName=n)["Stacks"])
                for out in stacks[0].get("Outputs", []):
                    found[out["OutputKey"]] = out["OutputValue"]
            self._outputs = found
        return self._outputs

    def value(self, flag: str, output: str) -> str:
        given = getattr(self.args, flag, None)
        if given:
            return given
        outs = self.outputs()
        if output not in outs:
            raise AttnGANError(f"stack output {output} not found in {self.cfg.stack_name('*')}; "
                               f"deploy the stacks or pass --{flag.replace('_', '-')}")
        return outs[output]

    @property
    def bucket(self) -> str:
        return self.value("bucket", "BucketName")

    @property
    def state_machine(self) -> str:
        return self.value("state_machine", "StateMachineArn")


def aws(what: str, call: Callable[[], Any]) -> Any:
    """Run one AWS call; any failure becomes a one-line AttnGANError that says what was attempted."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        return call()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise AttnGANError(f"{what}: {err.get('Code', 'Error')}: {err.get('Message', exc)}") from None
    except NoCredentialsError:
        raise AttnGANError(f"{what}: no AWS credentials (set AWS_PROFILE or run `aws configure`)") from None
    except NoRegionError:
        raise AttnGANError(f"{what}: no region (pass --region)") from None
    except BotoCoreError as exc:
        raise AttnGANError(f"{what}: {exc}") from None


def _target(args: argparse.Namespace) -> Target:
    try:
        overrides = {"account": args.account} if args.account else {}
        cfg = load_env_config(read_cdk_context(overrides=overrides), args.env)
    except ConfigError as exc:
        raise AttnGANError(f"deployment configuration: {exc}") from None
    return Target(cfg=cfg, region=args.region or cfg.region, args=args)


# --- commands -------------------------------------------------------------------------------------------

def cmd_upload_data(args: argparse.Namespace) -> int:
    src = Path(args.directory)
    if not src.is_dir():
        raise AttnGANError(f"{src} is not a directory; pass the data set folder (CUB layout)")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise AttnGANError(f"{src} holds no files")
    name = args.name or src.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
        raise AttnGANError(f"data set name {name!r}: use letters, digits, '_', '.', '-' (--name)")
    t = _target(args)
    bucket, prefix = t.bucket, f"data/{name}/"
    s3 = t.client("s3")
    total = sum(p.stat().st_size for p in files)
    done, t0 = 0, time.perf_counter()
    for i, path in enumerate(files, 1):
        key = prefix + path.relative_to(src).as_posix()
        aws(f"upload s3://{bucket}/{key}", lambda p=path, k=key: s3.upload_file(str(p), bucket, k))
        done += path.stat().st_size
        if i == len(files) or i % 200 == 0:
            rate = done / max(time.perf_counter() - t0, 1e-6)
            eta = (total - done) / rate if rate else 0
            print(f"uploaded {i}/{len(files)} files, {done / 1e6:.1f}/{total / 1e6:.1f} MB "
                  f"({rate / 1e6:.1f} MB/s, ETA {eta:.0f} s)", file=sys.stderr)
    print(f"s3://{bucket}/{prefix}")
    return 0


def parse_hyperparameters(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs -> SageMaker hyperparameters (a map of strings)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not HP_KEY.match(key):
            raise AttnGANError(f"hyperparameter {pair!r}: write KEY=VALUE (key: letters, digits, _ . -)")
        if len(value) > 2500:
            raise AttnGANError(f"hyperparameter {key}: value longer than SageMaker's 2500 characters")
        out[key] = value
    return out


def job_name(cfg: EnvConfig, now: datetime | None = None) -> str:
    """Unique, sortable, within SageMaker's 63 characters, under the environment's IAM-scoped prefix."""
    now = now or datetime.now(UTC)
    return f"{cfg.job_prefix}{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def cmd_train(args: argparse.Namespace) -> int:
    hps = parse_hyperparameters(args.hp)
    data = args.data.lstrip("/")
    if not data.startswith("data/"):
        raise AttnGANError(f"--data {args.data!r}: training reads only under data/ (e.g. data/birds/)")
    if not data.endswith("/"):
        data += "/"
    t = _target(args)
    name = job_name(t.cfg)
    payload = {"jobName": name, "hyperparameters": hps, "dataPrefix": data, "promote": not args.no_promote}
    sfn = t.client("stepfunctions")
    state_machine = t.state_machine
    res = aws("start training", lambda: sfn.start_execution(stateMachineArn=state_machine, name=name,
                                                            input=json.dumps(payload)))
    print(f"training job {name} started: {res['executionArn']}", file=sys.stderr)
    print(res["executionArn"])
    if args.follow:
        return _follow(t, res["executionArn"], args.interval)
    return 0


def _latest_execution(t: Target) -> str:
    sfn = t.client("stepfunctions")
    state_machine = t.state_machine
    res = aws("list training executions",
              lambda: sfn.list_executions(stateMachineArn=state_machine, maxResults=20))
    runs = sorted(res.get("executions", []), key=lambda e: e["startDate"], reverse=True)
    if not runs:
        raise AttnGANError("no training has been started yet (attngan cloud train)")
    return runs[0]["executionArn"]


def _describe(t: Target, arn: str) -> dict[str, Any]:
    sfn = t.client("stepfunctions")
    return aws(f"describe {arn}", lambda: sfn.describe_execution(executionArn=arn))


def _report(d: dict[str, Any]) -> str:
    line = f"{d['name']}: {d['status']}"
    if d.get("startDate"):
        end = d.get("stopDate") or datetime.now(UTC)
        line += f" after {(end - d['startDate']).total_seconds() / 60:.1f} min"
    if d["status"] == "SUCCEEDED" and d.get("output"):
        try:
            model = json.loads(d["output"]).get("training", {}).get("modelUri")
        except (ValueError, AttributeError):
            model = None
        if model:
            line += f"; model {model}"
    if d.get("error") or d.get("cause"):
        line += f"; {d.get('error', '')}: {(d.get('cause') or '')[:300]}"
    return line


def _follow(t: Target, arn: str, interval: float) -> int:
    last = None
    while True:
        d = _describe(t, arn)
        line = _report(d)
        if line != last:
            print(line)
            last = line
        if d["status"] in TERMINAL:
            return 0 if d["status"] == "SUCCEEDED" else 1
        time.sleep(interval)


def cmd_status(args: argparse.Namespace) -> int:
    t = _target(args)
    arn = args.execution or _latest_execution(t)
    if not arn.startswith("arn:"):  # a bare execution (job) name
        arn = t.state_machine.replace(":stateMachine:", ":execution:") + ":" + arn
    if args.follow:
        return _follow(t, arn, args.interval)
    d = _describe(t, arn)
    print(_report(d))
    return 0 if d["status"] in ("SUCCEEDED", "RUNNING") else 1


def cmd_promote(args: argparse.Namespace) -> int:
    uri = args.model_uri
    m = re.fullmatch(r"s3://([^/]+)/(models/.+)", uri)
    if not m:
        raise AttnGANError(f"{uri!r}: give the s3:// URI of a model under models/ (a model.tar.gz or bundle prefix)")
    t = _target(args)
    bucket = t.bucket
    if m.group(1) != bucket:
        raise AttnGANError(f"{uri!r} is not in this environment's bucket {bucket}")
    s3 = t.client("s3")
    key = m.group(2)
    listed = aws(f"check {uri}", lambda: s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))
    if not listed.get("KeyCount"):
        raise AttnGANError(f"{uri} does not exist; list models with `aws s3 ls s3://{bucket}/models/ --recursive`")
    parameter = t.value("parameter", "ModelParameterName")
    ssm = t.client("ssm")
    previous = aws(f"read {parameter}", lambda: ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
    aws(f"set {parameter}", lambda: ssm.put_parameter(Name=parameter, Value=uri, Type="String", Overwrite=True))
    print(f"{parameter}: {previous} -> {uri}", file=sys.stderr)
    if args.no_rollout:
        print("not rolled out (--no-rollout): new tasks pick it up; `attngan cloud rollout` starts them now")
        return 0
    return _rollout(t)


def _rollout(t: Target) -> int:
    cluster = t.value("cluster", "ClusterName")
    service = t.value("service", "ServiceName")
    ecs = t.client("ecs")
    res = aws(f"roll out {service}", lambda: ecs.update_service(cluster=cluster, service=service,
                                                                forceNewDeployment=True))
    deployments = res["service"].get("deployments", [])
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), {})
    print(f"rolling out {cluster}/{service}: deployment {primary.get('id', '?')} started; the circuit breaker "
          "rolls back if the new tasks do not become healthy")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    return _rollout(_target(args))


# --- argparse -------------------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    cloud = subparsers.add_parser("cloud", help="drive a deployed AWS environment (upload data, train, promote)",
                                  description=__doc__.split("\n\n")[0])
    sub = cloud.add_subparsers(dest="cloud_command", metavar="ACTION", parser_class=type(cloud))
    cloud.set_defaults(func=lambda a: (cloud.print_help(), 2)[1])

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--env", default=os.environ.get("ATTNGAN_ENV"), help="environment in cdk.json (default dev)")
        p.add_argument("--region", help="AWS region (default: the environment's)")
        p.add_argument("--account", help="AWS account id (default: the environment's)")
        p.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help=argparse.SUPPRESS)
        p.add_argument("--bucket", help="S3 bucket (default: stack output BucketName)")
        p.add_argument("--state-machine", help="training state machine ARN (default: stack output)")
        p.add_argument("--cluster", help="ECS cluster (default: stack output ClusterName)")
        p.add_argument("--service", help="ECS service (default: stack output ServiceName)")
        p.add_argument("--parameter", help="SSM model-URI parameter (default: stack output)")
        return p

    p = common(sub.add_parser("upload-data", help="upload a data set folder to s3://bucket/data/NAME/"))
    p.add_argument("directory")
    p.add_argument("--name", help="data set name (default: the folder's name)")
    p.set_defaults(func=cmd_upload_data)

    p = common(sub.add_parser("train", help="start a SageMaker training run (Step Functions)"))
    p.add_argument("--data", default="data/birds/", help="S3 prefix of the data set (default data/birds/)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="hyperparameter for the trainer, repeatable (e.g. --hp config=bird --hp gan_epochs=600; see trainer/sagemaker.py)")
    p.add_argument("--no-promote", action="store_true", help="do not serve the model when training succeeds")
    p.add_argument("--follow", action="store_true", help="wait and print status changes until it ends")
    p.add_argument("--interval", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)

    p = common(sub.add_parser("status", help="status of a training run (default: the latest)"))
    p.add_argument("execution", nargs="?", help="execution ARN or job name")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--interval", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)

    p = common(sub.add_parser("promote", help="serve a model: set the model URI and roll out"))
    p.add_argument("model_uri", metavar="MODEL_URI")
    p.add_argument("--no-rollout", action="store_true")
    p.set_defaults(func=cmd_promote)

    p = common(sub.add_parser("rollout", help="start new service tasks (ECS force new deployment)"))
    p.set_defaults(func=cmd_rollout)


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.cloud ACTION ...`: the same commands with only boto3 installed (used by train.yml)."""
    parser = argparse.ArgumentParser(prog="python -m infra.cloud")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cloud", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except AttnGANError as exc:
        print(f"attngan cloud: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
