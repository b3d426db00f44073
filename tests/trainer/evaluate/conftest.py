"""Fixtures for the evaluation tests: a tiny CUB-layout data set and tiny bundles (with an image encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "yellow": (230, 210, 40), "green": (40, 160, 60)}


def make_tiny_cub(root: Path, n_per_class: int = 3, classes: int = 4, with_attributes: bool = False,
                  seed: int = 0) -> Path:
    """A CUB-layout data set (images/, text/, train.txt, test.txt): each class a coloured body on a plain
    background with captions naming that colour. Classes 1..classes-1 train, the last 2 classes test."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    (root / "images").mkdir(parents=True)
    (root / "text").mkdir()
    split = {"train": [], "test": []}
    attrs = {}
    for c in range(classes):
        colour = names[c % len(names)]
        cls = f"{c + 1:03d}.Bird_{colour}"
        (root / "images" / cls).mkdir()
        (root / "text" / cls).mkdir()
        for j in range(n_per_class):
            key = f"{cls}/Bird_{colour}_{j:04d}"
            arr = np.full((80, 80, 3), 235, np.uint8)
            y, x = rng.integers(10, 30, size=2)
            arr[y:y + 40, x:x + 40] = COLOURS[colour]
            Image.fromarray(arr).save(root / "images" / f"{key}.jpg")
            caps = [f"this bird is {colour} with a {colour} crown number {k}" for k in range(10)]
            (root / "text" / f"{key}.txt").write_text("\n".join(caps) + "\n")
            split["test" if c >= classes - 2 else "train"].append(key)
            attrs[key] = {"class_id": c + 1, "attributes": {"crown": colour},
                          "captions": [{"text": t, "named": {"crown": colour}} for t in caps]}
    for s, keys in split.items():
        (root / f"{s}.txt").write_text("\n".join(keys) + "\n")
    if with_attributes:
        (root / "attributes.json").write_text(json.dumps({"images": attrs}))
    return root


def tiny_bundle(out: Path, data_dir: Path, *, image_encoder: bool = True, seed: int = 0,
                words: list[str] | None = None) -> Path:
    """A random-weight bundle for the data set's vocabulary (or `words`), small enough for CPU tests."""
    from attngan.bundle import write_bundle
    from attngan.config import load_config
    from attngan.model import Generator, ImageEncoder, ModelConfig, TextEncoder, init_weights
    from attngan.text import Vocabulary
    from trainer.data.dataset import TextImageDataset

    if words is None:
        vocab = TextImageDataset(data_dir, "test", load_config(None, ["TREE.BRANCH_NUM=1"]), train=False).vocab
    else:
        vocab = Vocabulary.build([words])
    mc = ModelConfig(n_words=len(vocab), embedding_dim=32, gf_dim=16, branch_num=2, image_encoder="small")
    torch.manual_seed(seed)
    g = Generator(mc)
    g.apply(init_weights)
    te = TextEncoder(mc.n_words, nhidden=mc.embedding_dim)
    ie = ImageEncoder(mc.embedding_dim, kind="small") if image_encoder else None
    return write_bundle(out, config=mc, vocab=vocab, generator=g.state_dict(), text_encoder=te.state_dict(),
                        image_encoder=ie.state_dict() if ie is not None else None, info={"source": "test"})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_cub(tmp_path_factory.mktemp("tiny_cub"))


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory, tiny_data) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", tiny_data)


@pytest.fixture
def make_cub():
    return make_tiny_cub


@pytest.fixture
def make_bundle():
    return tiny_bundle
