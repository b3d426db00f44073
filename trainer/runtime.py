"""What both training loops share: device, precision, seeding, output folders, data loaders, progress."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attngan.config import Config
from attngan.errors import AttnGANError
from attngan.fileio import atomic_write_text
from attngan.pipeline import cpu_has_fast_bf16
from trainer.checkpoint import CHECKPOINT_NAME, GracefulStop, load_weights, restore_rng_state
from trainer.distributed import DistInfo, ResumableSampler, any_flag, init_distributed, shutdown

log = logging.getLogger("trainer")


def setup_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    root = logging.getLogger("trainer")
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False


def select_device(cfg: Config, info: DistInfo) -> torch.device:
    if cfg.CUDA and torch.cuda.is_available():
        index = info.local_rank if info.enabled else cfg.GPU_ID
        torch.cuda.set_device(index)
        if cfg.TRAIN.DETERMINISTIC:
            # cuBLAS needs a fixed workspace for repeatable sums; it is read when cuBLAS first starts
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not cfg.TRAIN.DETERMINISTIC  # as the original; fixed input sizes
        torch.backends.cudnn.deterministic = cfg.TRAIN.DETERMINISTIC
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", index)
    return torch.device("cpu")


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """TRAIN.AMP: auto = bf16 where it is faster: CUDA GPUs that support it, and CPUs with AMX / AVX512-BF16
    (measured ~1.8x per GAN step at 256 px on a Sapphire Rapids core); fp32 on other CPUs."""
    mode = cfg.TRAIN.AMP.lower()
    if mode not in ("auto", "bf16", "off", "fp32"):  # fp32 = off (YAML reads a bare `off` as false)
        raise AttnGANError(f"TRAIN.AMP must be auto, bf16 or fp32 (off), got {cfg.TRAIN.AMP!r}")
    if mode in ("off", "fp32"):
        return None
    if mode == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("TRAIN.AMP bf16 on a CPU without AMX or AVX512-BF16: bf16 is emulated here and far slower "
                        "than fp32; TRAIN.AMP auto picks the faster")
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuSample:
    """A reading of the machine's busy CPU time and this process's own, to tell how busy the others keep it."""

    wall: float
    busy: float  # seconds of CPU the whole machine spent busy (all but idle and iowait), /proc/stat
    own: float  # seconds of CPU this process (all its threads) used

    @classmethod
    def now(cls) -> CpuSample | None:
        """None where there is no /proc/stat (not Linux)."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:8]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        return cls(time.monotonic(), busy, time.process_time())

    def others_since(self, earlier: CpuSample) -> float:
        """Cores kept busy by other processes between `earlier` and this reading."""
        span = max(self.wall - earlier.wall, 1e-3)
        return max(0.0, (self.busy - earlier.busy) - (self.own - earlier.own)) / span


def idle_cores(cap: int | None = None, own_threads: int = 0, others_now: float | None = None) -> int:
    """How many intra-op threads to use on CPU: the cores other processes leave idle, at most `cap`
    (OMP_NUM_THREADS when set, else the cores this process may run on), at least 1.

    The others' load is the 1-minute load average less `own_threads` (this process's share, when it is already
    running), or `others_now` (cores they kept busy over the last moments, `CpuSample`) when that is lower: the
    load average lags by about a minute, so a stage started right after another one ended would otherwise see the
    finished stage's load and start on one core.
    OpenMP threads wait for each other at every op; when another process holds one of them, the op waits for the
    scheduler, and small ops get ~100x slower (a 256 px GAN step: 21 s with 2 threads vs 4.9 s with 1 on a 2-core
    machine with load 6).
    """
    cores = usable_cores()
    env = os.environ.get("OMP_NUM_THREADS", "")
    limit = cap or (int(env) if env.isdigit() and int(env) > 0 else cores)
    try:
        others = max(0.0, os.getloadavg()[0] - own_threads)
    except OSError:  # no load average on this platform
        others = 0.0
    if others_now is not None:
        others = min(others, others_now)
    return max(1, min(limit, cores - int(others + 0.5)))


