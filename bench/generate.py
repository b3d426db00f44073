"""Generation benchmark: text encoder + generator, images/s and latency per image by batch size.

Baseline: fp32 eager under no_grad, as the original serves. Candidates: inference_mode + bf16 autocast,
+ channels-last, + torch.compile (CUDA graphs via mode="reduce-overhead" on GPU). Also checks that bf16
images match fp32 within a stated tolerance, and puts FLOPs per image x images/s against the machine's
measured matmul peak (and the datasheet peak on known GPUs).

    python bench/generate.py                 # CPU here, CUDA when there is one; writes docs/benchmarks.md
    python bench/generate.py --batch-sizes 1,4 --seconds 0.5 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import (
    describe,
    gpu_peak,
    machine,
    matmul_peak,
    md_table,
    ratio,
    time_call,
    today,
    write_section,
)

# A bf16 image "matches" fp32 when the mean absolute pixel difference is at most BF16_MEAN_ABS_TOL on the [-1, 1]
# scale (0.02 = 2.6 grey levels of 255) AND at most BF16_REL_TOL of the fp32 image's own mean absolute deviation
# (random-init generators draw nearly flat images, where an absolute bound alone would be meaningless).
BF16_MEAN_ABS_TOL = 0.02
BF16_REL_TOL = 0.05


def build_networks(bundle: str | None, device: str, seed: int = 0):
    """(text_encoder, generator, description): a trained bundle's weights, or the bird config at random init."""
    from attngan.model import Generator, ModelConfig, TextEncoder, init_weights

    if bundle:
        from attngan.bundle import load_bundle

        b = load_bundle(bundle)
        text_encoder, generator, _ = b.build_networks(device)
        return text_encoder, generator, b.config, f"bundle {b.path} ({b.version})"
    torch.manual_seed(seed)
    mc = ModelConfig(n_words=5450)  # bird_attn2.yml: GF_DIM 32, R_NUM 2, 3 stages, CUB vocabulary size
    text_encoder, generator = TextEncoder(mc.n_words), Generator(mc)
    generator.apply(init_weights)
    return text_encoder.to(device).eval(), generator.to(device).eval(), mc, "bird config, random init (orthogonal)"


def default_bundle() -> str | None:
    models = Path(__file__).resolve().parents[1] / "models"
    for manifest in sorted(models.glob("*/manifest.json")):
        return str(manifest.parent)
    return None


