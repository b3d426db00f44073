"""The eye ring map (`attngan train ring-map`, TRAIN.RING_MAP_LOSS): the renderer marks the pixels it draws, the
map learns them, its loss asks a head for a real ring's pixels of the named colour, bad input is one line."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.errors import AttnGANError
from tests.trainer.conftest import PYTHON, REPO, subprocess_env
from trainer.data import synth
from trainer.evaluate.faithfulness import sample_attributes
from trainer.ring_map import (
    load_ring_map,
    render_heads,
    ring_area_loss,
    ring_colour_loss,
    ring_colours,
    ring_radii,
    ring_shape_loss,
    train_ring_map,
)


def test_the_renderer_marks_the_eye_and_ring_it_draws_and_draws_the_same_bird():
    rng = np.random.default_rng(4)
    seen_ring = seen_none = 0
    for i in range(40):
        attrs = sample_attributes(rng)
        plain, _ = synth._render(attrs, 256, np.random.default_rng(i))
        marks = Image.new("L", (256, 256), 0)
        img, _ = synth._render(attrs, 256, np.random.default_rng(i), ring_map=marks)
        assert np.array_equal(np.asarray(plain), np.asarray(img))  # marking draws nothing into the bird
        pixels, m = np.asarray(img).astype(int), np.asarray(marks)
        eye = m == synth.RING_MAP_EYE
        ring = m > synth.RING_MAP_EYE
        assert eye.sum() > 20
        if attrs["eyering"] == "none":
            seen_none += 1
            assert not ring.any()
            continue
        seen_ring += 1
        assert set(np.unique(m[ring])) == {synth.RING_MAP_EYE + synth.ATTRIBUTE_VALUES["eyering"].index(attrs["eyering"])}
        # the ring's pixels have its colour (within the renderer's jitter), and it rings the eye: same centre, wider
        assert np.abs(np.median(pixels[ring], 0) - synth.COLOUR_RGB[attrs["eyering"]]).max() <= 12
        ys, xs = np.nonzero(eye)
        rys, rxs = np.nonzero(ring)
        assert abs(rxs.mean() - xs.mean()) < 1.5 and abs(rys.mean() - ys.mean()) < 1.5
        assert np.hypot(rxs - xs.mean(), rys - ys.mean()).min() >= np.hypot(xs - xs.mean(), ys - ys.mean()).max() - 1.5
    assert seen_ring > 20 and seen_none > 2


def test_head_crops_hold_the_eye_and_their_maps():
    images, maps, rings = render_heads(24, seed=2)
    assert images.shape == (24, 3, 64, 64) and maps.shape == (24, 64, 64) and len(rings) == 24
    for m, ring in zip(maps, rings):
        assert (m == synth.RING_MAP_EYE).sum() > 40  # the eye is in the crop, whole
        assert bool((m > synth.RING_MAP_EYE).any()) == (ring != "none")
    assert torch.equal(render_heads(24, seed=2)[0], images)  # deterministic for a seed


def _logits(classes: np.ndarray) -> torch.Tensor:
    """Confident logits for a map of classes (H x W)."""
    return torch.nn.functional.one_hot(torch.from_numpy(classes).long(), 2 + len(ring_colours())).permute(2, 0, 1) * 30.0


def test_ring_area_loss_counts_the_named_ring_pixels():
    black = 1 + synth.ATTRIBUTE_VALUES["eyering"].index("black")
    white = 1 + synth.ATTRIBUTE_VALUES["eyering"].index("white")
    area = 100.0
    ring = np.zeros((64, 64), int)
    ring[10:20, 10:20] = black  # a black ring of exactly the real area
    small = np.zeros((64, 64), int)
    small[10:15, 10:20] = black  # half of it
    other = np.zeros((64, 64), int)
    other[10:20, 10:20] = white
    bare = np.zeros((64, 64), int)
    logits = torch.stack([_logits(m) for m in (ring, small, other, bare)]).float()

    def loss(value: str, rows: list[int]) -> float:
        values = torch.full((len(rows),), synth.ATTRIBUTE_VALUES["eyering"].index(value))
        return ring_area_loss(logits[rows], values, area).item()

    assert loss("black", [0]) == pytest.approx(0.0, abs=1e-6)
    assert loss("black", [1]) == pytest.approx(np.log(101 / 51), abs=1e-4)  # half the ring: log of the ratio
    assert loss("black", [2]) == pytest.approx(np.log(101) + 1.0, abs=1e-4)  # none of the named colour, another's
    assert loss("black", [3]) == pytest.approx(np.log(101), abs=1e-4)
    assert loss("none", [0]) == pytest.approx(1.0, abs=1e-4)  # a ring where the caption names none
    assert loss("none", [3]) == pytest.approx(0.0, abs=1e-6)
    values = torch.tensor([-100, synth.ATTRIBUTE_VALUES["eyering"].index("black")])
    assert ring_area_loss(logits[[2, 0]], values, area).item() == pytest.approx(0.0, abs=1e-6)  # unnamed: not counted
    assert ring_area_loss(logits[:2], torch.tensor([-100, -100]), area).item() == 0.0
    # the generator's side: the gradient on the pixels of a bare head asks for ring
    heads = torch.zeros(1, 3, 64, 64, requires_grad=True)
    conv = torch.nn.Conv2d(3, 2 + len(ring_colours()), 1)
    ring_area_loss(conv(heads), torch.tensor([synth.ATTRIBUTE_VALUES["eyering"].index("black")]), area).backward()
    assert heads.grad.abs().sum() > 0


def _marks(cx: float, cy: float, r_eye: float, r_ring: float, ring: int) -> np.ndarray:
    """Classes of a 64 px head: an eye disc at (cx, cy), the annulus round it out to `r_ring` of class `ring`."""
    ys, xs = np.mgrid[0:64, 0:64]
    d = np.hypot(xs - cx, ys - cy)
    return np.where(d < r_eye, synth.RING_MAP_EYE, np.where(d < r_ring, ring, 0))


def test_ring_radii_give_a_real_rings_area_and_ratio():
    r_eye, r_ring = ring_radii(287.0)
    assert r_ring / r_eye == pytest.approx(synth.RING_RADIUS / synth.EYE_RADIUS)
    assert np.pi * (r_ring ** 2 - r_eye ** 2) == pytest.approx(287.0)


def test_ring_shape_loss_asks_for_the_ring_round_the_eye_not_its_pixels_anywhere():
    index = synth.ATTRIBUTE_VALUES["eyering"].index
    black, area = 1 + index("black"), 287.0
    r_eye, r_ring = ring_radii(area)
    real = _marks(30.3, 33.6, r_eye, r_ring, black)  # a real ring, off the crop's centre
    # the same pixel count of black ring as a patch beside an eye: what the area loss was satisfied by
    patch = _marks(30.3, 33.6, r_eye, 0, black)
    patch[5:5 + 17, 40:57] = black
    bare = _marks(30.3, 33.6, r_eye, 0, black)
    wide = _marks(30.3, 33.6, r_eye, r_ring * 1.5, black)
    logits = torch.stack([_logits(m) for m in (real, patch, bare, wide)]).float()

    def loss(value: str, rows: list[int]) -> float:
        return ring_shape_loss(logits[rows], torch.full((len(rows),), index(value)), area).item()

    assert loss("black", [0]) == pytest.approx(0.0, abs=1e-6)  # found round the eye where it is, not the centre
    assert loss("black", [1]) > 1.0 and loss("black", [2]) > 1.0 and loss("black", [3]) > 1.0
    assert ring_area_loss(logits[[1]], torch.tensor([index("black")]), area).item() < 0.03  # area alone: content
    assert loss("white", [0]) > 1.0  # another colour named
    assert loss("none", [2]) == pytest.approx(0.0, abs=1e-6) and loss("none", [0]) > 1.0
    values = torch.tensor([-100, index("black")])
    assert ring_shape_loss(logits[[1, 0]], values, area).item() == pytest.approx(0.0, abs=1e-6)  # unnamed: skipped
    assert ring_shape_loss(logits[:2], torch.tensor([-100, -100]), area).item() == 0.0
    # no eye read: the ring is asked for round the crop's centre, and the generator's pixels get a gradient
    heads = torch.zeros(1, 3, 64, 64, requires_grad=True)
    conv = torch.nn.Conv2d(3, 2 + len(ring_colours()), 1)
    ring_shape_loss(conv(heads), torch.tensor([index("black")]), area).backward()
    assert heads.grad.abs().sum() > 0


def test_ring_colour_loss_asks_the_annulus_round_the_eye_for_the_named_colour():
    index = synth.ATTRIBUTE_VALUES["eyering"].index
    black, area = 1 + index("black"), 287.0
    r_eye, r_ring = ring_radii(area)
    marks = _marks(30.3, 33.6, r_eye, r_ring, black)
    logits = _logits(marks).float()[None].repeat(3, 1, 1, 1)  # the map reads a black ring round the eye in each
    ring = torch.from_numpy(marks == black).float()

    def colour(rgb: tuple[int, int, int]) -> torch.Tensor:
        return (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(3, 1, 1)

    def head(ring_rgb: tuple[int, int, int], rest_rgb: tuple[int, int, int]) -> torch.Tensor:
        return colour(ring_rgb) * ring + colour(rest_rgb) * (1 - ring)

    black_rgb, grey_rgb = synth.COLOUR_RGB["black"], synth.COLOUR_RGB["grey"]
    heads = torch.stack([head(black_rgb, (250, 220, 0)), head(grey_rgb, (250, 220, 0)), head(black_rgb, black_rgb)])

    def loss(rows: list[int], value: str) -> float:
        return ring_colour_loss(heads[rows], logits[rows], torch.full((len(rows),), index(value)), area).item()

    assert loss([0], "black") < 0.02  # only the pixels half a pixel off a radius's edge differ
    assert loss([1], "black") == pytest.approx(np.abs(np.subtract(grey_rgb, black_rgb)).mean() / 127.5, rel=0.05)
    assert loss([2], "black") < 0.02  # what lies outside the annulus is not asked about
    assert loss([1], "grey") < 0.02
    assert loss([1], "none") == 0.0  # no ring named: no colour asked for
    values = torch.tensor([-100, index("black")])
    assert ring_colour_loss(heads[[1, 0]], logits[[1, 0]], values, area).item() < 0.02  # unnamed: not counted
    grad_heads = heads[[1]].clone().requires_grad_(True)
    ring_colour_loss(grad_heads, logits[[1]], torch.tensor([index("black")]), area).backward()
    assert grad_heads.grad[0, :, ring > 0].abs().sum() > 0 and grad_heads.grad[0, :, ring == 0].abs().sum() < 1e-3


def test_ring_map_learns_held_out_rings_and_round_trips(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "ring_map.safetensors"
    meta = train_ring_map(out, renders=2048, epochs=4, seed=7, held_out=64, progress=False, device="cpu")
    model, loaded = load_ring_map(out)
    assert loaded == meta and meta["colours"] == ring_colours()
    assert 150 < meta["ring_area"] < 450  # pixels of a 64 px crop: a ring of ~11 px round an eye of ~6.5
    assert meta["held_out_eye_iou"] > 0.4 and meta["held_out_ring_iou"] > 0.25, meta  # learnt, not guessed
    assert meta["held_out_ring_colour"] > 0.4  # of 7 colours
    images, _, rings = render_heads(32, seed=8)
    with torch.no_grad():
        logits = model(images.float() / 127.5 - 1)
    assert logits.shape == (32, 2 + len(ring_colours()), 64, 64)
    # the loaded map's loss on real heads: low for the rings they have, high for another colour named
    true = torch.tensor([synth.ATTRIBUTE_VALUES["eyering"].index(r) for r in rings])
    wrong = torch.where(true > 0, true % len(ring_colours()) + 1, 1)
    assert ring_area_loss(logits, true, meta["ring_area"]) < 0.5 * ring_area_loss(logits, wrong, meta["ring_area"])
    assert ring_shape_loss(logits, true, meta["ring_area"]) < 0.5 * ring_shape_loss(logits, wrong, meta["ring_area"])
    for bad, expected in [(tmp_path / "missing.safetensors", "does not exist"), (tmp_path / "x.txt", "not a safetensors")]:
        if bad.suffix == ".txt":
            bad.write_text("hello")
        with pytest.raises(AttnGANError, match=expected):
            load_ring_map(bad)
    with pytest.raises(AttnGANError, match="--renders must be at least"):
        train_ring_map(out, renders=10)


def test_ring_map_cli_errors_are_one_line(tmp_path):
    from trainer.backbone import save_tagged

    backbone_like = save_tagged({"x": torch.zeros(2)}, {"format": "attngan-small-image-backbone"},
                                tmp_path / "backbone.safetensors")
    with pytest.raises(AttnGANError, match="not an eye ring map made by `attngan train ring-map`"):
        load_ring_map(backbone_like)
    for args, expected in [(["--renders", "10"], "--renders must be at least"), (["--epochs", "0"], "--epochs must be")]:
        res = subprocess.run([PYTHON, "-m", "attngan.cli", "train", "ring-map", "--out", str(tmp_path / "m.safetensors"),
                              *args], capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120,
                             check=False)
        assert res.returncode != 0 and expected in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
