"""Where generated PNGs go and how callers reach them: a local directory (served by the app) or S3.

Keys are content-addressed (`<cache key>/<name>.png`, see `cache.py`), so the store doubles as the cache
shared by every worker and replica. S3 uses the default AWS credential chain (task role, env, profile);
the original service's `ACCESS_KEY_ID` / `ACCESS_SECRET_KEY` variables are still honoured. S3 failures
raise `StorageError` quickly (short timeouts, few retries) so the API can fall back or answer 503.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

from attngan.fileio import atomic_write
from service.settings import Settings

_KEY = re.compile(r"^[0-9a-f]{2,64}(/[A-Za-z0-9_.-]{1,64}){1,2}$")


class StorageError(Exception):
    """The store cannot be reached or refused the operation (message is safe to show callers)."""


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    kind: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def url(self, key: str) -> str: ...
    def check(self) -> None: ...


class LocalStorage:
    """Files under `root`; the app serves them at `url_prefix/<key>` (see `app.py`)."""

    kind = "local"

    def __init__(self, root: str | Path, url_prefix: str = "/images"):
        self.root = Path(root).resolve()
        self.url_prefix = url_prefix.rstrip("/")

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        path = self.path(key)
        try:
            # a reader (another worker) never sees half a file
            atomic_write(path, lambda tmp: tmp.write_bytes(data), sync=False)
        except OSError as exc:
            raise StorageError(f"cannot write {self.root}: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.root}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def url(self, key: str) -> str:
        return f"{self.url_prefix}/{check_key(key)}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"image directory {self.root} is not writable: {exc.strerror or exc}") from None


class S3Storage:
    """Objects in `s3://bucket/prefix<key>`, reached by presigned GET URLs that expire."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "images/", *, region: str = "", endpoint_url: str = "",
                 expiry_s: int = 3600, access_key: str = "", secret_key: str = ""):
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.expiry_s = expiry_s
        kwargs: dict = {
            "config": BotoConfig(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"},
                                 signature_version="s3v4"),
        }
        if region:
            kwargs["region_name"] = region
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        if access_key and secret_key:  # the original service's variables; otherwise the default chain
            kwargs["aws_access_key_id"] = access_key
            kwargs["aws_secret_access_key"] = secret_key
        self.client = boto3.session.Session().client("s3", **kwargs)

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, action: str, exc: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            reason = f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
        else:
            reason = type(exc).__name__
        return StorageError(f"S3 {action} on bucket {self.bucket} failed ({reason})")

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type,
                                   CacheControl="public, max-age=31536000, immutable")
        except Exception as exc:  # noqa: BLE001 - botocore raises many types; all mean "store failed"
            raise self._fail("upload", exc) from None

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("download", exc) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail("download", exc) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("lookup", exc) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail("lookup", exc) from None

    def url(self, key: str) -> str:
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)}, ExpiresIn=self.expiry_s)
        except Exception as exc:  # noqa: BLE001 - e.g. no credentials in the chain
            raise self._fail("presign", exc) from None

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("head_bucket", exc) from None


def make_storage(settings: Settings) -> LocalStorage | S3Storage:
    if settings.bucket_name:
        return S3Storage(settings.bucket_name, settings.s3_prefix, region=settings.region,
                         endpoint_url=settings.s3_endpoint_url, expiry_s=settings.url_expiry_s,
                         access_key=os.environ.get("ACCESS_KEY_ID", ""),
                         secret_key=os.environ.get("ACCESS_SECRET_KEY", ""))
    return LocalStorage(settings.image_dir)
