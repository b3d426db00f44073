"""Synthetic birds: determinism, the exact CUB layout read back by the loader, truthful captions, the CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attngan.config import Config
from attngan.text import tokenize
from trainer.data import TextImageDataset
from trainer.data.synth import (
    ATTRIBUTE_VALUES,
    COLOUR_RGB,
    COLOUR_WORDS,
    load_attributes,
    render_bird,
    swap_named_colour,
    synthesize,
)

_SCRIPT = Path(sys.executable).with_name("attngan")  # the installed console script; a checkout run in place
ATTNGAN = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "attngan.cli"]  # (the GPU lane) has none


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a = _files(synthesize(tmp_path / "a", 24, 5, size=64))
    b = _files(synthesize(tmp_path / "b", 24, 5, size=64))
    c = _files(synthesize(tmp_path / "c", 24, 6, size=64))
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    assert "attributes.json" in a and "captions.pickle" in a


def test_layout_read_back_by_the_loader(synth_200):
    root = synth_200
    cfg = Config()
    train, test = TextImageDataset(root, "train", cfg), TextImageDataset(root, "test", cfg, train=False)
    assert len(train) + len(test) == 200 and len(test) > 0
    assert not set(train.class_ids) & set(test.class_ids)  # disjoint classes, like CUB
    assert 0.6 < len(set(train.class_ids)) / (len(set(train.class_ids)) + len(set(test.class_ids))) < 0.9
    assert train.vocab == test.vocab
    cub = root / "CUB_200_2011"
    images = dict(line.split() for line in (cub / "images.txt").read_text().splitlines())
    labels = dict(line.split() for line in (cub / "image_class_labels.txt").read_text().splitlines())
    classes = dict(line.split() for line in (cub / "classes.txt").read_text().splitlines())
    boxes = {r.split()[0]: [float(v) for v in r.split()[1:]] for r in (cub / "bounding_boxes.txt").read_text().splitlines()}
    by_key = {name[:-4]: i for i, name in images.items()}
    attrs = load_attributes(root)
    for ds in (train, test):
        for index, key in enumerate(ds.keys):
            image_id = by_key[key]
            assert int(labels[image_id]) == ds.class_ids[index] == attrs[key]["class_id"]
            assert key.startswith(classes[labels[image_id]] + "/")
            assert len(ds.captions(index)) == 10
            assert len((root / "text" / f"{key}.txt").read_text().splitlines()) == 10
            x, y, w, h = boxes[image_id]
            with Image.open(cub / "images" / f"{key}.jpg") as im:
                assert im.size == (128, 128) and im.format == "JPEG"
                assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
                assert w > 0.45 * 128  # the bird is large in the frame
    sample = train[0]
    assert [tuple(t.shape) for t in sample.images] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
    # the pickles are protocol 2 with the original structure
    train_caps, _test_caps, ixtoword, _wordtoix = pickle.loads((root / "captions.pickle").read_bytes())
    assert len(train_caps) == 10 * len(train) and ixtoword[0] == "<end>"


def test_captions_are_truthful_and_varied(synth_200):
    attrs = load_attributes(synth_200)
    texts = set()
    for key, rec in attrs.items():
        a = rec["attributes"]
        assert set(a) == set(ATTRIBUTE_VALUES) and all(a[p] in ATTRIBUTE_VALUES[p] for p in a)
        assert len(rec["captions"]) == 10
        for cap in rec["captions"]:
            texts.add(cap["text"])
            named = cap["named"]
            assert named, cap
            for part, value in named.items():
                assert a[part] == value, (key, cap)  # never a false statement
                if part in ("bill_shape", "bill_length"):
                    continue
                # the named colour is in the text, in one of its words
                assert any(" ".join(tokenize(w)) in " ".join(tokenize(cap["text"])) for w in COLOUR_WORDS[value])
    assert len(texts) > 1500  # many phrasings, not ten templates
    vocab = {w for t in texts for w in tokenize(t)}
    for word in ["black", "white", "grey", "gray", "brown", "yellow", "red", "blue", "orange", "green", "buff",
                 "olive", "tan", "rufous", "iridescent", "purple", "pink", "crown", "head", "beak", "bill",
                 "eyering", "ring", "wings", "wingbars", "breast", "chest", "belly", "abdomen", "stomach", "tail"]:
        assert word in vocab, word


def test_swapping_a_named_colour_changes_that_part_alone(synth_200):
    """TRAIN.HEAD_D_SWAP_PART's mismatched captions: for every caption that names the eye ring (or the eye), one
    word changes, the one naming that part's colour, to another colour the part can have; captions that do not name
    the part are left alone (None). "eye" is never read inside "eye ring"."""
    rng = np.random.default_rng(0)
    colour_of = {phrase.split()[-1]: c for c, phrases in COLOUR_WORDS.items() for phrase in phrases}
    seen = dict.fromkeys(("eyering", "eye"), 0)
    for rec in load_attributes(synth_200).values():
        for cap in rec["captions"]:
            tokens = tokenize(cap["text"])
            for part in seen:
                swapped = swap_named_colour(tokens, part, rng)
                if part not in cap["named"]:
                    assert swapped is None or (part == "eye" and "ring" in tokens), cap  # no colour to swap
                    continue
                seen[part] += 1
                assert swapped is not None and len(swapped) == len(tokens), cap
                changed = [i for i, (a, b) in enumerate(zip(tokens, swapped)) if a != b]
                assert len(changed) == 1, (cap, swapped)
                old, new = tokens[changed[0]], swapped[changed[0]]
                assert colour_of[old] == cap["named"][part], (cap, swapped)
                assert new in ATTRIBUTE_VALUES[part] and new != cap["named"][part] and new != "none", (cap, swapped)
    assert seen["eyering"] > 100 and seen["eye"] > 50, seen
    challenge = tokenize("the bird has a yellow crown and a black eyering that is round")
    swapped = swap_named_colour(challenge, "eyering", rng)
    assert swapped[:8] == challenge[:8] and swapped[8] not in ("black", "yellow") and swapped[9:] == challenge[9:]


def test_render_bird_paints_big_flat_part_colours():
    a = {"crown": "red", "nape": "red", "throat": "white", "back": "blue", "wing": "blue", "wingbar": "none",
         "breast": "yellow", "belly": "yellow", "tail": "blue", "bill_color": "black", "bill_shape": "cone",
         "bill_length": "short", "eye": "black", "eyering": "white", "leg": "pink"}
    img = np.asarray(render_bird(a, 256, np.random.default_rng(0))).astype(int)
    for colour, min_share in (("red", 0.01), ("blue", 0.035), ("yellow", 0.012)):
        dist = np.abs(img - np.array(COLOUR_RGB[colour])).sum(-1)
        assert (dist < 60).mean() > min_share, colour
    assert (np.abs(img - np.array(COLOUR_RGB["purple"])).sum(-1) < 60).mean() < 0.001  # not asked for
    with pytest.raises(Exception, match="crown"):
        render_bird({**a, "crown": "plaid"}, 64)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*ATTNGAN, *args], check=False, capture_output=True, text=True, timeout=120, env=env)


def test_cli_synth_and_check(tmp_path):
    out = tmp_path / "birds"
    r = _run("data", "synth", "--out", str(out), "--images", "200", "--seed", "1", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout
    r = _run("data", "check", str(out))
    assert r.returncode == 0, r.stderr
    assert "200 images" in r.stdout and "2000 captions" in r.stdout and "(disjoint)" in r.stdout
    meta = json.loads((out / "attributes.json").read_text())
    assert meta["seed"] == 1 and len(meta["images"]) == 200


@pytest.mark.parametrize("args, code, message", [
    (["data", "check", "/nonexistent/birds"], 1, "data directory not found"),
    (["data", "synth", "--out", "X", "--images", "1"], 1, "at least 2"),
    (["data", "synth", "--images", "ten", "--out", "X"], 2, "invalid int value"),
    (["data", "synth"], 2, "--out"),
])
def test_cli_errors_are_one_line(tmp_path, args, code, message):
    args = [str(tmp_path / "x") if a == "X" else a for a in args]
    r = _run(*args)
    assert r.returncode == code
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_check_reports_corrupt_pickle(tmp_path):
    out = synthesize(tmp_path / "b", 8, 0, size=64)
    (out / "test" / "filenames.pickle").write_bytes(b"\x80\x02garbage")
    r = _run("data", "check", str(out))
    assert r.returncode == 1 and "filenames.pickle is not a readable pickle" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
