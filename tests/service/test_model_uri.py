"""MODEL_URI: the service serves the bundle the AWS deployment names (bundled, S3 model.tar.gz, S3 prefix).

S3 is moto's HTTP server on 127.0.0.1. The S3 bundle has different weights from the local one, so a served
bird's model_version proves which bundle answered.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import requests

from attngan.errors import AttnGANError
from tests.service.conftest import start_moto

BUCKET = "attngan-test-models"
ARCHIVE_KEY = "models/job-1/output/model.tar.gz"  # where SageMaker packs /opt/ml/model
PREFIX_KEY = "models/unpacked/"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def bundle_tar(bundle: Path, under: str = "") -> bytes:
    """SageMaker's packaging: the files of /opt/ml/model at the archive root (or under a folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(bundle.iterdir()):
            tar.add(f, arcname=f"{under}{f.name}")
    return buf.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.fixture(scope="module")
def s3_bundle(tmp_path_factory, bundle_dir: Path):
    """(path, version) of a second random bundle: same architecture and vocabulary, other weights."""
    from attngan.bundle import load_bundle, write_random_bundle

    local = load_bundle(bundle_dir)
    out = write_random_bundle(tmp_path_factory.mktemp("s3bundle") / "b", config=local.config, vocab=local.vocab,
                              seed=1)
    version = load_bundle(out).version
    assert version != local.version
    return out, version


@pytest.fixture(scope="module")
def moto(s3_bundle):
    """moto S3 on loopback with: the bundle as model.tar.gz, as a prefix, a nested archive and bad archives."""
    from attngan.bundle import WEIGHT_FILES

    server, endpoint, s3 = start_moto(BUCKET)
    path, _ = s3_bundle
    s3.put_object(Bucket=BUCKET, Key=ARCHIVE_KEY, Body=bundle_tar(path))
    s3.put_object(Bucket=BUCKET, Key="models/nested/model.tar.gz", Body=bundle_tar(path, under="bundle/"))
    for f in path.iterdir():
        s3.put_object(Bucket=BUCKET, Key=PREFIX_KEY + f.name, Body=f.read_bytes())
        tampered = b"not the weights" if f.name == WEIGHT_FILES["generator"] else f.read_bytes()
        s3.put_object(Bucket=BUCKET, Key="models/tampered/" + f.name, Body=tampered)
    s3.put_object(Bucket=BUCKET, Key="models/evil/model.tar.gz",
                  Body=tar_gz([member("manifest.json", b"{}"), member("../escaped.txt", b"gotcha")]))
    s3.put_object(Bucket=BUCKET, Key="models/link/model.tar.gz",
                  Body=tar_gz([member("manifest.json", kind=tarfile.SYMTYPE, link="/etc/passwd")]))
    s3.put_object(Bucket=BUCKET, Key="models/corrupt/model.tar.gz", Body=b"\x1f\x8b not really gzip" * 10)
    s3.put_object(Bucket=BUCKET, Key="models/notbundle/model.tar.gz", Body=tar_gz([member("README.txt")]))
    yield endpoint, s3
    server.stop()


@pytest.fixture()
def resolve(moto, tmp_path, monkeypatch):
    """resolve(uri, **settings) in this process, with the moto endpoint and a fresh cache directory."""
    from service.model_source import RESOLVED_ENV, resolve_model
    from service.settings import from_env

    endpoint, _ = moto
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(RESOLVED_ENV, raising=False)
    cache = tmp_path / "cache"

    def run(uri: str, **overrides):
        env = {"MODEL_URI": uri, "S3_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
               "MODEL_CACHE_DIR": str(cache)}
        return resolve_model(from_env(env, **overrides))

    run.cache = cache
    return run


def test_archive_is_downloaded_verified_and_cached(resolve, s3_bundle, moto):
    _, s3 = moto
    first = resolve(f"s3://{BUCKET}/{ARCHIVE_KEY}")
    assert first.kind == "s3-archive" and not first.cached and first.bytes > 0
    assert first.bundle.version == s3_bundle[1]
    assert Path(first.path).is_relative_to(resolve.cache)
    # a restart with the same object reuses the copy (no download)
    again = resolve(f"s3://{BUCKET}/{ARCHIVE_KEY}")
    assert again.cached and again.bytes == 0 and again.path == first.path
    # a new object at the same key (new ETag) is downloaded again and replaces the old copy
    s3.put_object(Bucket=BUCKET, Key="models/moving/model.tar.gz", Body=bundle_tar(s3_bundle[0]))
    old = resolve(f"s3://{BUCKET}/models/moving/model.tar.gz")
    s3.put_object(Bucket=BUCKET, Key="models/moving/model.tar.gz", Body=bundle_tar(s3_bundle[0], under="v2/"))
    new = resolve(f"s3://{BUCKET}/models/moving/model.tar.gz")
    assert not new.cached and new.etag != old.etag and not Path(old.path).exists()


