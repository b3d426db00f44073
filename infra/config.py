"""Deployment configuration: one place that reads and checks the per-environment settings.

The settings live in `cdk.json` under `context.environments.<env>`; `-c env=prod` picks the
environment and any `-c key=value` overrides one setting of it (CI passes `-c imageTag=$GITHUB_SHA`).
Every problem is collected and reported at once, each naming the key and how to fix it, before any
construct is created. This module imports neither `aws_cdk` nor the rest of the project, so the
cloud commands and the workflows can use it too (`python -m infra.config get computeType`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "AttnGAN"
ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,15}$")
IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
INSTANCE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p4d", "p5")

# `com.amazonaws.global.cloudfront.origin-facing` managed prefix list ids (they differ per region).
# Another region: set `cloudFrontPrefixListId` (aws ec2 describe-managed-prefix-lists).
CLOUDFRONT_PREFIX_LISTS = {
    "us-east-1": "pl-3b927c52",
    "us-east-2": "pl-b6a144df",
    "us-west-1": "pl-4ea04527",
    "us-west-2": "pl-82a045eb",
    "eu-west-1": "pl-4fa04526",
}


class ConfigError(ValueError):
    """The deployment configuration is wrong; the message lists every problem."""


@dataclass(frozen=True)
class EnvConfig:
    """One environment's settings (keys as written in cdk.json)."""

    name: str
    account: str
    region: str
    computeType: str = "gpu"  # gpu (service on GPU instances) | cpu (no GPU, cheaper, slower)
    gpuInstanceType: str = "g4dn.xlarge"
    cpuInstanceType: str = "c7i.2xlarge"
    taskCpu: int = 3072  # CPU units reserved for the service task (1024 = 1 vCPU)
    taskMemoryMiB: int = 12288  # memory reserved for the service task
    rootVolumeGiB: int = 60
    asgMin: int = 0
    asgMax: int = 2
    serviceMin: int = 1
    serviceMax: int = 1
    requestsPerTarget: int = 20  # ALB requests per target per minute before scaling out
    healthCheckGraceSeconds: int = 600  # model download + load + warm-up
    candidates: int = 1  # the service's CANDIDATES: each bird the best of N draws (N x generator work; cheap on a GPU)
    truncation: float = 1.0  # the service's TRUNCATION: noise at this times its spread (lower: closer to the caption)
    domainName: str = ""  # api.example.com; empty: CloudFront's *.cloudfront.net HTTPS endpoint
    hostedZoneId: str = ""
    hostedZoneName: str = ""
    cloudFrontPrefixListId: str = ""  # empty: the known id for the region
    wafRequestsPer5Min: int = 300  # per client IP; above it WAF blocks for a while
    imageTag: str = ""  # empty: the current git commit (CI passes -c imageTag=$GITHUB_SHA)
    imagesExpireDays: int = 30  # generated images under images/ are deleted after this
    logRetentionDays: int = 30
    alarmEmail: str = ""
    githubRepo: str = ""  # owner/name allowed to assume the deploy role
    createOidcProvider: bool = True  # False when the account already has the GitHub provider
    trainingInstanceType: str = "ml.g5.xlarge"
    trainingSpot: bool = True  # managed spot training with checkpoints in S3
    trainingMaxHours: int = 8
    trainingVolumeGiB: int = 50

    # derived names -----------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.name[:1].upper() + self.name[1:]

    def stack_name(self, part: str) -> str:
        return f"{APP_NAME}-{self.title}-{part}"

    @property
    def instance_type(self) -> str:
        return self.gpuInstanceType if self.computeType == "gpu" else self.cpuInstanceType

    @property
    def gpu(self) -> bool:
        return self.computeType == "gpu"

    @property
    def has_domain(self) -> bool:
        return bool(self.domainName)

    @property
    def prefix_list_id(self) -> str:
        return self.cloudFrontPrefixListId or CLOUDFRONT_PREFIX_LISTS.get(self.region, "")

    @property
    def service_dockerfile(self) -> str:
        return f"service/Dockerfile.{self.computeType}"

    @property
    def bucket_name(self) -> str:
        """Named, so other stacks grant on a known ARN instead of a cross-stack token."""
        return f"attngan-{self.name}-{self.account}-{self.region}"

    @property
    def cluster_name(self) -> str:
        return f"attngan-{self.name}"

    @property
    def service_name(self) -> str:
        return f"attngan-{self.name}-api"

    @property
    def state_machine_name(self) -> str:
        return f"attngan-{self.name}-training"

    @property
    def job_prefix(self) -> str:
        """Training job names start with this; the IAM policies are scoped to it."""
        return f"attngan-{self.name}-"

    @property
    def log_bucket_name(self) -> str:
        return f"attngan-{self.name}-logs-{self.account}-{self.region}"

    @property
    def service_repo_name(self) -> str:
        return f"attngan-{self.name}-service"

    @property
    def trainer_repo_name(self) -> str:
        return f"attngan-{self.name}-trainer"

    @property
    def model_parameter_name(self) -> str:
        return f"/attngan/{self.name}/model-uri"


