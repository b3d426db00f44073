"""Gunicorn configuration (used by `make serve`, `attngan serve` and the containers).

    gunicorn -c service/gunicorn_conf.py 'service.app:create_app()'

- gthread workers: request threads wait on the worker's batching engine, so concurrent requests share batches.
- No preload: each worker builds the app (and loads the model) after fork; the master never touches CUDA.
- MODEL_URI is resolved (model_source.py: S3 download, cached) and the bundle validated once in the master
  (when this file loads, before any worker starts), so a missing or corrupt model stops the service with one
  clear line instead of a crash loop. (Validation reads files and builds networks on the meta device only: no
  CUDA in the master.)
- SIGTERM: workers stop accepting and finish in-flight requests within `graceful_timeout` (GRACEFUL_TIMEOUT).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from attngan.errors import AttnGANError
from service.logs import logconfig_dict
from service.model_source import export_resolved, resolve_model
from service.settings import from_env

try:
    _settings = from_env()
    # MODEL_URI is resolved (S3 download + unpack, cached) and the bundle validated once, here in the master;
    # a missing or corrupt model stops the service before any worker starts. Workers reuse the result.
    _source = resolve_model(_settings)
    _bundle = _source.bundle
    export_resolved(_source)
except AttnGANError as exc:
    print(f"attngan serve: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)

bind = os.environ.get("BIND", f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}")
workers = _settings.workers
worker_class = "gthread"
# request threads per worker: enough to fill a batch and keep a queue waiting; the engine bounds the work
threads = int(os.environ.get("THREADS", max(8, _settings.max_batch_size * 2 + 4)))
preload_app = False
timeout = int(os.environ.get("WORKER_TIMEOUT", "120"))  # heartbeat; model loading runs beside it
graceful_timeout = int(_settings.graceful_timeout_s)
keepalive = 5  # above the ALB idle timeout's usual keep-alive reuse window; below its 60 s
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
limit_request_line = 8190
limit_request_fields = 100
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None  # the app logs one JSON line per request, with its request id
logconfig_dict = logconfig_dict(_settings.log_level)

# one math-library thread pool per worker, sized so workers do not oversubscribe the cores (set before fork)
_threads = str(_settings.threads_per_worker())
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)
os.environ["ATTNGAN_UNDER_GUNICORN"] = "1"
# Prometheus samples from every worker go to files that /metrics merges (a fresh directory per start)
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="attngan-metrics-")
    _own_metrics_dir = True
else:
    _own_metrics_dir = False


def on_starting(server) -> None:
    server.log.info("serving %s: bundle %s (version %s), storage %s", _source.uri, _bundle.path, _bundle.version,
                    _settings.storage_kind)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def worker_exit(server, worker) -> None:
    """Runs in the worker after the graceful drain: stop the engine thread."""
    app = getattr(worker, "wsgi", None)
    maker = getattr(app, "extensions", {}).get("attngan") if app is not None else None
    if maker is not None:
        maker.engine.stop(timeout=2.0)
