"""The probes whose commands models/README.md quotes for its measurements, on the shipped bundle with a small detail
reader. models/probe_challenge.py: each documented mode prints one verdict per seed or caption and writes its
pictures. models/probe_encoders.py: three read-outs per part asked for. models/probe_head_d.py: a head D deaf to the
words never prefers the true caption to the ring-swapped one. Bad flags and inputs are one line."""

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


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, f"models/{script}", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300, check=False)


def _probe(*args: str) -> subprocess.CompletedProcess:
    return _run("probe_challenge.py", "--bundle", str(BUNDLE), *args)


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


# ------------------------------------------------- models/probe_encoders.py and models/probe_head_d.py


@pytest.mark.slow
def test_probe_encoders_prints_three_read_outs_per_part(birds):
    res = _run("probe_encoders.py", "--bundle", str(BUNDLE), "--data", str(birds), "--parts", "crown,eyering")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert 0 <= float(re.search(r"R-precision of the real test images \(first caption each\): (\d+\.\d)%",
                                lines[0]).group(1)) <= 100
    rows = {x.split()[0]: [int(n) for n in re.findall(r"(\d+)%", x)] for x in lines[2:]}
    assert list(rows) == ["crown", "eyering", "mean"]  # a row per part asked for, then their mean
    assert all(len(r) == 6 and all(0 <= n <= 100 for n in r) for r in rows.values())  # text, words, image: train/test
    # on the species they were fitted to, a linear read-out of 24 training birds' colours is exact
    assert rows["crown"][0] == rows["crown"][4] == 100


@pytest.mark.parametrize(("args", "expected"), [
    (["--parts", "crown,plaid"], "--parts crown,plaid: give parts of trainer.data.synth.ATTRIBUTE_VALUES"),
    (["--bundle", "no/such/bundle"], "no/such/bundle"),
])
def test_probe_encoders_bad_input_is_one_line(birds, args, expected):
    res = _run("probe_encoders.py", "--bundle", str(BUNDLE), "--data", str(birds), *args)
    assert res.returncode == 2 and expected in res.stderr.strip().splitlines()[-1]


def _head_d_run(tmp_path: Path, nef: int, deaf: bool) -> Path:
    """A GAN run folder whose last D is a word-reading head D (as TRAIN.HEAD_D_WORDS saves it), random; `deaf`: its
    caption head's attention reads nothing of the words, so a swapped word cannot change its score."""
    import torch

    from attngan.model import ConditionalPatchDiscriminator

    torch.manual_seed(0)
    head_d = ConditionalPatchDiscriminator(8, nef, words=True)
    if deaf:
        torch.nn.init.zeros_(head_d.COND_DNET.attention.conv_context.weight)
    run = tmp_path / ("deaf" if deaf else "random")
    run.mkdir()
    torch.save({"netsD": [head_d.state_dict()]}, run / "checkpoint.pt")
    return run


@pytest.mark.slow
def test_probe_head_d_scores_true_captions_against_ring_swapped_ones(reader, birds, tmp_path):
    from attngan.bundle import load_bundle

    nef = load_bundle(BUNDLE).config.embedding_dim
    found = {}
    for deaf in (True, False):
        run = _head_d_run(tmp_path, nef, deaf)
        res = _run("probe_head_d.py", "--run", str(run), "--bundle", str(BUNDLE), "--backbone", str(reader),
                   "--data", str(birds), "--images", "12")
        assert res.returncode == 0, res.stderr[-2000:]
        m = re.search(r"the true caption scored above the eyering-swapped one on (\d+) of (\d+) real test heads "
                      r"\((\d+\.\d)%", res.stdout)
        assert m, res.stdout
        above, total = int(m.group(1)), int(m.group(2))
        assert 0 < total <= 12 and float(m.group(3)) == round(100 * above / total, 1)
        found[deaf] = (above, total)
    assert found[True][0] == 0  # a head D deaf to the words never prefers the true caption: ties are not "above"
    assert 0 < found[False][0] < found[False][1], found  # one that reads them (at random) sometimes does


def test_probe_head_d_bad_input_is_one_line(reader, birds, tmp_path):
    import torch

    from attngan.model import ConditionalPatchDiscriminator

    plain = tmp_path / "plain"  # a sentence-reading head D (TRAIN.HEAD_D_CONDITIONAL without HEAD_D_WORDS)
    plain.mkdir()
    torch.save({"netsD": [ConditionalPatchDiscriminator(8, 16).state_dict()]}, plain / "checkpoint.pt")
    for run, expected in [(tmp_path / "none", "checkpoint.pt: no such file (--run is a GAN run's output folder)"),
                          (plain, "its last discriminator is not a word-reading head D")]:
        res = _run("probe_head_d.py", "--run", str(run), "--bundle", str(BUNDLE), "--backbone", str(reader),
                   "--data", str(birds))
        assert res.returncode == 2 and expected in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
