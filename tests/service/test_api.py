"""Fast contract checks through Flask's test client (the real gunicorn runs in test_gunicorn.py)."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from PIL import Image

from attngan.errors import AttnGANError
from attngan.text import tokenize

BIRD = "/api/v1.0/bird"
CURL_CAPTION = "the bird has a yellow crown and a black eyering that is round"


def png_at(client, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200, r.data[:200]
    assert r.mimetype == "image/png"
    return Image.open(io.BytesIO(r.data))


def metric(client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").data.decode().splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_bird_contract(client, app):
    r = client.post(BIRD, json={"caption": CURL_CAPTION})
    assert r.status_code == 201
    bird = r.get_json()["bird"]
    # the original's shape ...
    for key in ("small", "medium", "large", "map1", "map2", "caption", "elapsed"):
        assert key in bird, key
    assert bird["caption"] == CURL_CAPTION and bird["elapsed"] >= 0
    # ... plus what a caller needs to trust it
    assert bird["tokens"] == tokenize(CURL_CAPTION) and bird["unknown"] == []
    assert bird["seed"] == 100  # the original's fixed seed is the default
    assert bird["model_version"] == app.extensions["attngan.bundle"].version
    assert bird["storage"] == "local"
    for name, size in (("small", 64), ("medium", 128), ("large", 256)):
        assert png_at(client, bird[name]).size == (size, size)
    grid = png_at(client, bird["map1"])
    assert grid.width > 256  # the image plus one tile per word
    assert r.headers["X-Request-ID"] == r.get_json()["request_id"]


def test_unknown_words_are_reported_not_fatal(client):
    r = client.post(BIRD, json={"caption": "The bird has a YELLOW crown, and a zorblax beak!"})
    assert r.status_code == 201
    bird = r.get_json()["bird"]
    assert bird["tokens"] == ["the", "bird", "has", "a", "yellow", "crown", "and", "a"]
    assert bird["unknown"] == ["zorblax", "beak"]


def test_same_seed_same_bird_and_cache(client):
    before_gen = metric(client, "attngan_images_generated_total")
    first = client.post(BIRD, json={"caption": "a small red bird", "seed": 7}).get_json()["bird"]
    assert first["cached"] is False
    # same tokens after normalisation + same seed: a lookup, not a generation
    again = client.post(BIRD, json={"caption": "A small, RED bird!", "seed": 7}).get_json()["bird"]
    assert again["cached"] is True and again["large"] == first["large"]
    assert metric(client, "attngan_images_generated_total") == before_gen + 1
    assert metric(client, "attngan_cache_hits_total") >= 1
    other = client.post(BIRD, json={"caption": "a small red bird", "seed": 8}).get_json()["bird"]
    assert other["cached"] is False
    assert client.get(other["large"]).data != client.get(first["large"]).data


def test_same_seed_is_reproducible_across_batches(app, client):
    """Regenerate without the cache: the image depends only on caption + seed, not on batch company."""
    maker = app.extensions["attngan"]
    a = client.post(BIRD, json={"caption": "a blue bird with a long tail", "seed": 11}).get_json()["bird"]
    first = client.get(a["large"]).data
    maker.cache = type(maker.cache)(0)  # forget ...
    for path in maker.storage.root.glob("*/meta.json"):
        path.unlink()  # ... everything
    r = client.post("/api/v1.0/birds", json={"caption": "a blue bird with a long tail", "seed": 10, "count": 3})
    assert r.status_code == 201
    assert client.get(r.get_json()["bird"]["bird2"]["large"]).data == first


def test_birds_many(client):
    r = client.post("/api/v1.0/birds", json={"caption": "a grey bird with an orange bill", "seed": 5, "count": 3})
    assert r.status_code == 201
    out = r.get_json()["bird"]
    assert [out[f"bird{i}"]["seed"] for i in (1, 2, 3)] == [5, 6, 7]
    assert "bird4" not in out and out["count"] == 3
    assert len({client.get(out[f"bird{i}"]["large"]).data for i in (1, 2, 3)}) == 3
    # default count is the original's 6
    r = client.post("/api/v1.0/birds", json={"caption": "a grey bird"})
    assert r.status_code == 201 and "bird6" in r.get_json()["bird"]


def test_bird_png(client):
    r = client.get("/api/v1.0/bird.png", query_string={"caption": "a red bird", "seed": 3})
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert Image.open(io.BytesIO(r.data)).size == (256, 256)
    assert r.headers["X-Seed"] == "3" and r.headers["X-Tokens"] == "a red bird"
    small = client.get("/api/v1.0/bird.png", query_string={"caption": "a red bird", "seed": 3, "size": "64"})
    assert Image.open(io.BytesIO(small.data)).size == (64, 64)
    assert small.headers["X-Cache"] == "hit"


BAD_JSON = [
    ('{"caption": ', 400, "malformed_json"),
    ("[1, 2]", 400, "bad_body"),
    ("{}", 400, "missing_caption"),
    ('{"caption": null}', 400, "missing_caption"),
    ('{"caption": 42}', 400, "bad_caption"),
    ('{"caption": ["a", "bird"]}', 400, "bad_caption"),
    ('{"caption": ""}', 400, "empty_caption"),
    ('{"caption": "   \\n\\t "}', 400, "empty_caption"),
    ('{"caption": "' + "red " * 200 + '"}', 400, "caption_too_long"),
    ('{"caption": "xyzzy plugh"}', 422, "no_known_words"),
    ('{"caption": "\\ud83d\\udc26\\ud83d\\udc26"}', 422, "no_known_words"),
    ('{"caption": "a red\\u0007 bird"}', 400, "control_characters"),
    ('{"caption": "a red\\u200b bird"}', 400, "control_characters"),
    ('{"caption": "a red bird", "seed": "abc"}', 400, "bad_seed"),
    ('{"caption": "a red bird", "seed": -1}', 400, "bad_seed"),
    ('{"caption": "a red bird", "seed": 4294967296}', 400, "bad_seed"),
    ('{"caption": "a red bird", "seed": 1.5}', 400, "bad_seed"),
    ('{"caption": "a red bird", "seed": true}', 400, "bad_seed"),
    ('{"caption": "a red bird", "colour": "red"}', 400, "unknown_field"),
]


@pytest.mark.parametrize("body,status,code", BAD_JSON)
def test_bad_input_is_4xx_json(client, body, status, code):
    r = client.post(BIRD, data=body, content_type="application/json")
    assert r.status_code == status, r.get_json()
    err = r.get_json()["error"]
    assert err["code"] == code and len(err["message"]) > 10


def test_bad_requests_other(client):
    r = client.post(BIRD, data='{"caption": "a red bird"}', content_type="text/plain")
    assert r.status_code == 415 and "application/json" in r.get_json()["error"]["message"]
    r = client.post(BIRD, data=b'{"caption": "\xff\xfe"}', content_type="application/json")
    assert r.status_code == 400
    r = client.post(BIRD, data=json.dumps({"caption": "a" * 20000}), content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"]
    r = client.get("/api/v1.0/nothing")
    assert r.status_code == 404 and "openapi" in r.get_json()["error"]["message"]
    r = client.get(BIRD)
    assert r.status_code == 405 and "POST" in r.get_json()["error"]["message"]
    r = client.post("/api/v1.0/birds", json={"caption": "a red bird", "count": 7})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "too_many_images"
    r = client.post("/api/v1.0/birds", json={"caption": "a red bird", "count": 0})
    assert r.status_code == 400
    r = client.get("/api/v1.0/bird.png")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "missing_caption"
    r = client.get("/api/v1.0/bird.png", query_string={"caption": "a red bird", "size": "1024"})
    assert r.status_code == 400
    r = client.post(BIRD, json={"caption": "a red bird"}, headers={"X-Request-Timeout": "soon"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_timeout"
    r = client.get("/images/../../etc/passwd")
    assert r.status_code == 404


def test_unicode_caption(client):
    r = client.post(BIRD, json={"caption": "a small blue bird 🐦 with a white belly, très jolie"})
    assert r.status_code == 201
    bird = r.get_json()["bird"]
    assert bird["tokens"][:7] == ["a", "small", "blue", "bird", "with", "a", "white"]
    assert "trs" in bird["unknown"]  # non-ASCII letters are stripped, as in training


def test_deadline_gives_504(client):
    r = client.post(BIRD, json={"caption": "a red bird", "seed": 999}, headers={"X-Request-Timeout": "0.0001"})
    assert r.status_code == 504 and r.get_json()["error"]["code"] == "deadline_exceeded"


def test_operations_endpoints(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True
    text = client.get("/metrics").data.decode()
    for series in ("attngan_requests_total", "attngan_request_duration_seconds_bucket", "attngan_queue_wait_seconds",
                   "attngan_batch_size", "attngan_generation_seconds", "attngan_cache_hits_total"):
        assert series in text, series
    info = client.get("/api/v1.0/model").get_json()
    assert info["ready"] and info["config"]["gf_dim"] == 8


def test_openapi_documents_every_route(app, client):
    doc = client.get("/api/v1.0/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = set(doc["paths"])
    routes = {str(rule).replace("<path:key>", "{key}") for rule in app.url_map.iter_rules()
              if rule.endpoint != "static"}
    assert routes == documented
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node = doc
        for piece in ref.split("/"):
            node = node[piece]  # every $ref resolves
    assert client.get("/openapi.yaml").status_code == 200


def test_api_key(bundle_dir, tmp_path):
    from service.app import create_app

    app = create_app({"bundle_dir": str(bundle_dir), "image_dir": str(tmp_path), "precision": "fp32",
                      "torch_threads": 1, "api_key": "s3cret-key", "warmup": False})
    try:
        assert app.extensions["attngan"].engine.wait_ready(60)
        c = app.test_client()
        r = c.post(BIRD, json={"caption": "a red bird"})
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
        assert c.post(BIRD, json={"caption": "a red bird"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post(BIRD, json={"caption": "a red bird"}, headers={"X-API-Key": "s3cret-key"}).status_code == 201
        assert c.post(BIRD, json={"caption": "a red bird"},
                      headers={"Authorization": "Bearer s3cret-key"}).status_code == 201
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    finally:
        app.extensions["attngan"].engine.stop()


def test_best_of_n_serves_the_ranked_bird_under_its_own_cache_key(ranked_bundle_dir, bundle_dir, tmp_path):
    """CANDIDATES=3: the bird is the pipeline's best of 3, and a plain server sharing the storage (the cache all
    replicas share) does not hand out its seed-only bird for it."""
    import numpy as np

    from attngan.pipeline import TextToImage
    from service.app import create_app

    with pytest.raises(AttnGANError, match="has none"):  # refused at start, not on the first request
        create_app({"bundle_dir": str(bundle_dir), "image_dir": str(tmp_path), "candidates": 3})
    apps = {n: create_app({"bundle_dir": str(ranked_bundle_dir), "image_dir": str(tmp_path), "precision": "fp32",
                           "torch_threads": 1, "warmup": False, "candidates": n}) for n in (1, 3)}
    try:
        caption = "a small blue bird with a white belly"
        ranked = TextToImage.from_bundle(ranked_bundle_dir, precision="fp32", candidates=3)
        chosen = []
        for seed in (1, 2, 3, 4):
            birds = {}
            for n, app in apps.items():
                assert app.extensions["attngan"].engine.wait_ready(60)
                r = app.test_client().post(BIRD, json={"caption": caption, "seed": seed})
                assert r.status_code == 201
                birds[n] = r.get_json()["bird"]
                assert birds[n]["candidates"] == n and birds[n]["cached"] is False
            served = np.asarray(png_at(apps[3].test_client(), birds[3]["large"]), dtype=np.int16)
            expected = ranked.generate([ranked.prepare(caption)], [seed])[0]
            assert np.abs(served - np.asarray(expected.images[-1], dtype=np.int16)).max() <= 1
            chosen.append(expected.candidate)
        assert set(chosen) != {0}  # some seeds' best is not their plain draw, so the two servers' birds differ
        assert apps[3].test_client().get("/api/v1.0/model").get_json()["candidates"] == 3
    finally:
        for app in apps.values():
            app.extensions["attngan"].engine.stop()


def test_truncation_serves_the_truncated_bird_under_its_own_cache_key(bundle_dir, tmp_path):
    """TRUNCATION=0: every seed of a caption gets the caption's one mean bird, and a plain server sharing the storage
    neither serves it nor is served it for the same seed; a request's own `truncation` overrides the server's."""
    import numpy as np

    from service.app import create_app

    apps = {psi: create_app({"bundle_dir": str(bundle_dir), "image_dir": str(tmp_path), "precision": "fp32",
                             "torch_threads": 1, "warmup": False, "truncation": psi}) for psi in (1.0, 0.0)}
    try:
        caption = "a small blue bird with a white belly"
        large: dict[float, list[np.ndarray]] = {1.0: [], 0.0: []}
        for seed in (1, 2):
            for psi, app in apps.items():
                assert app.extensions["attngan"].engine.wait_ready(60)
                r = app.test_client().post(BIRD, json={"caption": caption, "seed": seed})
                assert r.status_code == 201
                bird = r.get_json()["bird"]
                assert bird["truncation"] == psi and bird["cached"] is False
                large[psi].append(np.asarray(png_at(app.test_client(), bird["large"]), dtype=np.int16))
        assert np.array_equal(large[0.0][0], large[0.0][1])  # no noise left: the seed does not matter
        assert not np.array_equal(large[1.0][0], large[1.0][1])
        assert not np.array_equal(large[1.0][0], large[0.0][0])
        assert apps[0.0].test_client().get("/api/v1.0/model").get_json()["truncation"] == 0.0

        plain = apps[1.0].test_client()  # asking the plain server for truncation 0: the mean bird, from the cache
        r = plain.post(BIRD, json={"caption": caption, "seed": 2, "truncation": 0})
        bird = r.get_json()["bird"]
        assert r.status_code == 201 and bird["truncation"] == 0.0 and bird["cached"] is True
        assert np.array_equal(np.asarray(png_at(plain, bird["large"]), dtype=np.int16), large[0.0][0])
        r = plain.get("/api/v1.0/bird.png", query_string={"caption": caption, "seed": 7, "truncation": "0"})
        assert r.status_code == 200 and r.headers["X-Truncation"] == "0" and r.headers["X-Cache"] == "miss"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.data)), dtype=np.int16), large[0.0][0])
        r = plain.post("/api/v1.0/birds", json={"caption": caption, "count": 2, "truncation": 0.5})
        assert r.status_code == 201 and r.get_json()["bird"]["truncation"] == 0.5
        for bad in (1.5, -0.1, "half", True, [0.5]):
            r = plain.post(BIRD, json={"caption": caption, "truncation": bad})
            assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_truncation", bad
        r = plain.get("/api/v1.0/bird.png", query_string={"caption": caption, "truncation": "lots"})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_truncation"
    finally:
        for app in apps.values():
            app.extensions["attngan"].engine.stop()


def test_map1_and_map2_stay_the_128_and_256_px_stages_with_word_attention_at_64_px(bundle_dir, tmp_path):
    """A model trained with GAN.WORD_ATTN_64 has a third attention map, at 64 px; the API's map1 and map2 keep
    meaning the 128 and 256 px stages' grids (each grid starts with the image of the stage it shows)."""
    import numpy as np

    from attngan.bundle import load_bundle, write_random_bundle
    from attngan.pipeline import TextToImage
    from service.app import create_app

    plain = load_bundle(bundle_dir)
    config = dataclasses.replace(plain.config, attn_64=True)
    attn64 = write_random_bundle(tmp_path / "attn64", config=config, vocab=plain.vocab, seed=0)
    app = create_app({"bundle_dir": str(attn64), "image_dir": str(tmp_path / "images"), "precision": "fp32",
                      "torch_threads": 1, "warmup": False})
    try:
        assert app.extensions["attngan"].engine.wait_ready(60)
        client = app.test_client()
        r = client.post(BIRD, json={"caption": CURL_CAPTION})
        assert r.status_code == 201
        bird = r.get_json()["bird"]
        t2i = TextToImage.from_bundle(attn64, precision="fp32")
        (generated,) = t2i.generate([t2i.prepare(CURL_CAPTION)], [bird["seed"]])
        grids = generated.attention_grids()
        assert len(grids) == 3 and generated.attention[0].shape[1:] == (32, 32)
        for name, expected in zip(("map1", "map2"), grids[1:]):
            served = np.asarray(png_at(client, bird[name]).convert("RGB"), dtype=int)
            assert served.shape == np.asarray(expected).shape
            assert np.abs(served - np.asarray(expected, dtype=int)).mean() < 1, name
        medium = np.asarray(png_at(client, bird["medium"]).convert("RGB"), dtype=int)
        assert np.array_equal(np.asarray(grids[1], dtype=int)[18:146, :128], medium)  # over its own stage's image
    finally:
        app.extensions["attngan"].engine.stop()


