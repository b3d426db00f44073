"""Every cdk-nag (AwsSolutions) finding we accept, on the construct it concerns, with the reason.

cdk-nag 3 matches acknowledgments by exact id (`AwsSolutions-IAM5[Resource::<arn>]`), so the ids
are built from the configuration that renders them. Anything not listed here fails synth, and
tests/infra check that no acknowledgment is left unused or without a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk

from infra.config import EnvConfig

P = "<AWS::Partition>"
R = "<AWS::Region>"
A = "<AWS::AccountId>"


@dataclass(frozen=True)
class Ack:
    stack: str  # part: storage | network | service | training | ci
    path: str  # construct path inside the stack ("" = the stack itself)
    ids: tuple[str, ...]  # rule ids without the "AwsSolutions::" plugin prefix
    reason: str


def acknowledgments(cfg: EnvConfig) -> list[Ack]:
    bucket = f"Resource::arn:{P}:s3:::{cfg.bucket_name}"
    acks = [
        Ack("service", "InstanceRole", ("AwsSolutions-IAM5[Action::ecs:Submit*]", "AwsSolutions-IAM5[Resource::*]"),
            "The ECS agent's policy as CDK writes it: ecs:Submit*/Poll/StartTelemetrySession and "
            "ecr:GetAuthorizationToken have no resource-level permissions; cluster actions are scoped to the cluster."),
        Ack("service", "Task/ExecutionRole", ("AwsSolutions-IAM5[Resource::*]",),
            "ecr:GetAuthorizationToken supports only Resource *; image pulls are scoped to the service repository."),
        Ack("service", "Task/TaskRole",
            (f"AwsSolutions-IAM5[{bucket}/models/*]", f"AwsSolutions-IAM5[{bucket}/images/*]"),
            "The service reads any model under models/ (the one named by the SSM parameter changes with every "
            "promotion) and writes generated images under images/ with content-hash keys; nothing else in the bucket."),
        Ack("service", "Task", ("AwsSolutions-ECS2",),
            "The environment holds only non-secret settings (bucket name, prefixes, region, device); the model URI "
            "comes from SSM through `secrets`, and there are no credentials (the task role provides them)."),
        Ack("training", "SageMakerRole",
            (f"AwsSolutions-IAM5[{bucket}/data/*]", f"AwsSolutions-IAM5[{bucket}/models/*]",
             f"AwsSolutions-IAM5[{bucket}/checkpoints/*]",
             f"AwsSolutions-IAM5[Resource::arn:{P}:logs:{R}:{A}:log-group:/aws/sagemaker/TrainingJobs*]",
             "AwsSolutions-IAM5[Resource::*]"),
            "A training job reads its data set under data/, writes model.tar.gz under models/<job>/ and spot "
            "checkpoints under checkpoints/<job>/ (job names are chosen per run); SageMaker creates one log stream "
            "per job; ecr:GetAuthorizationToken and cloudwatch:PutMetricData (conditioned on the SageMaker "
            "namespace) have no resource-level permissions."),
        Ack("training", "StateMachine/Role",
            (f"AwsSolutions-IAM5[Resource::arn:{P}:sagemaker:{R}:{A}:training-job/attngan-{cfg.name}-*]",
             "AwsSolutions-IAM5[Resource::*]"),
            "Each execution creates a training job with a new unique name under this environment's prefix; X-Ray "
            "tracing and CloudWatch Logs delivery actions have no resource-level permissions."),
        Ack("ci", "DeployRole",
            (f"AwsSolutions-IAM5[Resource::arn:{P}:iam::{A}:role/cdk-hnb659fds-*]",
             f"AwsSolutions-IAM5[Resource::arn:{P}:cloudformation:{R}:{A}:stack/{cfg.stack_name('')}*/*]",
             f"AwsSolutions-IAM5[Resource::arn:{P}:states:{R}:{A}:execution:attngan-{cfg.name}-training:*]",
             "AwsSolutions-IAM5[Resource::*]"),
            "CI deploys by assuming the CDK bootstrap roles (their names carry account and region), reads this "
            "environment's stack outputs (stack ids end in a generated UUID), follows executions it started "
            "(names chosen per run); ecr:GetAuthorizationToken supports only Resource *."),
    ]
    if cfg.has_domain:
        acks.append(Ack(
            "service", "AlbSg", ("AwsSolutions-EC23",),
            "A public HTTPS API: the ALB listens on 443 (and 80, which only redirects to 443) for everyone; "
            "WAF rate-limits each client."))
    else:
        acks.append(Ack(
            "service", "Cdn", ("AwsSolutions-CFR1", "AwsSolutions-CFR2", "AwsSolutions-CFR3", "AwsSolutions-CFR4",
                               "AwsSolutions-CFR5"),
            "Used only when no domain is configured, to give an HTTPS endpoint out of the box. CFR1: a public API, "
            "no geo restriction. CFR2: WAF is attached to the ALB (regional ACL with forwarded-IP rate limiting), "
            "which sees every request because caching is disabled. CFR3: the ALB access logs record every request. "
            "CFR4: the default *.cloudfront.net certificate's TLS policy is fixed by AWS; configure domainName for a "
            "TLS 1.2+ policy. CFR5: the origin hop is HTTP because an ALB without a domain has no certificate; "
            "the ALB admits only CloudFront's origin-facing prefix list carrying the secret origin header."))
    return acks


def acknowledge(stacks: dict[str, cdk.Stack], cfg: EnvConfig) -> None:
    for ack in acknowledgments(cfg):
        stack = stacks[ack.stack]
        scope = stack
        for part in filter(None, ack.path.split("/")):
            scope = scope.node.find_child(part)
        for rule in ack.ids:
            cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=f"AwsSolutions::{rule}", reason=ack.reason))
