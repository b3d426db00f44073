"""Where the served model comes from: MODEL_URI -> a verified bundle directory on local disk.

The AWS deployment sets MODEL_URI from an SSM parameter:
  bundled (or unset)                            the bundle inside the image (BUNDLE_DIR, default models/default)
  s3://BUCKET/models/<job>/output/model.tar.gz  SageMaker's archive of /opt/ml/model (bundle files at its root)
  s3://BUCKET/models/x/                         an unpacked bundle under a prefix
  /some/dir or file:///some/dir                 a local bundle directory

S3 models are downloaded once into MODEL_CACHE_DIR, keyed by URI and ETag, so a restart with the same object
reuses the copy. Archives are extracted safely (no absolute paths, `..`, links or devices; tarfile's "data"
filter on top). Every failure is an AttnGANError with one line: the service refuses to start.

Resolution runs once, in the gunicorn master (gunicorn_conf.py), which exports the result to the environment;
the workers it forks reuse it instead of resolving again (`resolve_model` checks `RESOLVED_ENV`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from attngan.bundle import MANIFEST, Bundle, load_bundle
from attngan.errors import AttnGANError
from service.settings import Settings

log = logging.getLogger("service.model_source")
RESOLVED_ENV = "ATTNGAN_RESOLVED_MODEL"  # JSON {uri, path, ...} set by the gunicorn master for its workers
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_DONE = ".complete"  # marker written last into a cache entry


@dataclass
class ModelSource:
    """A resolved MODEL_URI and its validated bundle."""

    uri: str  # as configured
    kind: str  # bundled | local | s3-archive | s3-prefix
    path: str  # the local bundle directory
    bundle: Bundle = field(repr=False, compare=False)
    etag: str = ""
    bytes: int = 0  # downloaded bytes (0 when bundled, local or already in the cache)
    seconds: float = 0.0
    cached: bool = False

    def public(self) -> dict[str, Any]:
        """What /api/v1.0/model and the start log show (and what the master hands its workers)."""
        return {"uri": self.uri, "kind": self.kind, "path": self.path, "etag": self.etag, "bytes": self.bytes,
                "seconds": self.seconds, "cached": self.cached, "version": self.bundle.version}


@dataclass
class _Location:
    kind: str
    path: str
    etag: str = ""
    bytes: int = 0
    cached: bool = False


def resolve_model(settings: Settings) -> ModelSource:
    """MODEL_URI (settings.model_uri) -> ModelSource with a validated bundle; AttnGANError when it cannot be had."""
    uri = settings.model_uri.strip() or "bundled"
    inherited = os.environ.get(RESOLVED_ENV)
    if inherited:  # the gunicorn master resolved (and downloaded) it already: validate the same directory
        try:
            data = json.loads(inherited)
        except json.JSONDecodeError:
            data = {}
        if isinstance(data, dict) and data.get("uri") == uri:
            where = _Location(**{k: data[k] for k in ("kind", "path", "etag", "bytes", "cached") if k in data})
            return ModelSource(uri, where.kind, where.path, load_bundle(where.path), where.etag, where.bytes,
                               float(data.get("seconds", 0.0)), where.cached)
    start = time.perf_counter()
    if uri == "bundled":
        where = _Location("bundled", settings.bundle_dir)
    elif uri.startswith("s3://"):
        where = _S3Fetcher(settings, uri).fetch()
    elif uri.startswith("file://") or "://" not in uri:
        where = _Location("local", uri.removeprefix("file://"))
    else:
        raise AttnGANError(f"MODEL_URI={uri!r}: use 'bundled', s3://BUCKET/KEY.tar.gz, s3://BUCKET/PREFIX/ "
                           "or a local directory")
    bundle = load_bundle(where.path)
    source = ModelSource(uri, where.kind, where.path, bundle, where.etag, where.bytes,
                         round(time.perf_counter() - start, 3), where.cached)
    if settings.log_level.lower() in ("debug", "info"):
        _announce("model resolved", source.public())
    return source


def export_resolved(source: ModelSource) -> None:
    """Hand the resolution to processes forked or started from here (gunicorn workers)."""
    os.environ[RESOLVED_ENV] = json.dumps(source.public())


def _announce(msg: str, fields: dict[str, Any]) -> None:
    """One JSON line. In the gunicorn master logging is not configured yet when this runs: write it directly."""
    if logging.getLogger().handlers:
        log.info(msg, extra=fields)
    else:
        print(json.dumps({"level": "info", "logger": log.name, "msg": msg, **fields}, default=str),
              file=sys.stderr, flush=True)


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise AttnGANError(f"MODEL_URI={uri!r} names no object: use s3://BUCKET/KEY.tar.gz or s3://BUCKET/PREFIX/")
    return bucket, key


def _safe_relative(name: str, where: str) -> PurePosixPath:
    """A member/key name as a relative path that stays inside its directory."""
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise AttnGANError(f"{where}: refusing unsafe path {name!r} (absolute or '..'); rebuild the model archive")
    return path


def safe_extract(archive: Path, dest: Path, *, where: str) -> None:
    """Extract a (gzip) tar, refusing absolute paths, '..', links and special files before writing anything."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                _safe_relative(m.name, where)
                if not (m.isfile() or m.isdir()):
                    raise AttnGANError(f"{where}: refusing archive member {m.name!r} (links and special files "
                                       "are not allowed in a model archive)")
                total += m.size
            free = shutil.disk_usage(dest).free
            if total > free:
                raise AttnGANError(f"{where}: the archive unpacks to {total} bytes but {dest} has {free} free; "
                                   "point MODEL_CACHE_DIR at a larger disk")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        first = str(exc).splitlines()[0].rstrip(":") if str(exc) else ""
        raise AttnGANError(f"{where}: not a readable model archive ({type(exc).__name__}: {first})") from None