def test_missing_or_corrupt_bundle_refuses(bundle_dir, tmp_path):
    import shutil

    from service.app import create_app

    with pytest.raises(AttnGANError, match="model bundle not found"):
        create_app({"bundle_dir": str(tmp_path / "nope")})
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "generator.safetensors").write_bytes(b"not weights")
    with pytest.raises(AttnGANError, match="corrupt"):
        create_app({"bundle_dir": str(broken)})


def test_settings_from_env_checks_values():
    from service.settings import from_env

    s = from_env({"MODEL_BUNDLE": "x/y", "MAX_BATCH_SIZE": "8", "BUCKET_NAME": "b", "WARMUP": "off"})
    assert s.bundle_dir == "x/y" and s.max_batch_size == 8 and s.storage_kind == "s3" and s.warmup is False
    assert from_env({"BUNDLE_DIR": "a", "MODEL_BUNDLE": "b"}).bundle_dir == "a"
    for env in ({"MAX_BATCH_SIZE": "lots"}, {"MAX_BATCH_SIZE": "0"}, {"PRECISION": "fp8"},
                {"STORAGE_FALLBACK": "maybe"}, {"URL_EXPIRY": "0"}, {"CANDIDATES": "0"}, {"CANDIDATES": "33"},
                {"TRUNCATION": "1.5"}, {"TRUNCATION": "-0.1"}, {"TRUNCATION": "half"}):
        with pytest.raises(AttnGANError):
            from_env(env)
    assert "s3cret" not in repr(from_env({"API_KEY": "s3cret"}))
    from attngan.pipeline import MAX_CANDIDATES
    from service.settings import MAX_CANDIDATES as SETTINGS_MAX

    assert from_env({"CANDIDATES": "8"}).candidates == 8 and SETTINGS_MAX == MAX_CANDIDATES
    assert from_env({"TRUNCATION": "0.5"}).truncation == 0.5
