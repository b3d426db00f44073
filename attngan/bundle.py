"""The model bundle: the one contract between training and serving.

A bundle is a directory:

    manifest.json              format, format_version, version (content hash), created, model (ModelConfig),
                               files (sha256 and size of each file below), weights_dtype, training, metrics
    vocab.json                 attngan.text.Vocabulary
    generator.safetensors      Generator state dict (original G_NET key names)
    text_encoder.safetensors   TextEncoder state dict (original RNN_ENCODER key names)
    image_encoder.safetensors  optional ImageEncoder state dict (for evaluation: R-precision)

The version is a hash over the model config, the vocabulary and the weights, so two bundles with the same
version generate the same images. Loading checks every file's hash and every tensor's shape against the
networks the config describes, and never unpickles anything. Weights may be stored as fp16 (half the size);
they are always loaded as fp32.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attngan.errors import AttnGANError
from attngan.fileio import atomic_write, atomic_write_text
from attngan.model import Generator, ImageEncoder, ModelConfig, TextEncoder, init_weights
from attngan.text import Vocabulary

FORMAT = "attngan-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
WEIGHT_FILES = {"generator": "generator.safetensors", "text_encoder": "text_encoder.safetensors",
                "image_encoder": "image_encoder.safetensors"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_version(model: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256(json.dumps(model, sort_keys=True).encode())
    for name in sorted(files):
        h.update(f"{name}:{files[name]['sha256']}\n".encode())
    return h.hexdigest()[:16]


def _prepare_state(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise AttnGANError(f"state dict entry {key} is not a tensor")
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        elif value.is_floating_point():
            value = value.to(torch.float32)
        out[key] = value.contiguous().clone()
    return out


def _networks(config: ModelConfig, device: str | torch.device = "meta", image_encoder: bool = True
              ) -> dict[str, torch.nn.Module]:
    with torch.device(device):
        nets: dict[str, torch.nn.Module] = {
            "generator": Generator(config),
            "text_encoder": TextEncoder(config.n_words, nhidden=config.embedding_dim),
        }
        if image_encoder:
            nets["image_encoder"] = ImageEncoder(config.embedding_dim, kind=config.image_encoder,
                                                 input_size=config.image_encoder_size)
    return nets


def check_state_dict(name: str, module: torch.nn.Module, state: dict[str, Any], where: str = "") -> None:
    """Raise a one-line AttnGANError unless `state` has exactly `module`'s keys and shapes (BN counters optional)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v) if isinstance(v, (tuple, list)) else tuple(v.shape) for k, v in state.items()}
    where = f" in {where}" if where else ""
    missing = [k for k in expected if k not in got and not k.endswith("num_batches_tracked")]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise AttnGANError(f"{name} weights{where} do not match the model config: {detail}"
                           f" ({len(missing)} missing, {len(extra)} unexpected)")
    for key, shape in got.items():
        if shape != expected[key]:
            raise AttnGANError(f"{name} weights{where}: {key} has shape {list(shape)}, the model config needs "
                               f"{list(expected[key])} (wrong vocabulary or config for these weights?)")


