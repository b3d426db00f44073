"""The README pictures of the default model: docs/default_samples.png and docs/challenge_caption.png.

Each row: the caption, the 64/128/256 px images, then the per-word attention maps of the last stage (the
challenge picture shows both maps: map1 = 64->128 stage, map2 = 128->256 stage). Same seed, same picture.

    .venv/bin/python models/make_pictures.py [--bundle models/default] [--docs docs]
    .venv/bin/python models/make_pictures.py --bundle DIR --grid docs/first_hour_samples.png --title "..."
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Held-out-style captions (names of parts and colours from the synthetic birds' vocabulary).
SAMPLE_CAPTIONS = [
    "this bird has a red crown, a blue breast and green wings",
    "a small bird with a yellow breast, a black crown and a short orange bill",
    "this bird is mostly white with black wings and a long pointed bill",
    "the bird has a purple back, a pink belly and a brown tail",
    "a bird with a blue crown, an orange throat and grey wings",
    "this bird has a green breast, a yellow belly and a red nape",
]
CHALLENGE_CAPTION = "the bird has a yellow crown and a black eyering that is round"
TILE = 128


def _caption_band(text: str, width: int, height: int = 22) -> Image.Image:
    band = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(band).text((4, 5), text, fill="black", font=ImageFont.load_default())
    return band


def _row(t2i, caption: str, seed: int, maps: list[int]) -> Image.Image:
    from attngan.render import attention_grid

    result = t2i.generate([t2i.prepare(caption)], [seed])[0]
    stages = [im.resize((TILE, TILE), Image.NEAREST if im.width < TILE else Image.BILINEAR) for im in result.images]
    parts = list(stages)
    for k in maps:
        over = result.images[min(k + 1, len(result.images) - 1)]  # the stage this attention fed
        parts.append(attention_grid(over, result.attention[k], result.tokens, tile=TILE // 2, columns=9))
    width = sum(p.width for p in parts) + 4 * (len(parts) - 1)
    height = max(p.height for p in parts)
    body = Image.new("RGB", (width, height), "white")
    x = 0
    for p in parts:
        body.paste(p, (x, 0))
        x += p.width + 4
    label = f'"{caption}"  (seed {seed}; words used: {" ".join(result.tokens)})'
    out = Image.new("RGB", (width, height + 22), "white")
    out.paste(_caption_band(label, width), (0, 0))
    out.paste(body, (0, 22))
    return out


def _stack(rows: list[Image.Image], title: str) -> Image.Image:
    width = max(r.width for r in rows)
    head = _caption_band(title, width, 26)
    sheet = Image.new("RGB", (width, head.height + sum(r.height + 8 for r in rows)), "white")
    sheet.paste(head, (0, 0))
    y = head.height
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 8
    return sheet


def sample_grid(t2i, captions: list[str], seeds: int, first_seed: int, title: str) -> Image.Image:
    """A caption per row, `seeds` birds per caption (256 px images shown at 128 px): many birds at a glance."""
    results = t2i.generate([t2i.prepare(c) for c in captions for _ in range(seeds)],
                           [first_seed + k for _ in captions for k in range(seeds)])
    rows = []
    for i, caption in enumerate(captions):
        body = Image.new("RGB", (seeds * (TILE + 4) - 4, TILE), "white")
        for k in range(seeds):
            body.paste(results[i * seeds + k].images[-1].resize((TILE, TILE), Image.BILINEAR), (k * (TILE + 4), 0))
        row = Image.new("RGB", (body.width, TILE + 22), "white")
        row.paste(_caption_band(f'"{caption}"', body.width), (0, 0))
        row.paste(body, (0, 22))
        rows.append(row)
    return _stack(rows, title)


def main() -> None:
    from attngan.pipeline import TextToImage
    from attngan.render import save_palette_png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--grid", metavar="PNG", help="instead: only a grid of the sample captions x 4 seeds")
    parser.add_argument("--title", default="", help="the grid's title (default: the bundle's version)")
    parser.add_argument("--truncation", type=float, default=1.0,
                        help="the noise's spread, as `attngan generate --truncation` (default 1)")
    args = parser.parse_args()
    t2i = TextToImage.from_bundle(args.bundle, precision="fp32", truncation=args.truncation)
    if args.grid:
        title = args.title or f"model {t2i.version}: 256 px images, seeds {args.seed}-{args.seed + 3}"
        save_palette_png(sample_grid(t2i, [*SAMPLE_CAPTIONS, CHALLENGE_CAPTION], 4, args.seed, title), args.grid)
        print(f"wrote {args.grid}")
        return
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    last = t2i.config.branch_num - 2  # index of the last attention map (the stage that draws the largest image)
    rows = [_row(t2i, c, args.seed + i, [last]) for i, c in enumerate(SAMPLE_CAPTIONS)]
    title = (f"default model {t2i.version}: caption -> 64 / 128 / 256 px images and the 256 px stage's "
             "per-word attention")
    save_palette_png(_stack(rows, title), docs / "default_samples.png")
    challenge = [_row(t2i, CHALLENGE_CAPTION, args.seed + i, [0, 1]) for i in range(3)]
    save_palette_png(_stack(challenge, f"default model {t2i.version}: the challenge caption, three seeds; "
                                       "64/128/256 px, then attention map1 (128 px stage) and map2 (256 px stage)"),
                     docs / "challenge_caption.png")
    print(f"wrote {docs / 'default_samples.png'} and {docs / 'challenge_caption.png'}")


if __name__ == "__main__":
    main()
