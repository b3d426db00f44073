"""The Flask app factory: `create_app()` is what gunicorn runs (`service.app:create_app()`).

create_app resolves MODEL_URI to a local bundle and validates it (model_source.py; a missing or corrupt one
raises AttnGANError: the service refuses to start) and starts this worker's engine thread, which loads the
model, picks the precision, warms up and only then marks the worker ready. With gunicorn that happens in each
worker after fork (`preload_app` stays off), so the master never initialises CUDA.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from service.core import MAPS, ApiError, BirdMaker
from service.engine import Engine
from service.metrics import Metrics
from service.model_source import resolve_model
from service.settings import Settings, from_env
from service.storage import make_storage

log = logging.getLogger("service.app")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def load_model(settings: Settings, bundle_path: str) -> Any:
    """Runs in the engine thread of a worker: threads, device, precision choice, warm-up."""
    import torch

    from attngan import pipeline
    from attngan.pipeline import TextToImage

    torch.set_num_threads(settings.threads_per_worker())
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_sizes = sorted({1, settings.max_batch_size})

    def timed(model: Any, batch: int, repeats: int) -> float:
        probe = model.vocab.encode(" ".join(model.vocab.ixtoword[1:6]))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate([probe] * batch, list(range(batch)))
            best = min(best, time.perf_counter() - start)
        return best

    def load(precision: str) -> Any:
        model = TextToImage.from_bundle(bundle_path, device=device, precision=precision,
                                        candidates=settings.candidates, truncation=settings.truncation)
        if settings.warmup or settings.precision == "auto":
            for b in batch_sizes:  # first calls: allocator, kernels, lazy imports
                timed(model, b, 1)
        return model

    if settings.precision != "auto":
        model = load(settings.precision)
    elif device == "cpu" and not pipeline.cpu_has_fast_bf16():
        # no AMX / AVX512-BF16: bf16 would be emulated (several times slower), so it is not worth timing
        model = load("fp32")
        log.info("precision chosen", extra={"precision": model.precision, "fp32_ms": None, "bf16_ms": None,
                                            "reason": "this CPU has no native bf16", "batch_sizes": batch_sizes})
    else:
        # "bf16 where it is faster": measure this machine (one caption and a full batch) instead of guessing
        model = load("fp32")
        fp32 = sum(timed(model, b, 2) for b in batch_sizes)
        try:
            candidate = load("bf16")
            bf16 = sum(timed(candidate, b, 2) for b in batch_sizes)
        except Exception as exc:  # noqa: BLE001 - bf16 unsupported here: stay fp32
            log.info("bf16 unavailable", extra={"error": str(exc)})
            candidate, bf16 = None, float("inf")
        if bf16 < fp32 * 0.95:
            model = candidate
        del candidate
        log.info("precision chosen", extra={"precision": model.precision, "fp32_ms": round(fp32 * 1e3, 1),
                                            "bf16_ms": round(bf16 * 1e3, 1), "batch_sizes": batch_sizes})
    log.info("model ready", extra={"version": model.version, "device": str(model.device),
                                   "precision": model.precision, "threads": torch.get_num_threads()})
    return model


def render_maps(generated: Any) -> list[Any]:
    """map1 and map2: the attention grids of the 128 and 256 px stages (a model with word attention at 64 px too
    has a third, first, which the API does not name)."""
    return generated.attention_grids(last=len(MAPS))


def _fatal(message: str) -> None:
    """The model could not load in a gunicorn worker: exit so gunicorn stops with our one line logged."""
    if os.environ.get("ATTNGAN_UNDER_GUNICORN"):  # set by gunicorn_conf.py
        os._exit(3)  # gunicorn's WORKER_BOOT_ERROR: the master halts instead of respawning forever


def create_app(config: Settings | Mapping[str, Any] | None = None, *,
               model_loader: Callable[[Settings, str], Any] | None = None) -> Flask:
    """Build the app. `config`: Settings, or a mapping of Settings field overrides on top of the environment."""
    if isinstance(config, Settings):
        settings = config.validate()
    else:
        settings = from_env(**dict(config or {}))
    source = resolve_model(settings)  # MODEL_URI -> local bundle; AttnGANError -> refuse to start
    bundle = source.bundle
    from attngan.pipeline import check_candidates

    check_candidates(settings.candidates, bundle)  # CANDIDATES > 1 needs the image encoder: refuse to start
    metrics = Metrics()
    storage = make_storage(settings)
    loader = model_loader or load_model
    engine = Engine(lambda: loader(settings, str(bundle.path)), max_batch_size=settings.max_batch_size,
                    max_wait_s=settings.max_wait_ms / 1000.0, queue_size=settings.queue_size, metrics=metrics,
                    on_fatal=_fatal)
    maker = BirdMaker(settings, bundle.vocab, bundle.config.words_num, bundle.version, engine, storage, metrics,
                      render_maps)

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["attngan"] = maker
    app.extensions["attngan.bundle"] = bundle
    app.extensions["attngan.model_source"] = source

    from service.routes import api, ops, web

    app.register_blueprint(api)
    app.register_blueprint(ops)
    app.register_blueprint(web)
    _install_hooks(app, settings, metrics)
    engine.start()
    return app


def _install_hooks(app: Flask, settings: Settings, metrics: Metrics) -> None:
    access = logging.getLogger("service.access")

    @app.before_request
    def _begin() -> Any:
        g.start = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        if settings.api_key and request.path.startswith("/api/") and not request.path.endswith("openapi.json"):
            given = request.headers.get("X-API-Key", "")
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8"), settings.api_key.encode("utf-8")):
                raise ApiError(401, "unauthorized", "missing or wrong API key: send it as the X-API-Key header",
                               headers={"WWW-Authenticate": "Bearer"})
        return None

    @app.after_request
    def _finish(response: Any) -> Any:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("start", time.perf_counter())
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if route not in ("/healthz", "/readyz", "/metrics"):
            access.info("request", extra={"request_id": g.get("request_id"), "method": request.method,
                                          "path": request.path, "status": response.status_code,
                                          "ms": round(elapsed * 1000, 1)})
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        body = {"error": {"code": exc.code, "message": exc.message, **exc.extra},
                "request_id": g.get("request_id")}
        return jsonify(body), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        messages = {
            404: f"no such endpoint: {request.path}; see /openapi.yaml",
            405: f"{request.method} is not allowed on {request.path}; allowed: "
                 f"{', '.join(sorted(exc.valid_methods or [])) if hasattr(exc, 'valid_methods') else ''}",
            413: f"request body over the {settings.max_body_bytes}-byte limit",
        }
        code = (exc.name or "error").lower().replace(" ", "_")
        body = {"error": {"code": code, "message": messages.get(exc.code or 0, exc.description)},
                "request_id": g.get("request_id")}
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return jsonify(body), exc.code or 500, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        body = {"error": {"code": "internal_error", "message": "internal error; quote the request id to report it"},
                "request_id": g.get("request_id")}
        return jsonify(body), 500
