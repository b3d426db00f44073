"""The bundle: round trip, content version, fp16 storage, and one-line errors for damaged bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from attngan.bundle import load_bundle, write_bundle, write_random_bundle
from attngan.errors import AttnGANError
from attngan.model import Generator, TextEncoder


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory, vocab, tiny) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("b") / "random", config=tiny, vocab=vocab, seed=1)


def test_round_trip_restores_config_vocab_and_weights(tmp_path, vocab, tiny, helpers):
    g, t = helpers.lively_states(tiny, seed=5)
    path = write_bundle(tmp_path / "b", config=tiny, vocab=vocab, generator=g, text_encoder=t,
                        info={"steps": 10, "metrics": {"fid": 99.5}})
    bundle = load_bundle(path)
    assert bundle.config == tiny and bundle.vocab == vocab
    assert bundle.manifest["metrics"] == {"fid": 99.5} and bundle.manifest["training"] == {"steps": 10}
    assert bundle.manifest["version"] == bundle.version and len(bundle.version) == 16
    text_encoder, generator, image_encoder = bundle.build_networks("cpu")
    assert image_encoder is None and not generator.training and not text_encoder.training
    for key, value in generator.state_dict().items():
        assert torch.equal(value, g[key]), key
    for key, value in text_encoder.state_dict().items():
        assert torch.equal(value, t[key]), key
    assert sorted(p.name for p in path.iterdir()) == ["generator.safetensors", "manifest.json",
                                                      "text_encoder.safetensors", "vocab.json"]


def test_version_is_a_content_hash(tmp_path, vocab, tiny):
    a = load_bundle(write_random_bundle(tmp_path / "a", config=tiny, vocab=vocab, seed=1)).version
    a2 = load_bundle(write_random_bundle(tmp_path / "a2", config=tiny, vocab=vocab, seed=1)).version
    b = load_bundle(write_random_bundle(tmp_path / "b", config=tiny, vocab=vocab, seed=2)).version
    assert a == a2 and a != b


def test_half_precision_storage_halves_the_size_and_loads_as_fp32(tmp_path, vocab, tiny, helpers):
    g, t = helpers.lively_states(tiny)
    full = write_bundle(tmp_path / "full", config=tiny, vocab=vocab, generator=g, text_encoder=t)
    half = write_bundle(tmp_path / "half", config=tiny, vocab=vocab, generator=g, text_encoder=t, half=True)
    size = (lambda p: (p / "generator.safetensors").stat().st_size)
    assert size(half) < 0.55 * size(full)
    bundle = load_bundle(half)
    assert bundle.manifest["weights_dtype"] == "float16"
    state = bundle.read_state("generator")
    key = "h_net2.att.conv_context.weight"
    assert state[key].dtype == torch.float32
    assert torch.allclose(state[key], g[key], rtol=1e-3, atol=1e-4)


def test_image_encoder_is_optional_and_round_trips(tmp_path, vocab, helpers):
    from attngan.model import ImageEncoder

    config = helpers.tiny_config(len(vocab), image_encoder="small")
    g, t = helpers.lively_states(config)
    enc = ImageEncoder(config.embedding_dim, kind="small").state_dict()
    bundle = load_bundle(write_bundle(tmp_path / "b", config=config, vocab=vocab, generator=g, text_encoder=t,
                                      image_encoder=enc))
    _, _, image_encoder = bundle.build_networks()
    assert image_encoder is not None and image_encoder.kind == "small"
    assert torch.equal(image_encoder.state_dict()["emb_cnn_code.weight"], enc["emb_cnn_code.weight"])


def test_loading_never_unpickles(random_bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    load_bundle(random_bundle).build_networks()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "generator.safetensors").write_bytes(
            (p / "generator.safetensors").read_bytes()[:-8] + b"\x00" * 8), "corrupt: generator.safetensors"),
        (lambda p: (p / "text_encoder.safetensors").unlink(), "incomplete: text_encoder.safetensors is missing"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text(json.dumps(
            {**json.loads((p / "manifest.json").read_text()), "format_version": 99})), "format version 99"),
        (lambda p: (p / "manifest.json").write_text(json.dumps(
            {**json.loads((p / "manifest.json").read_text()), "version": "0" * 16})), "manifest version"),
        (lambda p: (p / "vocab.json").write_text("[]"), "corrupt: vocab.json"),
    ],
    ids=["flipped-bytes", "missing-weights", "missing-manifest", "bad-json", "future-format", "wrong-version",
         "edited-vocab"],
)
def test_damaged_bundles_fail_with_one_line(tmp_path, random_bundle, damage, message):
    path = _copy(random_bundle, tmp_path / "copy")
    damage(path)
    with pytest.raises(AttnGANError, match=message) as info:
        load_bundle(path)
    assert "\n" not in str(info.value)


def test_missing_bundle_directory(tmp_path):
    with pytest.raises(AttnGANError, match="model bundle not found"):
        load_bundle(tmp_path / "nope")


def test_shapes_are_checked_when_writing_and_loading(tmp_path, vocab, tiny, helpers):
    other = helpers.tiny_config(len(vocab), gf_dim=16)
    g = Generator(other).state_dict()
    t = TextEncoder(len(vocab), nhidden=tiny.embedding_dim).state_dict()
    with pytest.raises(AttnGANError, match="generator weights do not match|has shape"):
        write_bundle(tmp_path / "x", config=tiny, vocab=vocab, generator=g, text_encoder=t)
    with pytest.raises(AttnGANError, match="vocabulary has"):
        write_bundle(tmp_path / "y", config=helpers.tiny_config(len(vocab) + 1), vocab=vocab, generator=g, text_encoder=t)

    # a bundle whose manifest claims another architecture than its weights (hash fixed up to get past it)
    path = write_random_bundle(tmp_path / "z", config=tiny, vocab=vocab)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["model"]["gf_dim"] = 16
    from attngan.bundle import _content_version

    manifest["version"] = _content_version(manifest["model"], manifest["files"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AttnGANError, match="has shape"):
        load_bundle(path)