class CpuThreads:
    """Picks torch's intra-op thread count on CPU at the start and re-checks it every `every` seconds."""

    def __init__(self, device: torch.device, local_world_size: int = 1, every: float = 120.0,
                 data_workers: int = 0) -> None:
        self.enabled = device.type == "cpu"
        self.every = every
        self.data_workers = data_workers  # this run's DataLoader processes: their load is ours, not another's
        self.checked = time.time()
        env = os.environ.get("OMP_NUM_THREADS", "")
        self.cap = int(env) if env.isdigit() and int(env) > 0 else max(1, usable_cores() // max(1, local_world_size))
        self.sample: CpuSample | None = None
        if self.enabled:
            first = CpuSample.now()  # what the others use over the next 0.2 s
            if first is not None:
                time.sleep(0.2)
                self.sample = CpuSample.now()
            others_now = self.sample.others_since(first) if first and self.sample else None
            torch.set_num_threads(idle_cores(self.cap, others_now=others_now))
            with contextlib.suppress(RuntimeError):  # only settable before the first inter-op task
                torch.set_num_interop_threads(1)

    def maybe_update(self) -> None:
        if not self.enabled or time.time() - self.checked < self.every:
            return
        self.checked = time.time()
        current = torch.get_num_threads()
        sample = CpuSample.now()
        others_now = None
        if sample is not None and self.sample is not None:
            others_now = max(0.0, sample.others_since(self.sample) - self.data_workers)
        self.sample = sample
        wanted = idle_cores(self.cap, own_threads=current + self.data_workers, others_now=others_now)
        if wanted != current:
            torch.set_num_threads(wanted)
            log.info("CPU threads %d -> %d (load average %.1f)", current, wanted, os.getloadavg()[0])


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def choose_seed(cfg: Config) -> int:
    """TRAIN.SEED, or (0) a random seed in 1..10000 as the original; the run records it so a resume reuses it."""
    return cfg.TRAIN.SEED if cfg.TRAIN.SEED else random.SystemRandom().randint(1, 10000)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Different streams per rank (different noise), identical model init comes from broadcasting rank 0."""
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


@dataclass
class Run:
    cfg: Config
    info: DistInfo
    device: torch.device
    out: Path
    amp: torch.dtype | None
    writer: Any = None
    threads: CpuThreads | None = None
    started: float = field(default_factory=time.time)

    @property
    def model_dir(self) -> Path:
        return self.out / "Model"

    @property
    def image_dir(self) -> Path:
        return self.out / "Image"

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """TensorBoard scalars plus one JSON line in logs/metrics.jsonl (for scripts and tests)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
            with open(self.out / "logs" / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, "tag": prefix, **values}) + "\n")

    def resumed(self, ckpt_path: Path, ckpt: dict[str, Any]) -> None:
        """After a checkpoint's weights are loaded: its random streams, the log line, and the metrics log cut back
        to its step (a run killed without saving logged later steps, which the resumed run logs again)."""
        step = int(ckpt["step"])
        restore_rng_state(ckpt["rng"], self.info.rank)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, int(ckpt["epoch"]), step)
        path = self.out / "logs" / "metrics.jsonl"
        if self.writer is None or not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def resolve_output_dir(cfg: Config, output_dir: str | None, kind: str) -> Path:
    if output_dir:
        return Path(output_dir)
    if cfg.OUTPUT_DIR:
        return Path(cfg.OUTPUT_DIR)
    return Path("output") / f"{cfg.DATASET_NAME}_{cfg.CONFIG_NAME or kind}"


