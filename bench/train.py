"""Training benchmark: DAMSM and GAN iterations per second, fp32 against the fast path.

The steps are the trainer's (trainer/damsm.py and trainer/gan.py: the same networks, the same
`trainer.losses` functions, the same order of D and G updates, Adam(0.5, 0.999), grad clipping, EMA) on
synthetic batches, so data loading is not in the timing. Loader throughput is measured separately
against the step rate ("does data loading keep up").

Fast path: bf16 autocast + channels-last + fused Adam (the trainer's TRAIN.AMP / TRAIN.CHANNELS_LAST). On CPU the
trainer keeps the generator NCHW (its BatchNorm backward is slow with channels-last inputs and the NCHW gradients
F.glu gives it), so the GAN is measured both ways: every net channels-last, and the trainer's CPU layout.

    python bench/train.py                       # synth, default and bird configs; writes docs/benchmarks.md
    python bench/train.py --configs default,default64 --no-write
    python bench/train.py --configs default64_plain,default64 --no-write   # what word attention at 64 px costs
    python bench/train.py --configs default64_unread,default64 --no-write  # what reading the birds back costs
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import ROOT, describe, machine, matmul_peak, md_table, ratio, time_call, today, write_section
from torch.utils.flop_counter import FlopCounterMode

CFG = ROOT / "trainer/cfg"
CONFIGS = {  # name: (DAMSM config, GAN config)
    "synth": (CFG / "synth/damsm.yml", CFG / "synth/gan.yml"),
    "default": (CFG / "default/damsm.yml", CFG / "default/gan.yml"),  # the default model's three-stage GAN
    "default64": (CFG / "default/damsm.yml", CFG / "default/gan_64.yml"),  # ... and its 64 px stage 1
    "bird": (CFG / "DAMSM/bird.yml", CFG / "bird_attn2.yml"),
}
VARIANTS = {  # name: (config it varies, GAN overrides); its GAN rate is also printed against that config's
    "default64_plain": ("default64", ["GAN.WORD_ATTN_64=false"]),  # stage 1 without its word attention at 64 px
    # stage 1 without the backbones that read its birds back (what the part and detail losses cost)
    "default64_unread": ("default64", ["TRAIN.PART_LOSS=0", "TRAIN.DETAIL_LOSS=0"]),
    # stage 1 with DiffAugment's shifts in front of every discriminator call (TRAIN.D_AUGMENT)
    "default64_augment": ("default64", ["TRAIN.D_AUGMENT=translation"]),
    # the three stages with a PatchGAN on the 256 px image beside the stages' Ds (TRAIN.PATCH_D_LOSS)
    "default_patch": ("default", ["TRAIN.PATCH_D_LOSS=2"]),
    # the head stage (trainer/cfg/default/gan_head.yml): a PatchGAN on 64 px crops of the head (TRAIN.HEAD_D_LOSS)
    "default_head": ("default", ["TRAIN.HEAD_D_LOSS=2"]),
    # the same crops judged with and without the caption (TRAIN.HEAD_D_CONDITIONAL)
    "default_head_cond": ("default", ["TRAIN.HEAD_D_LOSS=2", "TRAIN.HEAD_D_CONDITIONAL=true"]),
    # ... with the caption's words instead of its sentence vector (TRAIN.HEAD_D_WORDS)
    "default_head_words": ("default", ["TRAIN.HEAD_D_LOSS=2", "TRAIN.HEAD_D_CONDITIONAL=true",
                                       "TRAIN.HEAD_D_WORDS=true"]),
}
DETAIL_SIZE = 128  # the recipe's detail backbone reads at 128 px (`attngan train backbone --size 128 --pool attention`)


@dataclass
class Setting:
    name: str
    bf16: bool
    channels_last: bool  # the image encoder and discriminators (and the generator unless generator_nchw)
    fused: bool
    generator_nchw: bool = False  # GAN only


SETTINGS = [Setting("fp32 (baseline)", False, False, False),
            Setting("bf16 + channels-last + fused Adam", True, True, True),
            Setting("bf16 + channels-last, G NCHW + fused Adam", True, True, True, generator_nchw=True)]


def load_cfgs(name: str, scratch: Path):
    """-> (DAMSM config path, DAMSM config, GAN config) of a config or variant name. A DAMSM trained over an image
    backbone file that is not there (a fresh checkout) gets an untrained one of the same shape in `scratch`."""
    from attngan.config import load_config

    base, overrides = VARIANTS.get(name, (name, []))
    if base not in CONFIGS:
        raise SystemExit(f"unknown config {name!r}; choose from {', '.join([*CONFIGS, *VARIANTS])}")
    damsm, gan = CONFIGS[base]
    damsm_cfg = load_config(damsm)
    if damsm_cfg.TRAIN.IMAGE_BACKBONE and not Path(damsm_cfg.TRAIN.IMAGE_BACKBONE).is_file():
        path = scratch / f"{damsm.parent.name}_{damsm.stem}_backbone.safetensors"  # one per DAMSM config
        if not path.is_file():
            untrained_backbone(path, damsm_cfg.IMAGE_ENCODER_SIZE)
        damsm_cfg = load_config(damsm, [f"TRAIN.IMAGE_BACKBONE={path}"])
    return damsm, damsm_cfg, load_config(gan, overrides)


def untrained_backbone(out: Path, size: int) -> Path:
    """A backbone file with random weights and every part's head kept: its cost is that of a trained one."""
    from trainer.backbone import BACKBONE_FORMAT, PartHeads, save_backbone
    from trainer.data.synth import ATTRIBUTE_VALUES

    meta = {"format": BACKBONE_FORMAT, "version": 1, "size": size, "parts": ATTRIBUTE_VALUES,
            "pool": "mean", "held_out_per_part": dict.fromkeys(ATTRIBUTE_VALUES, 1.0)}
    return save_backbone(PartHeads(ATTRIBUTE_VALUES, size), meta, out)


