"""Caption faithfulness on synthetic birds: does each generated bird have the attributes its caption names?

The judge is a small CNN at 128 px (the eye, eye ring and bill are a few pixels wide at 64) with one
cross-entropy head per bird part (crown colour, belly colour, bill shape, ...). It is trained on REAL
synthetic renders: the data set's train images plus fresh renders from `trainer.data.synth` with every
part drawn independently (so it cannot lean on species correlations), augmented with the variation a
generator shows (small shifts and scales, flips, blur, colour noise). It is judged on the data set's
held-out test renders, so its own accuracy is reported next to its verdicts, and cached in the
evaluation output directory, keyed by the data set; `--judge FILE` reuses another evaluation's judge, so
two models are scored by the same one.

A part is "judgeable" only if the judge reads it reliably on real renders it never trained on (a
validation set of fresh renders): a part it cannot read (today, within a ~3 minute CPU budget: the
few-pixel bill, eye and eye ring) would only add noise to the verdicts, so it is reported as not
judgeable and left out of both the judge's and the generator's scores.

The judge never "accepts" a part: it predicts that part's value, and a verdict is right only when the
prediction equals the value the caption names, so a grey blob is judged grey, not a yellow crown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
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
from attngan.pipeline import cpu_has_fast_bf16

log = logging.getLogger(__name__)

INPUT_SIZE = 128
VERSION = 2  # bump when the architecture or training recipe changes: old caches are retrained
CACHE_NAME = "attribute_classifier.safetensors"
IGNORE = -100  # label for a part an image has no value for
JUDGEABLE_MIN = 0.9  # validation accuracy below which a part is reported as not judgeable


class AttributeClassifier(nn.Module):
    """Where-and-what: a conv trunk gives a 32x32 feature map (local colour + wider context); each part has
    its own spatial attention map over it (where the crown is, whatever the pose), and a small head reads
    that part's value from the attention-pooled features. Far faster to learn than a flattened layout."""

    def __init__(self, parts: dict[str, list[str]], width: int = 24) -> None:
        super().__init__()
        self.parts = {p: list(v) for p, v in parts.items()}
        self.width = width

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        w = width
        self.stem = nn.Sequential(cbr(3, w, 2), cbr(w, 4 * w // 3), nn.MaxPool2d(2))  # 128 -> 32
        self.l2 = cbr(4 * w // 3, 2 * w)  # 32
        self.l3 = nn.Sequential(nn.MaxPool2d(2), cbr(2 * w, 3 * w))  # 16
        self.l4 = nn.Sequential(nn.MaxPool2d(2), cbr(3 * w, 4 * w), cbr(4 * w, 4 * w))  # 8
        dim = 2 * w + 3 * w + 4 * w
        self.attn = nn.Conv2d(dim, len(self.parts), 1)
        self.heads = nn.ModuleDict({p: nn.Sequential(nn.Linear(dim, 64), nn.ReLU(inplace=True), nn.Linear(64, len(v)))
                                    for p, v in self.parts.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x2 = self.l2(self.stem(to_input_size(images)))
        x3 = self.l3(x2)
        x4 = self.l4(x3)
        size = x2.shape[-2:]
        # nearest upsampling: its backward is a cheap sum (bilinear's is ~15% of a CPU training step)
        feat = torch.cat([x2, F.interpolate(x3, size=size, mode="nearest"), F.interpolate(x4, size=size, mode="nearest")], 1)
        a = self.attn(feat).flatten(2).float().softmax(-1).to(feat.dtype)  # N x P x HW
        pooled = torch.bmm(a, feat.flatten(2).transpose(1, 2))  # N x P x C
        return {p: head(pooled[:, i]) for i, (p, head) in enumerate(self.heads.items())}


def to_input_size(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x S x S in [-1, 1] at any S -> INPUT_SIZE (antialiased when shrinking)."""
    if images.shape[-1] == INPUT_SIZE and images.shape[-2] == INPUT_SIZE:
        return images
    return F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > INPUT_SIZE)


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


# --- training data -------------------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Every part drawn independently (no species correlations), except combinations the renderer draws
    identically to another value, which synthetic species never have either: a wingbar the wing's colour,
    an eye ring the colour of the head around it, a bill the colour of the head it grows from."""
    from trainer.data.synth import ATTRIBUTE_VALUES

    def pick(values: list[str], exclude: tuple[str, ...] = ()) -> str:
        options = [v for v in values if v not in exclude]
        return options[int(rng.integers(len(options)))]

    a = {p: pick(v) for p, v in ATTRIBUTE_VALUES.items()}
    a["wingbar"] = pick(ATTRIBUTE_VALUES["wingbar"], (a["wing"],))
    a["eyering"] = pick(ATTRIBUTE_VALUES["eyering"], (a["crown"], a["throat"]))
    a["bill_color"] = pick(ATTRIBUTE_VALUES["bill_color"], (a["crown"], a["throat"]))
    return a


def render_set(n: int, seed: int, size: int = INPUT_SIZE, progress: bool = False, desc: str = "judge: fresh renders",
               dtype: torch.dtype = torch.float32, thin_rims: float = 0.0) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """`n` fresh real renders (N x 3 x size x size in [-1, 1], filled in place: float16 halves the memory of a
    large set, 3.9 GB for 10,000 at 256 px) with their attributes, cropped to the bird's box and centre-cropped
    exactly as the data loader does (deterministic for a seed). `thin_rims`: that share of the ringed birds have
    their ring drawn as a thin rim (synth.THIN_RIM head radii, round an eye of 0.2) and labelled "none", so a reader
    trained on them counts a ring only at its full width (a generated eye with a rim of colour is not a ring)."""
    from tqdm import tqdm

    from trainer.data import synth
    from trainer.data.transforms import crop_to_bbox, image_pyramid

    rng = np.random.default_rng([seed, 7])
    images = torch.empty(n, 3, size, size, dtype=dtype)
    recs = []
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, leave=False):
        attrs = sample_attributes(rng)
        thin = bool(thin_rims) and attrs["eyering"] != "none" and rng.random() < thin_rims  # at 0: no extra draw
        img, bbox = synth._render(attrs, 256, rng, synth.THIN_RIM if thin else synth.RING_RADIUS)
        if thin:
            attrs = {**attrs, "eyering": "none"}
        images[i] = image_pyramid(crop_to_bbox(img, bbox), [size], train=False)[0]
        recs.append(attrs)
    return images, recs


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, 0 = none) with a 5-tap separable kernel."""
    t = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # N x 5
    n, c, h, w = x.shape
    xs = x.reshape(1, n * c, h, w)
    kk = k.repeat_interleave(c, 0)
    xs = F.conv2d(F.pad(xs, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=n * c)
    xs = F.conv2d(F.pad(xs, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=n * c)
    return xs.reshape(n, c, h, w)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The variation generated birds show relative to the renders: flips, small shifts and scales (the
    trainer's random crops), blur and lower resolution, slight colour shifts and noise. Never enough to
    turn one palette colour into another."""
    n = len(x)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    flip = (torch.rand(n, generator=gen) < 0.5).float() * 2 - 1
    scale = u(0.9, 1.1)
    angle = u(-5, 5) * math.pi / 180
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.cos(angle) * -flip
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle) * -flip
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = u(-0.1, 0.1, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return photometric(x, gen)


def photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """augment's changes that leave every pixel where it was: blur, lower resolution, colour shifts and noise (so a
    per-pixel map of the image, trainer.ring_map's, stays right)."""
    n = len(x)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    blur = torch.where(torch.rand(n, generator=gen) < 0.5, u(0.3, 1.0), torch.zeros(n))
    x = _gaussian_blur(x, blur)
    low = torch.rand(n, generator=gen) < 0.1  # some as if generated at 64 px and upsampled
    if low.any():
        small = F.interpolate(x[low], scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        x[low] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    gain = u(0.93, 1.07)[:, None, None, None]
    offset = u(-0.04, 0.04, 3)[:, :, None, None]
    noise = u(0.0, 0.05)[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return ((x + 1) * gain - 1 + offset + noise).clamp(-1, 1)


# --- training and prediction ---------------------------------------------------------------------------


def bf16_autocast(device: str):
    """bf16 autocast where it is fast (CUDA, and CPUs with AVX512-BF16/AMX: ~2x here); a no-op elsewhere."""
    dev = torch.device(device)
    if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_fast_bf16()):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]], *,
                     epochs: int = 6, batch_size: int = 64, lr: float = 3e-3, device: str = "cpu",
                     seed: int = 0, progress: bool = True, width: int = 24) -> AttributeClassifier:
    """The judge: an AttributeClassifier fitted with `fit_attributes`."""
    torch.manual_seed(seed)
    model = AttributeClassifier(parts, width=width)
    fit_attributes(model, to_input_size(images), labels, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                   seed=seed, progress=progress, desc="judge: training")
    return model


def fit_attributes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int = 64,
                   lr: float = 3e-3, device: str = "cpu", seed: int = 0, progress: bool = True,
                   desc: str = "training") -> nn.Module:
    """Fit a model whose forward gives {part: logits} (`model.parts` names the parts in label order) on
    N x 3 x S x S images in [-1, 1] with N x P labels (IGNORE = unknown): AdamW with a one-cycle learning rate,
    bf16 autocast where fast, `augment` on every batch; on CPU the thread count follows the idle cores (checked
    every 30 s, as a training run does). Returns the model in eval mode."""
    from tqdm import tqdm

    from trainer.runtime import CpuThreads

    threads = CpuThreads(torch.device(device), every=30.0)
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    n = len(images)
    per_epoch = max(1, n // batch_size)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    names = list(model.parts)
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = augment(images[idx].float(), gen).to(device).contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(device)
            with bf16_autocast(device):
                out = model(x)
            loss = sum(F.cross_entropy(out[p].float(), y[:, i], ignore_index=IGNORE, label_smoothing=0.05)
                       for i, p in enumerate(names) if (y[:, i] != IGNORE).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch < steps - 1:
                sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            threads.maybe_update()
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 128,
            device: str = "cpu") -> torch.Tensor:
    """N x P predicted value indices, on `device` (the model goes there too: a judge loaded from a file is on the
    CPU)."""
    model.to(device).eval()
    outs = []
    for start in range(0, len(images), batch_size):
        with bf16_autocast(device):
            logits = model(images[start:start + batch_size].to(device).float())
        outs.append(torch.stack([logits[p].float().argmax(1) for p in model.parts], 1).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, len(model.parts), dtype=torch.long)


def per_part_accuracy(pred: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]],
                      only: Iterable[str] | None = None) -> dict[str, Any]:
    """Accuracy per part over the labelled entries, and overall (micro) accuracy over the parts in `only`
    (default: all)."""
    keep = set(parts) if only is None else set(only)
    out: dict[str, Any] = {"per_part": {}, "counts": {}}
    correct = total = 0
    for i, p in enumerate(parts):
        m = labels[:, i] != IGNORE
        k = int(m.sum())
        if k == 0 or p not in keep:
            continue
        c = int((pred[m, i] == labels[m, i]).sum())
        out["per_part"][p] = c / k
        out["counts"][p] = k
        correct, total = correct + c, total + k
    out["accuracy"] = correct / total if total else float("nan")
    out["n"] = total
    return out


