"""Caption faithfulness on synthetic birds: does each generated bird have the attributes its caption names?

A small CNN with one head per bird part (crown colour, belly colour, ...) is trained on REAL synthetic
renders (the data set's train images, plus fresh renders from `trainer.data.synth.render_bird` when it can
draw them), and judged on the data set's held-out test renders, so the judge's own accuracy is reported
next to its verdicts. It is cached in the evaluation output directory, keyed by the data set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attngan.errors import AttnGANError

log = logging.getLogger(__name__)

INPUT_SIZE = 64
CACHE_NAME = "attribute_classifier.safetensors"
IGNORE = -100  # label for a part an image has no value for


class AttributeClassifier(nn.Module):
    """Conv trunk (keeps a 4x4 layout, so it knows where the crown and the belly are) + one head per part."""

    def __init__(self, parts: dict[str, list[str]], width: int = 16) -> None:
        super().__init__()
        self.parts = {p: list(v) for p, v in parts.items()}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        w = width
        self.trunk = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({p: nn.Linear(256, len(v)) for p, v in self.parts.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-1] != INPUT_SIZE:
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                                   antialias=True)
        h = self.fc(self.trunk(images))
        return {p: head(h) for p, head in self.heads.items()}


def encode_labels(records: Iterable[dict[str, str]], parts: dict[str, list[str]]) -> torch.Tensor:
    """[{part: value}] -> LongTensor N x P of value indices (IGNORE where a part is absent or unknown)."""
    names = list(parts)
    rows = []
    for rec in records:
        row = []
        for p in names:
            v = rec.get(p)
            row.append(parts[p].index(v) if v in parts[p] else IGNORE)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long).reshape(-1, len(names))


def _autocast(device: str):
    """bf16 autocast where it is fast (CUDA, and CPUs with AVX512-BF16/AMX); a no-op elsewhere."""
    import contextlib

    dev = torch.device(device)
    if dev.type == "cuda" or (dev.type == "cpu" and _cpu_bf16()):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cpu_bf16() -> bool:
    try:
        from attngan.pipeline import cpu_supports_bf16

        return cpu_supports_bf16()
    except ImportError:
        return False


def train_classifier(images: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]], *,
                     epochs: int = 12, batch_size: int = 64, lr: float = 2e-3, device: str = "cpu",
                     seed: int = 0, progress: bool = True) -> AttributeClassifier:
    """Train on N x 3 x S x S images in [-1, 1] with N x P labels; light augmentation (shift, flip is NOT used:
    a side-view bird facing the other way is still the same bird, but the classifier must see both)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = AttributeClassifier(parts).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(images)
    steps = epochs * max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    names = list(parts)
    bar = tqdm(total=steps, desc="attribute classifier", unit="step", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start:start + batch_size]
            x = images[idx].to(device)
            if x.shape[-1] != INPUT_SIZE:
                x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None].to(device), x.flip(-1), x)
            x = x + 0.03 * torch.randn(x.shape, generator=gen).to(device)  # generated images are noisier
            y = labels[idx].to(device)
            with _autocast(device):
                out = model(x.contiguous(memory_format=torch.channels_last))
            loss = sum(F.cross_entropy(out[p].float(), y[:, i], ignore_index=IGNORE) for i, p in enumerate(names)
                       if (y[:, i] != IGNORE).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step() if sched.last_epoch < steps - 1 else None
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 128,
            device: str = "cpu") -> torch.Tensor:
    """N x P predicted value indices."""
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        outs.append(torch.stack([logits[p].argmax(1) for p in model.parts], 1).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, len(model.parts), dtype=torch.long)


def per_part_accuracy(pred: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]]) -> dict[str, Any]:
    """Accuracy per part over the labelled entries, and overall (micro) accuracy."""
    out: dict[str, Any] = {"per_part": {}, "counts": {}}
    correct = total = 0
    for i, p in enumerate(parts):
        m = labels[:, i] != IGNORE
        k = int(m.sum())
        if k == 0:
            continue
        c = int((pred[m, i] == labels[m, i]).sum())
        out["per_part"][p] = c / k
        out["counts"][p] = k
        correct, total = correct + c, total + k
    out["accuracy"] = correct / total if total else float("nan")
    out["n"] = total
    return out


# --- caching -----------------------------------------------------------------------------------------

@dataclass
class CachedClassifier:
    model: AttributeClassifier
    meta: dict[str, Any]


def fingerprint(data_dir: str | Path, n_train: int, n_render: int) -> str:
    att = Path(data_dir) / "attributes.json"
    h = hashlib.sha256(att.read_bytes()).hexdigest()[:16] if att.is_file() else "none"
    return f"{h}-{n_train}-{n_render}-{INPUT_SIZE}"


def save_classifier(path: Path, model: AttributeClassifier, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    meta = dict(meta, parts=model.parts)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(path),
              metadata={"meta": json.dumps(meta)})


def load_classifier(path: Path) -> CachedClassifier | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
        model = AttributeClassifier(meta["parts"])
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache is retrained, not fatal
        log.warning("ignoring attribute classifier cache %s: %s", path, exc)
        return None
    model.eval()
    return CachedClassifier(model, meta)


def get_classifier(out_dir: Path, data_dir: Path, train_images: torch.Tensor, train_labels: torch.Tensor,
                   held_images: torch.Tensor, held_labels: torch.Tensor, parts: dict[str, list[str]], *,
                   key: str, device: str = "cpu", epochs: int = 12, progress: bool = True) -> CachedClassifier:
    """The cached classifier for `key` if there is one, else train it, judge it on held-out renders, cache it."""
    path = out_dir / CACHE_NAME
    cached = load_classifier(path)
    if cached is not None and cached.meta.get("key") == key and cached.model.parts == parts:
        log.info("attribute classifier: using cache %s", path)
        cached.model.to(device)
        return cached
    if len(train_images) < 32:
        raise AttnGANError(f"too few training renders for the attribute classifier ({len(train_images)}); "
                           "give a larger synthetic data set")
    t0 = time.perf_counter()
    model = train_classifier(train_images, train_labels, parts, device=device, epochs=epochs, progress=progress)
    held = per_part_accuracy(predict(model, held_images, device=device), held_labels, parts)
    meta = {"key": key, "n_train": len(train_images), "n_held_out": len(held_images),
            "train_seconds": round(time.perf_counter() - t0, 1), "held_out": held, "epochs": epochs}
    save_classifier(path, model, meta)
    return CachedClassifier(model.to(device), meta)


def judge(model: AttributeClassifier, images: torch.Tensor, named: list[dict[str, str]],
          device: str = "cpu") -> dict[str, Any]:
    """Named-attribute accuracy: for each generated image, each part its caption names, is it that value?"""
    labels = encode_labels(named, model.parts)
    pred = predict(model, images, device=device)
    res = per_part_accuracy(pred, labels, model.parts)
    res["per_image_all_correct"] = float(np.mean([
        bool(((pred[i] == labels[i]) | (labels[i] == IGNORE)).all()) for i in range(len(labels))
    ])) if len(labels) else float("nan")
    return res
