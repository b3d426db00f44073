"""A pretrained trunk for the small DAMSM image encoder: the synthetic birds' counterpart of the ImageNet weights
the paper's Inception-v3 starts from.

The paper's DAMSM never learns image features from captions alone: it trains two projections over a frozen
ImageNet Inception. The small encoder trained from scratch must learn its features from the matching losses
alone, which is slow on a CPU (20 epochs left it ranking real test images at 14% R-precision).
`attngan train backbone` trains the small encoder's trunk to name every part's attribute (crown colour, bill
shape, ...) of fresh synthetic renders, from the same global code DAMSM projects (one linear head per part), so
that code must hold every part's value. Each render draws every part independently, so the trunk learns parts,
not species, and never sees the data set's test species. DAMSM then loads it with `TRAIN.IMAGE_BACKBONE`, keeps
it frozen, and trains the projections and the text encoder.

`--pool attention` makes the other kind, a detail backbone (`TRAIN.DETAIL_BACKBONE`): its heads read each part
through the part's own spatial attention over the trunk's map instead of the averaged code, so parts a few pixels
wide are read too; it has no global code for DAMSM, and DAMSM refuses it.

The file holds the trunk (`trunk.*`, `trunk_global.*`, the ImageEncoder's own names), independent of the
embedding size, and the part heads (`heads.<part>.*`), with its settings, the heads' value names and per-part
held-out accuracy in the safetensors metadata. With `TRAIN.IMAGE_CODE parts` DAMSM fixes its global projection
to a random rotation of those heads' read-out (`part_code_projection`), so the image code it matches captions
against says which colour each part has, for any combination of parts, not only the training species'.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attngan.errors import AttnGANError
from attngan.model import ImageEncoder

log = logging.getLogger("trainer")

TRUNK_PREFIXES = ("trunk.", "trunk_global.")
HEADS_PREFIX = "heads."
BACKBONE_FORMAT = "attngan-small-image-backbone"  # a backbone file's metadata "format"
WHERE_PREFIX = "where."  # pool="attention": each part's spatial attention (a 1x1 conv, one output per part)


POOLS = ("mean", "attention")


class PartHeads(nn.Module):
    """The small ImageEncoder's trunk + one linear head per part. pool="mean": on its pooled global features (the
    code DAMSM projects). pool="attention": on the trunk's feature map pooled by each part's own spatial
    attention (`where`), so a part a few pixels wide (the eye ring) is not averaged away with the whole bird."""

    def __init__(self, parts: dict[str, list[str]], size: int, pool: str = "mean") -> None:
        super().__init__()
        if pool not in POOLS:
            raise AttnGANError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.parts = {p: list(v) for p, v in parts.items()}
        self.pool = pool
        self.encoder = ImageEncoder(nef=2, kind="small", input_size=size)  # projections unused
        if pool == "attention":
            dim = self.encoder.emb_features.in_channels
            self.where = nn.Conv2d(dim, len(self.parts), 1)
        else:
            dim = self.encoder.emb_cnn_code.in_features
        self.heads = nn.ModuleDict({p: nn.Linear(dim, len(v)) for p, v in self.parts.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.pool == "mean":
            _, code = self.encoder.features(images)
            return {p: head(code) for p, head in self.heads.items()}
        x = self.encoder.trunk(self.encoder.resize(images))  # B x C x S/16 x S/16
        return self._read(x, self.where(x))

    def _read(self, x: torch.Tensor, where_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        where = where_logits.flatten(2).float().softmax(-1).to(x.dtype)  # B x P x HW
        pooled = torch.bmm(where, x.flatten(2).transpose(1, 2))  # B x P x C
        return {p: head(pooled[:, i]) for i, (p, head) in enumerate(self.heads.items())}

    def require_attention(self, part: str) -> None:
        if self.pool != "attention" or part not in self.parts:
            raise AttnGANError(f"the detail reader has no attention for {part!r}: that takes an attention-pooled backbone "
                               f"(`attngan train backbone --pool attention`) whose {part} head is kept (right on at "
                               f"least {READER_MIN_ACCURACY:.0%} of held-out renders)")

    def attention_centres(self, images: torch.Tensor, part: str) -> torch.Tensor:
        """Where this detail reader looks for `part` in each image: the centre of mass of the part's spatial
        attention, B x 2 (x, y) in the images' own pixels. TRAIN.HEAD_D_LOSS crops the head around the eye ring's."""
        self.require_attention(part)
        return self._centres(self.where(self.encoder.trunk(self.encoder.resize(images))), part, images.shape)

    def read_and_locate(self, images: torch.Tensor, part: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """forward(images) and attention_centres(images, part) from one pass of the trunk (the centres carry no
        gradient): the GAN's head stage reads every generated bird and crops its head where this looks."""
        self.require_attention(part)
        x = self.encoder.trunk(self.encoder.resize(images))
        where_logits = self.where(x)
        return self._read(x, where_logits), self._centres(where_logits.detach(), part, images.shape)

    def _centres(self, where_logits: torch.Tensor, part: str, shape: torch.Size) -> torch.Tensor:
        h, w = where_logits.shape[2:]
        where = where_logits[:, list(self.parts).index(part)].flatten(1).float().softmax(-1).view(-1, h, w)
        ys = (torch.arange(h, device=where.device, dtype=torch.float32) + 0.5) * (shape[2] / h)
        xs = (torch.arange(w, device=where.device, dtype=torch.float32) + 0.5) * (shape[3] / w)
        return torch.stack([(where.sum(1) * xs).sum(1), (where.sum(2) * ys).sum(1)], dim=1)