def write_bundle(out_dir: str | Path, *, config: ModelConfig, vocab: Vocabulary, generator: dict,
                 text_encoder: dict, image_encoder: dict | None = None, info: dict | None = None,
                 half: bool = False) -> Path:
    """Write a bundle directory (created if needed; our files in it are replaced) and return its path.

    `info` is free-form JSON: its "metrics" entry becomes the manifest's metrics, the rest its training info.
    `half=True` stores floating-point weights as fp16.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if len(vocab) != config.n_words:
        raise AttnGANError(f"vocabulary has {len(vocab)} words but the model config says n_words={config.n_words}")
    nets = _networks(config, image_encoder=image_encoder is not None)
    states = {"generator": generator, "text_encoder": text_encoder}
    if image_encoder is not None:
        states["image_encoder"] = image_encoder
    for name, state in states.items():
        check_state_dict(name, nets[name], state)
    info = dict(info or {})
    metrics = info.pop("metrics", {})
    try:
        json.dumps(info)
        json.dumps(metrics)
    except TypeError as exc:
        raise AttnGANError(f"bundle info must be JSON-serialisable: {exc}") from None

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}

    def put(name: str, write) -> None:  # readers never see half a file
        atomic_write(out / name, write)
        files[name] = {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}

    put(VOCAB, lambda p: vocab.save_json(p))
    for name, state in states.items():
        put(WEIGHT_FILES[name], lambda p, s=state: save_file(_prepare_state(s, half), str(p), metadata={"format": "pt"}))
    if image_encoder is None and (out / WEIGHT_FILES["image_encoder"]).exists():
        (out / WEIGHT_FILES["image_encoder"]).unlink()

    model = config.to_dict()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": _content_version(model, files),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "weights_dtype": "float16" if half else "float32",
        "files": files,
        "training": info,
        "metrics": metrics,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: a manifest means a whole bundle
    return out


@dataclass
class Bundle:
    """A validated bundle on disk. Weights are read by `build_networks`."""

    path: Path
    config: ModelConfig
    vocab: Vocabulary
    manifest: dict[str, Any]
    version: str

    @property
    def has_image_encoder(self) -> bool:
        return WEIGHT_FILES["image_encoder"] in self.manifest["files"]

    def read_state(self, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """One network's weights as fp32 tensors on `device`."""
        from safetensors.torch import load_file

        path = self.path / WEIGHT_FILES[name]
        try:
            state = load_file(str(path), device=str(device))
        except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
            raise AttnGANError(f"cannot read {path}: {exc}") from None
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    def build_networks(self, device: str | torch.device = "cpu", image_encoder: bool = True
                       ) -> tuple[TextEncoder, Generator, ImageEncoder | None]:
        """(text_encoder, generator, image_encoder or None) with the bundle's weights, in eval mode."""
        with_image = image_encoder and self.has_image_encoder
        nets = _networks(self.config, device="cpu", image_encoder=with_image)
        for name, net in nets.items():
            net.load_state_dict(self.read_state(name), strict=False)  # keys were checked; BN counters may be absent
            net.to(device).eval().requires_grad_(False)
        return nets["text_encoder"], nets["generator"], nets.get("image_encoder")  # type: ignore[return-value]


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory: manifest, file hashes, version, vocabulary and tensor shapes."""
    from safetensors import safe_open

    root = Path(path)
    if not root.is_dir():
        raise AttnGANError(f"model bundle not found: {root} (make one with `attngan export` or "
                           "`attngan import-original`)")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise AttnGANError(f"{root} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AttnGANError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AttnGANError(f"{manifest_path} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise AttnGANError(f"{root}: bundle format version {manifest.get('format_version')} is not supported "
                           f"(this attngan reads version {FORMAT_VERSION}); upgrade attngan or re-export the model")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("model"), dict):
        raise AttnGANError(f"{manifest_path} lacks the 'files' or 'model' section")
    for required in (VOCAB, WEIGHT_FILES["generator"], WEIGHT_FILES["text_encoder"]):
        if required not in files:
            raise AttnGANError(f"{manifest_path} does not list {required}")
    for name, meta in files.items():
        file = root / name
        if not file.is_file():
            raise AttnGANError(f"bundle {root} is incomplete: {name} is missing")
        if not isinstance(meta, dict) or _sha256(file) != meta.get("sha256"):
            raise AttnGANError(f"bundle {root} is corrupt: {name} does not match its checksum in {MANIFEST}")
    version = _content_version(manifest["model"], files)
    if manifest.get("version") != version:
        raise AttnGANError(f"bundle {root} is corrupt: manifest version {manifest.get('version')} != content {version}")
    try:
        config = ModelConfig.from_dict(manifest["model"])
    except TypeError as exc:
        raise AttnGANError(f"{manifest_path}: bad model config: {exc}") from None
    vocab = Vocabulary.load_json(root / VOCAB)
    if len(vocab) != config.n_words:
        raise AttnGANError(f"bundle {root}: vocabulary has {len(vocab)} words, model expects {config.n_words}")

    nets = _networks(config, image_encoder=WEIGHT_FILES["image_encoder"] in files)
    for name, net in nets.items():
        file = root / WEIGHT_FILES[name]
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as exc:  # noqa: BLE001
            raise AttnGANError(f"cannot read {file}: {exc}") from None
        check_state_dict(name, net, shapes, where=str(file))
    return Bundle(path=root, config=config, vocab=vocab, manifest=manifest, version=version)


def write_random_bundle(out_dir: str | Path, *, config: ModelConfig, vocab: Vocabulary, seed: int = 0) -> Path:
    """A bundle with untrained weights (the original's init), reproducible from `seed`. For tests and smoke runs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(config)
        generator.apply(init_weights)
        text_encoder = TextEncoder(config.n_words, nhidden=config.embedding_dim)
    return write_bundle(out_dir, config=config, vocab=vocab, generator=generator.state_dict(),
                        text_encoder=text_encoder.state_dict(), info={"source": "random", "seed": seed})
