"""Infra fixtures: synthesize each variant ONCE per session (jsii synth is slow) with the CLI's context."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_VERSION_CHECK", "1")

ROOT = Path(__file__).resolve().parents[2]
TAG = "0123456789abcdef0123456789abcdef01234567"
# A custom-domain variant of dev: ACM on the ALB instead of CloudFront.
DOMAIN = {"domainName": "birds.example.org", "hostedZoneId": "Z0123456789ABCDEFGHIJ", "hostedZoneName": "example.org"}


class Synth:
    """One synthesized environment: templates by stack part, and where they were written."""

    def __init__(self, outdir: Path, assembly, cfg) -> None:
        self.outdir, self.assembly, self.cfg = outdir, assembly, cfg

    def template(self, part: str) -> dict:
        return self.assembly.get_stack_by_name(self.cfg.stack_name(part)).template

    def assertions(self, part: str):
        from aws_cdk.assertions import Template

        return Template.from_json(self.template(part))

    def template_files(self) -> list[Path]:
        return sorted(self.outdir.glob("*.template.json"))


def _synth(tmp_path_factory, name: str, env: str, overrides: dict) -> Synth:
    from infra.config import load_env_config, read_cdk_context
    from infra.synth import synth_env

    out = tmp_path_factory.mktemp(name)
    ctx = {"imageTag": TAG, **overrides}
    assembly = synth_env(env, out, ctx)
    cfg = load_env_config(read_cdk_context(overrides={**ctx, "env": env}), env)
    return Synth(out, assembly, cfg)


@pytest.fixture(scope="session")
def dev(tmp_path_factory) -> Synth:
    return _synth(tmp_path_factory, "dev", "dev", {})


@pytest.fixture(scope="session")
def prod(tmp_path_factory) -> Synth:
    return _synth(tmp_path_factory, "prod", "prod", {})


@pytest.fixture(scope="session")
def dev_domain(tmp_path_factory) -> Synth:
    return _synth(tmp_path_factory, "domain", "dev", DOMAIN)


@pytest.fixture(scope="session")
def dev_cpu(tmp_path_factory) -> Synth:
    return _synth(tmp_path_factory, "cpu", "dev", {"computeType": "cpu"})


@pytest.fixture(scope="session")
def cdk_context() -> dict:
    return json.loads((ROOT / "cdk.context.json").read_text())


def resources(template: dict, kind: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def one(template: dict, kind: str) -> dict:
    found = resources(template, kind)
    assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
    return next(iter(found.values()))["Properties"]
