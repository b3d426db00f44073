"""SageMaker training entry point: `python -m trainer.sagemaker` (the trainer image's ENTRYPOINT).

Reads the SageMaker contract (root /opt/ml, overridable with SM_ROOT for tests):
  SM_CHANNEL_TRAIN (data, CUB layout), SM_MODEL_DIR (the bundle goes here), SM_OUTPUT_DATA_DIR (sample grids,
  logs), input/config/hyperparameters.json (all values are strings), /opt/ml/checkpoints (synced to S3 by
  SageMaker: a restarted or spot-interrupted job resumes from it), SM_HOSTS / SM_CURRENT_HOST (multi-node).
Runs DAMSM, then the GAN, then exports the bundle. On error writes one line to output/failure, exits 1.

Hyperparameters: config (synth | default | bird | coco; default synth), damsm_config / gan_config (YAML paths),
gan_grow_config (a GAN config with fewer stages trained first, its generator growing into gan_config's; the
default preset's is default/gan_64.yml, "" turns it off; gan_set and max_steps apply to every GAN run),
gan_grow_restart_steps (after gan_grow_config's run, run it again this many steps from its EMA generator with
fresh optimizers, and grow gan_config's generator from that; default 0; capped by max_steps),
gan_detail_config (GAN configs trained last, separated by commas, as models/train_default.sh's head stages: the
first starts from a bundle of gan_config's run (its EMA generator at fp16; new discriminators), each later one resumes
a copy of the run before it with its own config; the bundle then comes from the last. The default preset's is
default/gan_head.yml,default/gan_head_cond.yml, "" turns it off; e.g. default/gan_detail.yml; other presets none),
detail_backbone_size (when any GAN run, gan_detail_config's too, has TRAIN.DETAIL_LOSS > 0, as the default preset's
do: the detail backbone, attention-pooled heads that read small parts, is trained first at this size into the
checkpoint folder and passed to every GAN run as TRAIN.DETAIL_BACKBONE, unless gan_set names one; default 128),
damsm_epochs / gan_epochs (0 skips DAMSM: then give TRAIN.NET_E in gan_set), max_steps, set / damsm_set /
gan_set (KEY=VALUE overrides separated by spaces or commas; a comma inside a value stays there; max_steps is the
steps of each GAN run, and gan_epochs its epochs: a resumed copy trains on from where it starts),
nproc_per_node (default: GPUs, or 1),
image_backbone ("train": pretrain the small image encoder's trunk first, kept in the checkpoint folder; a path:
use that file; default "train" for config=default, else none), backbone_renders (both backbones) /
backbone_epochs (the image backbone's, default 8) / detail_backbone_epochs (the detail backbone's, default 12); their
seeds are the default recipe's, models/train_default.sh. half ("true" | "false"): the bundle's weights stored as fp16,
half the size (default "true" for config=default, whose shipped bundle make train-default exports so, else "false").
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError

log = logging.getLogger("trainer")
CFG_DIR = Path(__file__).resolve().parent / "cfg"
PRESETS = {  # DAMSM config, GAN config, the GAN config of a 64 px stage trained first, the GAN configs trained last
    "synth": ("synth/damsm.yml", "synth/gan.yml", "", ""),
    "default": ("default/damsm.yml", "default/gan.yml", "default/gan_64.yml",  # the bundled default model's recipe
                "default/gan_head.yml,default/gan_head_cond.yml"),
    "bird": ("DAMSM/bird.yml", "bird_attn2.yml", "", ""),
    "coco": ("DAMSM/coco.yml", "coco_attn2.yml", "", ""),
}
KNOWN = {"config", "damsm_config", "gan_config", "gan_grow_config", "gan_detail_config", "damsm_epochs",
         "gan_epochs", "max_steps", "gan_grow_restart_steps",
         "set", "damsm_set", "gan_set", "nproc_per_node", "master_port", "image_backbone", "backbone_renders",
         "backbone_epochs", "detail_backbone_size", "detail_backbone_epochs", "half"}


@dataclass
class Job:
    root: Path
    data_dir: Path
    model_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    hosts: list[str]
    current_host: str
    damsm_cfg: Path
    gan_cfg: Path
    grow_cfg: Path | None = None  # a fewer-stage GAN trained first; gan_cfg's run starts from its generator
    grow_restart_steps: int = 0  # then grow_cfg again from its EMA generator, fresh optimizers, this many steps
    detail_cfgs: list[Path] = field(default_factory=list)  # trained last: from gan_cfg's bundle, then each resumed
    max_steps: int | None = None  # steps of each GAN run ...
    gan_epochs: int | None = None  # ... and its epochs (a resumed copy counts on from where it starts)
    damsm_set: list[str] = field(default_factory=list)
    gan_set: list[str] = field(default_factory=list)
    run_damsm: bool = True
    nproc: int = 1
    master_port: int = 29500
    image_backbone: str = ""  # "" | "train" | a backbone file
    backbone_renders: int = 10000
    backbone_epochs: int = 8
    detail_backbone_size: int = 128
    detail_backbone_epochs: int = 12  # at 8 its eye-ring head was right on 94.8% of renders once, 86.7% once
    half: bool = False  # the bundle's weights as fp16

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.nproc

    @property
    def is_leader(self) -> bool:
        return self.node_rank == 0


def _split(text: str) -> list[str]:
    """'A.B=1,C=x y' -> ['A.B=1', 'C=x', 'y']: spaces separate overrides, and so does a comma before a config key
    (upper case), so a value may hold commas of its own (TRAIN.DETAIL_PART_WEIGHTS=eyering=4,bill=2)."""
    return [t for t in re.split(r"\s*,\s*(?=[A-Z][A-Z0-9_.]*=)|\s+", text.strip(" ,")) if t]


def _cfg_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.is_file():
        path = CFG_DIR / value
    if not path.is_file():
        raise AttnGANError(f"config {value!r} not found (give a path or one under trainer/cfg/)")
    return path


def read_job(env: dict[str, str] | None = None) -> Job:
    env = dict(os.environ if env is None else env)
    root = Path(env.get("SM_ROOT", "/opt/ml"))
    hp_path = root / "input" / "config" / "hyperparameters.json"
    hp: dict[str, str] = {}
    if hp_path.is_file():
        try:
            raw = json.loads(hp_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AttnGANError(f"{hp_path} is not valid JSON: {exc}") from None
        hp = {str(k): str(v) for k, v in raw.items()}  # SageMaker passes every value as a string
    unknown = sorted(set(hp) - KNOWN - {k for k in hp if k.startswith("sagemaker_")})
    if unknown:
        raise AttnGANError(f"unknown hyperparameters {unknown}; known: {sorted(KNOWN)}")
    preset = hp.get("config", "synth")
    if preset not in PRESETS:
        raise AttnGANError(f"hyperparameter config={preset!r}: choose one of {sorted(PRESETS)}")
    damsm_default, gan_default, grow_default, details_default = PRESETS[preset]

    def integer(name: str, default: int | None) -> int | None:
        if name not in hp:
            return default
        try:
            return int(hp[name])
        except ValueError:
            raise AttnGANError(f"hyperparameter {name}={hp[name]!r} must be an integer") from None

    common = _split(hp.get("set", ""))
    damsm_set = common + _split(hp.get("damsm_set", ""))
    gan_set = common + _split(hp.get("gan_set", ""))
    damsm_epochs, gan_epochs, max_steps = integer("damsm_epochs", None), integer("gan_epochs", None), \
        integer("max_steps", None)
    if damsm_epochs:
        damsm_set.append(f"TRAIN.MAX_EPOCH={damsm_epochs}")
    if gan_epochs is not None:
        gan_set.append(f"TRAIN.MAX_EPOCH={gan_epochs}")
    if max_steps is not None:
        damsm_set.append(f"TRAIN.MAX_STEPS={max_steps}")
        gan_set.append(f"TRAIN.MAX_STEPS={max_steps}")
    half = hp.get("half", "true" if preset == "default" else "false").strip().lower()
    if half not in ("true", "false"):
        raise AttnGANError(f"hyperparameter half={hp['half']!r} must be true or false")
    restart_steps = integer("gan_grow_restart_steps", 0) or 0
    if restart_steps < 0:
        raise AttnGANError(f"hyperparameter gan_grow_restart_steps={restart_steps} must not be negative")
    if max_steps is not None:
        restart_steps = min(restart_steps, max_steps)
    try:
        hosts = json.loads(env.get("SM_HOSTS", '["algo-1"]'))
    except json.JSONDecodeError:
        raise AttnGANError(f"SM_HOSTS is not a JSON list: {env.get('SM_HOSTS')!r}") from None
    current = env.get("SM_CURRENT_HOST", hosts[0] if hosts else "algo-1")
    if current not in hosts:
        raise AttnGANError(f"SM_CURRENT_HOST {current!r} is not in SM_HOSTS {hosts}")
    gpus = int(env.get("SM_NUM_GPUS", "0") or 0)
    data_dir = Path(env.get("SM_CHANNEL_TRAIN", root / "input" / "data" / "train"))
    if not data_dir.is_dir():
        raise AttnGANError(f"training channel not found: {data_dir} (give the job a 'train' channel)")
    return Job(
        root=root, data_dir=data_dir,
        model_dir=Path(env.get("SM_MODEL_DIR", root / "model")),
        output_dir=Path(env.get("SM_OUTPUT_DATA_DIR", root / "output" / "data")),
        checkpoint_dir=Path(env.get("SM_CHECKPOINT_DIR", root / "checkpoints")),
        hosts=hosts, current_host=current,
        damsm_cfg=_cfg_path(hp.get("damsm_config", damsm_default)),
        gan_cfg=_cfg_path(hp.get("gan_config", gan_default)),
        grow_cfg=_cfg_path(grow) if (grow := hp.get("gan_grow_config", grow_default)) else None,
        grow_restart_steps=restart_steps,
        detail_cfgs=[_cfg_path(c) for c in re.split(r"[\s,]+", hp.get("gan_detail_config", details_default)) if c],
        max_steps=max_steps, gan_epochs=gan_epochs,
        damsm_set=damsm_set, gan_set=gan_set, run_damsm=damsm_epochs != 0,
        nproc=integer("nproc_per_node", max(gpus, 1)) or 1,
        master_port=integer("master_port", 29500) or 29500,
        image_backbone=hp.get("image_backbone", "train" if preset == "default" else ""),
        backbone_renders=integer("backbone_renders", 10000) or 10000,
        backbone_epochs=integer("backbone_epochs", 8) or 8,
        detail_backbone_size=integer("detail_backbone_size", 128) or 128,
        detail_backbone_epochs=integer("detail_backbone_epochs", 12) or 12,
        half=half == "true",
    )


def _train_cmd(job: Job, stage: str, cfg: Path, overrides: list[str], out: Path,
               init_from: Path | None = None) -> list[str]:
    args = ["train", stage, "--cfg", str(cfg), "--data-dir", str(job.data_dir), "--output-dir", str(out)]
    if init_from is not None:
        args += ["--init-from", str(init_from)]
    for o in overrides:
        args += ["--set", o]
    if job.world_size == 1:
        return [sys.executable, "-m", "attngan.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(job.hosts)}",
            f"--nproc-per-node={job.nproc}", f"--node-rank={job.node_rank}", f"--master-addr={job.hosts[0]}",
            f"--master-port={job.master_port}", "-m", "attngan.cli", *args]


class Stopped(Exception):
    """The job got SIGTERM/SIGINT; the stage saved its checkpoint; a restarted job resumes from it."""


def _run(cmd: list[str], stage: str) -> None:
    """Run one stage in a child process, forwarding SIGTERM/SIGINT so it can checkpoint and exit."""
    log.info("%s: %s", stage, " ".join(cmd))
    child = subprocess.Popen(cmd)
    got: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        got.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got:
        raise Stopped(f"{stage} stopped by signal {got[0]} (exit code {code}); checkpoints are in place")
    if code != 0:
        raise AttnGANError(f"{stage} stage failed with exit code {code} (see the log above)")


def _image_backbone(job: Job) -> Path:
    """The small image encoder's trunk for DAMSM: the given file, or one trained now at the size the DAMSM config
    reads images (every host trains the same one from the same seed; a restarted job finds it in place)."""
    if job.image_backbone != "train":
        return Path(job.image_backbone)
    from attngan.config import load_config

    cfg = load_config(str(job.damsm_cfg), job.damsm_set)
    return _backbone_once(job, "image_backbone.safetensors", cfg.IMAGE_ENCODER_SIZE or _largest_size(cfg), [], 50,
                          job.backbone_epochs, "image backbone")


def _needs_detail_backbone(job: Job) -> bool:
    """A GAN run reads its images with TRAIN.DETAIL_BACKBONE and gan_set does not name the file."""
    from attngan.config import load_config

    if any(o.startswith("TRAIN.DETAIL_BACKBONE=") for o in job.gan_set):
        return False
    configs = [c for c in (job.grow_cfg, job.gan_cfg, *job.detail_cfgs) if c is not None]
    return any(load_config(str(c), job.gan_set).TRAIN.DETAIL_LOSS > 0 for c in configs)


def _detail_backbone(job: Job) -> Path:
    """TRAIN.DETAIL_BACKBONE: attention-pooled heads on a trunk of their own, trained once into the checkpoint
    folder at detail_backbone_size (the default recipe's 128 px: it reads the wing bar and eye ring)."""
    return _backbone_once(job, "detail_backbone.safetensors", job.detail_backbone_size, ["--pool", "attention"], 51,
                          job.detail_backbone_epochs, "detail backbone")


def _largest_size(cfg: Any) -> int:
    return cfg.TREE.BASE_SIZE * 2 ** (cfg.TREE.BRANCH_NUM - 1)


def _backbone_once(job: Job, name: str, size: int, extra: list[str], seed: int, epochs: int, stage: str) -> Path:
    """`attngan train backbone` into the checkpoint folder, unless a restarted job finds the file there."""
    path = job.checkpoint_dir / name
    if not path.is_file():
        _run([sys.executable, "-m", "attngan.cli", "train", "backbone", "--out", str(path), "--size", str(size),
              *extra, "--renders", str(job.backbone_renders), "--epochs", str(epochs),
              "--seed", str(seed)], stage)
    return path


def _detail_stages(job: Job, gan_set: list[str], gan_out: Path) -> Path:
    """gan_detail_config's runs, as models/train_default.sh's steps 5 and 6: the first starts from a bundle of
    gan_config's run (EMA generator at fp16, discriminators anew), each later one resumes a copy of the run before it
    with its own config (so that run stays as it was). Every step is done once: a restarted job finds the bundle and
    the copies in place and resumes the runs. Returns the last run."""
    from attngan.bundle import MANIFEST
    from trainer.cli import export_run

    start = job.checkpoint_dir / "gan_bundle"
    if not (start / MANIFEST).is_file():  # the bundle writer puts its manifest last: there means complete
        export_run(gan_out, start, half=True)
    previous: Path | None = None
    for i, cfg in enumerate(job.detail_cfgs):
        out = job.checkpoint_dir / ("gan_detail" if i == 0 else f"gan_detail_{i + 1}")
        overrides = list(gan_set)
        if previous is not None:
            if not out.is_dir():
                partial = out.with_name(out.name + ".copying")
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(previous, partial)
                partial.rename(out)
            # each run's epochs and steps, counted on from where the copy starts
            if job.gan_epochs is not None:
                overrides.append(f"TRAIN.MAX_EPOCH={(i + 1) * job.gan_epochs}")
            if job.max_steps is not None:
                overrides.append(f"TRAIN.MAX_STEPS={(i + 1) * job.max_steps}")
        _run(_train_cmd(job, "gan", cfg, overrides, out, start if previous is None else None),
             f"GAN (last stages: {cfg.name}, {i + 1} of {len(job.detail_cfgs)})")
        previous = out
    assert previous is not None
    return previous


def run_job(job: Job) -> Path | None:
    from trainer.damsm import latest_encoders

    damsm_out, gan_out = job.checkpoint_dir / "damsm", job.checkpoint_dir / "gan"
    gan_set = list(job.gan_set)
    if job.run_damsm:
        damsm_set = list(job.damsm_set)
        if job.image_backbone:  # DAMSM's frozen trunk, and the part heads of the GAN's TRAIN.PART_LOSS
            backbone = f"TRAIN.IMAGE_BACKBONE={_image_backbone(job)}"
            damsm_set.append(backbone)
            gan_set.append(backbone)
        _run(_train_cmd(job, "damsm", job.damsm_cfg, damsm_set, damsm_out), "DAMSM")
        text_path, image_path = latest_encoders(damsm_out)
        gan_set += [f"TRAIN.NET_E={text_path}", f"TRAIN.NET_IMAGE_E={image_path}"]
    if _needs_detail_backbone(job):
        gan_set.append(f"TRAIN.DETAIL_BACKBONE={_detail_backbone(job)}")
    grown_from = None
    if job.grow_cfg is not None:  # e.g. the 64 px stage alone first; a restarted job resumes whichever ran last
        from trainer.gan import latest_generator

        grow_out = job.checkpoint_dir / "gan_grow"
        _run(_train_cmd(job, "gan", job.grow_cfg, gan_set, grow_out), "GAN (fewer stages first)")
        grown_from, _ = latest_generator(grow_out)
        if job.grow_restart_steps:  # its EMA generator as the live one, fresh Adam moments (models/README.md)
            restart_out = job.checkpoint_dir / "gan_grow_restart"
            restart_set = [*gan_set, f"TRAIN.MAX_STEPS={job.grow_restart_steps}"]
            _run(_train_cmd(job, "gan", job.grow_cfg, restart_set, restart_out, grown_from),
                 "GAN (fewer stages, restarted from its EMA generator)")
            grown_from, _ = latest_generator(restart_out)
    _run(_train_cmd(job, "gan", job.gan_cfg, gan_set, gan_out, grown_from), "GAN")
    if job.detail_cfgs:  # the head stages last; the bundle comes from the last of them
        gan_out = _detail_stages(job, gan_set, gan_out)
    if not job.is_leader:
        return None
    from trainer.cli import export_run

    bundle = export_run(gan_out, job.model_dir, half=job.half)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("Image", "logs"):
        if (gan_out / sub).is_dir():
            shutil.copytree(gan_out / sub, job.output_dir / f"gan_{sub}", dirs_exist_ok=True)
    log.info("model bundle written to %s", bundle)
    return bundle


def main(env: dict[str, str] | None = None) -> int:
    from trainer.runtime import setup_logging

    setup_logging(True)
    root = Path((env or os.environ).get("SM_ROOT", "/opt/ml"))
    try:
        job = read_job(env)
        run_job(job)
        return 0
    except Stopped as exc:
        log.info("%s", exc)
        return 0
    except Exception as exc:  # noqa: BLE001 - SageMaker shows the failure file's line as the job's reason
        reason = str(exc) if isinstance(exc, AttnGANError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())[:1000]
        failure = root / "output" / "failure"
        try:
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(reason + "\n", encoding="utf-8")
        except OSError:
            pass
        print(f"attngan: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