def make_inputs(mc, batch: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = mc.words_num
    lengths = torch.randint(max(1, t // 2), t + 1, (batch,), generator=g)
    captions = torch.randint(1, mc.n_words, (batch, t), generator=g)
    captions[torch.arange(t)[None, :] >= lengths[:, None]] = 0
    return {"captions": captions.to(device), "lengths": lengths, "z": torch.randn(batch, mc.z_dim, generator=g).to(device),
            "eps": torch.randn(batch, mc.condition_dim, generator=g).to(device)}


def make_runner(text_encoder, generator, *, bf16: bool, inference_mode: bool, compiled=None) -> Callable:
    gen = compiled or generator
    device_type = next(generator.parameters()).device.type

    def run(inp: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        grad_ctx = torch.inference_mode() if inference_mode else torch.no_grad()
        amp = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with grad_ctx, amp:  # the LSTM runs in fp32 either way (autocast keeps it), the generator in bf16
            words, sent = text_encoder(inp["captions"], inp["lengths"])
            mask = inp["captions"][:, : words.size(2)] == 0
            images, _, _, _ = gen(inp["z"], sent, words, mask, inp["eps"])
        return images

    return run


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    x, y = a[-1].float().cpu(), b[-1].float().cpu()
    diff = (x - y).abs()
    mse = float(((x - y) ** 2).mean())
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")  # peak-to-peak range 2 on [-1, 1]
    spread = float((x - x.mean()).abs().mean())
    rel = float(diff.mean()) / spread if spread > 0 else 0.0
    return {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "psnr_db": psnr, "relative": rel}


def flops_per_image(text_encoder, generator, mc, device: str) -> int:
    from trainer.evaluate.complexity import count_flops

    inp = make_inputs(mc, 1, device, seed=1)
    run = make_runner(text_encoder, generator, bf16=False, inference_mode=False)
    total, _ = count_flops(lambda: run(inp))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    p.add_argument("--batch-sizes", default="", help="comma list; default 1,4,16,64 on CPU, 1,4,16,64,256 on GPU")
    p.add_argument("--bundle", default="", help="a trained bundle (default: models/<first>, else random init)")
    p.add_argument("--random-init", action="store_true", help="ignore models/ and use random weights")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="try torch.compile (auto: on GPU only; on CPU the first compile takes minutes on 2 cores)")
    p.add_argument("--seconds", type=float, default=0, help="time per measurement (default 2 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default: torch's)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = p.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # serving.md §3: random-init weights hit the denormal slow path without it
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the baseline is true fp32, as the original
    sizes = [int(s) for s in (args.batch_sizes or ("1,4,16,64,256" if gpu else "1,4,16,64")).split(",")]
    seconds = args.seconds or (1.0 if gpu else 2.0)
    bundle = None if args.random_init else (args.bundle or default_bundle())
    use_compile = args.compile == "on" or (args.compile == "auto" and gpu)

    t_start = time.perf_counter()
    text_encoder, generator, mc, weights = build_networks(bundle, device)
    mach = machine(device)
    print(f"machine: {describe(mach)}\nweights: {weights}", flush=True)
    fpi = flops_per_image(text_encoder, generator, mc, device)
    print(f"FLOPs per image (text encoder + generator, all {mc.image_sizes[-1]} px stages): {fpi / 1e9:.2f} GFLOP")

    # Variants: (name, runner factory). channels-last converts the generator's weights in place, so order matters.
    variants: list[tuple[str, Callable[[], Callable]]] = [
        ("fp32 eager (baseline)", lambda: make_runner(text_encoder, generator, bf16=False, inference_mode=False)),
        ("fp32 inference_mode", lambda: make_runner(text_encoder, generator, bf16=False, inference_mode=True)),
        ("bf16 autocast", lambda: make_runner(text_encoder, generator, bf16=True, inference_mode=True)),
    ]

    def channels_last_runner() -> Callable:
        generator.to(memory_format=torch.channels_last)
        return make_runner(text_encoder, generator, bf16=True, inference_mode=True)

    variants.append(("bf16 + channels-last", channels_last_runner))
    if use_compile:
        def compiled_runner() -> Callable:
            mode = "reduce-overhead" if gpu else "default"  # reduce-overhead = CUDA graphs
            return make_runner(text_encoder, generator, bf16=True, inference_mode=False,
                               compiled=torch.compile(generator, mode=mode, dynamic=False))

        variants.append(("bf16 + channels-last + compile" + (" (CUDA graphs)" if gpu else ""), compiled_runner))

    # Quality: bf16 (and the fast paths) against fp32 on the same inputs.
    check_inp = make_inputs(mc, 8, device, seed=123)
    ref_images = variants[0][1]()(check_inp)

    results: dict[str, dict[int, dict[str, float]]] = {}
    quality: dict[str, dict[str, float]] = {}
    for name, factory in variants:
        try:
            run = factory()
            if name != variants[0][0]:
                quality[name] = compare(ref_images, run(check_inp))
            results[name] = {}
            for b in sizes:
                inp = make_inputs(mc, b, device, seed=b)
                warm = 3 if "compile" in name else 1
                t = time_call(lambda run=run, inp=inp: run(inp), device, min_seconds=seconds, warmup=warm)
                results[name][b] = {"latency_ms": 1000 * t["median"], "per_image_ms": 1000 * t["median"] / b,
                                    "images_per_s": b / t["median"], "runs": t["runs"]}
                print(f"  {name:40s} batch {b:4d}: {b / t['median']:9.1f} img/s, "
                      f"{1000 * t['median'] / b:8.2f} ms/image ({t['runs']} runs)", flush=True)
        except Exception as exc:  # noqa: BLE001 - a path this torch/machine can't run is reported, not fatal
            print(f"  {name}: not available here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            results.pop(name, None)
    generator.to(memory_format=torch.contiguous_format)

    base = results[variants[0][0]]
    rows = []
    for name, per_b in results.items():
        for b, r in per_b.items():
            q = quality.get(name)
            qtxt = f"{q['mean_abs']:.4f} / {100 * q['relative']:.2f}%" if q else "reference"
            rows.append([name, b, f"{r['images_per_s']:.1f}", f"{r['per_image_ms']:.2f}", f"{r['latency_ms']:.1f}",
                         ratio(r["images_per_s"], base[b]["images_per_s"]), qtxt])
    table = md_table(["path", "batch", "images/s", "ms/image", "batch latency ms", "vs baseline",
                      "vs fp32: mean abs diff / relative"], rows)

    # Best of each dtype against the limit.
    peaks = {"fp32": matmul_peak(device, "fp32"), "bf16": matmul_peak(device, "bf16")}
    best_name, best_b, best = max(((n, b, r) for n, pb in results.items() for b, r in pb.items()),
                                  key=lambda x: x[2]["images_per_s"])
    base_best_b = max(base, key=lambda b: base[b]["images_per_s"])
    lim_rows = []
    for label, n, b, r, dt in (("baseline best", variants[0][0], base_best_b, base[base_best_b], "fp32"),
                               ("overall best", best_name, best_b, best, "fp32" if "fp32" in best_name else "bf16")):
        achieved = fpi * r["images_per_s"]
        sheet = gpu_peak(mach.get("gpu", ""), dt == "bf16") if gpu else None
        lim_rows.append([label, f"{n} @ {b}", f"{r['images_per_s']:.1f}", f"{achieved / 1e12:.3f}",
                         f"{100 * achieved / peaks[dt]:.1f}% of {peaks[dt] / 1e12:.2f} ({dt} matmul, measured)",
                         f"{100 * achieved / sheet:.1f}% of {sheet / 1e12:.0f}" if sheet else "n/a"])
    lim_table = md_table(["", "path @ batch", "images/s", "achieved TFLOP/s", "vs measured peak", "vs datasheet peak"],
                         lim_rows)
    bf16_ok = {n: q["mean_abs"] <= BF16_MEAN_ABS_TOL and q["relative"] <= BF16_REL_TOL for n, q in quality.items()}
    speedup = best["images_per_s"] / base[base_best_b]["images_per_s"]
    print("\n" + table + "\n\n" + lim_table)
    print(f"\nbest: {best_name} at batch {best_b}: {best['images_per_s']:.1f} images/s, "
          f"{speedup:.2f}x the best fp32 eager; bf16 within tolerance: {bf16_ok}")

    wall = time.perf_counter() - t_start
    body = f"""Measured {today()} with `python bench/generate.py` ({wall:.0f} s).
Machine: {describe(mach)}. Weights: {weights}. Caption length: random in [{mc.words_num // 2}, {mc.words_num}].
FLOPs per image (text encoder + all generator stages, multiply-add = 2): {fpi / 1e9:.2f} GFLOP.

{table}

{lim_table}

Best: **{best_name}** at batch {best_b}: {best['images_per_s']:.1f} images/s, **{speedup:.2f}x** the best fp32 eager.
bf16 matches fp32 when the mean absolute pixel difference of the 256 px images is at most {BF16_MEAN_ABS_TOL} on the
[-1, 1] scale and at most {100 * BF16_REL_TOL:.0f}% of the fp32 image's mean absolute deviation: {", ".join(f"{n}: {'yes' if ok else 'NO'}" for n, ok in bf16_ok.items())}.
"""
    if not gpu:
        body += ("\nNo GPU was available for this run; the GPU targets (>= 5,000 images/s at 256 px, >= 5x fp32 eager) "
                 "are unmeasured. Run `python bench/generate.py` on a CUDA machine to fill them in.\n")
    if not args.no_write:
        print(f"wrote section 'Generation' of {write_section('Generation', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