FIELDS = {f.name: f for f in dataclasses.fields(EnvConfig) if f.name != "name"}


def _coerce(key: str, value: Any, kind: Any, errors: list[str], where: str) -> Any:
    """Context values from `-c key=value` arrive as strings; accept those for ints, floats and bools."""
    kind = {"int": int, "bool": bool, "str": str, "float": float}.get(kind, kind) if isinstance(kind, str) else kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d*)?|-?\.\d+", value.strip()):
            return float(value)
    elif kind is str and isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    errors.append(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return None


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def load_env_config(context: Mapping[str, Any], env: str | None = None) -> EnvConfig:
    """Build and validate the settings of one environment from CDK context (cdk.json + `-c` flags)."""
    env = env or str(context.get("env") or "dev")
    envs = context.get("environments")
    if not isinstance(envs, Mapping) or not envs:
        raise ConfigError("cdk.json: context.environments is missing; it holds one block per environment (dev, prod)")
    if env not in envs:
        raise ConfigError(f"env={env!r} is not configured; choose one of {sorted(envs)} (-c env=NAME)")
    where = f"environments.{env}"
    errors: list[str] = []
    raw = dict(envs[env])
    for key, field in FIELDS.items():  # top-level `-c key=value` overrides the environment's value
        if key in context:
            raw[key] = context[key]
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        errors.append(f"{where}: unknown keys {unknown}; known keys are {sorted(FIELDS)}")
    values: dict[str, Any] = {}
    for key, field in FIELDS.items():
        if key in raw:
            values[key] = _coerce(key, raw[key], field.type, errors, where)
        elif field.default is dataclasses.MISSING:
            errors.append(f"{where}.{key}: required")
    if errors:
        raise ConfigError("; ".join(errors))
    if not values.get("imageTag"):
        values["imageTag"] = _git_sha()
    cfg = EnvConfig(name=env, **values)
    _validate(cfg, where, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg


def _validate(c: EnvConfig, where: str, errors: list[str]) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            errors.append(f"{where}.{key}: {what} (got {getattr(c, key, None)!r})")

    need(bool(ENV_NAME_RE.match(c.name)), "name", "environment names are 2-16 lower-case letters/digits")
    need(bool(re.fullmatch(r"\d{12}", c.account)), "account", "must be a 12-digit AWS account id (-c account=...)")
    need(bool(REGION_RE.match(c.region)), "region", "must be an AWS region such as us-east-1")
    need(c.computeType in ("gpu", "cpu"), "computeType", "must be gpu or cpu")
    need(bool(INSTANCE_RE.match(c.gpuInstanceType)) and c.gpuInstanceType.split(".")[0] in GPU_FAMILIES,
         "gpuInstanceType", f"must be a GPU instance type of a family in {GPU_FAMILIES}")
    need(bool(INSTANCE_RE.match(c.cpuInstanceType)) and c.cpuInstanceType.split(".")[0] not in GPU_FAMILIES,
         "cpuInstanceType", "must be a non-GPU EC2 instance type such as c7i.2xlarge")
    need(c.taskCpu >= 256, "taskCpu", "must be at least 256 CPU units")
    need(c.taskMemoryMiB >= 1024, "taskMemoryMiB", "must be at least 1024 MiB")
    need(30 <= c.rootVolumeGiB <= 1000, "rootVolumeGiB", "must be 30..1000 GiB (the GPU AMI needs 30)")
    need(0 <= c.asgMin <= c.asgMax, "asgMin", "must be between 0 and asgMax")
    need(1 <= c.asgMax <= 50, "asgMax", "must be 1..50 instances")
    need(0 <= c.serviceMin <= c.serviceMax, "serviceMin", "must be between 0 and serviceMax")
    need(1 <= c.serviceMax <= 50, "serviceMax", "must be 1..50 tasks")
    # One task per instance (a GPU each): a rolling deploy starts the new task before stopping the old.
    need(c.asgMax >= c.serviceMax + 1, "asgMax",
         f"must be at least serviceMax + 1 = {c.serviceMax + 1}: a rolling deployment needs a spare instance")
    need(1 <= c.requestsPerTarget <= 100000, "requestsPerTarget", "must be 1..100000 requests per minute")
    need(60 <= c.healthCheckGraceSeconds <= 3600, "healthCheckGraceSeconds", "must be 60..3600 seconds")
    need(1 <= c.candidates <= 32, "candidates", "must be 1..32 draws per bird (the service's CANDIDATES)")
    need(0 <= c.truncation <= 1, "truncation", "must be 0..1 (the service's TRUNCATION; 1: the paper's sampling)")
    if c.domainName or c.hostedZoneId or c.hostedZoneName:
        need(bool(c.domainName and c.hostedZoneId and c.hostedZoneName), "domainName",
             "a custom domain needs domainName, hostedZoneId and hostedZoneName together")
        need(c.domainName == c.hostedZoneName or c.domainName.endswith("." + c.hostedZoneName), "domainName",
             f"must be inside the hosted zone {c.hostedZoneName!r}")
        need(bool(re.fullmatch(r"Z[A-Z0-9]{4,32}", c.hostedZoneId)), "hostedZoneId", "must look like Z0123456789ABC")
    else:
        need(bool(c.prefix_list_id), "cloudFrontPrefixListId",
             f"no known CloudFront origin-facing prefix list for {c.region}; set it "
             "(aws ec2 describe-managed-prefix-lists) or configure a domain")
    need(100 <= c.wafRequestsPer5Min <= 2_000_000_000, "wafRequestsPer5Min", "must be at least 100 (the WAF minimum)")
    need(bool(IMAGE_TAG_RE.match(c.imageTag)), "imageTag",
         "must be a docker tag (CI passes the commit SHA: -c imageTag=$GITHUB_SHA); outside git pass it explicitly")
    need(c.imageTag != "latest", "imageTag", "tags are immutable in ECR; deploy a commit SHA, not latest")
    need(1 <= c.imagesExpireDays <= 3650, "imagesExpireDays", "must be 1..3650 days")
    need(c.logRetentionDays in (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 3653),
         "logRetentionDays", "must be a CloudWatch Logs retention value such as 30 or 90")
    need(not c.alarmEmail or bool(re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", c.alarmEmail)), "alarmEmail",
         "must be an e-mail address or empty")
    need(bool(REPO_RE.match(c.githubRepo)), "githubRepo", "must be the GitHub repository as owner/name")
    need(c.trainingInstanceType.startswith("ml.") and bool(INSTANCE_RE.match(c.trainingInstanceType[3:])),
         "trainingInstanceType", "must be a SageMaker instance type such as ml.g5.xlarge")
    need(1 <= c.trainingMaxHours <= 120, "trainingMaxHours", "must be 1..120 hours")
    need(10 <= c.trainingVolumeGiB <= 1000, "trainingVolumeGiB", "must be 10..1000 GiB")


def read_cdk_context(root: Path = ROOT, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The context the CDK CLI would see: cdk.json's context, cdk.context.json, then overrides."""
    ctx: dict[str, Any] = dict(json.loads((root / "cdk.json").read_text())["context"])
    cached = root / "cdk.context.json"
    if cached.exists():
        ctx.update(json.loads(cached.read_text()))
    ctx.update(overrides or {})
    return ctx


def environment_names(context: Mapping[str, Any]) -> list[str]:
    return sorted(context.get("environments") or {})


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.config [--env dev] get KEY|show`: read the validated config (used by workflows)."""
    p = argparse.ArgumentParser(prog="python -m infra.config", description=main.__doc__)
    p.add_argument("--env", default=None, help="environment (default: context env, else dev)")
    p.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("what", choices=["get", "show"])
    p.add_argument("key", nargs="?")
    a = p.parse_args(argv)
    try:
        overrides = dict(kv.split("=", 1) for kv in a.context)
        cfg = load_env_config(read_cdk_context(overrides=overrides), a.env)
    except (ConfigError, ValueError) as exc:
        print(f"infra.config: error: {exc}", file=sys.stderr)
        return 1
    derived = {"stackPrefix": cfg.stack_name(""), "serviceDockerfile": cfg.service_dockerfile,
               "instanceType": cfg.instance_type, "modelParameterName": cfg.model_parameter_name,
               "bucketName": cfg.bucket_name, "serviceRepoName": cfg.service_repo_name,
               "trainerRepoName": cfg.trainer_repo_name}
    data = {**dataclasses.asdict(cfg), **derived}
    if a.what == "show":
        print(json.dumps(data, indent=2))
        return 0
    if a.key not in data:
        print(f"infra.config: error: unknown key {a.key!r}; one of {sorted(data)}", file=sys.stderr)
        return 1
    print(data[a.key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