def judgeable_parts(val: dict[str, Any], parts: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """(parts read reliably on validation renders, {part: why not} for the others)."""
    ok, not_ok = [], {}
    for p in parts:
        acc = val["per_part"].get(p)
        if acc is None:
            not_ok[p] = "no validation renders have it"
        elif acc < JUDGEABLE_MIN:
            not_ok[p] = (f"read correctly on only {100 * acc:.0f}% of validation renders (< {100 * JUDGEABLE_MIN:.0f}%): "
                         "too small or thin for this judge to read reliably, so its verdicts would be noise")
        else:
            ok.append(p)
    return ok, not_ok


# --- caching -----------------------------------------------------------------------------------------

@dataclass
class CachedClassifier:
    model: AttributeClassifier
    meta: dict[str, Any]

    @property
    def judgeable(self) -> list[str]:
        return list(self.meta.get("judgeable", list(self.model.parts)))

    def fits(self, key: str, parts: dict[str, list[str]]) -> bool:
        """Trained for this data set and settings (`fingerprint`) with these parts' values."""
        return self.meta.get("key") == key and self.model.parts == parts


def fingerprint(data_dir: str | Path, epochs: int, n_render: int) -> str:
    """The cache key: the data set's attributes, the training recipe and this module's version."""
    att = Path(data_dir) / "attributes.json"
    h = hashlib.sha256(att.read_bytes()).hexdigest()[:16] if att.is_file() else "none"
    return f"{h}-e{epochs}-r{n_render}-{INPUT_SIZE}-v{VERSION}"


def save_classifier(path: Path, model: AttributeClassifier, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    meta = dict(meta, parts=model.parts, width=model.width)
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
        model = AttributeClassifier(meta["parts"], width=int(meta.get("width", 24)))
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache is retrained, not fatal
        log.warning("ignoring attribute classifier cache %s: %s", path, exc)
        return None
    model.eval()
    return CachedClassifier(model, meta)


def reuse_classifier(path: Path, out_dir: Path, key: str, parts: dict[str, list[str]]) -> CachedClassifier:
    """A judge another evaluation trained (its cached file), checked to be for this data set and recipe, and
    copied into `out_dir` so this report is self-contained. Retraining a judge is not bit-reproducible across
    machines and thread counts, and a part near the judgeable threshold can flip; one judge makes two models'
    scores comparable."""
    import shutil

    judge = load_classifier(path)
    if judge is None:
        raise AttnGANError(f"--judge {path}: not an attribute judge file (expected an evaluation's {CACHE_NAME})")
    if not judge.fits(key, parts):
        raise AttnGANError(f"--judge {path}: trained for other data or settings (key {judge.meta.get('key')}, "
                           f"this evaluation needs {key}: same data set, --classifier-epochs and --judge-renders)")
    dest = Path(out_dir) / CACHE_NAME
    if not dest.exists() or not dest.samefile(path):
        shutil.copyfile(path, dest)
    return judge


def get_classifier(out_dir: Path, data_dir: Path, train_images: torch.Tensor, train_labels: torch.Tensor,
                   held_images: torch.Tensor, held_labels: torch.Tensor, parts: dict[str, list[str]], *,
                   key: str, device: str = "cpu", epochs: int = 6, progress: bool = True,
                   val_images: torch.Tensor | None = None, val_labels: torch.Tensor | None = None
                   ) -> CachedClassifier:
    """The cached classifier for `key` if there is one, else train it, find the parts it can judge (on the
    validation renders when given), judge it on held-out renders, and cache it."""
    path = Path(out_dir) / CACHE_NAME
    cached = load_classifier(path)
    if cached is not None and cached.fits(key, parts):
        log.info("attribute classifier: using cache %s", path)
        return cached
    if len(train_images) < 32:
        raise AttnGANError(f"too few training renders for the attribute classifier ({len(train_images)}); "
                           "give a larger synthetic data set")
    t0 = time.perf_counter()
    model = train_classifier(train_images, train_labels, parts, device=device, epochs=epochs, progress=progress)
    train_seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {"key": key, "n_train": len(train_images), "n_held_out": len(held_images),
                            "train_seconds": round(train_seconds, 1), "epochs": epochs, "input_size": INPUT_SIZE}
    judgeable = list(parts)
    if val_images is not None and val_labels is not None and len(val_images):
        val = per_part_accuracy(predict(model, val_images, device=device), val_labels, parts)
        judgeable, meta["not_judgeable"] = judgeable_parts(val, parts)
        meta["validation"] = val
        meta["n_validation"] = len(val_images)
    held_pred = predict(model, held_images, device=device)
    meta["judgeable"] = judgeable
    meta["held_out"] = per_part_accuracy(held_pred, held_labels, parts, only=judgeable)
    meta["held_out_all_parts"] = per_part_accuracy(held_pred, held_labels, parts)
    log.info("attribute judge: %.1f%% on %d held-out renders (judgeable parts), trained in %.0f s",
             100 * meta["held_out"]["accuracy"], len(held_images), train_seconds)
    save_classifier(path, model, meta)
    return CachedClassifier(model, meta)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion p of n trials (95% at z 1.96). Verdicts on one bird are not
    independent, so for named-attribute accuracy it is the narrowest the true spread can be."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score(pred: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]],
          judgeable: Iterable[str] | None = None) -> dict[str, Any]:
    """Named-attribute accuracy of predictions against the values captions name, over judgeable parts only, with
    its 95% interval, and the share of images with every judgeable named part right."""
    keep = list(parts) if judgeable is None else [p for p in parts if p in set(judgeable)]
    res = per_part_accuracy(pred, labels, parts, only=keep)
    res["interval_95"] = list(wilson_interval(res["accuracy"], res["n"]))
    cols = [i for i, p in enumerate(parts) if p in keep]
    if len(labels) and cols:
        ok = (pred[:, cols] == labels[:, cols]) | (labels[:, cols] == IGNORE)
        res["per_image_all_correct"] = float(ok.all(1).float().mean())
    else:
        res["per_image_all_correct"] = float("nan")
    res["swapped"] = swapped_share(pred, labels, parts, keep)
    res["not_judged"] = [p for p in parts if p not in keep]
    return res


def swapped_share(pred: torch.Tensor, labels: torch.Tensor, parts: dict[str, list[str]],
                  keep: Iterable[str]) -> float:
    """Share of the judged named attributes whose part got a value the same caption names for ANOTHER part (a red
    crown and a yellow breast asked, a yellow crown drawn): colours drawn but not bound to their parts."""
    names = list(parts)
    judged = swapped = 0
    for row_pred, row in zip(pred.tolist(), labels.tolist()):
        named = {names[j]: parts[names[j]][v] for j, v in enumerate(row) if v != IGNORE}
        for j, part in enumerate(names):
            if part not in keep or part not in named:
                continue
            judged += 1
            guess = parts[part][row_pred[j]]
            swapped += guess != named[part] and guess in {v for q, v in named.items() if q != part}
    return swapped / judged if judged else float("nan")


def judge(model: AttributeClassifier, images: torch.Tensor, named: list[dict[str, str]],
          device: str = "cpu", judgeable: Iterable[str] | None = None) -> dict[str, Any]:
    """Named-attribute accuracy: for each generated image, each part its caption names, is it that value?"""
    labels = encode_labels(named, model.parts)
    return score(predict(model, images, device=device), labels, model.parts, judgeable)
