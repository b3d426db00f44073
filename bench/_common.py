"""Shared helpers of the benchmarks: the machine, timing, tables, and writing a section of docs/benchmarks.md.

Every benchmark compares against a baseline measured in the same run on the same machine, so the
ratios mean something even on a shared, noisy 2-core box.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from the repo root, without an install
    sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks"
DOC_INTRO = ("Each section is written by its benchmark (`python bench/<name>.py`); ratios are against a baseline "
             "measured in the same run on the same machine.")

# Datasheet dense peaks (no sparsity), FLOP/s, for the "against the hardware's limit" column.
GPU_PEAKS = {  # name fragment: (bf16, fp32 non-tensor-core)
    "H200": (989e12, 67e12),
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L4": (121e12, 30e12),
    "A10G": (125e12, 31e12),
    "T4": (65e12, 8.1e12),
}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        m = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        return set(m.group(1).split()) if m else set()
    except OSError:
        return set()


def machine(device: str) -> dict[str, Any]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": cores, "isa": isa, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "device": device,
                            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(m: dict[str, Any]) -> str:
    where = f"GPU {m['gpu']}, " if "gpu" in m else ""
    isa = f" ({', '.join(m['isa'])})" if m.get("isa") else ""
    load = f", load average {m['load']:.1f} at start (shared machine)" if m.get("load") is not None else ""
    return (f"{where}CPU {m['cpu']}{isa}, {m['cores']} cores visible, torch {m['torch']}, "
            f"{m['threads']} intra-op threads{load}")


def gpu_peak(name: str, bf16: bool = True) -> float | None:
    for frag, (p16, p32) in GPU_PEAKS.items():
        if frag in name:
            return p16 if bf16 else p32
    return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, *, min_runs: int = 3, min_seconds: float = 1.0,
              max_runs: int = 200, warmup: int = 1) -> dict[str, float]:
    """Median / min seconds per call after `warmup` calls; runs until both min_runs and min_seconds are met."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "runs": len(times)}


def matmul_peak(device: str, dtype_name: str, n: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a large square matmul: the practical ceiling of this machine for this dtype."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_call(lambda: a @ b, device, min_runs=3, min_seconds=seconds)
    return 2 * n**3 / t["min"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: Path = DOC) -> Path:
    """Replace the `## {name}` section of docs/benchmarks.md (up to the next `## `), keeping the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.is_file() else f"{DOC_TITLE}\n\n{DOC_INTRO}\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\s*\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def today() -> str:
    return _dt.date.today().isoformat()


def ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base else "n/a"
