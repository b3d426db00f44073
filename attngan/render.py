"""Turn generator outputs into pictures: images, and attention grids like the original's build_super_images2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor) -> Image.Image:
    """3 x H x W tensor in [-1, 1] -> RGB image, (x + 1) * 127.5 truncated to uint8 as the original."""
    if image.dim() != 3 or image.size(0) != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    x = ((image.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy(), mode="RGB")


def heatmap(values: np.ndarray) -> np.ndarray:
    """H x W in [0, 1] -> H x W x 3 uint8, black-red-yellow-white ("hot")."""
    v = np.clip(values, 0.0, 1.0)[..., None] * 3.0
    rgb = np.concatenate([v, v - 1.0, v - 2.0], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def images_under_attention(images: list, n_attention: int) -> list:
    """The image each attention map is drawn over: the image of the stage it fed. Attention belongs to the last
    stages (128 and 256 px; with GAN.WORD_ATTN_64 the 64 px one first); a DCGAN generator's one image is under
    both of its maps."""
    first = len(images) - n_attention
    return [images[max(0, first + k)] for k in range(n_attention)]


def attention_grid(image: Image.Image, attention: np.ndarray, tokens: list[str], tile: int = 128,
                   columns: int = 8, alpha: float = 0.6) -> Image.Image:
    """The image followed by one tile per word: the image with that word's attention map over it, labelled.

    `attention` is T x h x w (one map per word of `tokens`, any resolution); maps are upsampled to the tile
    size and min-max normalised per word as the original did, so each tile shows where that word drew
    (a uniform map shows dark). Tiles wrap after `columns`.
    """
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 3 or attention.shape[0] < len(tokens):
        raise ValueError(f"attention must be T x h x w with T >= {len(tokens)}, got {attention.shape}")
    base = image.convert("RGB").resize((tile, tile), Image.BILINEAR)
    tiles: list[tuple[str, Image.Image]] = [("", base)]
    base_arr = np.asarray(base, dtype=np.float32)
    for i, word in enumerate(tokens):
        one = attention[i]
        spread = float(one.max() - one.min())
        one = (one - one.min()) / spread if spread > 1e-12 else np.zeros_like(one)
        amap = Image.fromarray(one.astype(np.float32), mode="F").resize((tile, tile), Image.BILINEAR)
        heat = heatmap(np.asarray(amap)).astype(np.float32)
        blended = (1 - alpha) * base_arr + alpha * heat
        tiles.append((word, Image.fromarray(blended.clip(0, 255).astype(np.uint8))))

    label_h = 18
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for n, (word, picture) in enumerate(tiles):
        x, y = (n % cols) * tile, (n // cols) * (tile + label_h)
        draw.text((x + 3, y + 3), word, fill="black", font=font)
        grid.paste(picture, (x, y + label_h))
    return grid


def save_palette_png(image: Image.Image, path: str | Path) -> Path:
    """Save as a 256-colour palette PNG: sample sheets are flat colours and heatmaps, so this is ~4x smaller than
    RGB and looks the same (what makes the committed pictures and the evaluation's samples.png small)."""
    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    return Path(path)
