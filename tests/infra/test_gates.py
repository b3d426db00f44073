"""Quality gates: cdk-nag, cfn-lint, hadolint, zizmor, check-jsonschema, the pinned CDK CLI, config errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import ROOT, TAG

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = VENV_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or pytest.fail(f"{name} is not installed (make setup)"))


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, cwd=ROOT, **kw)


# --- cdk-nag -------------------------------------------------------------------------------------------

def test_nag_passes_with_every_acknowledgment_reasoned(dev, prod, dev_domain):
    for synth in (dev, prod, dev_domain):
        report = json.loads((synth.outdir / "validation-report.json").read_text())
        assert all(p["conclusion"] == "success" for p in report["pluginReports"]), report
        assert any(p["pluginName"] == "AwsSolutions" for p in report["pluginReports"])
    from infra.acknowledgments import acknowledgments

    for ack in acknowledgments(dev.cfg) + acknowledgments(dev_domain.cfg):
        assert len(ack.reason) > 60 and ack.ids, ack


def test_every_acknowledgment_matches_a_real_finding(tmp_path):
    """Without the acknowledgments nag must report each of them: none is stale or mistyped."""
    import aws_cdk as cdk

    from infra.acknowledgments import acknowledgments
    from infra.app import build_app
    from infra.config import read_cdk_context
    app = cdk.App(outdir=str(tmp_path), context=read_cdk_context(overrides={"imageTag": TAG}))
    stacks = build_app(app, "dev", nag=False)
    from cdk_nag import AwsSolutionsChecks

    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match="Validation"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    found = {(v["ruleName"], c["constructPath"]) for p in report["pluginReports"] for v in p["violations"]
             for c in v["violatingConstructs"]}
    for ack in acknowledgments(stacks["service"].cfg):
        prefix = f"{stacks[ack.stack].stack_name}/{ack.path}"
        for rule in ack.ids:
            assert any(r == rule and path.startswith(prefix) for r, path in found), (rule, prefix)


# --- cfn-lint ------------------------------------------------------------------------------------------

def test_cfn_lint_has_no_findings_on_any_template(dev, prod, dev_domain, dev_cpu):
    files = [str(f) for s in (dev, prod, dev_domain, dev_cpu) for f in s.template_files()]
    assert len(files) == 20
    # Warnings ignored, by design: W3005 (a DependsOn that a Ref already implies; CDK adds it for the
    # capacity-provider ordering) and W3010 (AZ names: pinned in cdk.context.json on purpose).
    res = run([tool("cfn-lint"), "--ignore-checks", "W3005", "W3010", "--", *files])
    assert res.returncode == 0, res.stdout + res.stderr


# --- Dockerfiles and workflows --------------------------------------------------------------------------

DOCKERFILES = ["trainer/Dockerfile", "service/Dockerfile.cpu", "service/Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_dockerfile(dockerfile):
    path = ROOT / dockerfile
    if not path.exists():
        pytest.skip(f"{dockerfile} not written yet")
    res = run([tool("hadolint"), "--failure-threshold", "warning", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_dockerfile_in_the_repo_is_linted():
    found = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("**/Dockerfile*")
             if not any(part in (".venv", "node_modules", "cdk.out") for part in p.parts)}
    assert found <= set(DOCKERFILES), f"add {sorted(found - set(DOCKERFILES))} to DOCKERFILES"


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_exist():
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "deploy.yml", "train.yml"}


def test_zizmor_finds_nothing():
    res = run([tool("zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS)],
              env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_workflows_match_the_github_schema():
    res = run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_actions_are_pinned_by_full_sha():
    import re

    for wf in WORKFLOWS:
        for ref in re.findall(r"uses:\s*(\S+)", wf.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{wf.name}: {ref}"


# --- the pinned CLI, offline -----------------------------------------------------------------------------

def test_npx_cdk_synth_works_offline(tmp_path):
    cdk_bin = ROOT / "node_modules" / ".bin" / "cdk"
    if not cdk_bin.exists():
        pytest.skip("node_modules missing: run `make setup` (npm ci installs the pinned aws-cdk CLI)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20", CDK_DISABLE_VERSION_CHECK="1",
               AWS_EC2_METADATA_DISABLED="true", PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
    res = run([str(cdk_bin), "synth", "--quiet", "-c", "env=prod", "-c", f"imageTag={TAG}", "-o", str(tmp_path)],
              env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(list(tmp_path.glob("AttnGAN-Prod-*.template.json"))) == 5


# --- configuration errors -------------------------------------------------------------------------------

def test_config_errors_name_the_key_and_the_fix():
    from infra.config import ConfigError, load_env_config, read_cdk_context

    def error(**overrides) -> str:
        with pytest.raises(ConfigError) as exc:
            load_env_config(read_cdk_context(overrides={"imageTag": TAG, **overrides}), overrides.get("env"))
        return str(exc.value)

    assert "environments.dev.account: must be a 12-digit" in error(account="12345")
    assert "not configured; choose one of ['dev', 'prod']" in error(env="staging")
    assert "gpuInstanceType" in error(gpuInstanceType="c7i.large")
    assert "serviceMax + 1" in error(serviceMax="2")
    assert "expected int" in error(asgMax="lots")
    assert "domainName, hostedZoneId and hostedZoneName" in error(domainName="api.example.org")
    assert "immutable" in error(imageTag="latest")
    assert "candidates: must be 1..32" in error(candidates="0")
    assert "truncation: must be 0..1" in error(truncation="1.5")
    assert "truncation: expected float" in error(truncation="half")
    cfg = load_env_config(read_cdk_context(overrides={"imageTag": TAG, "serviceMax": "1", "computeType": "cpu"}))
    assert cfg.instance_type == "c7i.2xlarge" and cfg.service_dockerfile == "service/Dockerfile.cpu"
    assert load_env_config(read_cdk_context(overrides={"imageTag": TAG, "truncation": "0.5"})).truncation == 0.5


def test_app_reports_a_config_error_in_one_line():
    res = run([sys.executable, "-m", "infra.synth", "--env", "dev", "-c", "account=nope", "--out", "/nonexistent"])
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "account" in res.stderr
