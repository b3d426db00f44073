"""Fixtures for the training tests: a tiny CUB-layout data set and tiny configs (64 px, small nets)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def birds(tmp_path_factory) -> Path:
    """48 synthetic birds of 6 species at 80 px, CUB layout (about 2 s to draw)."""
    from trainer.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("birds") / "synth", 48, seed=0, size=80, n_classes=6)


# ATTNGAN_TEST_CUDA=1 runs the training tests on the GPU (a GPU lane; CI has none), with deterministic kernels so
# the resume tests' bit-for-bit comparisons hold there too. The torchrun tests stay on CPU (gloo): two processes
# on one GPU is not a layout NCCL supports.
ON_CUDA = os.environ.get("ATTNGAN_TEST_CUDA") == "1"
DEVICE = ["CUDA=true", "TRAIN.DETERMINISTIC=true"] if ON_CUDA else ["CUDA=false"]

TINY_DAMSM = [
    "TREE.BRANCH_NUM=1", "TREE.BASE_SIZE=64", "IMAGE_ENCODER=small", "WORKERS=0", *DEVICE,
    "TRAIN.BATCH_SIZE=8", "TRAIN.MAX_EPOCH=100", "TRAIN.SEED=3", "TRAIN.LOG_INTERVAL=5", "TEXT.EMBEDDING_DIM=32",
    "TRAIN.SNAPSHOT_INTERVAL=1000", "TRAIN.VALID_BATCHES=1", "TEXT.WORDS_NUM=10",
]
TINY_GAN = [
    "TREE.BRANCH_NUM=1", "TREE.BASE_SIZE=64", "IMAGE_ENCODER=small", "WORKERS=0", *DEVICE,
    "TRAIN.BATCH_SIZE=8", "TRAIN.MAX_EPOCH=100", "TRAIN.SEED=3", "TRAIN.LOG_INTERVAL=5", "TEXT.EMBEDDING_DIM=32",
    "TRAIN.SNAPSHOT_INTERVAL=1000", "GAN.GF_DIM=8", "GAN.DF_DIM=8", "GAN.R_NUM=1", "GAN.CONDITION_DIM=16",
    "GAN.Z_DIM=16", "TRAIN.SAMPLE_INTERVAL=0", "TEXT.WORDS_NUM=10",
]


def sets(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += ["--set", v]
    return out


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


PYTHON = sys.executable