def trunk_state(encoder: ImageEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in encoder.state_dict().items()
            if k.startswith(TRUNK_PREFIXES)}


def train_backbone(out: str | Path, *, renders: int = 8000, epochs: int = 6, size: int = 128, seed: int = 0,
                   held_out: int = 1000, batch_size: int = 64, progress: bool = True, pool: str = "mean",
                   parts: list[str] | None = None, device: str = "auto", thin_rims: float = 0.0) -> dict[str, Any]:
    """Render, train, judge on held-out renders, write `out` (safetensors); returns the metadata written.
    `device` auto trains on the GPU when there is one (rendering stays on the CPU).
    `pool` "attention" makes a detail backbone (TRAIN.DETAIL_BACKBONE) rather than DAMSM's; `parts` limits the
    heads (all of them teach the trunk best: the small parts alone learnt nothing, models/README.md)."""
    from trainer.data.synth import ATTRIBUTE_VALUES
    from trainer.evaluate import faithfulness as fz
    from trainer.evaluate.run import resolve_device

    if not 0.0 <= thin_rims <= 1.0:
        raise AttnGANError(f"--thin-rims is a share of the eye rings, from 0 to 1, got {thin_rims}")
    if renders < batch_size:
        raise AttnGANError(f"--renders must be at least the batch size ({batch_size}), got {renders}")
    if epochs < 1:
        raise AttnGANError(f"--epochs must be at least 1, got {epochs}")
    if size < 64 or size % 16:
        raise AttnGANError(f"--size must be a multiple of 16 from 64, got {size}")
    unknown = sorted(set(parts or []) - set(ATTRIBUTE_VALUES))
    if unknown:
        raise AttnGANError(f"--parts: no part {unknown[0]!r}; the parts are {', '.join(ATTRIBUTE_VALUES)}")
    out = Path(out)
    dev = str(resolve_device(device))
    parts = {p: list(v) for p, v in ATTRIBUTE_VALUES.items() if not parts or p in parts}
    t0 = time.perf_counter()
    images, records = fz.render_set(renders, seed, size=size, progress=progress, desc="backbone: renders",
                                    dtype=torch.float16, thin_rims=thin_rims)  # fit_attributes reads float32
    val_images, val_records = fz.render_set(held_out, seed + 1, size=size, progress=progress,
                                            desc="backbone: held-out renders")
    log.info("backbone: %d + %d renders at %d px in %.0f s", renders, held_out, size, time.perf_counter() - t0)
    torch.manual_seed(seed)
    model = PartHeads(parts, size, pool)
    t1 = time.perf_counter()
    fz.fit_attributes(model, images, fz.encode_labels(records, parts), epochs=epochs, batch_size=batch_size,
                      seed=seed, progress=progress, desc="backbone", device=dev)
    train_seconds = time.perf_counter() - t1
    acc = fz.per_part_accuracy(fz.predict(model, val_images, device=dev), fz.encode_labels(val_records, parts),
                               parts)
    model.cpu()
    meta = {"format": BACKBONE_FORMAT, "version": 1, "size": size, "renders": renders,
            "parts": parts, "pool": pool,
            "epochs": epochs, "seed": seed, "thin_rims": thin_rims, "train_seconds": round(train_seconds, 1),
            "held_out_renders": held_out, "held_out_accuracy": round(acc["accuracy"], 4),
            "held_out_per_part": {p: round(v, 4) for p, v in acc["per_part"].items()}}
    save_backbone(model, meta, out)
    log.info("backbone: %.1f%% of parts right on %d held-out renders (%s), trained in %.0f s on %s -> %s",
             100 * acc["accuracy"], held_out,
             ", ".join(f"{p} {100 * v:.0f}%" for p, v in acc["per_part"].items()), train_seconds, dev, out)
    return meta


