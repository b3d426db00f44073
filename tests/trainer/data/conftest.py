"""Fixtures for the data layer: a fabricated original-format CUB set (real Python 2 pickles) and synthetic birds."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def py2_dumps(obj) -> bytes:
    """Pickle as Python 2's cPickle (protocol 2) does: `bytes` are py2 `str` (SHORT_BINSTRING/BINSTRING)."""
    out = bytearray(b"\x80\x02")

    def emit(o) -> None:
        if isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend((b"U" + bytes([len(o)]) if len(o) < 256 else b"T" + struct.pack("<I", len(o))) + o)
        elif isinstance(o, str):  # py2 unicode
            data = o.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for item in o:
                    emit(item)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    emit(k)
                    emit(v)
                out.extend(b"u")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


CAPTION_WORDS = ["red", "blue", "small", "bird", "wings", "crown", "black", "white", "belly", "beak"]


def _captions(rng: np.random.Generator, n: int = 10) -> list[str]:
    caps = []
    for _ in range(n):
        words = rng.choice(CAPTION_WORDS, size=int(rng.integers(3, 9))).tolist()
        caps.append("This " + " ".join(words) + ", really.")
    return caps


def make_original_cub(root: Path, long_caption: bool = True) -> dict:
    """A 5-image CUB set in the original layout: classes 1, 2 train; 3 test. Returns what was written."""
    rng = np.random.default_rng(0)
    keys = {"train": ["001.Red_Bird/Red_Bird_0001_11", "001.Red_Bird/Red_Bird_0002_12",
                      "002.Blue_Bird/Blue_Bird_0001_21"],
            "test": ["003.Grey_Bird/Grey_Bird_0001_31", "003.Grey_Bird/Grey_Bird_0002_32"]}
    classes = {"train": [1, 1, 2], "test": [3, 3]}
    cub = root / "CUB_200_2011"
    sizes = [(120, 90), (90, 120), (100, 100), (160, 80), (64, 96)]
    boxes = [(10, 20, 60, 40), (0, 0, 90, 120), (30.0, 30.0, 40.0, 50.0), (100, 10, 55, 60), (5, 5, 20, 30)]
    all_keys = keys["train"] + keys["test"]
    texts = {}
    for i, key in enumerate(all_keys):
        (cub / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(sizes[i][1], sizes[i][0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(cub / "images" / f"{key}.jpg", quality=95)
        caps = _captions(rng)
        if long_caption and i == 0:
            caps[0] = " ".join(["red"] * 10 + ["blue"] * 15)  # 25 words > WORDS_NUM
        texts[key] = caps
        (root / "text" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "text" / f"{key}.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    (cub / "images.txt").write_text("".join(f"{i + 1} {k}.jpg\n" for i, k in enumerate(all_keys)))
    (cub / "bounding_boxes.txt").write_text(
        "".join(f"{i + 1} {float(b[0])} {float(b[1])} {float(b[2])} {float(b[3])}\n" for i, b in enumerate(boxes)))
    # vocabulary in an arbitrary (py2 dict) order, as the shipped pickle has
    words = sorted({w for caps in texts.values() for c in caps for w in c.lower().replace(",", " ").replace(".", " ").split()},
                   key=lambda w: (len(w), w[::-1]))
    ixtoword = {0: b"<end>", **{i + 1: w.encode() for i, w in enumerate(words)}}
    wordtoix = {w: i for i, w in ixtoword.items()}
    caps_ids = {s: [[wordtoix[w.encode()] for w in c.lower().replace(",", " ").replace(".", " ").split()]
                    for k in keys[s] for c in texts[k]] for s in keys}
    (root / "captions.pickle").write_bytes(py2_dumps([caps_ids["train"], caps_ids["test"], ixtoword, wordtoix]))
    for s, split_keys in keys.items():
        (root / s).mkdir(parents=True, exist_ok=True)
        (root / s / "filenames.pickle").write_bytes(py2_dumps([k.encode() for k in split_keys]))
        (root / s / "class_info.pickle").write_bytes(py2_dumps(classes[s]))
    return {"keys": keys, "classes": classes, "texts": texts, "ixtoword": [ixtoword[i].decode() for i in
            range(len(ixtoword))], "captions": caps_ids, "sizes": sizes, "boxes": boxes}


@pytest.fixture
def original_cub(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "birds"
    return root, make_original_cub(root)


@pytest.fixture(scope="session")
def synth_200(tmp_path_factory) -> Path:
    from trainer.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "birds", 200, 1, size=128)


@pytest.fixture
def py2_pickle():
    """`py2_pickle(obj) -> bytes`: a Python 2 (protocol 2) pickle of obj."""
    return py2_dumps