def fake_batch(cfg, n_words: int, batch: int, sizes: list[int], device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = cfg.TEXT.WORDS_NUM
    lengths = torch.sort(torch.randint(t // 2, t + 1, (batch,), generator=g), descending=True).values
    captions = torch.randint(1, n_words, (batch, t), generator=g)
    captions[torch.arange(t)[None, :] >= lengths[:, None]] = 0
    images = [torch.rand(batch, 3, s, s, generator=g).mul(2).sub(1).to(device) for s in sizes]
    class_ids = torch.arange(batch)  # all different: no same-class masking
    return captions.to(device), lengths.to(device), images, class_ids.to(device)


def amp(device: str, on: bool):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def adam(params, lr: float, fused: bool) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), fused=fused or None)
    except (RuntimeError, TypeError):  # fused not supported for this device/torch
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def damsm_step_fn(cfg, s: Setting, device: str, batch: int, n_words: int) -> Callable[[], None]:
    from trainer import losses
    from trainer.damsm import build_encoders

    text, image = build_encoders(cfg, n_words)
    text.to(device).train()
    image.to(device).train()
    if s.channels_last:
        image.to(memory_format=torch.channels_last)
    params = [p for p in list(text.parameters()) + list(image.parameters()) if p.requires_grad]
    opt = adam(params, cfg.TRAIN.ENCODER_LR, s.fused)
    size = cfg.TREE.BASE_SIZE * 2 ** (cfg.TREE.BRANCH_NUM - 1)
    captions, lengths, images, class_ids = fake_batch(cfg, n_words, batch, [size], device)
    img = images[-1].contiguous(memory_format=torch.channels_last) if s.channels_last else images[-1]
    g = cfg.TRAIN.SMOOTH

    def step() -> None:
        with amp(device, s.bf16):
            words, sent = text(captions, lengths)
            regions, code = image(img)
        w0, w1, _ = losses.words_loss(regions, words, lengths, class_ids, g.GAMMA1, g.GAMMA2, g.GAMMA3)
        s0, s1 = losses.sent_loss(code, sent, class_ids, g.GAMMA3)
        loss = w0 + w1 + s0 + s1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(text.parameters(), cfg.TRAIN.RNN_GRAD_CLIP)
        opt.step()

    return step


def gan_step_fn(cfg, s: Setting, device: str, batch: int, n_words: int) -> Callable[[], None]:
    from attngan.model import (
        Generator,
        ImageEncoder,
        ModelConfig,
        PatchDiscriminator,
        TextEncoder,
        build_discriminators,
        init_weights,
    )
    from trainer import losses
    from trainer.augment import policy
    from trainer.backbone import PartHeads, PartReader
    from trainer.data.synth import ATTRIBUTE_VALUES
    from trainer.gan import (
        build_head_discriminator,
        crop_heads,
        generated_heads,
        head_condition,
        head_discriminator_loss,
        head_generator_loss,
    )

    mc = ModelConfig.from_config(cfg, n_words)
    text = TextEncoder(n_words, nhidden=mc.embedding_dim).to(device).eval().requires_grad_(False)
    image = ImageEncoder(mc.embedding_dim, kind=mc.image_encoder, input_size=mc.image_encoder_size)
    image = image.to(device).eval().requires_grad_(False)
    netG = Generator(mc)
    netG.apply(init_weights)
    netsD = build_discriminators(mc)
    stage_ds = netsD[: len(mc.image_sizes)]
    patch = PatchDiscriminator(2 * mc.df_dim) if cfg.TRAIN.PATCH_D_LOSS else None  # reads the last stage's image
    head = build_head_discriminator(cfg, mc)  # reads its heads, as the trainer
    netsD += [d for d in (patch, head) if d is not None]
    for d in netsD:
        d.apply(init_weights)
    nets = [netG.to(device), *[d.to(device) for d in netsD]]
    # the recipe's readers of the generated birds with a head for every part (random weights: their cost is what
    # is measured); the trainer keeps those right on >= 90% of renders (10-12 of 15), heads cost little next to
    # the trunk passes
    reader = PartReader(ATTRIBUTE_VALUES, image.emb_cnn_code.in_features) if cfg.TRAIN.PART_LOSS else None
    detail = PartHeads(ATTRIBUTE_VALUES, DETAIL_SIZE, "attention") if cfg.TRAIN.DETAIL_LOSS else None
    for r in (reader, detail):
        if r is not None:
            r.to(device).eval().requires_grad_(False)
    labels = torch.stack([torch.randint(len(v), (batch,)) for v in ATTRIBUTE_VALUES.values()], 1).to(device)
    if s.channels_last:
        for n in [image, *(nets[1:] if s.generator_nchw else nets), *([detail] if detail is not None else [])]:
            n.to(memory_format=torch.channels_last)
    optG = adam(netG.parameters(), cfg.TRAIN.GENERATOR_LR, s.fused)
    optsD = [adam(d.parameters(), cfg.TRAIN.DISCRIMINATOR_LR, s.fused) for d in netsD]
    ema = [(p.detach().clone(), p) for p in netG.parameters()]
    captions, lengths, reals, class_ids = fake_batch(cfg, n_words, batch, mc.image_sizes, device)
    if s.channels_last:
        reals = [r.contiguous(memory_format=torch.channels_last) for r in reals]
    g = cfg.TRAIN.SMOOTH
    augment = policy(cfg.TRAIN.D_AUGMENT)

    def step() -> None:
        with torch.no_grad():
            words, sent = text(captions, lengths)
        mask = captions[:, : words.size(2)] == 0
        noise = torch.randn(batch, mc.z_dim, device=device)
        with amp(device, s.bf16):
            fakes, _, mu, logvar = netG(noise, sent, words, mask)
        if head is not None:
            with amp(device, s.bf16):
                fake_heads, fake_read = generated_heads(detail, fakes[-1])
                real_heads = crop_heads(detail, reals[-1])
            head_cond = head_condition(head, sent, words, mask)
        for i, (d, opt) in enumerate(zip(netsD, optsD)):
            opt.zero_grad(set_to_none=True)
            with amp(device, s.bf16):
                if d is patch:
                    errD = losses.patch_discriminator_loss(d, reals[-1], fakes[-1], augment)
                elif d is head:
                    errD = head_discriminator_loss(d, real_heads, fake_heads, head_cond, augment)
                else:
                    errD, _ = losses.discriminator_loss(d, reals[i], fakes[i], sent, augment)
            errD.backward()
            opt.step()
        for d in netsD:
            d.requires_grad_(False)
        optG.zero_grad(set_to_none=True)
        with amp(device, s.bf16):
            errG = losses.generator_adversarial_loss(stage_ds, fakes, sent, augment)
            if patch is not None:
                errG = errG + losses.patch_generator_loss(patch, fakes[-1], augment) * cfg.TRAIN.PATCH_D_LOSS
            if head is not None:
                errG = errG + head_generator_loss(head, fake_heads, head_cond, augment) * cfg.TRAIN.HEAD_D_LOSS
            if reader is None:
                regions, code = image(fakes[-1])
            else:  # as the trainer: every stage's image read by the trunk, the last pass serves DAMSM too
                p_loss = 0.0
                for fake in fakes:
                    features, pooled = image.features(fake)
                    p_loss = p_loss + losses.part_loss(reader(pooled), labels) * cfg.TRAIN.PART_LOSS / len(fakes)
                regions, code = image.project(features, pooled)
            if detail is not None:
                read = fake_read if head is not None else detail(fakes[-1])
                d_loss = losses.part_loss(read, labels) * cfg.TRAIN.DETAIL_LOSS
        w0, w1, _ = losses.words_loss(regions, words, lengths, class_ids, g.GAMMA1, g.GAMMA2, g.GAMMA3)
        s0, s1 = losses.sent_loss(code, sent, class_ids, g.GAMMA3)
        total = errG + (w0 + w1 + s0 + s1) * g.LAMBDA + losses.kl_loss(mu, logvar)
        if reader is not None:
            total = total + p_loss
        if detail is not None:
            total = total + d_loss
        total.backward()
        optG.step()
        for d in netsD:
            d.requires_grad_(True)
        with torch.no_grad():
            for avg, p in ema:
                avg.mul_(0.999).add_(p.detach(), alpha=0.001)

    return step


def loader_rate(cfg, data_dir: Path, batch: int, seconds: float) -> float | None:
    """Images/s the data set's own loading (decode, crop, resize, one worker process = this one) delivers."""
    from trainer.data import TextImageDataset

    if not data_dir.is_dir():
        return None
    ds = TextImageDataset(data_dir, "train", cfg, train=True)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds and n < len(ds):
        ds[n % len(ds)]
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", default="synth,default64,default,bird", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--batch", type=int, default=0,
                   help="batch size for every config (default: the config's own, except 2 for bird on CPU, "
                        "whose 256 px discriminators take tens of seconds per step at batch 20 on 2 cores)")
    p.add_argument("--seconds", type=float, default=0, help="time per measurement (default 3 on CPU, 2 on GPU)")
    p.add_argument("--n-words", type=int, default=0, help="vocabulary size (default: 5450 bird, 400 synth)")
    p.add_argument("--data", default="", help="a data set to measure loader throughput on (default: none)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_flush_denormal(True)
    seconds = args.seconds or (2.0 if gpu else 3.0)
    mach = machine(device)
    print(f"machine: {describe(mach)}", flush=True)
    t_start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))  # untrained backbone files, removed at the end
    rows, notes = [], []
    rates: dict[tuple[str, str, str], float] = {}
    measured_damsm: set[Path] = set()
    peaks: dict[str, float] = {}  # measured matmul FLOP/s per dtype: this machine's practical ceiling
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        damsm_path, damsm_cfg, gan_cfg = load_cfgs(name, scratch)
        n_words = args.n_words or (5450 if name == "bird" else 400)
        stages = [("GAN", gan_cfg, gan_step_fn)]
        if damsm_path not in measured_damsm:  # default64 shares default's DAMSM
            measured_damsm.add(damsm_path)
            stages.insert(0, ("DAMSM", damsm_cfg, damsm_step_fn))
        for kind, cfg, fn in stages:
            batch = args.batch or (cfg.TRAIN.BATCH_SIZE if gpu or name != "bird" else 2)
            base = None
            for s in SETTINGS:
                if kind == "DAMSM" and s.generator_nchw:
                    continue  # no generator in a DAMSM step
                try:
                    torch.manual_seed(0)
                    step = fn(cfg, s, device, batch, n_words)
                    with FlopCounterMode(display=False) as counter:  # one step, forward + backward
                        step()
                    flops = counter.get_total_flops()
                    t = time_call(step, device, min_runs=2 if not gpu else 5, min_seconds=seconds, warmup=1)
                except Exception as exc:  # noqa: BLE001 - report a path this machine can't run, go on
                    print(f"  {name} {kind} {s.name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
                    continue
                its = 1 / t["median"]
                base = base or its
                rates[(name, kind, s.name)] = its
                print(f"  {name:5s} {kind:5s} batch {batch:3d} {s.name:36s} {its:8.3f} it/s "
                      f"({its * batch:7.1f} images/s, {t['runs']} runs)", flush=True)
                dtype = "bf16" if "bf16" in s.name else "fp32"
                if dtype not in peaks:
                    peaks[dtype] = matmul_peak(device, dtype)
                achieved = flops * its
                rows.append([name, kind, batch, s.name, f"{its:.3f}", f"{its * batch:.1f}", ratio(its, base),
                             f"{flops / 1e9:.1f}", f"{achieved / 1e12:.3f}",
                             f"{100 * achieved / peaks[dtype]:.1f}% of {peaks[dtype] / 1e12:.2f} ({dtype})"])
                del step
        if name in VARIANTS:
            of = VARIANTS[name][0]
            same = [f"{setting}: {ratio(its, rates[(of, kind, setting)])}" for (n, kind, setting), its in rates.items()
                    if n == name and (of, kind, setting) in rates]
            if same:
                notes.append(f"{name} GAN iterations/s against {of}'s in this run: {'; '.join(same)}.")
        if args.data:
            rate = loader_rate(gan_cfg, Path(args.data), gan_cfg.TRAIN.BATCH_SIZE, 3.0)
            if rate:
                notes.append(f"{name}: the data loader delivers {rate:.0f} images/s per worker process on "
                             f"{args.data} (GAN config transforms).")
    shutil.rmtree(scratch, ignore_errors=True)
    table = md_table(["config", "stage", "batch", "path", "iterations/s", "images/s", "vs fp32", "GFLOP/iteration",
                      "achieved TFLOP/s", "vs measured matmul peak"], rows)
    print("\n" + table)
    for n in notes:
        print(n)
    wall = time.perf_counter() - t_start
    body = f"""Measured {today()} with `python bench/train.py --configs {args.configs}` ({wall:.0f} s).
Machine: {describe(mach)}. One optimizer iteration = the trainer's step (DAMSM: both encoders, word + sentence
losses, clip, Adam; GAN: G forward, every D's update, G's update with the DAMSM, part and detail losses the config has and KL, EMA) on synthetic
batches (loading excluded). Random weights; vocabulary {args.n_words or '5450 (bird) / 400 (synthetic birds)'} words.
FLOPs per iteration are counted with `torch.utils.flop_counter` over one step (matmuls and convolutions, forward
and backward); the peak is a large square matmul measured in the same run, the practical ceiling of this machine.
`default64` is the default model's 64 px stage 1 (`trainer/cfg/default/gan_64.yml`), `default` its three-stage
stage 2 (both with word attention at 64 px, `GAN.WORD_ATTN_64`, and the part and detail losses of their configs:
the image backbone's part heads read every stage's image, the 128 px detail backbone the last one), `default64_plain`
stage 1 without word attention, `default64_unread` without the part and detail losses, `default64_augment` with
DiffAugment's shifts before every discriminator call (`TRAIN.D_AUGMENT=translation`), `default_patch` the
three stages with a PatchGAN on the 256 px image beside the stages' Ds (`TRAIN.PATCH_D_LOSS=2`), `default_head` with
one on 64 px crops of the head instead, where the detail reader looks for the eye ring (`TRAIN.HEAD_D_LOSS=2`, the
head stage's), `default_head_cond` with its windows judged with the caption too
(`TRAIN.HEAD_D_CONDITIONAL=true`), `default_head_words` with the caption's words instead of its sentence vector
(`TRAIN.HEAD_D_WORDS=true`). "G NCHW" is what the trainer does on CPU: the
generator stays in the NCHW layout while the image encoder and discriminators are channels-last, because with
channels-last inputs its BatchNorms get NCHW gradients from F.glu, and that mixed-format backward is several times
slower than either layout alone on CPU.

{table}
"""
    if notes:
        body += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if not gpu:
        body += ("\nNo GPU was available for this run; the GPU target (bird config, batch 20, >= 10 GAN iterations/s) "
                 "is unmeasured. On CPU the bird config runs at batch 2 to stay within the time budget; run "
                 "`python bench/train.py --configs bird` on a CUDA machine for the batch-20 figure.\n")
    if not args.no_write:
        print(f"wrote section 'Training' of {write_section('Training', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