def save_backbone(model: PartHeads, meta: dict[str, Any], out: str | Path) -> Path:
    """Write `model` as a backbone file (safetensors, `meta` as its "attngan" metadata), atomically."""
    heads = {f"{HEADS_PREFIX}{k}": v for k, v in model.heads.state_dict().items()}
    if model.pool == "attention":  # its global block is untrained: only the trunk and the attention heads are kept
        trunk = {k: v for k, v in trunk_state(model.encoder).items() if k.startswith("trunk.")}
        heads.update({f"{WHERE_PREFIX}{k}": v for k, v in model.where.state_dict().items()})
    else:
        trunk = trunk_state(model.encoder)
    return save_tagged({**trunk, **heads}, meta, out)


def save_tagged(state: dict[str, torch.Tensor], meta: dict[str, Any], out: str | Path) -> Path:
    """Write tensors as safetensors with `meta` (its "format" says what made them) as the "attngan" metadata,
    atomically: a backbone file, a ring map file."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"attngan": json.dumps(meta)})
    tmp.replace(out)
    return out


def read_backbone(path: str | Path, key: str = "TRAIN.IMAGE_BACKBONE") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trunk state, metadata) from a backbone file, with one-line errors (naming the config `key` it came from)
    for anything else."""
    return read_tagged(path, BACKBONE_FORMAT, key, "an image backbone", "attngan train backbone")


