"""The code passes the project's linter (ruff, configured in pyproject.toml): `make test` is what CI runs, so a
lint error fails CI like a failing test."""

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
