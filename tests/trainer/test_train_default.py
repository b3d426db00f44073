"""`make train-default` (models/train_default.sh) from an empty folder to a bundle, its report and the README
pictures, shrunk to a smoke run; and run again, it trains and exports nothing twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import PYTHON, REPO, subprocess_env

# The shipped recipe's every step, each network and run shrunk (as tests/trainer/test_sagemaker.py shrinks the same
# recipe's SageMaker lane). A 64-render backbone reads no part well enough for the part or detail loss, nor finds the
# head for the head D: those are tested with trained readers in test_training.py.
SHRUNK = {
    "IMAGES": "200", "BACKBONE_RENDERS": "64", "BACKBONE_EPOCHS": "1", "DETAIL_EPOCHS": "1", "DAMSM_EPOCHS": "1",
    "MAX_STEPS": "3", "EVAL_IMAGES": "20",
    "SET": "TREE.BASE_SIZE=64 IMAGE_ENCODER_SIZE=64 WORKERS=0 CUDA=false TRAIN.BATCH_SIZE=8 TEXT.EMBEDDING_DIM=32 "
           "TEXT.WORDS_NUM=10",
    "DAMSM_SET": "TREE.BRANCH_NUM=1 TRAIN.IMAGE_CODE=parts TRAIN.TEXT_RENDERS=8 TRAIN.TEXT_RENDER_STEPS=2",
    "GAN_SET": "GAN.GF_DIM=8 GAN.DF_DIM=8 GAN.R_NUM=1 GAN.Z_DIM=16 GAN.CONDITION_DIM=16 TRAIN.PART_LOSS=0 "
               "TRAIN.DETAIL_LOSS=0 TRAIN.HEAD_D_LOSS=0 TRAIN.HEAD_D_CONDITIONAL=false TRAIN.HEAD_D_WORDS=false",
    "EVAL_ARGS": "--batch-size 8 --samples 2 --classifier-epochs 1 --judge-renders 48 --no-untrained --quiet",
}


def _train_default(tmp_path: Path) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.update(SHRUNK, PY=PYTHON, DATA=str(tmp_path / "data"), RUNS=str(tmp_path / "runs"),
               BUNDLE=str(tmp_path / "bundle"), DOCS=str(tmp_path / "docs"))
    return subprocess.run(["bash", "models/train_default.sh"], check=False, env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=500)


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["step"]


@pytest.mark.slow
def test_train_default_runs_every_step_once(tmp_path):
    from attngan.bundle import load_bundle

    res = _train_default(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs, bundle_dir = tmp_path / "runs", tmp_path / "bundle"
    assert (tmp_path / "data" / "attributes.json").is_file()
    for backbone in ("default_backbone", "default_detail_backbone"):
        assert (runs / f"{backbone}.safetensors").is_file()
    assert (runs / "default_DAMSM" / "Model" / "text_encoder0.pth").is_file()  # one epoch: its snapshot 0
    # the 64 px stage, the three stages grown from it, the head stage from the latter's half-precision bundle, and
    # its conditional continuation: a copy of it resumed to twice its steps, which is the shipped bundle
    assert _step(runs / "default_AttnGAN64" / "checkpoint.pt") == 3
    stage2 = load_bundle(runs / "default_AttnGAN_bundle")
    assert stage2.config.branch_num == 3 and stage2.manifest["training"]["steps"] == 3
    assert _step(runs / "default_AttnGAN_head" / "checkpoint.pt") == 3
    assert _step(runs / "default_AttnGAN_head_cond" / "checkpoint.pt") == 6
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["training"]["steps"] == 6 and bundle.config.gf_dim == 8 and bundle.config.attn_64
    assert "growing the generator" in res.stderr
    metrics = json.loads((bundle_dir / "eval" / "metrics.json").read_text())
    assert metrics["r_precision"]["n_images"] == 20 and (bundle_dir / "eval" / "report.md").is_file()
    assert (bundle_dir / "eval" / "training_curves.png").is_file()  # from the three runs' logs
    for png in ("default_samples.png", "challenge_caption.png"):
        assert (tmp_path / "docs" / png).stat().st_size > 1000

    # run again: every finished step is found and skipped; nothing is trained, exported or evaluated twice
    kept = {p: p.stat().st_mtime_ns for p in (bundle_dir / "manifest.json", bundle_dir / "eval" / "metrics.json",
                                              runs / "default_backbone.safetensors",
                                              runs / "default_AttnGAN_bundle" / "manifest.json",
                                              runs / "default_AttnGAN_head_cond" / "checkpoint.pt")}
    again = _train_default(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert _step(runs / "default_AttnGAN_head" / "checkpoint.pt") == 3