def read_tagged(path: str | Path, fmt: str, key: str, what: str, command: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a save_tagged file whose metadata "format" is `fmt`, with one-line errors (naming the
    config `key` it came from, `what` it should be and the `command` that makes one) for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AttnGANError(f"{key} {path} does not exist (make one with `{command}`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("attngan")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AttnGANError(f"{path} is not a safetensors file: {exc}") from None
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != fmt:
        raise AttnGANError(f"{path} is not {what} made by `{command}`")
    return state, meta


def read_mean_pooled(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """read_backbone for the part loss and TRAIN.IMAGE_CODE parts, which read the trunk's global code."""
    state, meta = read_backbone(path)
    if meta.get("pool", "mean") != "mean":
        raise AttnGANError(f"{path} is an attention-pooled detail backbone: its heads read the trunk's map, not the "
                           "global code that TRAIN.PART_LOSS and TRAIN.IMAGE_CODE parts read (give them a backbone "
                           "trained with the default --pool mean)")
    return state, meta


def load_backbone(encoder: ImageEncoder, path: str | Path) -> dict[str, Any]:
    """Copy a backbone file's trunk into a small ImageEncoder; returns the file's metadata. A detail backbone
    (`--pool attention`) brings the trunk alone (its global block was never trained): the encoder's stays fresh."""
    state, meta = read_backbone(path)
    state = {k: v for k, v in state.items() if not k.startswith((HEADS_PREFIX, WHERE_PREFIX))}
    expected = set(trunk_state(encoder))
    if meta.get("pool", "mean") == "attention":
        expected = {k for k in expected if k.startswith("trunk.")}
    if set(state) != expected:
        raise AttnGANError(f"{path} does not fit the small image encoder's trunk "
                           f"(missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})")
    encoder.load_state_dict(state, strict=False)
    log.info("image backbone %s: %d px, %.1f%% of parts on held-out renders", path, meta.get("size", 0),
             100 * meta.get("held_out_accuracy", float("nan")))
    return meta


class PartReader(nn.Module):
    """The backbone's part heads over a small ImageEncoder's pooled global features (the trunk's output before
    DAMSM's projections): `reader(pooled)` -> {part: logits}. The GAN's part loss (TRAIN.PART_LOSS) reads the
    generated bird with it; frozen, like the image encoder it sits on."""

    def __init__(self, parts: dict[str, list[str]], dim: int) -> None:
        super().__init__()
        self.parts = {p: list(v) for p, v in parts.items()}
        self.heads = nn.ModuleDict({p: nn.Linear(dim, len(v)) for p, v in self.parts.items()})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: head(pooled) for p, head in self.heads.items()}


READER_MIN_ACCURACY = 0.9  # held-out accuracy below which a part's head is left out of the part loss


def readable_parts(path: str | Path, meta: dict[str, Any], min_accuracy: float | None = None
                   ) -> dict[str, list[str]]:
    """{part: values} of a backbone file's heads right on at least `min_accuracy` of its held-out renders: one
    that cannot read its part (the 128 px default backbone's nape, eye, eye ring and bill shape) would teach the
    generator noise."""
    min_accuracy = READER_MIN_ACCURACY if min_accuracy is None else min_accuracy
    parts = meta.get("parts") or {}
    accuracy = meta.get("held_out_per_part", {})
    left_out = sorted(p for p in parts if accuracy.get(p, 0.0) < min_accuracy)
    if parts and left_out:
        log.info("part reader %s: %s read below %.0f%% on held-out renders, left out", path, ", ".join(left_out),
                 100 * min_accuracy)
    parts = {p: list(v) for p, v in parts.items() if p not in left_out}
    if not parts:
        raise AttnGANError(f"{path} has no part heads that read their part on {100 * min_accuracy:.0f}% of held-out "
                           "renders (or none at all: made by an older `attngan train backbone`); train it longer")
    return parts


def _heads_state(state: dict[str, torch.Tensor], parts: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The `heads.<part>.*` tensors of a backbone file for `parts`, named as in a ModuleDict of heads."""
    return {k[len(HEADS_PREFIX):]: v for k, v in state.items()
            if k.startswith(HEADS_PREFIX) and k[len(HEADS_PREFIX):].split(".")[0] in parts}


def load_part_reader(path: str | Path, encoder: ImageEncoder, min_accuracy: float | None = None) -> PartReader:
    """The part heads of a backbone file, for an image encoder whose trunk IS that file's trunk (the heads read
    that trunk's features and nothing else): a DAMSM trained with TRAIN.IMAGE_BACKBONE = `path` keeps it frozen.
    Only the heads right on at least `min_accuracy` of the file's held-out renders are kept (`readable_parts`)."""
    state, meta = read_mean_pooled(path)
    parts = readable_parts(path, meta, min_accuracy)
    if encoder.kind != "small":
        raise AttnGANError("the part heads read the small image encoder's features: IMAGE_ENCODER must be small")
    own = trunk_state(encoder)
    if set(own) != {k for k in state if k.startswith(TRUNK_PREFIXES)} or any(  # fp16 bundles: a tolerance
            not torch.allclose(own[k].float(), state[k].float(), rtol=2e-3, atol=1e-3) for k in own):
        raise AttnGANError(f"the image encoder's trunk is not {path}'s: use the backbone its DAMSM was trained on "
                           "(TRAIN.IMAGE_BACKBONE of that DAMSM run)")
    reader = PartReader(parts, encoder.emb_cnn_code.in_features)
    reader.heads.load_state_dict(_heads_state(state, parts))
    return reader


def part_code_projection(path: str | Path, nef: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight nef x 512, bias nef) for the small encoder's `emb_cnn_code`: the backbone's part heads (each head's
    logits centred over its values, so a part adds only which value it has) stacked, then a random rotation into
    `nef` dimensions (orthonormal rows when the heads have at least `nef` outputs). A linear map of the same
    shape as the learnt projection, so bundles and the original's key names are unchanged.

    Measured on the default data (`models/probe_encoders.py`): a linear read-out of a part's colour from the
    learnt code is right for 67% of the test species' images (100% of the training species'): the projection keeps
    what tells the training species apart. From the part code: 80%. The text side did not follow (72% either
    way), so the generator did not improve (models/README.md, "Tried and not kept")."""
    state, meta = read_mean_pooled(path)
    parts = meta.get("parts")
    if not parts:
        raise AttnGANError(f"{path} has no part heads (made by an older `attngan train backbone`); train it again "
                           "to use TRAIN.IMAGE_CODE parts")
    weights, biases = [], []
    for part in parts:
        w, b = state[f"{HEADS_PREFIX}{part}.weight"].float(), state[f"{HEADS_PREFIX}{part}.bias"].float()
        weights.append(w - w.mean(0, keepdim=True))
        biases.append(b - b.mean())
    heads_w, heads_b = torch.cat(weights), torch.cat(biases)  # K x 512, K
    gen = torch.Generator().manual_seed(seed)
    rotation = torch.randn(max(nef, heads_w.shape[0]), max(nef, heads_w.shape[0]), generator=gen)
    rotation = torch.linalg.qr(rotation)[0][:nef, : heads_w.shape[0]]  # nef x K, orthonormal rows when K >= nef
    return rotation @ heads_w, rotation @ heads_b


def load_detail_reader(path: str | Path, min_accuracy: float | None = None) -> PartHeads:
    """A backbone file as a whole, its own trunk with its readable heads: the GAN's detail loss
    (TRAIN.DETAIL_LOSS) reads the largest generated image with it at the file's own size. Trained with
    `attngan train backbone --size 128 --pool attention` (the default recipe's), it reads parts the DAMSM trunk's
    averaged code cannot: the wing bar on 99% of held-out renders, the eye ring on 95% (49%); at 256 px the nape
    on 98% too (19%)."""
    state, meta = read_backbone(path, "TRAIN.DETAIL_BACKBONE")
    parts = readable_parts(path, meta, min_accuracy)
    pool = meta.get("pool", "mean")
    reader = PartHeads(parts, int(meta.get("size", 0)), pool)
    own = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    reader.encoder.load_state_dict(own, strict=False)
    reader.heads.load_state_dict(_heads_state(state, parts))
    if pool == "attention":  # the kept parts' rows of the attention conv
        rows = [list(meta["parts"]).index(p) for p in parts]
        reader.where.load_state_dict({k[len(WHERE_PREFIX):]: v[rows] for k, v in state.items()
                                      if k.startswith(WHERE_PREFIX)})
    return reader
