"""The code passes the project's linters (ruff, configured in pyproject.toml; shellcheck for the shell scripts):
`make test` is what CI runs, so a lint error fails CI like a failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    res = subprocess.run([str(ruff), "check", "attngan", "trainer", "service", "infra", "tests", "bench", "models"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shell_scripts_pass_shellcheck():
    """The training recipes (`make train-default`, `make first-hour`), the GPU lane and CI's entry point run for
    hours or on borrowed machines, where a quoting or `cd` mistake costs the run: warnings and errors fail."""
    listed = subprocess.run(["git", "ls-files", "*.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    scripts = [*listed.stdout.split(), ".ci/run"]
    assert "models/train_default.sh" in scripts
    shellcheck = Path(sys.executable).with_name("shellcheck")
    res = subprocess.run([str(shellcheck), "--severity=warning", *scripts], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
