"""`attngan evaluate`: R-precision, FID/IS, caption faithfulness, complexity and pictures for a bundle."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure a model bundle on a data set's test split (metrics.json, report.md, PNGs)",
        description="Generate images from the test captions of --data with the bundle and measure R-precision "
                    "(DM-GAN protocol), FID/IS (Inception-v3 with --inception-weights, else a labelled DAMSM-FID), "
                    "caption faithfulness on synthetic birds, and model complexity. Writes metrics.json, report.md "
                    "and PNGs to --out. --images 30000 is the paper's protocol.",
    )
    p.add_argument("--bundle", required=True, help="model bundle directory (from `attngan export`)")
    p.add_argument("--data", required=True, help="data set directory (CUB layout, or synthetic birds)")
    p.add_argument("--out", required=True, help="output directory for metrics.json, report.md and PNGs")
    p.add_argument("--images", type=int, default=1000, help="generated images (default 1000; 30000 = paper protocol)")
    p.add_argument("--inception-weights", default="",
                   help="local torchvision-format Inception-v3 weights for FID and IS (without: DAMSM-FID only)")
    p.add_argument("--logs", action="append", default=[], metavar="RUN",
                   help="training run directory with TensorBoard event files, to plot curves; repeat it for runs "
                        "that ran one after another (e.g. the 64 px stage, then the run grown from it)")
    p.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=100, help="noise and caption-choice seed (default 100, the original's)")
    p.add_argument("--faithfulness", choices=["auto", "on", "off"], default="auto",
                   help="caption faithfulness (auto: when the data set has attributes.json; on: require it)")
    p.add_argument("--data-format", choices=["cub", "custom"], default="cub", help="layout of --data (default cub)")
    p.add_argument("--samples", type=int, default=6, help="test captions in the picture grid (default 6)")
    p.add_argument("--no-untrained", action="store_true",
                   help="skip the untrained-generator FID reference point (halves the generation time)")
    p.add_argument("--classifier-epochs", type=int, default=6, help="attribute judge training epochs")
    p.add_argument("--judge-renders", type=int, default=2000,
                   help="fresh synthetic renders added to the attribute classifier's training set (default 2000)")
    p.add_argument("--judge", default="", metavar="FILE",
                   help="reuse the attribute judge of another evaluation (its attribute_classifier.safetensors), so "
                        "two models are scored by the same judge; it must be for the same data and settings")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="generator precision: fp32 (reference) or bf16 autocast (the serving fast path)")
    p.add_argument("--candidates", type=int, default=1, metavar="N",
                   help="best of N per caption, ranked by the bundle's DAMSM encoders as `attngan generate "
                        "--candidates N` serves (default 1: the plain generator; N times the generation time; "
                        "R-precision then uses the ranking encoders twice and is marked so)")
    p.add_argument("--truncation", type=float, default=1.0, metavar="PSI",
                   help="noise drawn at PSI times its spread, 0..1, as `attngan generate --truncation PSI` serves "
                        "(default 1: the paper's sampling); the untrained baseline gets the same noise")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from trainer.evaluate.run import EvalOptions, evaluate, summary_line

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    opts = EvalOptions(bundle=Path(args.bundle), data=Path(args.data), out=Path(args.out), images=args.images,
                       inception_weights=args.inception_weights, logs=tuple(args.logs), batch_size=args.batch_size,
                       device=args.device, seed=args.seed, faithfulness=args.faithfulness,
                       data_format=args.data_format, samples=args.samples, untrained=not args.no_untrained,
                       classifier_epochs=args.classifier_epochs,
                       judge_renders=args.judge_renders, judge=args.judge, progress=not args.quiet,
                       precision=args.precision, candidates=args.candidates,
                       truncation=args.truncation)
    metrics = evaluate(opts)
    print(f"{summary_line(metrics)}\nwrote {opts.out / 'metrics.json'}, {opts.out / 'report.md'} "
          f"({metrics['protocol']['seconds']:.0f} s)")
    return 0
