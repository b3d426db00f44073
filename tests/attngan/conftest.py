"""Fixtures for the networks, bundle and pipeline tests: a tiny vocabulary, tiny configs, bundles, and a
fabricated "original release" (old-format .pth files in the original key layout plus a Python 2 captions.pickle)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from attngan.model import Generator, ModelConfig, TextEncoder, init_weights
from attngan.text import Vocabulary

torch.set_num_threads(1)

WORDS = ["this", "bird", "has", "a", "red", "crown", "black", "wings", "yellow", "belly", "and", "short", "pointed", "bill", "small", "white", "breast", "with", "brown", "nape", "grey", "tail", "long"]


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary.build([WORDS])


def tiny_config(n_words: int, **kw: Any) -> ModelConfig:
    """Small but complete: 3 stages (64/128/256), attention at stages 2 and 3."""
    base = {"n_words": n_words, "gf_dim": 8, "r_num": 1, "embedding_dim": 32, "z_dim": 16, "condition_dim": 8,
            "words_num": 12, "df_dim": 8}
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny(vocab: Vocabulary) -> ModelConfig:
    return tiny_config(len(vocab))


def lively_states(config: ModelConfig, seed: int = 0) -> tuple[dict, dict]:
    """Untrained weights whose images span the colour range (the plain init gives near-grey images, which would
    make image comparisons meaningless): the RGB heads' weights are scaled up."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(config)
        g.apply(init_weights)
        t = TextEncoder(config.n_words, nhidden=config.embedding_dim)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.startswith("img_net") and name.endswith("img.0.weight"):
                p.mul_(30.0)
    return g.state_dict(), t.state_dict()


@pytest.fixture(scope="session")
def lively_bundle(tmp_path_factory: pytest.TempPathFactory, vocab: Vocabulary, tiny: ModelConfig) -> Path:
    from attngan.bundle import write_bundle

    g, t = lively_states(tiny)
    return write_bundle(tmp_path_factory.mktemp("lively") / "bundle", config=tiny, vocab=vocab, generator=g,
                        text_encoder=t, info={"source": "test", "metrics": {"r_precision": 0.5}})


@pytest.fixture(scope="session")
def ranked_bundle(tmp_path_factory: pytest.TempPathFactory, vocab: Vocabulary, tiny: ModelConfig) -> Path:
    """lively_bundle's networks plus a DAMSM image encoder, which best-of-N ranks candidates with."""
    from attngan.bundle import write_bundle
    from tests.conftest import ranking_image_encoder

    g, t = lively_states(tiny)
    return write_bundle(tmp_path_factory.mktemp("ranked") / "bundle", config=tiny, vocab=vocab, generator=g,
                        text_encoder=t, image_encoder=ranking_image_encoder(tiny), info={"source": "test"})


# ---------------------------------------------------------------- a Python 2 pickle, written opcode by opcode


def _py2(obj: Any) -> bytes:
    """Protocol-2 opcodes as Python 2 wrote them: str as SHORT_BINSTRING/BINSTRING (bytes, not unicode)."""
    if isinstance(obj, bool):
        raise TypeError("not needed")
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        raw = obj.encode("latin1")
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(x) for x in obj) + b"e" if obj else b"]"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u" if obj else b"}"
    raise TypeError(type(obj))


def write_py2_captions_pickle(path: Path, ixtoword: list[str], train: list[list[int]], test: list[list[int]]) -> Path:
    """The original captions.pickle: [train_captions, test_captions, ixtoword (dict), wordtoix (dict)]."""
    data = [train, test, dict(enumerate(ixtoword)), {w: i for i, w in enumerate(ixtoword)}]
    path.write_bytes(b"\x80\x02" + _py2(data) + b".")
    return path


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The builders above, for tests (test modules here are not a package, so they cannot import conftest)."""

    class Helpers:
        tiny_config = staticmethod(tiny_config)
        lively_states = staticmethod(lively_states)
        write_py2_captions_pickle = staticmethod(write_py2_captions_pickle)

    return Helpers


@pytest.fixture
def original_release(tmp_path: Path, vocab: Vocabulary) -> dict[str, Path]:
    """bird_AttnGAN2.pth / text_encoder200.pth in the original layout (old non-zip format, no BN counters)."""
    config = tiny_config(len(vocab), embedding_dim=256, condition_dim=100, z_dim=100, r_num=2)
    g, t = lively_states(config, seed=3)
    g = {k: v for k, v in g.items() if not k.endswith("num_batches_tracked")}
    netg = tmp_path / "bird_AttnGAN2.pth"
    text = tmp_path / "text_encoder200.pth"
    torch.save(g, netg, _use_new_zipfile_serialization=False)
    torch.save(t, text, _use_new_zipfile_serialization=False)
    ids = [[vocab.wordtoix[w] for w in ["this", "bird", "has", "a", "red", "crown"]]]
    captions = write_py2_captions_pickle(tmp_path / "captions.pickle", vocab.ixtoword, ids * 3, ids)
    return {"netG": netg, "text_encoder": text, "captions": captions, "dir": tmp_path}
