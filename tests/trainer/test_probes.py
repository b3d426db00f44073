"""models/probe_challenge.py, whose commands models/README.md quotes for its eye-ring measurements: on the shipped
bundle with a small detail reader, each documented mode prints one verdict per seed or caption and writes its
pictures; bad flags are one line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.trainer.conftest import PYTHON, REPO, subprocess_env

BUNDLE = REPO / "models" / "default"


@pytest.fixture(scope="module")
def reader(tmp_path_factory, birds) -> Path:
    """An attention-pooled reader of the crown and eye ring (what the probe reads the challenge caption with)."""
    from trainer.backbone import train_backbone

    path = tmp_path_factory.mktemp("probe") / "reader.safetensors"  # one epoch: the probe reads it at any accuracy
    train_backbone(path, renders=96, epochs=1, size=64, seed=5, held_out=16, progress=False, pool="attention",
                   parts=["crown", "eyering"])
    return path


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "models/probe_challenge.py", "--bundle", str(BUNDLE), *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)


def _counts(stdout: str, part: str) -> int:
    """How many birds the line '  PART   colour N, colour M' counts."""
    line = next(x for x in stdout.splitlines() if x.strip().startswith(part + " "))
    return sum(int(n) for n in re.findall(r"\b[a-z]+ (\d+)", line))


@pytest.mark.slow
def test_probe_reads_every_seed_of_the_challenge_caption_and_draws_its_heads(reader, birds, tmp_path):
    sheet, heads = tmp_path / "sheet.png", tmp_path / "heads.png"
    res = _probe("--backbone", str(reader), "--data", str(birds), "--seeds", "3", "--disc", "--sheet", str(sheet),
                 "--heads", str(heads), "--truth", "crown=yellow,eyering=black")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _counts(res.stdout, "crown") == 3 and _counts(res.stdout, "eyering") == 3  # a verdict per seed
    disc = next(x for x in res.stdout.splitlines() if "per seed" in x)
    assert len(re.findall(r"\d+\.\d", disc)) == 3  # a disc radius per seed
    # 8 rendered birds with the named parts, then the 3 seeds: two rows of 8
    assert Image.open(sheet).size == (8 * 256, 2 * 256)
    assert Image.open(heads).size[1] == 2 * Image.open(heads).size[0] // 8


@pytest.mark.slow
def test_probe_reads_the_named_part_on_test_captions(reader, birds):
    res = _probe("--backbone", str(reader), "--data", str(birds), "--test-part", "eyering", "--captions", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    head = res.stdout.splitlines()[0]
    n = int(re.match(r"eyering on (\d+) test captions naming it", head).group(1))
    assert 0 < n <= 4 and re.search(r"read as named on \d+\.\d%", head)
    assert sum(int(k) for k in re.findall(r"named \w+ +(\d+):", res.stdout)) == n  # each caption named once


@pytest.mark.parametrize(("args", "expected"), [
    ([], "give --backbone (to read the birds), --sheet"),
    (["--sheet", "x.png", "--heads", "h.png"], "--heads finds each head with the reader"),
    (["--backbone", "r", "--test-part", "eyering"], "give --backbone and --data too"),
    (["--sheet", "x.png", "--truth", "crown=plaid"], "--truth crown=plaid: give PART=VALUE pairs"),
])
def test_probe_bad_flags_are_one_line(args, expected):
    res = _probe(*args)
    assert res.returncode == 2 and expected in res.stderr.strip().splitlines()[-1]
