"""Service settings: one dataclass, read from the environment (12-factor), checked once at start.

Every knob has a safe default so `make serve` works with nothing set. Bad values raise `AttnGANError`
with one line naming the variable, so the service refuses to start instead of misbehaving later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError

DEFAULT_BUNDLE = "models/default"
MAX_CANDIDATES = 32  # attngan.pipeline.MAX_CANDIDATES (not imported: settings are read before torch is)


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclass
class Settings:
    # model
    bundle_dir: str = DEFAULT_BUNDLE  # BUNDLE_DIR or MODEL_BUNDLE
    model_uri: str = "bundled"  # bundled (bundle_dir) | s3://B/K.tar.gz | s3://B/prefix/ | a local dir (model_source.py)
    model_cache_dir: str = ""  # where S3 models are unpacked; empty: <tmp>/attngan-models
    device: str = "auto"  # auto | cpu | cuda (auto: cuda when a GPU is visible, checked in the worker only)
    precision: str = "auto"  # auto (measure fp32 vs bf16 at warm-up, keep the faster; fp32 on a CPU without native bf16) | fp32 | bf16
    torch_threads: int = 0  # 0: available CPUs // gunicorn workers
    workers: int = 1  # gunicorn worker processes (WEB_CONCURRENCY); one model copy each
    # engine
    max_batch_size: int = 4  # captions generated in one forward pass
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    queue_size: int = 16  # requests waiting beyond the running batch; more get 503 + Retry-After
    request_timeout_s: float = 30.0  # per-request deadline (queue + generation); past it: 504
    warmup: bool = True
    # request limits
    max_caption_chars: int = 500
    max_images: int = 6  # POST /birds count limit (the original made 6)
    max_body_bytes: int = 16 * 1024
    default_seed: int = 100  # the original's fixed seed; same caption + seed -> same bird
    candidates: int = 1  # best of N: each bird is the best of N draws by the DAMSM encoders (N generator passes)
    truncation: float = 1.0  # noise drawn at this times its spread: lower keeps closer to the caption, less variety
    # storage and cache
    bucket_name: str = ""  # S3 when set, else the local directory
    s3_prefix: str = "images/"
    s3_endpoint_url: str = ""  # S3-compatible endpoint (tests, MinIO); empty: AWS
    region: str = ""
    url_expiry_s: int = 3600  # presigned URL lifetime
    storage_fallback: str = "inline"  # when S3 fails: inline (data: URLs, flagged) | fail (503 with reason)
    image_dir: str = "output/service-images"
    cache_entries: int = 1024  # in-process cache of finished results (storage is the shared cache)
    # operations
    api_key: str = field(default="", repr=False)
    graceful_timeout_s: float = 25.0  # below ECS stopTimeout (30 s)
    log_level: str = "info"

    @property
    def storage_kind(self) -> str:
        return "s3" if self.bucket_name else "local"

    def threads_per_worker(self) -> int:
        return self.torch_threads or max(1, available_cpus() // max(1, self.workers))

    def public(self) -> dict[str, Any]:
        """Settings safe to show (no secrets)."""
        out = asdict(self)
        out["api_key"] = bool(self.api_key)
        return out

    def validate(self) -> Settings:
        def need(cond: bool, var: str, what: str) -> None:
            if not cond:
                raise AttnGANError(f"{var}: {what}")

        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "DEVICE",
             f"must be auto, cpu or cuda, got {self.device!r}")
        need(self.precision in ("auto", "fp32", "bf16"), "PRECISION",
             f"must be auto, fp32 or bf16, got {self.precision!r}")
        need(self.max_batch_size >= 1, "MAX_BATCH_SIZE", "must be at least 1")
        need(self.max_wait_ms >= 0, "MAX_WAIT_MS", "must be >= 0")
        need(self.queue_size >= 0, "QUEUE_SIZE", "must be >= 0")
        need(self.request_timeout_s > 0, "REQUEST_TIMEOUT", "must be > 0 seconds")
        need(1 <= self.max_images <= 64, "MAX_IMAGES", "must be between 1 and 64")
        need(self.max_caption_chars >= 1, "MAX_CAPTION_CHARS", "must be at least 1")
        need(self.storage_fallback in ("inline", "fail"), "STORAGE_FALLBACK", "must be inline or fail")
        need(1 <= self.url_expiry_s <= 7 * 24 * 3600, "URL_EXPIRY", "must be 1 s .. 7 days (the S3 maximum)")
        need(0 <= self.default_seed < 2**32, "DEFAULT_SEED", "must be in 0 .. 2**32-1")
        need(1 <= self.candidates <= MAX_CANDIDATES, "CANDIDATES",
             f"must be between 1 and {MAX_CANDIDATES} (each bird the best of that many draws)")
        need(0 <= self.truncation <= 1, "TRUNCATION",
             f"must be between 0 and 1 (1: the paper's sampling), got {self.truncation!r}")
        need(self.workers >= 1, "WEB_CONCURRENCY", "must be at least 1")
        return self


# env var -> (field, type); the first variable set wins for a field named twice
_ENV: list[tuple[str, str, type]] = [
    ("BUNDLE_DIR", "bundle_dir", str),
    ("MODEL_BUNDLE", "bundle_dir", str),
    ("MODEL_URI", "model_uri", str),
    ("MODEL_CACHE_DIR", "model_cache_dir", str),
    ("DEVICE", "device", str),
    ("PRECISION", "precision", str),
    ("TORCH_THREADS", "torch_threads", int),
    ("WEB_CONCURRENCY", "workers", int),
    ("MAX_BATCH_SIZE", "max_batch_size", int),
    ("MAX_WAIT_MS", "max_wait_ms", float),
    ("QUEUE_SIZE", "queue_size", int),
    ("REQUEST_TIMEOUT", "request_timeout_s", float),
    ("WARMUP", "warmup", bool),
    ("MAX_CAPTION_CHARS", "max_caption_chars", int),
    ("MAX_IMAGES", "max_images", int),
    ("MAX_BODY_BYTES", "max_body_bytes", int),
    ("DEFAULT_SEED", "default_seed", int),
    ("CANDIDATES", "candidates", int),
    ("TRUNCATION", "truncation", float),
    ("BUCKET_NAME", "bucket_name", str),
    ("S3_PREFIX", "s3_prefix", str),
    ("S3_ENDPOINT_URL", "s3_endpoint_url", str),
    ("AWS_REGION", "region", str),
    ("AWS_DEFAULT_REGION", "region", str),
    ("URL_EXPIRY", "url_expiry_s", int),
    ("STORAGE_FALLBACK", "storage_fallback", str),
    ("IMAGE_DIR", "image_dir", str),
    ("CACHE_ENTRIES", "cache_entries", int),
    ("API_KEY", "api_key", str),
    ("GRACEFUL_TIMEOUT", "graceful_timeout_s", float),
    ("LOG_LEVEL", "log_level", str),
]


def _parse(var: str, raw: str, kind: type) -> Any:
    raw = raw.strip()
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        return kind(raw)
    except ValueError:
        raise AttnGANError(f"{var}={raw!r} is not a valid {kind.__name__}") from None


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from environment variables (see `_ENV`), then keyword overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, name, kind in _ENV:
        if name in values or var not in env or env[var] == "" and kind is not str:
            continue
        if env[var] == "" and name == "bundle_dir":
            continue
        values[name] = _parse(var, env[var], kind)
    values.update(overrides)
    return Settings(**values).validate()
