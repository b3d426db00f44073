"""Image transforms of the original data pipeline, with PIL and torch only (no torchvision).

Original (`datasets.py` `get_imgs`): crop 1.5x the bounding box around its centre, `Scale(int(S*76/64))`
(shorter side, bilinear), `RandomCrop(S)`, `RandomHorizontalFlip`, then the smaller stages by
`Scale(64)`, `Scale(128)` of that crop, each normalised to [-1, 1]. S is the largest stage (256, or 299
for DAMSM pretraining). `train=False` is ours: a centre crop and no flip, for repeatable evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def bbox_crop_box(bbox: Sequence[int | float], width: int, height: int) -> tuple[int, int, int, int]:
    """The original crop: a square of side 1.5 x max(w, h) around the box centre, clipped to the image."""
    x, y, w, h = (int(v) for v in bbox)
    r = int(max(w, h) * 0.75)
    cx = int((2 * x + w) / 2)
    cy = int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def crop_to_bbox(img: Image.Image, bbox: Sequence[int | float] | None) -> Image.Image:
    if bbox is None:
        return img
    return img.crop(bbox_crop_box(bbox, *img.size))


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Old torchvision `Scale(size)`: the shorter side becomes `size`, the other keeps the aspect ratio."""
    w, h = img.size
    if (w <= h and w == size) or (h <= w and h == size):
        return img
    if w < h:
        ow, oh = size, int(size * h / w)
    else:
        oh, ow = size, int(size * w / h)
    return img.resize((ow, oh), Image.Resampling.BILINEAR)


def load_size(max_size: int) -> int:
    """The size the shorter side is scaled to before the random crop: int(S * 76 / 64)."""
    return int(max_size * 76 / 64)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor 3xHxW in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def image_pyramid(img: Image.Image, sizes: Sequence[int], *, train: bool,
                  rng: np.random.Generator | None = None) -> list[torch.Tensor]:
    """An already bbox-cropped RGB image -> [3xSxS tensors in [-1, 1]] for each of `sizes` (ascending)."""
    max_size = sizes[-1]
    img = resize_shorter(img, load_size(max_size))
    w, h = img.size
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        left = int(rng.integers(0, w - max_size + 1))
        top = int(rng.integers(0, h - max_size + 1))
        flip = bool(rng.random() < 0.5)
    else:
        left = round((w - max_size) / 2.0)
        top = round((h - max_size) / 2.0)
        flip = False
    img = img.crop((left, top, left + max_size, top + max_size))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = []
    for size in sizes[:-1]:
        out.append(to_tensor(img.resize((size, size), Image.Resampling.BILINEAR)))
    out.append(to_tensor(img))
    return out