def test_bundle_one_level_down_and_prefix_bundles(resolve, s3_bundle):
    nested = resolve(f"s3://{BUCKET}/models/nested/model.tar.gz")
    assert Path(nested.path).name == "bundle" and nested.bundle.version == s3_bundle[1]
    for uri in (f"s3://{BUCKET}/{PREFIX_KEY}", f"s3://{BUCKET}/{PREFIX_KEY.rstrip('/')}"):
        prefix = resolve(uri)
        assert prefix.kind == "s3-prefix" and prefix.bundle.version == s3_bundle[1]
    assert resolve(f"s3://{BUCKET}/{PREFIX_KEY}").cached


def test_bundled_and_local_paths_use_the_local_bundle(resolve, bundle_dir):
    from attngan.bundle import load_bundle

    local = load_bundle(bundle_dir).version
    for uri in ("bundled", ""):
        source = resolve(uri, bundle_dir=str(bundle_dir))
        assert source.kind == "bundled" and source.bundle.version == local
    assert resolve(str(bundle_dir)).bundle.version == local
    assert resolve(f"file://{bundle_dir}").kind == "local"
    assert not resolve.cache.exists()  # nothing downloaded


@pytest.mark.parametrize(("uri", "expected"), [
    (f"s3://{BUCKET}/models/missing/model.tar.gz", "no such bucket or key"),
    ("s3://no-such-bucket/models/x/model.tar.gz", "no such bucket or key"),  # S3's HEAD answers a bare 404
    ("s3://no-such-bucket/models/x/", "no such bucket"),
    (f"s3://{BUCKET}/models/empty/", "no objects under"),
    (f"s3://{BUCKET}/models/evil/model.tar.gz", "unsafe path '../escaped.txt'"),
    (f"s3://{BUCKET}/models/link/model.tar.gz", "links and special files"),
    (f"s3://{BUCKET}/models/corrupt/model.tar.gz", "not a readable model archive"),
    (f"s3://{BUCKET}/models/notbundle/model.tar.gz", "is not a model bundle"),
    (f"s3://{BUCKET}/models/tampered/", "does not match its checksum"),
    (f"s3://{BUCKET}", "names no object"),
    ("https://example.com/model.tar.gz", "use 'bundled'"),
])
def test_bad_model_uris_fail_with_one_line(resolve, uri, expected, tmp_path):
    with pytest.raises(AttnGANError) as err:
        resolve(uri)
    message = str(err.value)
    assert message.startswith("MODEL_URI") and uri in message, message
    assert expected in message and "\n" not in message
    assert not list(resolve.cache.parent.rglob("escaped.txt"))
    if resolve.cache.exists():  # a failed download leaves no partial entry behind
        assert not [p for p in resolve.cache.rglob("*") if p.is_file()]


def test_gunicorn_serves_the_s3_archive(start_server, moto, s3_bundle, tmp_path):
    endpoint, _ = moto
    uri = f"s3://{BUCKET}/{ARCHIVE_KEY}"
    server = start_server(MODEL_URI=uri, S3_ENDPOINT_URL=endpoint, MODEL_CACHE_DIR=str(tmp_path / "cache"),
                          WARMUP="0", LOG_LEVEL="info", **CREDS)
    info = requests.get(f"{server.url}/api/v1.0/model", timeout=10).json()
    assert info["model_uri"] == uri and info["version"] == s3_bundle[1]
    r = requests.post(f"{server.url}/api/v1.0/bird", json={"caption": "a small blue bird with a white belly"},
                      timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["bird"]["model_version"] == s3_bundle[1]
    # one JSON line from the master (URI, size, seconds); the worker reuses the download instead of resolving
    resolved = [json.loads(line) for line in server.output().splitlines() if '"model resolved"' in line]
    assert len(resolved) == 1, server.output()
    assert resolved[0]["uri"] == uri and resolved[0]["bytes"] > 0 and resolved[0]["seconds"] >= 0


@pytest.mark.parametrize(("key", "expected"), [
    ("models/missing/model.tar.gz", "head_object failed (no such bucket or key)"),
    ("models/evil/model.tar.gz", "refusing unsafe path '../escaped.txt'"),
])
def test_gunicorn_refuses_to_start_with_one_line(start_server, moto, tmp_path, key, expected):
    endpoint, _ = moto
    server = start_server(wait=False, MODEL_URI=f"s3://{BUCKET}/{key}", S3_ENDPOINT_URL=endpoint,
                          MODEL_CACHE_DIR=str(tmp_path / "cache"), **CREDS)
    assert server.proc.wait(60) != 0
    lines = [line for line in server.output().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attngan serve: error: MODEL_URI s3://"), lines
    assert expected in lines[0]
    assert not list(tmp_path.rglob("escaped.txt"))
