"""HTTP routes: the API (`/api/v1.0/...`, compatible with the original service), operations, the web page."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, send_file

from service.core import MAPS, SCALES, ApiError, BirdMaker, check_seed, check_truncation
from service.metrics import CONTENT_TYPE
from service.storage import LocalStorage, StorageError

api = Blueprint("api", __name__, url_prefix="/api/v1.0")
ops = Blueprint("ops", __name__)
web = Blueprint("web", __name__)

OPENAPI = Path(__file__).with_name("openapi.yaml")
EXAMPLES = [
    "the bird has a yellow crown and a black eyering that is round",
    "this bird has a red breast, a short black bill and brown wings",
    "a small blue bird with a white belly and a long tail",
    "this bird is grey with a white nape and an orange bill",
]
SIZE_NAMES = {"64": "small", "128": "medium", "256": "large", "small": "small", "medium": "medium",
              "large": "large"}


def maker() -> BirdMaker:
    return current_app.extensions["attngan"]


def json_body(allowed: set[str]) -> dict[str, Any]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"send a JSON body with the header Content-Type: application/json (got {mimetype or 'none'})")
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json",
                       f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_body", 'the body must be a JSON object, e.g. {"caption": "a small red bird"}')
    extra = sorted(set(data) - allowed)
    if extra:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
    return data


def deadline() -> float:
    """Now + REQUEST_TIMEOUT, or sooner when the caller sends a shorter `X-Request-Timeout` (seconds)."""
    limit = maker().settings.request_timeout_s
    raw = request.headers.get("X-Request-Timeout")
    if raw is not None:
        try:
            asked = float(raw)
        except ValueError:
            asked = -1.0
        if not 0 < asked < float("inf"):
            raise ApiError(400, "bad_timeout", f"X-Request-Timeout must be a positive number of seconds, got {raw!r}")
        limit = min(limit, asked)
    return time.monotonic() + limit


def describe(m: BirdMaker, caption: Any, seed: int, started: float, truncation: float) -> dict[str, Any]:
    out: dict[str, Any] = {"caption": caption.text, "elapsed": round(time.perf_counter() - started, 4),
                           "tokens": caption.encoded.tokens, "unknown": caption.unknown}
    if caption.truncated:
        out["truncated"] = caption.truncated  # words past WORDS_NUM, which the model does not see
    out.update(seed=seed, model_version=m.version, candidates=m.settings.candidates, truncation=truncation)
    return out


def storage_fields(m: BirdMaker, records: list[dict[str, Any]]) -> dict[str, Any]:
    degraded = next((r["degraded"] for r in records if r["degraded"]), None)
    if degraded:
        return {"storage": "inline", "storage_error": degraded}
    out: dict[str, Any] = {"storage": m.storage.kind}
    if m.storage.kind == "s3":
        out["url_expires_in"] = m.settings.url_expiry_s
    return out


@api.post("/bird")
def create_bird() -> Any:
    started = time.perf_counter()
    m = maker()
    body = json_body({"caption", "seed", "truncation"})
    caption = m.caption(body.get("caption"))
    seed = check_seed(body.get("seed"), m.settings.default_seed)
    psi = check_truncation(body.get("truncation"), m.settings.truncation)
    record = m.make(caption, [seed], maps=True, deadline=deadline(), truncation=psi)[0]
    bird = {name: record["urls"][name] for name in (*SCALES, *MAPS) if name in record["urls"]}
    bird.update(describe(m, caption, seed, started, psi))
    bird.update(cached=record["cached"], **storage_fields(m, [record]))
    return jsonify({"bird": bird, "request_id": g.request_id}), 201


@api.post("/birds")
def create_birds() -> Any:
    started = time.perf_counter()
    m = maker()
    body = json_body({"caption", "seed", "count", "truncation"})
    caption = m.caption(body.get("caption"))
    limit = m.settings.max_images
    count = body.get("count", min(6, limit))
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ApiError(400, "bad_count", f"count must be an integer from 1 to {limit}, got {count!r}")
    if count > limit:
        raise ApiError(400, "too_many_images", f"count {count} is over the limit of {limit} images per request")
    seed = check_seed(body.get("seed"), m.settings.default_seed)
    if seed + count - 1 > 2**32 - 1:
        raise ApiError(400, "bad_seed", f"seed + count - 1 must stay below 2**32 (seeds used: seed .. seed+{count - 1})")
    seeds = [seed + i for i in range(count)]
    psi = check_truncation(body.get("truncation"), m.settings.truncation)
    records = m.make(caption, seeds, maps=False, deadline=deadline(), truncation=psi)
    out: dict[str, Any] = {}
    for i, (s, record) in enumerate(zip(seeds, records), start=1):
        out[f"bird{i}"] = {**{n: record["urls"][n] for n in SCALES if n in record["urls"]}, "seed": s,
                           "cached": record["cached"]}
    out.update(describe(m, caption, seed, started, psi))
    out.update(count=count, **storage_fields(m, records))
    return jsonify({"bird": out, "request_id": g.request_id}), 201


@api.get("/bird.png")
def bird_png() -> Any:
    m = maker()
    caption = m.caption(request.args.get("caption"))
    seed = check_seed(request.args.get("seed"), m.settings.default_seed)
    psi = check_truncation(request.args.get("truncation"), m.settings.truncation)
    size = request.args.get("size", "large")
    if size not in SIZE_NAMES:
        raise ApiError(400, "bad_size", f"size must be one of 64, 128, 256, small, medium, large; got {size!r}")
    record = m.make(caption, [seed], maps=False, deadline=deadline(), truncation=psi)[0]
    name = SIZE_NAMES[size]
    if name not in record["urls"]:  # a one-stage model has only its last scale
        name = [n for n in SCALES if n in record["urls"]][-1]
    data = m.png(record, name)
    headers = {"X-Model-Version": m.version, "X-Seed": str(seed), "X-Truncation": f"{psi:g}", "X-Cache": "hit" if record["cached"] else "miss",
               "X-Tokens": " ".join(caption.encoded.tokens), "X-Unknown-Words": " ".join(caption.unknown),
               "Cache-Control": "public, max-age=86400"}
    return Response(data, mimetype="image/png", headers=headers)


@api.get("/model")
def model_info() -> Any:
    m = maker()
    bundle = current_app.extensions["attngan.bundle"]
    model = m.engine.model
    return jsonify({
        "version": m.version, "model_uri": current_app.extensions["attngan.model_source"].uri,
        "ready": m.engine.ready.is_set(), "config": bundle.config.to_dict(),
        "vocabulary_size": len(m.vocab), "created": bundle.manifest.get("created"),
        "training": bundle.manifest.get("training", {}), "metrics": bundle.manifest.get("metrics", {}),
        "device": str(getattr(model, "device", "")) or None, "precision": getattr(model, "precision", None),
        "candidates": m.settings.candidates, "truncation": m.settings.truncation,
        "limits": {"max_caption_chars": m.settings.max_caption_chars, "max_images": m.settings.max_images,
                   "max_batch_size": m.settings.max_batch_size, "request_timeout_s": m.settings.request_timeout_s},
    })


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))


@api.get("/openapi.json")
def openapi_json() -> Any:
    return jsonify(openapi_document())


@ops.get("/openapi.yaml")
def openapi_yaml() -> Any:
    return Response(OPENAPI.read_text(encoding="utf-8"), mimetype="application/yaml")


# operations


@ops.get("/healthz")
def healthz() -> Any:
    """Alive: the process answers. (Readiness is separate: a loading model is alive but not ready.)"""
    return jsonify({"status": "ok"})


def storage_error(m: BirdMaker, max_age_s: float = 2.0) -> str | None:
    """Probe the store at most every few seconds (readiness probes must not hammer S3)."""
    probe = m.storage_probe
    now = time.monotonic()
    if now - probe["at"] > max_age_s:
        try:
            m.storage.check()
            probe["error"] = None
        except StorageError as exc:
            probe["error"] = str(exc)
        probe["at"] = now
    return probe["error"]


@ops.get("/readyz")
def readyz() -> Any:
    m = maker()
    model = m.engine.model
    problems = []
    if not m.engine.ready.is_set():
        problems.append(m.engine.error or "model loading")
    error = storage_error(m)
    if error:
        problems.append(error)
    body = {"ready": not problems, "model_version": m.version,
            "device": str(getattr(model, "device", "")) or None, "precision": getattr(model, "precision", None),
            "storage": {"kind": m.storage.kind, "ok": error is None, "error": error,
                        "fallback": m.settings.storage_fallback},
            "queue_depth": m.engine.depth()}
    if problems:
        body["reasons"] = problems
        return jsonify(body), 503, {"Retry-After": "5"}
    return jsonify(body)


@ops.get("/metrics")
def metrics() -> Any:
    return Response(maker().metrics.exposition(), mimetype=CONTENT_TYPE.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE})


# the web page and locally stored images


@web.get("/")
def index() -> Any:
    m = maker()
    return render_template("index.html", examples=EXAMPLES, max_chars=m.settings.max_caption_chars,
                           version=m.version, api_key_required=bool(m.settings.api_key),
                           truncation=m.settings.truncation)


@web.get("/images/<path:key>")
def image(key: str) -> Any:
    storage = maker().storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "images are served from S3 by presigned URL, not from this path")
    try:
        path = storage.path(key)
    except ValueError:
        raise ApiError(404, "not_found", f"no such image: {key}") from None
    if not path.is_file() or path.suffix != ".png":
        raise ApiError(404, "not_found", f"no such image: {key}")
    response = send_file(path, mimetype="image/png", conditional=True, max_age=31536000)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # content-addressed
    return response
