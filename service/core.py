"""Caption in, stored birds out: validation, cache, engine, PNG encoding, storage, fallbacks.

`BirdMaker` is everything the routes do that is not HTTP. Every refusal is an `ApiError` with a status
and a message saying what to fix; the routes turn it into JSON. Nothing here imports torch at module
level (the gunicorn master imports this file; the model lives in the engine thread of each worker).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from attngan.text import EncodedCaption, Vocabulary
from service.cache import ResultCache, cache_key
from service.engine import DeadlineExceeded, Engine, NotReady, QueueFull
from service.metrics import Metrics
from service.settings import Settings
from service.storage import StorageError

log = logging.getLogger("service.core")

SCALES = ("small", "medium", "large")  # 64, 128, 256 (the original's names)
MAPS = ("map1", "map2")  # attention grids of the 2nd and 3rd stage
MAX_SEED = 2**32 - 1


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra


@dataclass
class Caption:
    text: str
    encoded: EncodedCaption  # what the model sees (known tokens, at most words_num)
    unknown: list[str]
    truncated: list[str]


def check_caption(value: Any, settings: Settings) -> str:
    if value is None:
        raise ApiError(400, "missing_caption", 'send a caption, e.g. {"caption": "a small bird with a red crown"}')
    if not isinstance(value, str):
        raise ApiError(400, "bad_caption", f"caption must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ApiError(400, "empty_caption", "caption is empty; describe a bird, e.g. 'a small red bird'")
    if len(value) > settings.max_caption_chars:
        raise ApiError(400, "caption_too_long",
                       f"caption has {len(value)} characters; the limit is {settings.max_caption_chars}")
    bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")
                  and c not in "\t\n\r"})
    if bad:
        raise ApiError(400, "control_characters",
                       f"caption contains control or invisible characters ({', '.join(bad[:5])}); send plain text")
    return value


def check_seed(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise ApiError(400, "bad_seed", f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}")
    if not 0 <= value <= MAX_SEED:
        raise ApiError(400, "bad_seed", f"seed must be an integer from 0 to {MAX_SEED}, got {value}")
    return value


def check_truncation(value: Any, default: float) -> float:
    """A request's truncation: a number from 0 to 1 (a query string's text too); absent: the server's."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ApiError(400, "bad_truncation", "truncation must be a number from 0 to 1 (1: the paper's sampling; "
                       f"lower: closer to the caption, less variety between seeds), got {value!r}")
    return float(value)


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


