"""`attngan train backbone|damsm|gan` and `attngan export`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError


def _common(p: argparse.ArgumentParser, default_cfg: str) -> None:
    p.add_argument("--cfg", default=default_cfg, help=f"YAML config (default {default_cfg})")
    p.add_argument("--data-dir", help="dataset folder (CUB layout); overrides DATA_DIR")
    p.add_argument("--output-dir", help="run folder (default output/<DATASET>_<CONFIG_NAME>); rerun to resume")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set TRAIN.BATCH_SIZE=8 (repeatable)")
    p.add_argument("--init-from", metavar="BUNDLE_OR_PTH",
                   help="fine-tune: start from a model bundle or a checkpoint (netG_epoch_N.pth / text_encoder.pth)")


def register(subparsers: Any) -> None:
    train = subparsers.add_parser("train", help="train DAMSM encoders or the AttnGAN (resumable, torchrun-ready)")
    tsub = train.add_subparsers(dest="train_command", metavar="STAGE", parser_class=type(train))
    damsm = tsub.add_parser("damsm", help="pretrain the DAMSM text and image encoders")
    _common(damsm, "trainer/cfg/DAMSM/bird.yml")
    damsm.set_defaults(func=_train_damsm)
    gan = tsub.add_parser("gan", help="train the attentional generator and discriminators")
    _common(gan, "trainer/cfg/bird_attn2.yml")
    gan.set_defaults(func=_train_gan)
    backbone = tsub.add_parser("backbone", help="pretrain the small DAMSM image encoder's trunk on synthetic "
                               "renders (TRAIN.IMAGE_BACKBONE; the small encoder's ImageNet weights)")
    backbone.add_argument("--out", required=True, type=Path, help="backbone file to write (.safetensors)")
    backbone.add_argument("--renders", type=int, default=8000, help="fresh renders to train on (default 8000)")
    backbone.add_argument("--epochs", type=int, default=6, help="passes over the renders (default 6)")
    backbone.add_argument("--size", type=int, default=128,
                          help="render size; use the same IMAGE_ENCODER_SIZE in DAMSM and GAN (default 128)")
    backbone.add_argument("--seed", type=int, default=0, help="render and training seed (default 0)")
    backbone.add_argument("--pool", choices=["mean", "attention"], default="mean",
                          help="heads on the global code (mean: DAMSM's IMAGE_BACKBONE) or on each part's spatial "
                          "attention over the trunk's map (attention: a TRAIN.DETAIL_BACKBONE for small parts)")
    backbone.add_argument("--parts", default="", help="comma-separated parts to learn (default: all)")
    backbone.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    backbone.add_argument("--thin-rims", type=float, default=0.0, metavar="SHARE",
                          help="draw that share of the eye rings as thin rims labelled 'none', so the reader counts "
                          "a ring only at its full width (default 0)")
    backbone.set_defaults(func=_train_backbone)
    ring_map = tsub.add_parser("ring-map", help="train a per-pixel reader of the eye ring in synthetic birds' heads "
                               "(TRAIN.RING_MAP, for TRAIN.RING_MAP_LOSS)")
    ring_map.add_argument("--out", required=True, type=Path, help="ring map file to write (.safetensors)")
    ring_map.add_argument("--renders", type=int, default=12000, help="fresh head crops to train on (default 12000)")
    ring_map.add_argument("--epochs", type=int, default=4, help="passes over the crops (default 4)")
    ring_map.add_argument("--seed", type=int, default=0, help="render and training seed (default 0)")
    ring_map.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    ring_map.set_defaults(func=_train_ring_map)
    train.set_defaults(func=lambda args: (train.print_help(), 2)[1])

    export = subparsers.add_parser("export", help="write a model bundle from a GAN training run folder")
    export.add_argument("--run", required=True, help="GAN run folder (with checkpoint.pt or Model/netG_epoch_N.pth)")
    export.add_argument("--out", required=True, help="bundle folder to write")
    export.add_argument("--epoch", type=int, help="use Model/netG_epoch_N.pth (default: the latest EMA weights)")
    export.add_argument("--half", action="store_true", help="store fp16 weights (half the size)")
    export.add_argument("--raw", action="store_true", help="the latest generator as trained, not its weight average "
                        "(TRAIN.EMA_DECAY): to see what the average smooths over")
    export.set_defaults(func=_export)


def _load(args: argparse.Namespace):
    from attngan.config import load_config

    return load_config(args.cfg, args.set)


def _train_damsm(args: argparse.Namespace) -> int:
    from trainer.damsm import train_damsm

    train_damsm(_load(args), args.data_dir, args.output_dir, args.init_from)
    return 0


def _train_gan(args: argparse.Namespace) -> int:
    from trainer.gan import train_gan

    train_gan(_load(args), args.data_dir, args.output_dir, args.init_from)
    return 0


def _train_backbone(args: argparse.Namespace) -> int:
    from trainer.backbone import train_backbone

    meta = train_backbone(args.out, renders=args.renders, epochs=args.epochs, size=args.size, seed=args.seed,
                          pool=args.pool, parts=[p for p in args.parts.split(",") if p] or None,
                          device=args.device, thin_rims=args.thin_rims)
    print(f"{args.out}: {100 * meta['held_out_accuracy']:.1f}% of parts right on {meta['held_out_renders']} "
          "held-out renders")
    return 0


def _train_ring_map(args: argparse.Namespace) -> int:
    from trainer.ring_map import train_ring_map

    meta = train_ring_map(args.out, renders=args.renders, epochs=args.epochs, seed=args.seed, device=args.device)
    print(f"{args.out}: ring IoU {100 * meta['held_out_ring_iou']:.1f}%, ring colour right on "
          f"{100 * meta['held_out_ring_colour']:.1f}% of ring pixels, over {meta['held_out_renders']} held-out heads")
    return 0


def _export(args: argparse.Namespace) -> int:
    path = export_run(args.run, args.out, epoch=args.epoch, half=args.half, raw=args.raw)
    print(path)
    return 0


def export_run(run_dir: str | Path, out_dir: str | Path, epoch: int | None = None, half: bool = False,
               raw: bool = False) -> Path:
    """GAN run folder -> bundle: EMA generator (`raw`: the generator as trained), text + image encoders, vocabulary,
    config, training info."""
    from attngan.bundle import write_bundle
    from attngan.model import ModelConfig
    from attngan.text import Vocabulary
    from trainer.checkpoint import CHECKPOINT_NAME, load_weights
    from trainer.gan import latest_generator

    if raw and epoch is not None:
        raise AttnGANError("--raw exports the checkpoint's latest generator; --epoch's snapshots are weight averages")
    run = Path(run_dir)
    ckpt_path = run / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise AttnGANError(f"{run} is not a GAN training run: {CHECKPOINT_NAME} is missing")
    ckpt = load_weights(ckpt_path)
    if ckpt.get("kind") != "gan":
        raise AttnGANError(f"{run} is a {ckpt.get('kind')} run; export needs a GAN run (attngan train gan)")
    if epoch is None:
        generator = dict(ckpt["netG"])  # BN buffers stay current, as in training's EMA samples (gan.ema_state)
        if not raw:
            generator.update(ckpt["ema"])
        source = f"{CHECKPOINT_NAME} ({'raw' if raw else 'EMA'}, step {ckpt['step']})"
    else:
        path = run / "Model" / f"netG_epoch_{epoch}.pth"
        if not path.is_file():
            latest = latest_generator(run)
            raise AttnGANError(f"{path} not found (latest is netG_epoch_{latest[1]}.pth)")
        generator = load_weights(path)
        source = path.name
    steps, epochs = int(ckpt["step"]), int(ckpt["epoch"])
    if epoch is not None:  # an epoch snapshot: the steps done when it was written, not the run's latest
        done_epochs = int(ckpt["epoch"])
        per_epoch = (steps - int(ckpt.get("step_in_epoch", 0))) // done_epochs if done_epochs else 0
        steps, epochs = (epoch + 1) * per_epoch, epoch + 1
    cfg = ckpt["config"]
    info = {
        "source_run": str(run),
        "generator_from": source,
        "steps": steps,
        "epochs": epochs,
        "seed": int(ckpt["seed"]),
        "config_name": cfg.get("CONFIG_NAME", ""),
        "dataset": cfg.get("DATASET_NAME", ""),
        "data_dir": cfg.get("DATA_DIR", ""),
        "lambda": cfg["TRAIN"]["SMOOTH"]["LAMBDA"],
        "batch_size": cfg["TRAIN"]["BATCH_SIZE"],
    }
    return write_bundle(out_dir, config=ModelConfig.from_dict(ckpt["model_config"]),
                        vocab=Vocabulary.from_dict(ckpt["vocab"]), generator=generator,
                        text_encoder=ckpt["text_encoder"], image_encoder=ckpt["image_encoder"], info=info, half=half)
