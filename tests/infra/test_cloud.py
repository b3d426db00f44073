"""`attngan cloud ...` against moto's HTTP server on 127.0.0.1: real boto3 calls, no AWS account."""

from __future__ import annotations

import json

import boto3
import pytest

from attngan.cli import main

pytestmark = pytest.mark.timeout(120)

REGION = "us-east-1"
BUCKET = "attngan-dev-123456789012-us-east-1"
PARAM = "/attngan/dev/model-uri"


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_url, monkeypatch):
    """Fresh moto state, fake credentials, and a helper that makes clients on the server."""
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return lambda service: boto3.client(service, region_name=REGION, endpoint_url=moto_url)


def cloud(*args: str) -> int:
    return main(["cloud", *args])


def _state_machine(aws) -> str:
    role = aws("iam").create_role(RoleName="sfn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    return aws("stepfunctions").create_state_machine(
        name="attngan-dev-training", definition=json.dumps(definition), roleArn=role)["stateMachineArn"]


def _ecs(aws) -> None:
    ecs = aws("ecs")
    ecs.create_cluster(clusterName="attngan-dev")
    ecs.register_task_definition(family="api", containerDefinitions=[{
        "name": "api", "image": "x", "memory": 512,
        "resourceRequirements": [{"type": "GPU", "value": "1"}]}])
    ecs.create_service(cluster="attngan-dev", serviceName="attngan-dev-api", taskDefinition="api", desiredCount=1)


def test_upload_data_writes_the_folder_under_data(aws, tmp_path, capsys):
    aws("s3").create_bucket(Bucket=BUCKET)
    (tmp_path / "birds" / "images" / "001.Bird").mkdir(parents=True)
    (tmp_path / "birds" / "images" / "001.Bird" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "birds" / "train").mkdir()
    (tmp_path / "birds" / "train" / "filenames.pickle").write_bytes(b"pickle")
    assert cloud("upload-data", str(tmp_path / "birds"), "--bucket", BUCKET) == 0
    keys = sorted(o["Key"] for o in aws("s3").list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == ["data/birds/images/001.Bird/a.jpg", "data/birds/train/filenames.pickle"]
    assert capsys.readouterr().out.strip() == f"s3://{BUCKET}/data/birds/"


def test_train_starts_an_execution_with_a_unique_job_and_string_hyperparameters(aws, capsys):
    arn = _state_machine(aws)
    assert cloud("train", "--state-machine", arn, "--data", "data/birds", "--hp", "cfg=cfg/bird_attn2.yml",
                 "--hp", "TRAIN.MAX_EPOCH=10", "--no-promote") == 0
    assert cloud("train", "--state-machine", arn) == 0
    execs = aws("stepfunctions").list_executions(stateMachineArn=arn)["executions"]
    assert len(execs) == 2 and len({e["name"] for e in execs}) == 2
    first = aws("stepfunctions").describe_execution(executionArn=capsys.readouterr().out.split()[0])
    payload = json.loads(first["input"])
    assert payload["jobName"].startswith("attngan-dev-") and len(payload["jobName"]) <= 63
    assert payload["jobName"] == first["name"]
    assert payload["hyperparameters"] == {"cfg": "cfg/bird_attn2.yml", "TRAIN.MAX_EPOCH": "10"}
    assert payload["dataPrefix"] == "data/birds/" and payload["promote"] is False


def test_status_reports_the_latest_execution(aws, capsys):
    arn = _state_machine(aws)
    assert cloud("train", "--state-machine", arn) == 0
    job = json.loads(aws("stepfunctions").describe_execution(
        executionArn=capsys.readouterr().out.split()[0])["input"])["jobName"]
    cloud("status", "--state-machine", arn)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{job}: ") and line.split(": ")[1].split()[0] in ("RUNNING", "SUCCEEDED")
    execution = aws("stepfunctions").list_executions(stateMachineArn=arn)["executions"][0]["executionArn"]
    aws("stepfunctions").stop_execution(executionArn=execution, error="Cancelled", cause="by the test")
    assert cloud("status", job, "--state-machine", arn, "--follow", "--interval", "0.05") == 1  # ends: not success
    assert capsys.readouterr().out.strip().startswith(f"{job}: ABORTED")


def test_promote_sets_the_parameter_and_rolls_out(aws, capsys):
    aws("s3").create_bucket(Bucket=BUCKET)
    aws("s3").put_object(Bucket=BUCKET, Key="models/attngan-dev-1/output/model.tar.gz", Body=b"tar")
    aws("ssm").put_parameter(Name=PARAM, Value="bundled", Type="String")
    _ecs(aws)
    uri = f"s3://{BUCKET}/models/attngan-dev-1/output/model.tar.gz"
    assert cloud("promote", uri, "--bucket", BUCKET, "--parameter", PARAM, "--cluster", "attngan-dev",
                 "--service", "attngan-dev-api") == 0
    assert aws("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == uri
    assert "rolling out attngan-dev/attngan-dev-api" in capsys.readouterr().out


def test_rollout_finds_names_in_the_stack_outputs(aws, capsys):
    _ecs(aws)
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
    outputs = {"Storage": {"BucketName": BUCKET, "ModelParameterName": PARAM},
               "Service": {"ClusterName": "attngan-dev", "ServiceName": "attngan-dev-api"},
               "Training": {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:x"}}
    for part, outs in outputs.items():
        body = {**template, "Outputs": {k: {"Value": v} for k, v in outs.items()}}
        aws("cloudformation").create_stack(StackName=f"AttnGAN-Dev-{part}", TemplateBody=json.dumps(body))
    assert cloud("rollout") == 0
    assert "rolling out attngan-dev/attngan-dev-api" in capsys.readouterr().out
    svc = aws("ecs").describe_services(cluster="attngan-dev", services=["attngan-dev-api"])["services"][0]
    assert svc["deployments"]


def test_aws_and_input_errors_are_one_line(aws, tmp_path, capsys):
    aws("s3").create_bucket(Bucket=BUCKET)
    assert cloud("promote", "s3://elsewhere/models/x.tar.gz", "--bucket", BUCKET) == 1
    assert cloud("promote", f"s3://{BUCKET}/models/missing.tar.gz", "--bucket", BUCKET) == 1
    assert cloud("train", "--state-machine", "arn:aws:states:us-east-1:123456789012:stateMachine:nope") == 1
    assert cloud("train", "--data", "models/", "--state-machine", "x") == 1
    assert cloud("train", "--hp", "novalue", "--state-machine", "x") == 1
    assert cloud("rollout") == 1  # no stacks deployed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("attngan: error: ") for line in err), err
    assert "not in this environment's bucket" in err[0] and "does not exist" in err[1]
    assert "StateMachineDoesNotExist" in err[2] and "under data/" in err[3] and "KEY=VALUE" in err[4]
    assert "AttnGAN-Dev-Storage" in err[5]