def find_bundle_dir(root: Path, where: str) -> Path:
    """The bundle inside an unpacked download: manifest.json at the root or in exactly one subdirectory."""
    if (root / MANIFEST).is_file():
        return root
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise AttnGANError(f"{where} is not a model bundle: no {MANIFEST} at its root or one level down")
    raise AttnGANError(f"{where} holds {len(found)} bundles ({', '.join(p.name for p in found)}); point "
                       "MODEL_URI at one")


class _Progress:
    """boto3 transfer callback: a log line every few seconds with bytes, rate and ETA."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate and self.total else None
            log.info("downloading model", extra={"object": self.what, "bytes": self.done, "total": self.total,
                                                 "mb_per_s": round(rate / 1e6, 2),
                                                 "eta_s": round(eta, 1) if eta is not None else None})


class _S3Fetcher:
    def __init__(self, settings: Settings, uri: str):
        import boto3
        from botocore.config import Config as BotoConfig

        self.uri = uri
        self.where = f"MODEL_URI {uri}"
        self.bucket, self.key = split_s3_uri(uri)
        kwargs: dict[str, Any] = {"config": BotoConfig(connect_timeout=5, read_timeout=60,
                                                       retries={"max_attempts": 4, "mode": "standard"})}
        if settings.region:
            kwargs["region_name"] = settings.region
        if settings.s3_endpoint_url:
            kwargs["endpoint_url"] = settings.s3_endpoint_url
        self.client = boto3.session.Session().client("s3", **kwargs)  # default credential chain (task role)
        root = settings.model_cache_dir or os.path.join(tempfile.gettempdir(), "attngan-models")
        self.cache = Path(root) / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def _fail(self, action: str, exc: Exception) -> AttnGANError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "error"))
            hint = {"404": "no such bucket or key", "NoSuchKey": "no such key", "NoSuchBucket": "no such bucket",
                    "403": "access denied: check the task role's s3:GetObject/s3:ListBucket on it",
                    "AccessDenied": "access denied: check the task role's s3:GetObject/s3:ListBucket on it"}
            reason = hint.get(code, f"{code}: {err.get('Message', '')}".rstrip(": "))
        elif isinstance(exc, NoCredentialsError):
            reason = "no AWS credentials (give the task a role, or set AWS_PROFILE / AWS_ACCESS_KEY_ID)"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        return AttnGANError(f"{self.where}: {action} failed ({' '.join(reason.split())[:300]})")

    def fetch(self) -> _Location:
        archive = self.key.endswith(ARCHIVE_SUFFIXES)
        if archive:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key)
            except Exception as exc:  # noqa: BLE001 - any S3 failure means: refuse to start, with the reason
                raise self._fail("head_object", exc) from None
            etag, size, objects = head["ETag"].strip('"'), int(head["ContentLength"]), None
        else:
            objects = self._list()
            etag = hashlib.sha256("\n".join(f"{k} {e}" for k, e, _ in objects).encode()).hexdigest()[:32]
            size = sum(s for _, _, s in objects)
        entry = self.cache / hashlib.sha256(etag.encode()).hexdigest()[:16]
        kind = "s3-archive" if archive else "s3-prefix"
        if (entry / _DONE).is_file():
            where = (entry / _DONE).read_text().strip()
            return _Location(kind, str(entry / where), etag, cached=True)

        self.cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache))
        try:
            unpacked = work / "bundle"
            unpacked.mkdir()
            if archive:
                local = work / "model.tar.gz"
                self._download(self.key, local, size)
                safe_extract(local, unpacked, where=self.where)
                local.unlink()
            else:
                for key, _, n in objects or []:
                    rel = _safe_relative(key[len(self.prefix):], self.where)
                    (unpacked / rel).parent.mkdir(parents=True, exist_ok=True)
                    self._download(key, unpacked / rel, n)
            bundle_dir = find_bundle_dir(unpacked, self.where)
            try:
                load_bundle(bundle_dir)  # verify before it becomes a cache entry
            except AttnGANError as exc:
                raise AttnGANError(f"{self.where}: {exc}") from None
            (work / _DONE).write_text(str(bundle_dir.relative_to(work)))
            try:
                os.replace(work, entry)  # atomic; a concurrent resolver that won the race leaves its copy
            except OSError:
                if not (entry / _DONE).is_file():
                    raise
        except AttnGANError:
            raise
        except OSError as exc:
            raise AttnGANError(f"{self.where}: cannot write the model cache under {self.cache} "
                               f"({exc}); set MODEL_CACHE_DIR to a writable directory") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in self.cache.iterdir():  # earlier versions of the same URI
            if old != entry and not old.name.startswith(".partial-"):
                shutil.rmtree(old, ignore_errors=True)
        where = (entry / _DONE).read_text().strip()
        return _Location(kind, str(entry / where), etag, bytes=size)

    @property
    def prefix(self) -> str:
        return self.key if self.key.endswith("/") else self.key + "/"

    def _list(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                out += [(o["Key"], o["ETag"].strip('"'), int(o["Size"])) for o in page.get("Contents", [])
                        if not o["Key"].endswith("/")]
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list_objects_v2", exc) from None
        if not out:
            raise AttnGANError(f"{self.where}: no objects under s3://{self.bucket}/{self.prefix}; "
                               "upload a bundle there or point MODEL_URI at a model.tar.gz")
        return sorted(out)

    def _download(self, key: str, dest: Path, size: int) -> None:
        try:
            self.client.download_file(self.bucket, key, str(dest), Callback=_Progress(key, size))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"download of s3://{self.bucket}/{key}", exc) from None
