"""S3 storage through moto's HTTP server: upload, presigned URL fetch, cache, and an outage."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from PIL import Image

from tests.service.conftest import free_port, start_moto

pytestmark = pytest.mark.slow
BUCKET = "attngan-test-images"


@pytest.fixture(scope="module")
def moto_s3():
    server, endpoint, client = start_moto(BUCKET)
    state = {"running": True}
    yield server, endpoint, client, state
    if state["running"]:
        server.stop()


def test_s3_refusing_still_delivers_inline_and_flags_it(bundle_dir, moto_s3, monkeypatch):
    """S3 answers but refuses (here: the bucket does not exist): the bird arrives inline, flagged; not ready."""
    from service.app import create_app

    _, endpoint, _, _ = moto_s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    app = create_app({"bundle_dir": str(bundle_dir), "precision": "fp32", "torch_threads": 1, "warmup": False,
                      "bucket_name": "no-such-bucket", "s3_endpoint_url": endpoint, "region": "us-east-1"})
    try:
        assert app.extensions["attngan"].engine.wait_ready(60)
        c = app.test_client()
        r = c.post("/api/v1.0/bird", json={"caption": "a red bird"})
        assert r.status_code == 201
        bird = r.get_json()["bird"]
        assert bird["storage"] == "inline" and "NoSuchBucket" in bird["storage_error"]
        assert bird["map1"].startswith("data:image/png;base64,")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "no-such-bucket" in ready.get_json()["reasons"][0]
    finally:
        app.extensions["attngan"].engine.stop()


def test_s3_upload_presigned_fetch_cache_and_outage(start_server, moto_s3):
    moto, endpoint, s3, state = moto_s3
    # the original service's credential variables are still accepted
    s = start_server(BUCKET_NAME=BUCKET, S3_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", URL_EXPIRY="600",
                     ACCESS_KEY_ID="testing", ACCESS_SECRET_KEY="testing")
    ready = requests.get(f"{s.url}/readyz", timeout=10).json()
    assert ready["storage"] == {"kind": "s3", "ok": True, "error": None, "fallback": "inline"}

    r = requests.post(f"{s.url}/api/v1.0/bird", json={"caption": "a small red bird", "seed": 3}, timeout=60)
    assert r.status_code == 201
    bird = r.json()["bird"]
    assert bird["storage"] == "s3" and bird["url_expires_in"] == 600
    query = parse_qs(urlparse(bird["large"]).query)
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
    image = requests.get(bird["large"], timeout=10)  # the presigned URL works without credentials
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)
    assert requests.get(bird["map2"], timeout=10).status_code == 200
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("images/") and k.endswith("/large.png") for k in keys)
    key = next(k for k in keys if k.endswith("/large.png"))
    assert key.split("/")[1] in bird["large"]  # the URL points at the content-addressed object
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png"

    again = requests.post(f"{s.url}/api/v1.0/bird", json={"caption": "A small red bird", "seed": 3}, timeout=60)
    assert again.json()["bird"]["cached"] is True

    # outage: S3 goes away; the caller still gets the bird, inline and flagged; readiness says why
    moto.stop()
    state["running"] = False
    r = requests.post(f"{s.url}/api/v1.0/bird", json={"caption": "a small red bird", "seed": 4}, timeout=60)
    assert r.status_code == 201
    bird = r.json()["bird"]
    assert bird["storage"] == "inline" and "S3" in bird["storage_error"]
    assert bird["large"].startswith("data:image/png;base64,")
    raw = base64.b64decode(bird["large"].split(",", 1)[1])
    assert Image.open(io.BytesIO(raw)).size == (256, 256)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready = requests.get(f"{s.url}/readyz", timeout=15)
        if ready.status_code == 503:
            break
        time.sleep(0.5)
    assert ready.status_code == 503
    assert ready.json()["storage"]["ok"] is False and "S3" in ready.json()["reasons"][0]
    assert requests.get(f"{s.url}/healthz", timeout=10).status_code == 200  # alive, just not ready


def test_s3_down_with_fail_policy_gives_503_with_reason(bundle_dir, tmp_path, monkeypatch):
    from service.app import create_app

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    app = create_app({"bundle_dir": str(bundle_dir), "precision": "fp32", "torch_threads": 1, "warmup": False,
                      "bucket_name": BUCKET, "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
                      "region": "us-east-1", "storage_fallback": "fail"})
    try:
        assert app.extensions["attngan"].engine.wait_ready(60)
        r = app.test_client().post("/api/v1.0/bird", json={"caption": "a red bird"})
        assert r.status_code == 503
        err = r.get_json()["error"]
        assert err["code"] == "storage_unavailable" and "S3 upload" in err["message"]
        assert int(r.headers["Retry-After"]) > 0
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["storage"]["ok"] is False
    finally:
        app.extensions["attngan"].engine.stop()
