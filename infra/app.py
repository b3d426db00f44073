"""The CDK app: `npx cdk synth -c env=dev` (or `python -m infra.synth` for every environment).

Builds one environment's five stacks, named AttnGAN-<Env>-<Part>:
Storage (ECR + S3 + model parameter, kept on destroy) <- Network <- Service <- Training <- CI.
cdk-nag's AwsSolutions pack runs as a policy-validation plugin: an unacknowledged finding fails synth.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.acknowledgments import acknowledge
from infra.config import FIELDS, ConfigError, EnvConfig, load_env_config
from infra.stacks.ci import CiStack
from infra.stacks.network import NetworkStack
from infra.stacks.service import ServiceStack
from infra.stacks.storage import StorageStack
from infra.stacks.training import TrainingStack


def build_app(app: cdk.App, env_name: str | None = None, *, nag: bool = True) -> dict[str, cdk.Stack]:
    """Add one environment's stacks to `app` (its context must hold cdk.json's); returns them by part."""
    ctx: Mapping[str, Any] = {k: v for k in _context_keys() if (v := app.node.try_get_context(k)) is not None}
    cfg: EnvConfig = load_env_config(ctx, env_name)
    env = cdk.Environment(account=cfg.account, region=cfg.region)
    storage = StorageStack(app, cfg.stack_name("Storage"), cfg=cfg, env=env,
                           description="attngan: ECR repositories, S3 bucket, model parameter (retained)")
    network = NetworkStack(app, cfg.stack_name("Network"), cfg=cfg, env=env,
                           description="attngan: VPC (public subnets, no NAT), flow logs")
    service = ServiceStack(app, cfg.stack_name("Service"), cfg=cfg, vpc=network.vpc, env=env,
                           description="attngan: GPU ECS service behind an HTTPS endpoint, WAF, alarms")
    training = TrainingStack(app, cfg.stack_name("Training"), cfg=cfg, env=env,
                             description="attngan: SageMaker training through Step Functions, promotion")
    ci = CiStack(app, cfg.stack_name("CI"), cfg=cfg, env=env,
                 description="attngan: GitHub OIDC deploy role")
    for stack in (service, training, ci):  # they import storage's resources by name
        stack.add_stack_dependency(storage)
    training.add_stack_dependency(service)  # it rolls the service out
    ci.add_stack_dependency(training)
    stacks = {"storage": storage, "network": network, "service": service, "training": training, "ci": ci}
    for stack in stacks.values():
        cdk.Tags.of(stack).add("project", "attngan")
        cdk.Tags.of(stack).add("env", cfg.name)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
        acknowledge(stacks, cfg)
    return stacks


def _context_keys() -> list[str]:
    return ["env", "environments", *FIELDS]


def main() -> int:
    app = cdk.App()
    try:
        build_app(app)
    except ConfigError as exc:  # one line that names the key, not a traceback
        print(f"infra: configuration error: {exc}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
