"""Model complexity: parameters, FLOPs per image per scale, bundle size on disk, CPU latency.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmul/conv/bmm ops, a multiply-add
counts 2; element-wise ops such as BatchNorm, GLU and softmax are not counted, as usual for
published FLOP figures).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of `fn`, and FLOPs per module path (e.g. "Generator.h_net2")."""
    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def lstm_flops(lstm: nn.LSTM, seq_len: int, batch: int = 1) -> int:
    """Multiply-add FLOPs of an LSTM over `seq_len` steps: per step, layer and direction the four gates cost
    2 * 4H * (I + H) (FlopCounterMode does not see inside the fused CPU LSTM kernel)."""
    dirs = 2 if lstm.bidirectional else 1
    total = 0
    for layer in range(lstm.num_layers):
        inp = lstm.input_size if layer == 0 else lstm.hidden_size * dirs
        total += dirs * 2 * 4 * lstm.hidden_size * (inp + lstm.hidden_size)
    return total * seq_len * batch


def child_flops(per_module: dict[str, int], root: str) -> dict[str, int]:
    """FLOPs of the direct children of module path `root` (e.g. Generator -> ca_net, h_net1, ...)."""
    prefix = root + "."
    return {name[len(prefix):]: flops for name, flops in per_module.items()
            if name.startswith(prefix) and "." not in name[len(prefix):]}


def flops_per_scale(children: dict[str, int], sizes: list[int]) -> dict[str, int]:
    """Cumulative FLOPs to produce the image at each scale from the generator's children.

    Children named `*1` (h_net1, img_net1) belong to stage 1, `*2` to stage 2, ...; unnumbered ones
    (ca_net) run before stage 1. The 128 px image needs stages 1 and 2, and so on. A DCGAN generator
    (one output) reports only its largest size.
    """
    stage = {i: 0 for i in range(1, len(sizes) + 1)}
    common = 0
    for name, flops in children.items():
        m = re.search(r"(\d+)$", name)
        if m and int(m.group(1)) in stage:
            stage[int(m.group(1))] += flops
        else:
            common += flops
    out, running = {}, common
    for i, size in enumerate(sizes, start=1):
        running += stage[i]
        out[str(size)] = running
    return out


def dir_size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def median_latency_ms(fn: Callable[[], Any], runs: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median / min wall time of `fn` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