def open_run(cfg: Config, output_dir: str | None, kind: str) -> Run:
    """Join the process group (if any), pick the device, create OUTPUT/{Model,Image,logs} on each node."""
    want_cuda = cfg.CUDA and torch.cuda.is_available()
    info = init_distributed("cuda" if want_cuda else "cpu")
    setup_logging(info.is_main)
    device = select_device(cfg, info)
    out = resolve_output_dir(cfg, output_dir, kind)
    writer = None
    if info.writes_files:
        for sub in ("Model", "Image", "logs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "logs"))
    threads = CpuThreads(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), data_workers=cfg.WORKERS)
    run = Run(cfg=cfg, info=info, device=device, out=out, amp=amp_dtype(cfg, device), writer=writer,
              threads=threads)
    log.info("%s training: device %s, world size %d, precision %s, %s, output %s", kind, device,
             info.world_size, "bf16" if run.amp else "fp32",
             f"{torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else "GPU", out)
    return run


def train_in_run(cfg: Config, output_dir: str | None, kind: str,
                 train: Callable[[Run, Path, str | None, GracefulStop], Path], data: Path,
                 init_from: str | None) -> Path:
    """open_run, then `train(run, data, init_from, stop)` under a GracefulStop; always closes the run and
    leaves the process group, also when training raises."""
    run = open_run(cfg, output_dir, kind)
    try:
        with GracefulStop() as stop:
            return train(run, data, init_from, stop)
    finally:
        run.close()
        shutdown()


def resume_checkpoint(run: Run) -> tuple[Path, dict[str, Any] | None, int]:
    """(RUN/checkpoint.pt, its contents or None, the run's seed); seeds every RNG with that seed.

    A resumed run keeps the seed it was started with, so its data order and noise continue the same streams.
    """
    ckpt_path = run.out / CHECKPOINT_NAME
    ckpt = load_weights(ckpt_path) if ckpt_path.is_file() else None
    seed = int(ckpt["seed"]) if ckpt else choose_seed(run.cfg)
    seed_everything(seed, run.info.rank)
    return ckpt_path, ckpt, seed


def resolve_data_dir(cfg: Config, data_dir: str | None) -> Path:
    path = Path(data_dir or cfg.DATA_DIR)
    if not str(path) or not path.is_dir():
        raise AttnGANError(f"data folder not found: {path or '(empty)'}; pass --data-dir or set DATA_DIR "
                           "(make a synthetic set with `attngan data synth`)")
    return path


def _worker_ignores_stop_signals(_worker_id: int) -> None:
    """Data workers leave SIGTERM/SIGINT to the trainer: a signal sent to the whole process group (Ctrl-C, a
    group kill) would otherwise kill a worker and crash the run before it saves its checkpoint."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, run: Run, seed: int, *, shuffle: bool = True,
                batch_size: int | None = None) -> tuple[torch.utils.data.DataLoader, ResumableSampler]:
    """A loader whose order depends only on (seed, epoch), so a resumed run sees the same batches."""
    from trainer.data import collate_batch

    batch_size = batch_size or run.cfg.TRAIN.BATCH_SIZE
    sampler = ResumableSampler(dataset, run.info, seed=seed, shuffle=shuffle, drop_last=True)
    if sampler.num_samples < batch_size:
        raise AttnGANError(
            f"{len(dataset)} images are too few for TRAIN.BATCH_SIZE={batch_size} on {run.info.world_size} "
            f"process(es); lower TRAIN.BATCH_SIZE (e.g. --set TRAIN.BATCH_SIZE=8) or add data")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=run.cfg.WORKERS, collate_fn=collate_batch,
        drop_last=True, pin_memory=run.device.type == "cuda", generator=torch.Generator().manual_seed(seed),
        persistent_workers=run.cfg.WORKERS > 0, worker_init_fn=_worker_ignores_stop_signals)
    return loader, sampler


def batches_per_epoch(sampler: ResumableSampler, batch_size: int) -> int:
    return sampler.num_samples // batch_size


def total_steps(cfg: Config, sampler: ResumableSampler) -> int:
    """Steps of the whole run: MAX_EPOCH epochs of whole batches, capped by TRAIN.MAX_STEPS when it is set."""
    total = batches_per_epoch(sampler, cfg.TRAIN.BATCH_SIZE) * cfg.TRAIN.MAX_EPOCH
    return min(total, cfg.TRAIN.MAX_STEPS) if cfg.TRAIN.MAX_STEPS else total


def log_step(run: Run, progress: Progress, step: int, values: dict[str, float], prefix: str,
             **extra: float) -> None:
    """After an optimizer step: progress (bar or log line), the CPU thread re-check, and on the first step and
    every TRAIN.LOG_INTERVAL steps the scalars (`values` plus `extra`, e.g. lr) under `prefix`."""
    progress.update(values)
    if run.threads is not None:
        run.threads.maybe_update()
    if step % run.cfg.TRAIN.LOG_INTERVAL == 0 or step == 1:
        run.scalars(step, {**values, **extra}, prefix)


def checkpoint_or_stop(run: Run, stop: GracefulStop, step: int, save: Callable[[int, int], None], epoch: int,
                       in_epoch: int) -> bool:
    """At the end of a step: `save(epoch, in_epoch)` every TRAIN.CHECKPOINT_INTERVAL steps; and when a stop
    signal reached any rank, save, say how to resume and return True (the loop then ends, exit code 0)."""
    interval = run.cfg.TRAIN.CHECKPOINT_INTERVAL
    if interval and step % interval == 0:
        save(epoch, in_epoch)
    if not any_flag(stop.requested, run.info, run.device):
        return False
    save(epoch, in_epoch)
    log.info("stopped by %s at step %d; checkpoint saved, rerun the same command to resume",
             stop.signal_name or "signal", step)
    return True


class Progress:
    """A tqdm bar (rate, ETA) on a terminal; otherwise a log line every `every` steps with rate and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str, every: int = 100):
        self.total, self.step, self.every = total, initial, max(1, every)
        self.enabled = enabled
        self.t0, self.s0 = time.time(), initial
        self.bar = None
        self.postfix: dict[str, str] = {}
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, unit="step")

    def update(self, values: dict[str, float] | None = None) -> None:
        self.step += 1
        if values:
            self.postfix = {k: f"{v:.3f}" for k, v in values.items()}
        if self.bar is not None:
            self.bar.update(1)
            if values:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif self.enabled and (self.step % self.every == 0 or self.step == self.total):
            rate = (self.step - self.s0) / max(time.time() - self.t0, 1e-9)
            eta = (self.total - self.step) / rate if rate > 0 else float("inf")
            log.info("step %d/%d  %.2f steps/s  ETA %s  %s", self.step, self.total, rate, _fmt_eta(eta),
                     " ".join(f"{k}={v}" for k, v in self.postfix.items()))

    def rate(self) -> float:
        return (self.step - self.s0) / max(time.time() - self.t0, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
