"""Differentiable augmentation of what the discriminators see (TRAIN.D_AUGMENT; ours).

DiffAugment (Zhao et al., NeurIPS 2020): the same random transforms are applied to real and generated images
before every discriminator call, in D's update and in G's, and they are differentiable, so G learns through
them. With few training images a discriminator can learn them by heart and stop teaching G shape (the paper's
case); our default data set has 3,000, which the recipe's 64 px stage sees ~200 times each (the first hour: ~70).
Measured in the first hour (models/README.md): firmer birds with `translation`, seeds collapsed with `cutout`.

Only transforms that keep colours: what a caption names is colours, and the conditional heads judge them.
`translation` shifts each image by up to 1/8 of its side (uncovered pixels 0, mid grey in [-1, 1]);
`cutout` blanks one square of half the side at a random place in each image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attngan.errors import AttnGANError

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5

Augment = Callable[[Tensor], Tensor]


def _keep_format(out: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


def translation(x: Tensor, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by its own random whole-pixel offset in [-ratio * side, ratio * side]."""
    batch, channels, height, width = x.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (batch, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (batch, 1), device=x.device)
    rows = torch.arange(height, device=x.device)[None] - dy  # B x H: the source row of each output row
    cols = torch.arange(width, device=x.device)[None] - dx
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    rows = rows.clamp(0, height - 1)[:, None, :, None].expand(batch, channels, height, width)
    cols = cols.clamp(0, width - 1)[:, None, None, :].expand(batch, channels, height, width)
    out = x.gather(2, rows).gather(3, cols) * inside[:, None].to(x.dtype)
    return _keep_format(out, x)


def cutout(x: Tensor, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Set one square of ratio * side to 0 in each image, its centre anywhere in the image."""
    batch, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    cy = torch.randint(0, height, (batch, 1), device=x.device)
    cx = torch.randint(0, width, (batch, 1), device=x.device)
    ys = torch.arange(height, device=x.device)[None] - (cy - size_y // 2)  # B x H: row offset into the square
    xs = torch.arange(width, device=x.device)[None] - (cx - size_x // 2)
    square = ((ys >= 0) & (ys < size_y))[:, :, None] & ((xs >= 0) & (xs < size_x))[:, None, :]
    return _keep_format(x * (~square)[:, None].to(x.dtype), x)


TRANSFORMS: dict[str, Augment] = {"translation": translation, "cutout": cutout}


def policy(text: str) -> Augment | None:
    """'translation,cutout' -> one function applying them in that order; '' -> None (D sees images as they are)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise AttnGANError(f"TRAIN.D_AUGMENT: unknown transform {unknown[0]!r}; use a comma-separated list of "
                           f"{', '.join(TRANSFORMS)} (or '' for none)")
    if not names:
        return None
    chain = [TRANSFORMS[name] for name in names]

    def augment(x: Tensor) -> Tensor:
        for transform in chain:
            x = transform(x)
        return x

    return augment
