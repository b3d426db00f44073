"""Seed diversity: how different one caption's birds are from seed to seed, against the data's own variety.

A mode-collapse check, not a quality score. A generator that ignores its noise draws the same bird for every
seed, and R-precision and caption faithfulness do not see it (they may even rise). So the report sets the mean
pairwise L1 distance between the birds of several seeds of one caption beside the same distance between real
test images of one species: a ratio far below 1 is a collapse. Pixels, not learnt features, because no
perceptual network's weights can be assumed here; at 64 px, where every bundle has an image (resized by area).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attngan.errors import AttnGANError

SIZE = 64


def at_size(images: Tensor, size: int = SIZE) -> Tensor:
    """N x C x H x W in [-1, 1] -> N x C x size x size (area resampling, as a thumbnail)."""
    images = images.float().clamp(-1, 1)
    return images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")


def mean_pairwise_l1(groups: Sequence[Tensor] | Tensor) -> float:
    """groups: each K x C x H x W in [-1, 1], K >= 2 images that share a caption (or a species); a G x K x C x H x W
    tensor is G groups. The mean over groups of the mean over the K(K-1)/2 pairs in each of the mean absolute pixel
    difference, on the 0-255 scale."""
    means = []
    for group in groups:
        if group.dim() != 4 or group.size(0) < 2:
            raise AttnGANError(f"seed diversity needs groups of at least 2 images (K x C x H x W), got {tuple(group.shape)}")
        first, second = zip(*itertools.combinations(range(group.size(0)), 2))
        means.append((group[list(first)] - group[list(second)]).abs().mean())
    if not means:
        raise AttnGANError("seed diversity needs at least one group of images")
    return float(torch.stack(means).mean()) * 127.5
