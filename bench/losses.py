"""DAMSM word-loss benchmark: `trainer.losses.words_loss` (forward + backward) against the contexts formulation it
replaced, measured in the same run at the shapes the shipped configs train with.

The baseline forms every word's region context for every caption/image pair (B x B x D x T) and takes
F.cosine_similarity over D, as the original does per caption; the shipped loss gets the same cosines from the
attention's raw logits and each image's R x R Gram matrix. Both are checked to agree before timing.

    python bench/losses.py              # writes the 'Losses' section of docs/benchmarks.md
    python bench/losses.py --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F
from _common import describe, machine, md_table, ratio, sync, time_call, today, write_section

# name: (batch, embedding dim D, words T, regions R) as the configs train them
SHAPES = {
    "default DAMSM (damsm.yml, small encoder 7x7)": (48, 128, 36, 49),
    "default GAN stage 1 (gan_64.yml)": (32, 128, 36, 49),
    "default GAN stage 2 (gan.yml)": (8, 128, 36, 49),
    "bird DAMSM (DAMSM/bird.yml, Inception 17x17)": (48, 256, 18, 289),
    "bird GAN (bird_attn2.yml)": (20, 256, 18, 289),
}


def contexts_cosine(words: torch.Tensor, regions: torch.Tensor, gamma1: float, pad: torch.Tensor) -> torch.Tensor:
    """The previous formulation: the B x B x D x T region contexts, then a cosine over D (index [j, i, t])."""
    batch, dim, n_regions = regions.shape
    steps = words.size(2)
    flat = regions.transpose(1, 2).reshape(batch * n_regions, dim) @ words.permute(1, 0, 2).reshape(dim, batch * steps)
    logits = flat.view(batch, n_regions, batch, steps).permute(0, 2, 1, 3).masked_fill(pad[None, :, None, :], -torch.inf)
    attn = torch.softmax(logits, dim=-1)
    attn = torch.softmax(attn.transpose(-1, -2) * gamma1, dim=-1)
    context = torch.bmm(regions, attn.reshape(batch, batch * steps, n_regions).transpose(1, 2))
    context = context.view(batch, dim, batch, steps).permute(0, 2, 1, 3)
    return F.cosine_similarity(words[None].expand_as(context), context, dim=2, eps=1e-8)


def words_loss_with(cosine, regions, words, lengths, gamma1=4.0, gamma2=5.0, gamma3=10.0):
    """words_loss's tail (logsumexp over words, both cross-entropies) on the given cosine function."""
    steps = words.size(2)
    pad = torch.arange(steps)[None, :] >= lengths[:, None]
    cos = cosine(words, regions, gamma1, pad)
    sim = torch.logsumexp((cos * gamma2).masked_fill(pad[None], -torch.inf), dim=2) * gamma3
    labels = torch.arange(words.size(0))
    return F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)


def main(argv: list[str] | None = None) -> int:
    from trainer.losses import words_loss

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    mach = machine("cpu")
    print(f"machine: {describe(mach)}", flush=True)
    t_start = time.perf_counter()
    rows = []
    for name, (batch, dim, steps, n_regions) in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        side = int(n_regions ** 0.5)
        regions = torch.randn(batch, dim, side, side, generator=gen).requires_grad_(True)
        words = torch.randn(batch, dim, steps, generator=gen).requires_grad_(True)
        lengths = torch.randint(steps // 3, steps + 1, (batch,), generator=gen)

        def baseline(regions=regions, words=words, lengths=lengths) -> torch.Tensor:
            return words_loss_with(contexts_cosine, regions.flatten(2), words, lengths)

        def shipped(regions=regions, words=words, lengths=lengths) -> torch.Tensor:
            loss0, loss1, _ = words_loss(regions, words, lengths, None, 4.0, 5.0, 10.0)
            return loss0 + loss1

        diff = abs(baseline().item() - shipped().item())
        if diff > 1e-4 * max(1.0, abs(baseline().item())):
            raise SystemExit(f"{name}: the shipped loss differs from the baseline by {diff}")
        times = {}
        for label, fn in (("baseline", baseline), ("shipped", shipped)):
            def step(fn=fn, inputs=(regions, words)) -> None:
                for x in inputs:
                    x.grad = None
                fn().backward()
            times[label] = time_call(step, "cpu", min_runs=3, min_seconds=args.seconds, warmup=1)["median"]
            sync("cpu")
        rows.append([name, f"{batch} x {dim} x {steps} x {n_regions}", f"{1000 * times['baseline']:.1f}",
                     f"{1000 * times['shipped']:.1f}", ratio(1 / times["shipped"], 1 / times["baseline"]),
                     f"{diff:.1e}"])
        print(f"  {name:48s} baseline {1000 * times['baseline']:8.1f} ms  shipped {1000 * times['shipped']:8.1f} ms",
              flush=True)
    table = md_table(["shape", "B x D x T x R", "contexts + cosine (ms)", "shipped (ms)", "speed-up",
                      "loss difference"], rows)
    print("\n" + table)
    body = f"""Measured {today()} with `python bench/losses.py` ({time.perf_counter() - t_start:.0f} s).
Machine: {describe(mach)}. The DAMSM word loss (both directions), forward + backward, fp32 as the trainer runs it, on
random regions and words at the shapes the configs train with. Baseline: the region context of every word for
every caption/image pair (B x B x D x T) and a cosine over D, the formulation the loss had until 2026-12-03;
shipped: the same cosines from the attention's raw logits and each image's R x R Gram matrix (`trainer/losses.py`).

{table}
"""
    if not args.no_write:
        print(f"wrote section 'Losses' of {write_section('Losses', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
