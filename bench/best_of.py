"""Best-of-N benchmark: what `candidates=N` (attngan generate --candidates, the service's CANDIDATES) costs per
caption against the plain generator (N = 1), measured in the same run with the default bundle.

Each caption is drawn N times in one batched pass, and the DAMSM image encoder (fp32) scores every draw. What it
buys is measured by `attngan evaluate --candidates N` (models/README.md, "Best of N").

    python bench/best_of.py                # writes the 'Best of N' section of docs/benchmarks.md
    python bench/best_of.py --no-write --seconds 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import describe, machine, md_table, ratio, time_call, today, write_section

REPO = Path(__file__).resolve().parents[1]
CAPTION = "the bird has a yellow crown and a black eyering that is round"


def main(argv: list[str] | None = None) -> int:
    from attngan.bundle import load_bundle
    from attngan.commands import default_bundle_path
    from attngan.pipeline import TextToImage

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(default_bundle_path()), help="model bundle (default: the shipped one)")
    p.add_argument("--candidates", default="1,2,4,8", help="N values; 1 is the baseline")
    p.add_argument("--batch-sizes", default="1,4", help="captions per call")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    counts = sorted({1, *(int(n) for n in args.candidates.split(","))})
    batches = [int(b) for b in args.batch_sizes.split(",")]
    mach = machine("cpu")
    print(f"machine: {describe(mach)}", flush=True)
    t_start = time.perf_counter()
    bundle = load_bundle(args.bundle)
    rows = []
    for batch in batches:
        base = None
        for n in counts:
            t2i = TextToImage(bundle, precision=args.precision, candidates=n)
            captions = [t2i.prepare(CAPTION)] * batch
            seeds = list(range(batch))
            per_call = time_call(lambda t2i=t2i, captions=captions, seeds=seeds: t2i.generate(captions, seeds), "cpu",
                                 min_seconds=args.seconds)["median"]
            base = base or per_call
            rows.append([batch, n, t2i.precision, f"{1000 * per_call:.1f}", f"{1000 * per_call / batch:.1f}",
                         ratio(per_call, base)])
            print(f"  {batch} caption(s), best of {n}: {1000 * per_call:8.1f} ms per call", flush=True)
    table = md_table(["captions per call", "N", "precision", "ms per call", "ms per caption",
                      "time vs N = 1"], rows)
    print("\n" + table)
    shown = Path(bundle.path).resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    body = f"""Measured {today()} with `python bench/best_of.py` ({time.perf_counter() - t_start:.0f} s), bundle
`{shown}` ({bundle.version}). Machine: {describe(mach)}. `TextToImage.generate` with `candidates=N`: N draws
per caption in one batched pass plus the DAMSM image encoder on each; baseline N = 1 (the plain generator), same
run. Ratios above N also come from batching: N draws of one caption are a batch of N, whose per-image cost differs
from a batch of one; on this shared 2-core machine they vary by up to ~1.5x between runs. Quality per N:
models/README.md, "Best of N".

{table}
"""
    if not args.no_write:
        print(f"wrote section 'Best of N' of {write_section('Best of N', body)}")
    return 0


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    sys.exit(main())