class BirdMaker:
    def __init__(self, settings: Settings, vocab: Vocabulary, words_num: int, version: str, engine: Engine,
                 storage: Any, metrics: Metrics, render_maps: Callable[[Any], list[Any]]):
        self.settings = settings
        self.vocab = vocab
        self.words_num = words_num
        self.version = version
        self.engine = engine
        self.storage = storage
        self.metrics = metrics
        self.render_maps = render_maps  # Generated -> [PIL map1, map2]
        self.cache = ResultCache(settings.cache_entries)
        self.storage_probe: dict[str, Any] = {"at": -1e9, "error": None}  # readiness' cached storage check

    # input

    def caption(self, value: Any) -> Caption:
        text = check_caption(value, self.settings)
        enc = self.vocab.encode(text)
        if not enc.ids:
            words = ", ".join(enc.unknown[:10]) or "none"
            raise ApiError(422, "no_known_words",
                           f"none of the caption's words are in the model's vocabulary (unknown: {words}); "
                           "describe the bird in plain English, e.g. 'a small bird with a red crown'",
                           unknown=enc.unknown)
        used = EncodedCaption(tokens=enc.tokens[:self.words_num], ids=enc.ids[:self.words_num], unknown=enc.unknown)
        return Caption(text=text, encoded=used, unknown=enc.unknown, truncated=enc.tokens[self.words_num:])

    # generation with cache and storage

    def make(self, caption: Caption, seeds: list[int], *, maps: bool, deadline: float,
             truncation: float | None = None) -> list[dict[str, Any]]:
        """One record per seed: {"key", "cached", "urls": {name: url}, "degraded": reason or None, "png": {...}}.
        `truncation`: the request's (None: the server's TRUNCATION)."""
        psi = self.settings.truncation if truncation is None else truncation
        keys = [cache_key(self.version, caption.encoded.tokens, s, self.settings.candidates, psi) for s in seeds]
        records: list[dict[str, Any] | None] = [self._lookup(k, maps) for k in keys]
        todo = [i for i, r in enumerate(records) if r is None]
        self.metrics.cache_hits.inc(len(seeds) - len(todo))
        self.metrics.cache_misses.inc(len(todo))
        if todo:
            for i, generated in zip(todo, self._generate(caption.encoded, [seeds[i] for i in todo], deadline, psi)):
                records[i] = self._store(keys[i], generated, maps)
        return records  # type: ignore[return-value]

    def _lookup(self, key: str, maps: bool) -> dict[str, Any] | None:
        record = self.cache.get(key)
        if record is None:
            try:
                raw = self.storage.get(f"{key}/meta.json")
            except StorageError:
                self.metrics.storage_errors.labels("lookup").inc()
                return None
            if raw is None:
                return None
            record = json.loads(raw)
            self.cache.put(key, record)
        if maps and not record.get("maps"):
            return None  # stored by a request that did not render attention maps
        try:
            urls = {name: self.storage.url(f"{key}/{name}.png") for name in record["names"]}
        except StorageError:
            self.metrics.storage_errors.labels("presign").inc()
            return None
        return {"key": key, "cached": True, "urls": urls, "degraded": None}

    def _generate(self, encoded: EncodedCaption, seeds: list[int], deadline: float, truncation: float) -> list[Any]:
        try:
            jobs = self.engine.submit([(encoded, s) for s in seeds], deadline, truncation)
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except NotReady as exc:
            self.metrics.rejected.labels("not_ready").inc()
            raise ApiError(503, "not_ready", f"the model is not ready: {exc}", headers={"Retry-After": "5"}) from None
        results = []
        try:
            for job in jobs:
                results.append(job.future.result(timeout=max(0.0, deadline - time.monotonic())))
        except (FutureTimeout, DeadlineExceeded):
            for job in jobs:
                job.future.cancel()  # still queued: the engine skips it
            self.metrics.rejected.labels("deadline").inc()
            raise ApiError(504, "deadline_exceeded",
                           f"generation did not finish within {self.settings.request_timeout_s:g} s; "
                           "the service is busy, retry later") from None
        self.metrics.images.inc(len(results))
        return results

    def _store(self, key: str, generated: Any, maps: bool) -> dict[str, Any]:
        images = {name: png_bytes(img) for name, img in zip(SCALES, generated.images)}
        if maps:
            for name, img in zip(MAPS, self.render_maps(generated)):
                images[name] = png_bytes(img)
        record = {"names": sorted(images), "maps": maps, "version": self.version}
        try:
            for name, data in images.items():
                self.storage.put(f"{key}/{name}.png", data, "image/png")
            self.storage.put(f"{key}/meta.json", json.dumps(record).encode(), "application/json")
            urls = {name: self.storage.url(f"{key}/{name}.png") for name in images}
        except StorageError as exc:
            self.metrics.storage_errors.labels("upload").inc()
            log.warning("storage failed", extra={"error": str(exc)})
            if self.settings.storage_fallback == "fail":
                raise ApiError(503, "storage_unavailable", f"images could not be stored: {exc}",
                               headers={"Retry-After": "30"}) from None
            urls = {name: "data:image/png;base64," + base64.b64encode(data).decode() for name, data in images.items()}
            return {"key": key, "cached": False, "urls": urls, "png": images,
                    "degraded": f"{exc}; images are inline data: URLs"}
        self.cache.put(key, record)
        return {"key": key, "cached": False, "urls": urls, "png": images, "degraded": None}

    def png(self, record: dict[str, Any], name: str) -> bytes:
        """The bytes of one stored image (for GET bird.png)."""
        if "png" in record and name in record["png"]:
            return record["png"][name]
        try:
            data = self.storage.get(f"{record['key']}/{name}.png")
        except StorageError as exc:
            raise ApiError(503, "storage_unavailable", f"image could not be read: {exc}",
                           headers={"Retry-After": "30"}) from None
        if data is None:
            raise ApiError(503, "storage_unavailable", "a cached image vanished from storage; retry",
                           headers={"Retry-After": "1"})
        return data
