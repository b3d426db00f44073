"""`attngan data synth | check | preview`: make, validate and look at a data set."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="make synthetic birds, check or preview a data set",
                                 description="Make, validate and look at text-image data sets (CUB layout).")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(data))
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    synth = sub.add_parser("synth", help="draw synthetic birds with captions, in the CUB layout")
    synth.add_argument("--out", required=True, type=Path, help="new (or empty) output directory")
    synth.add_argument("--images", type=int, default=2000, help="number of images (default 2000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--classes", type=int, default=None,
                       help="number of species (default: about one per 25 images, 2..200)")
    synth.set_defaults(func=_synth)

    check = sub.add_parser("check", help="validate a data set and print a one-line summary")
    check.add_argument("data_dir", type=Path, help="data directory (CUB layout, or custom with --format custom)")
    check.add_argument("--format", choices=["cub", "custom"], default="cub", help="layout (default cub)")
    check.add_argument("--captions-per-image", type=int, default=10, help="TEXT.CAPTIONS_PER_IMAGE (default 10)")
    check.set_defaults(func=_check)

    preview = sub.add_parser("preview", help="save a grid of images with their first caption")
    preview.add_argument("data_dir", type=Path, help="CUB-layout data directory")
    preview.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    preview.add_argument("-n", type=int, default=12, help="number of images (default 12)")
    preview.set_defaults(func=_preview)


def _synth(args: argparse.Namespace) -> int:
    from trainer.data.synth import synthesize

    synthesize(args.out, args.images, args.seed, size=args.size, n_classes=args.classes, progress=True)
    return 0


def check_dataset(data_dir: Path, data_format: str = "cub", captions_per_image: int = 10) -> str:
    """Load both splits, open every image, and return the one-line summary."""
    from PIL import Image

    from attngan.config import Config
    from attngan.errors import AttnGANError
    from trainer.data.dataset import load_records

    cfg = Config()
    cfg.DATA_FORMAT = data_format
    cfg.TEXT.CAPTIONS_PER_IMAGE = captions_per_image
    splits = {s: load_records(data_dir, s, cfg) for s in ("train", "test")}
    for records in splits.values():
        for path in records.image_paths:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
                raise AttnGANError(f"cannot read image {path}: {exc}") from None
        for key, caps in zip(records.keys, records.captions):
            if not caps or not any(caps):
                raise AttnGANError(f"image {key} has no captions with words")
    train, test = splits["train"], splits["test"]
    overlap = set(train.class_ids) & set(test.class_ids)
    n_caps = sum(len(c) for r in splits.values() for c in r.captions)
    return (f"{data_dir}: {len(train) + len(test)} images ({len(train)} train / {len(test)} test), "
            f"{n_caps} captions, {len(train.vocab)} words, {len(set(train.class_ids))} train / "
            f"{len(set(test.class_ids))} test classes"
            + (f" ({len(overlap)} shared)" if overlap else " (disjoint)") + ", OK")


def _check(args: argparse.Namespace) -> int:
    print(check_dataset(args.data_dir, args.format, args.captions_per_image))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from trainer.data.synth import preview_grid

    print(preview_grid(args.data_dir, args.out, n=args.n))
    return 0
