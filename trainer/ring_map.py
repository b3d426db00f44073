"""A per-pixel reader of the eye ring in a bird's head: which pixels are eye, which are ring, and of which colour.

The detail reader (trainer.backbone, `--pool attention`) names the eye ring's colour from one attention-pooled
vector, and the generator satisfies it with a few pixels of colour at the rim of an eye-sized dot: a black ring
round a black eye, one black disc 1.8x a bare eye's width in the renders, came out eye-sized on every run
(models/README.md). A reader of every pixel cannot be satisfied that way: trained on the renderer's own masks
(synth._draw_bird's `ring_map`), it calls a pixel "black ring" only where the annulus round the eye is, so the
GAN's ring-map loss (TRAIN.RING_MAP_LOSS, `ring_area_loss`) asks for as many pixels of the named ring as a real
head has, around the eye; with TRAIN.RING_MAP_SHAPE (`ring_shape_loss`) it asks for a real head's marks drawn round
the generated eye instead: the eye's disc, the ring's annulus, nothing else.

It reads 64 px head crops of 256 px images, as TRAIN.HEAD_D_LOSS crops them; `attngan train ring-map` renders
birds, crops each head around its eye (shifted by up to JITTER px: the GAN crops where the detail reader looks,
which can be off) and trains the map, with the faithfulness judge's photometric augmentation (blur, lower
resolution, colour shifts, noise), which moves no pixel.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attngan.errors import AttnGANError

log = logging.getLogger("trainer")

RING_MAP_FORMAT = "attngan-eye-ring-map"
IMAGE_SIZE, CROP = 256, 64  # heads of 256 px images (trainer.gan.head_crop_size)
JITTER = 12  # px the crop's centre is moved from the eye's, at most, in each direction


def ring_colours() -> list[str]:
    """The ring values the map has a class for: every eye ring but "none" (class 1 + its index in the values)."""
    from trainer.data.synth import ATTRIBUTE_VALUES

    return ATTRIBUTE_VALUES["eyering"][1:]


class RingMap(nn.Module):
    """Head crop (B x 3 x 64 x 64 in [-1, 1]) -> per-pixel logits B x C x 64 x 64 over: elsewhere, the eye, a ring
    of each colour (synth.RING_MAP_EYE's classes). Full resolution beside a dilated half-resolution path that sees
    ~35 px, an eye and its ring whole."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        classes = 2 + len(ring_colours())

        def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, dilation, dilation), nn.LeakyReLU(0.2)]

        self.full = nn.Sequential(*conv(3, width), *conv(width, width))
        self.context = nn.Sequential(*conv(width, 2 * width, stride=2), *conv(2 * width, 2 * width, dilation=2),
                                  *conv(2 * width, 2 * width, dilation=4), *conv(2 * width, 2 * width))
        self.out = nn.Sequential(*conv(3 * width, width), nn.Conv2d(width, classes, 1))

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        full = self.full(heads)
        context = F.interpolate(self.context(full), size=full.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(torch.cat([full, context], 1))


def _named(logits: torch.Tensor, ring_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads whose caption names the eye ring (value index >= 0): their logits in fp32, their values."""
    named = ring_values >= 0
    return logits[named].float(), ring_values[named].long()


def ring_area_loss(logits: torch.Tensor, ring_values: torch.Tensor, area: float) -> torch.Tensor:
    """TRAIN.RING_MAP_LOSS: per head, |log((pixels the map reads as the named ring + 1) / (area + 1))| + pixels it
    reads as a ring of another colour / `area` (a real ring's pixels in a crop); a caption naming no ring ("none")
    asks for no ring pixels. The log keeps the pull strong on a head with almost no ring pixels (a linear count's
    gradient vanishes with their probabilities: 350 steps of it on the default model moved nothing).
    `ring_values`: the eye ring's value index per head (0 "none"), negative where the caption does not name it;
    those heads are not counted. 0 when no head's caption names it."""
    if not (ring_values >= 0).any():
        return logits.new_zeros((), dtype=torch.float32)
    logits, values = _named(logits, ring_values)
    pixels = logits.softmax(1).sum((2, 3))[:, 2:]  # heads x ring colours
    ringed = values > 0
    right = pixels.gather(1, (values.clamp(min=1) - 1)[:, None])[:, 0] * ringed
    size = torch.log((right + 1) / (area + 1)).abs() * ringed
    return (size + (pixels.sum(1) - right) / area).mean()


def ring_radii(area: float) -> tuple[float, float]:
    """The eye's and its ring's radii in a crop's pixels, from a real ring's visible pixels (`area`): the renderer
    draws the ring as a disc synth.RING_RADIUS / synth.EYE_RADIUS times the eye's, the eye on top, so the ring shows
    as the annulus between them."""
    from trainer.data.synth import EYE_RADIUS, RING_RADIUS

    ratio = RING_RADIUS / EYE_RADIUS
    eye = math.sqrt(area / (math.pi * (ratio * ratio - 1)))
    return eye, eye * ratio


def ring_targets(logits: torch.Tensor, values: torch.Tensor, area: float) -> torch.Tensor:
    """A real head's marks drawn round each generated eye (N x H x W classes, no gradient): a disc of a real eye's
    radius as the eye, the annulus out to the ring's radius as the ring `values` names (none for 0), the rest
    "elsewhere"; -100 (not counted) within half a pixel of either radius. The centre is where the map reads the eye
    (`logits`: its reading of the heads), or the crop's when it reads almost none."""
    from trainer.data.synth import RING_MAP_EYE

    n, _, h, w = logits.shape
    r_eye, r_ring = ring_radii(area)
    with torch.no_grad():
        eye = logits.float().softmax(1)[:, RING_MAP_EYE]
        eye = eye * (eye > 0.5)
        mass = eye.sum((1, 2))
        ys = torch.arange(h, device=logits.device, dtype=torch.float32).view(1, h, 1)
        xs = torch.arange(w, device=logits.device, dtype=torch.float32).view(1, 1, w)
        seen = mass > 0.25 * math.pi * r_eye * r_eye
        cy = torch.where(seen, (eye * ys).sum((1, 2)) / mass.clamp(min=1e-6), torch.full_like(mass, (h - 1) / 2))
        cx = torch.where(seen, (eye * xs).sum((1, 2)) / mass.clamp(min=1e-6), torch.full_like(mass, (w - 1) / 2))
        d = ((ys - cy.view(n, 1, 1)) ** 2 + (xs - cx.view(n, 1, 1)) ** 2).sqrt()
        ringed = (values > 0).view(n, 1, 1)
        target = torch.where((d < r_ring) & ringed, (RING_MAP_EYE + values).view(n, 1, 1), 0)
        target[d < r_eye] = RING_MAP_EYE
        target[((d - r_eye).abs() < 0.5) | (((d - r_ring).abs() < 0.5) & ringed)] = -100
    return target


def ring_shape_loss(logits: torch.Tensor, ring_values: torch.Tensor, area: float) -> torch.Tensor:
    """TRAIN.RING_MAP_SHAPE: per head, the map's cross-entropy against `ring_targets`: the eye's disc read as the
    eye, the annulus as the named ring, every other pixel as neither. Where the area loss asks only for enough ring
    pixels (which it got as a dark patch, not round on half the seeds), this asks for them where a ring is and for
    none elsewhere. `ring_values` as `ring_area_loss`."""
    if not (ring_values >= 0).any():
        return logits.new_zeros((), dtype=torch.float32)
    logits, values = _named(logits, ring_values)
    weight = torch.tensor([1.0] + [3.0] * (logits.shape[1] - 1), device=logits.device)  # as the map was trained
    return F.cross_entropy(logits, ring_targets(logits, values, area), weight=weight, ignore_index=-100)


def ring_colour_loss(heads: torch.Tensor, logits: torch.Tensor, ring_values: torch.Tensor, area: float
                     ) -> torch.Tensor:
    """TRAIN.RING_MAP_COLOUR: the mean distance of each pixel of `ring_targets`' annulus (in the generated heads,
    [-1, 1]) from the named ring's colour as the renderer draws it, over heads whose caption names a ring: a target
    the map cannot be fooled on (asked for the shape alone, the generator drew the ring grey and pink and the map
    read it as black). 0 when no head's caption names a ring of a colour."""
    from trainer.data.synth import COLOUR_RGB, RING_MAP_EYE

    ringed = ring_values > 0
    if not ringed.any():
        return logits.new_zeros((), dtype=torch.float32)
    logits, values = logits[ringed].float(), ring_values[ringed].long()
    colours = torch.tensor([COLOUR_RGB[c] for c in ring_colours()], device=heads.device, dtype=torch.float32)
    want = (colours / 127.5 - 1)[values - 1].view(-1, 3, 1, 1)
    ring = (ring_targets(logits, values, area) == RING_MAP_EYE + values.view(-1, 1, 1)).float()
    gap = (heads[ringed].float() - want).abs().mean(1)
    return ((gap * ring).sum((1, 2)) / ring.sum((1, 2)).clamp(min=1)).mean()


def render_heads(n: int, seed: int, progress: bool = False, desc: str = "ring map: renders"
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`n` real head crops (N x 3 x 64 x 64 uint8) of fresh 256 px renders, cropped and scaled as the data loader
    does (centre crop), each around its eye shifted by up to JITTER px, with their maps (N x 64 x 64 uint8: 0
    elsewhere, 1 the eye, 1 + k a ring of value k) and eye ring values."""
    from PIL import Image
    from tqdm import tqdm

    from trainer.data import synth
    from trainer.data.transforms import bbox_crop_box, load_size
    from trainer.evaluate.faithfulness import sample_attributes

    rng = np.random.default_rng([seed, 11])
    images = torch.empty(n, 3, CROP, CROP, dtype=torch.uint8)
    maps = torch.empty(n, CROP, CROP, dtype=torch.uint8)
    rings = []
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, leave=False):
        attrs = sample_attributes(rng)
        ring_map = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        img, bbox = synth._render(attrs, IMAGE_SIZE, rng, ring_map=ring_map)
        box = bbox_crop_box(bbox, *img.size)
        scale = load_size(IMAGE_SIZE) / min(box[2] - box[0], box[3] - box[1])
        size = (round((box[2] - box[0]) * scale), round((box[3] - box[1]) * scale))
        pixels = np.asarray(img.crop(box).resize(size, Image.Resampling.BILINEAR))
        marks = np.asarray(ring_map.crop(box).resize(size, Image.Resampling.NEAREST))
        ys, xs = np.nonzero(marks == synth.RING_MAP_EYE)
        cx, cy = xs.mean() + rng.integers(-JITTER, JITTER + 1), ys.mean() + rng.integers(-JITTER, JITTER + 1)
        x0 = int(np.clip(round(cx) - CROP // 2, 0, size[0] - CROP))
        y0 = int(np.clip(round(cy) - CROP // 2, 0, size[1] - CROP))
        images[i] = torch.from_numpy(pixels[y0:y0 + CROP, x0:x0 + CROP].copy()).permute(2, 0, 1)
        maps[i] = torch.from_numpy(marks[y0:y0 + CROP, x0:x0 + CROP].copy())
        rings.append(attrs["eyering"])
    return images, maps, rings


def _as_input(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def train_ring_map(out: str | Path, *, renders: int = 12000, epochs: int = 4, seed: int = 0, held_out: int = 1000,
                   batch_size: int = 64, progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Render heads, train the map, judge it on held-out heads, write `out` (safetensors); returns the metadata."""
    from trainer.backbone import save_tagged
    from trainer.data.synth import RING_MAP_EYE
    from trainer.evaluate.faithfulness import bf16_autocast, photometric
    from trainer.evaluate.run import resolve_device
    from trainer.runtime import Progress

    if renders < batch_size:
        raise AttnGANError(f"--renders must be at least the batch size ({batch_size}), got {renders}")
    if epochs < 1:
        raise AttnGANError(f"--epochs must be at least 1, got {epochs}")
    if held_out < 1:
        raise AttnGANError(f"--held-out must be at least 1, got {held_out}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    images, maps, _ = render_heads(renders, seed, progress)
    val_images, val_maps, val_rings = render_heads(held_out, seed + 1, progress, "ring map: held-out renders")
    log.info("ring map: %d + %d head crops in %.0f s", renders, held_out, time.perf_counter() - t0)
    torch.manual_seed(seed)
    model = RingMap().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    weight = torch.tensor([1.0] + [3.0] * (1 + len(ring_colours())), device=dev)  # the eye and ring are ~6% of a crop
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * (renders // batch_size)
    bar = Progress(steps, 0, progress, "ring map", max(1, steps // 20))
    t1 = time.perf_counter()
    model.train()
    for step in range(steps):
        if step % (renders // batch_size) == 0:
            order = torch.randperm(renders, generator=gen)
        idx = order[(step % (renders // batch_size)) * batch_size:][:batch_size]
        x, y = _as_input(images[idx]), maps[idx].long()
        flip = torch.rand(len(idx), generator=gen) < 0.5  # birds face either way
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x = photometric(x, gen)
        with bf16_autocast(str(dev)):
            logits = model(x.to(dev))
        loss = F.cross_entropy(logits.float(), y.to(dev), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update({"loss": loss.item()})
    train_seconds = time.perf_counter() - t1
    model.eval().cpu()
    with torch.no_grad():
        pred = torch.cat([model(_as_input(val_images[i:i + 256])).argmax(1) for i in range(0, held_out, 256)])
    truth = val_maps.long()
    ring_true, ring_pred = truth > RING_MAP_EYE, pred > RING_MAP_EYE
    union = (ring_true | ring_pred).sum().item()
    ringed = [i for i, r in enumerate(val_rings) if r != "none"]
    areas = [int(ring_true[i].sum()) for i in ringed]
    meta = {"format": RING_MAP_FORMAT, "version": 1, "image_size": IMAGE_SIZE, "crop": CROP, "jitter": JITTER,
            "colours": ring_colours(), "renders": renders, "epochs": epochs, "seed": seed,
            "train_seconds": round(train_seconds, 1), "held_out_renders": held_out,
            # a real ring's pixels in a crop: the loss's target (the ring is partly hidden by the eye it rings)
            "ring_area": float(np.median(areas)) if areas else 0.0,
            "held_out_ring_iou": round((ring_true & ring_pred).sum().item() / max(union, 1), 4),
            "held_out_ring_colour": round((pred[ring_true] == truth[ring_true]).float().mean().item(), 4)
            if ring_true.any() else 0.0,
            "held_out_eye_iou": round(((truth == RING_MAP_EYE) & (pred == RING_MAP_EYE)).sum().item()
                                      / max(((truth == RING_MAP_EYE) | (pred == RING_MAP_EYE)).sum().item(), 1), 4)}
    save_tagged(model.state_dict(), meta, out)
    log.info("ring map: held-out ring IoU %.1f%%, ring colour right on %.1f%% of ring pixels, eye IoU %.1f%%; a ring "
             "is %.0f px of a crop; trained in %.0f s on %s -> %s", 100 * meta["held_out_ring_iou"],
             100 * meta["held_out_ring_colour"], 100 * meta["held_out_eye_iou"], meta["ring_area"], train_seconds,
             dev, out)
    return meta


def load_ring_map(path: str | Path) -> tuple[RingMap, dict[str, Any]]:
    """A ring map file's net (eval mode) and metadata; one-line errors for anything else."""
    from trainer.backbone import read_tagged

    state, meta = read_tagged(path, RING_MAP_FORMAT, "TRAIN.RING_MAP", "an eye ring map", "attngan train ring-map")
    if meta.get("colours") != ring_colours() or not meta.get("ring_area"):
        raise AttnGANError(f"{path} reads other eye ring colours than these birds have, or has no ring area")
    model = RingMap()
    model.load_state_dict(state)
    return model.eval(), meta
