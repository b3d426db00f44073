"""`attngan evaluate`: generate from test captions and measure, then write metrics.json, report.md and PNGs.

Order of work: check every input first (bundle, data, vocabulary, weights, logs, attributes), so a bad
flag fails in a second, not after an hour; then train or load the attribute judge; then ONE streaming pass
over the generated images that feeds every metric (R-precision codes, FID/IS features, the judge), the
same pass for the untrained generator (FID reference point), the real test images, complexity, pictures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from attngan.bundle import Bundle, load_bundle
from attngan.config import load_config
from attngan.errors import AttnGANError
from attngan.fileio import atomic_write_text
from attngan.pipeline import check_candidates, check_truncation
from attngan.render import save_palette_png
from attngan.text import pad_caption
from trainer.evaluate import complexity, diversity, faithfulness, report
from trainer.evaluate.fid import FeatureStats, feature_stats, frechet_distance, inception_score
from trainer.evaluate.rprecision import attribute_oracle_hits, fold_stats, r_precision_hits, sample_mismatched

log = logging.getLogger(__name__)

DIVERSITY_CAPTIONS = 100  # seed diversity: this many test captions ...
DIVERSITY_SEEDS = 4  # ... drawn with this many seeds each (and this many real images of each test species)
JUDGE_VALIDATION_RENDERS = 600  # fresh renders that decide which parts the judge can read
MAX_UNKNOWN_WORD_RATE = 0.2  # more test-caption words than this missing from the bundle's vocabulary: wrong data set


@dataclass
class EvalOptions:
    bundle: Path
    data: Path
    out: Path
    images: int = 1000
    inception_weights: str = ""
    logs: tuple[str, ...] = ()  # training runs in the order they ran (a grown model: stage 1, then stage 2)
    batch_size: int = 32
    device: str = "auto"
    seed: int = 100  # the original's evaluation seed
    folds: int = 10
    faithfulness: str = "auto"  # auto | on | off
    data_format: str = "cub"
    samples: int = 6
    untrained: bool = True
    latency_runs: int = 5
    classifier_epochs: int = 6  # ~3 min on 2 busy CPU cores with 2000 renders + 3000 data set images
    judge_renders: int = 2000  # fresh synthetic renders added to the judge's training set
    candidates: int = 1  # best of N by DAMSM per item (what `attngan generate --candidates N` serves)
    judge: str = ""  # an attribute judge from another evaluation, so two models are scored by the same judge
    progress: bool = True
    precision: str = "fp32"  # fp32 (the reference) | bf16 (autocast, the serving fast path), to compare metrics
    truncation: float = 1.0  # noise drawn at this times its spread (what `attngan generate --truncation` serves)


@dataclass
class TestSet:
    """The test split with its captions encoded in the BUNDLE's vocabulary."""

    dataset: Any
    captions: list[list[list[int]]]  # per image, per caption: bundle ids
    tokens: list[list[list[str]]]  # per image, per caption: the data set's words (for matching attributes)
    unknown_rate: float


# --------------------------------------------------------------------------------------------- inputs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AttnGANError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AttnGANError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None


def load_test_set(data: Path, bundle: Bundle, data_format: str) -> TestSet:
    from trainer.data.dataset import TextImageDataset

    mc = bundle.config
    cfg = load_config(None, [f"TREE.BRANCH_NUM={max(mc.branch_num, 1)}", "TREE.BASE_SIZE=64",
                             f"TEXT.WORDS_NUM={mc.words_num}", f"DATA_FORMAT={data_format}"])
    if not Path(data).is_dir():
        raise AttnGANError(f"data directory not found: {data}")
    ds = TextImageDataset(data, "test", cfg, vocab=None, train=False)
    wordtoix = bundle.vocab.wordtoix
    caps, toks = [], []
    known = total = 0
    missing: dict[str, int] = {}
    for i in range(len(ds)):
        per_ids, per_tok = [], []
        for ids in ds.captions(i):
            words = [ds.vocab.ixtoword[j] for j in ids]
            mapped = [wordtoix[w] for w in words if w in wordtoix]
            for w in words:
                if w not in wordtoix:
                    missing[w] = missing.get(w, 0) + 1
            known += len(mapped)
            total += len(words)
            per_ids.append(mapped)
            per_tok.append(words)
        caps.append(per_ids)
        toks.append(per_tok)
    rate = 1 - known / total if total else 1.0
    if rate > MAX_UNKNOWN_WORD_RATE:
        examples = ", ".join(sorted(missing, key=lambda w: -missing[w])[:5])
        raise AttnGANError(
            f"the bundle's vocabulary does not match the data set: {100 * rate:.0f}% of the test captions' words "
            f"are unknown to it (e.g. {examples}); evaluate a bundle trained on {data}, or the data it was trained on"
        )
    return TestSet(ds, caps, toks, rate)


def check_logs(logs: Sequence[str]) -> list[Path]:
    """Each --logs directory must hold TensorBoard event files; the order given is the order the runs ran."""
    paths = []
    for run_dir in logs:
        path = Path(run_dir)
        if not path.is_dir():
            raise AttnGANError(f"--logs {run_dir}: directory not found (give a training output dir or its logs/ folder)")
        if not any(path.rglob("events.out.tfevents.*")):
            raise AttnGANError(f"--logs {run_dir}: no TensorBoard event files under it "
                               "(expected OUTPUT/logs/events.out.tfevents.*)")
        paths.append(path)
    return paths


def bundle_step(bundle: Bundle, logs_dirs: list[Path], starts: list[tuple[int, str]]) -> int | None:
    """Where on the curves' step axis the bundle was exported: its run's start plus its training steps, when
    the last --logs run is the one the bundle came from (a run may go on past the exported snapshot)."""
    training = bundle.manifest.get("training") or {}
    steps, source = training.get("steps"), training.get("source_run")
    if not (isinstance(steps, int) and source and starts and report.run_name(logs_dirs[-1]) == report.run_name(source)):
        return None
    return starts[-1][0] + steps


def plan_items(ts: TestSet, n: int, seed: int) -> list[tuple[int, int]]:
    """DM-GAN's loop: passes over the test split, one random caption per image per pass, until n items."""
    rng = np.random.default_rng(seed)
    usable = [i for i, caps in enumerate(ts.captions) if any(caps)]
    if not usable:
        raise AttnGANError("no test caption has a word in the bundle's vocabulary")
    items: list[tuple[int, int]] = []
    while len(items) < n:
        for i in rng.permutation(usable):
            nonempty = [k for k, c in enumerate(ts.captions[i]) if c]
            items.append((int(i), int(rng.choice(nonempty))))
            if len(items) == n:
                break
    return items


# --------------------------------------------------------------------------------------------- Inception


class InceptionFeatures(nn.Module):
    """The project's Inception-v3 (attngan.inception) with the user's local weights: pool3 (2048) + class probs."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        from attngan.inception import inception_blocks, load_inception_weights, read_state_dict

        for name, block in inception_blocks().items():
            setattr(self, name, block)
        load_inception_weights(self, weights)
        state = read_state_dict(weights)
        self.fc: nn.Linear | None = None
        if "fc.weight" in state:
            w = state["fc.weight"]
            self.fc = nn.Linear(w.shape[1], w.shape[0])
            self.fc.load_state_dict({"weight": w, "bias": state.get("fc.bias", torch.zeros(w.shape[0]))})
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        from attngan.inception import inception_forward

        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        _, x = inception_forward(self, x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        probs = torch.softmax(self.fc(pool), dim=1) if self.fc is not None else None
        return pool, probs


# --------------------------------------------------------------------------------------------- generation


@dataclass
class PassResult:
    img_codes: list[np.ndarray] = field(default_factory=list)  # DAMSM global codes of the generated 256 images
    sent: list[np.ndarray] = field(default_factory=list)  # DAMSM sentence embeddings of their captions
    damsm_feats: list[np.ndarray] = field(default_factory=list)
    incep_feats: list[np.ndarray] = field(default_factory=list)
    incep_probs: list[np.ndarray] = field(default_factory=list)
    judged: list[np.ndarray] = field(default_factory=list)  # attribute predictions

    def cat(self, name: str) -> np.ndarray | None:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else None


def encode_batch(ids_list: list[list[int]], words_num: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, lengths = [], []
    for ids in ids_list:
        arr, n = pad_caption(ids, words_num, rng=None)
        rows.append(arr)
        lengths.append(n)
    return torch.from_numpy(np.stack(rows)).to(device), torch.tensor(lengths, dtype=torch.int64)


def item_noise(g: torch.Generator, n: int, k: int, z_dim: int, condition_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z and eps, n x k x dim: candidate 0 of each item is the plain run's draw (so best of k can only score
    higher than it on the ranking cosine), the other candidates are drawn after all of those."""
    z, eps = torch.randn(n, 1, z_dim, generator=g), torch.randn(n, 1, condition_dim, generator=g)
    if k > 1:
        z = torch.cat([z, torch.randn(n, k - 1, z_dim, generator=g)], dim=1)
        eps = torch.cat([eps, torch.randn(n, k - 1, condition_dim, generator=g)], dim=1)
    return z, eps


@torch.no_grad()
def generation_pass(desc: str, items: list[tuple[int, int]], ts: TestSet, text_encoder: nn.Module,
                    generator: nn.Module, image_encoder: nn.Module | None, incep: InceptionFeatures | None,
                    judge_model: faithfulness.AttributeClassifier | None, words_num: int, z_all: torch.Tensor,
                    eps_all: torch.Tensor, batch_size: int, device: torch.device, progress: bool,
                    precision: str = "fp32", candidates: int = 1) -> PassResult:
    """z_all and eps_all: items x candidates x dim. With candidates > 1 each item keeps its best of them by DAMSM
    (attngan.pipeline.best_candidates, as `attngan generate --candidates` and the service do)."""
    from attngan.pipeline import best_candidates

    res = PassResult()
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        captions, lengths = encode_batch([ts.captions[i][k] for i, k in chunk], words_num, device)
        words, sent = text_encoder(captions, lengths.to(device))
        mask = captions[:, : words.size(2)] == 0
        if candidates > 1:
            words, sent, mask = (t.repeat_interleave(candidates, dim=0) for t in (words, sent, mask))
        z = z_all[start:start + len(chunk)].flatten(0, 1).to(device)
        eps = eps_all[start:start + len(chunk)].flatten(0, 1).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            images = generator(z, sent, words, mask, eps)[0]
        last = images[-1].float().clamp(-1, 1)
        if image_encoder is not None:
            _, code = image_encoder(last)
            if candidates > 1:
                keep = best_candidates(code, sent, candidates)[0].to(device)
                last, code, sent = last[keep], code[keep], sent[keep]
            res.img_codes.append(code.float().cpu().numpy())
            res.damsm_feats.append(code.float().cpu().numpy())
        res.sent.append(sent.float().cpu().numpy())
        if incep is not None:
            pool, probs = incep(last)
            res.incep_feats.append(pool.cpu().numpy())
            if probs is not None:
                res.incep_probs.append(probs.cpu().numpy())
        if judge_model is not None:
            res.judged.append(faithfulness.predict(judge_model, last, device=str(device)).numpy())
        bar.update(len(chunk))
    bar.close()
    return res


@torch.no_grad()
def seed_diversity(items: list[tuple[int, int]], ts: TestSet, text_encoder: nn.Module, generator: nn.Module,
                   mc: Any, psi: float, seed: int, batch_size: int, device: torch.device, precision: str
                   ) -> dict[str, Any]:
    """trainer.evaluate.diversity for the first DIVERSITY_CAPTIONS items, DIVERSITY_SEEDS fresh draws each (at the
    protocol's truncation, one draw per seed: best of N would pick among them) of the first stage, against up to
    DIVERSITY_SEEDS real test images of each species that has two or more, at the size the first stage learns from."""
    chosen = items[:DIVERSITY_CAPTIONS]
    g = torch.Generator().manual_seed(seed + 1)  # not the protocol's draws, which the other metrics use
    k = DIVERSITY_SEEDS
    groups = []
    for start in range(0, len(chosen), max(1, batch_size // k)):
        chunk = chosen[start:start + max(1, batch_size // k)]
        captions, lengths = encode_batch([ts.captions[i][j] for i, j in chunk], mc.words_num, device)
        words, sent = text_encoder(captions, lengths.to(device))
        mask = captions[:, : words.size(2)] == 0
        words, sent, mask = (t.repeat_interleave(k, dim=0) for t in (words, sent, mask))
        z = psi * torch.randn(len(chunk) * k, mc.z_dim, generator=g)
        eps = psi * torch.randn(len(chunk) * k, mc.condition_dim, generator=g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            first = generator(z.to(device), sent, words, mask, eps.to(device))[0][0]
        small = diversity.at_size(first).cpu()
        groups.append(small.view(len(chunk), k, *small.shape[1:]))
    generated = diversity.mean_pairwise_l1(torch.cat(groups))
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(ts.dataset.class_ids):
        by_class.setdefault(c, []).append(i)
    species = [idx[:k] for idx in by_class.values() if len(idx) >= 2]
    out: dict[str, Any] = {"generated": generated, "captions": len(chosen), "seeds": k, "size": diversity.SIZE}
    if species:
        real = [diversity.at_size(torch.stack([ts.dataset.images(i)[0] for i in idx])) for idx in species]
        out.update(real=diversity.mean_pairwise_l1(real), species=len(species))
        out["ratio"] = generated / out["real"] if out["real"] > 0 else None
    return out


@torch.no_grad()
def real_features(ts: TestSet, image_encoder: nn.Module | None, incep: InceptionFeatures | None, batch_size: int,
                  device: torch.device, progress: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Features of every real test image (largest size, centre crop) for the FID reference statistics."""
    damsm, inc = [], []
    n = len(ts.dataset)
    bar = tqdm(total=n, desc="real test images", unit="img", disable=not progress)
    for start in range(0, n, batch_size):
        batch = torch.stack([ts.dataset.images(i)[-1] for i in range(start, min(n, start + batch_size))]).to(device)
        if image_encoder is not None:
            damsm.append(image_encoder(batch)[1].float().cpu().numpy())
        if incep is not None:
            inc.append(incep(batch)[0].cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return (np.concatenate(damsm) if damsm else None), (np.concatenate(inc) if inc else None)


# --------------------------------------------------------------------------------------------- faithfulness


def faithfulness_inputs(opts: EvalOptions, ts: TestSet, device: torch.device
                        ) -> tuple[faithfulness.CachedClassifier | None, dict[str, Any] | None, str | None]:
    """(judge, attribute records, reason skipped)."""
    att_file = Path(opts.data) / "attributes.json"
    if opts.faithfulness == "off":
        return None, None, "turned off (--faithfulness off)"
    if not att_file.is_file():
        reason = (f"{opts.data} has no attributes.json (only synthetic-bird data sets made by `attngan data synth` "
                  "carry ground-truth attributes)")
        if opts.faithfulness == "on":
            raise AttnGANError(f"--faithfulness on: {reason}")
        return None, None, reason
    from trainer.data import synth

    attrs = synth.load_attributes(opts.data)
    parts = {p: list(v) for p, v in synth.ATTRIBUTE_VALUES.items()}
    key = faithfulness.fingerprint(opts.data, opts.classifier_epochs, opts.judge_renders)
    if opts.judge:
        judge = faithfulness.reuse_classifier(Path(opts.judge), Path(opts.out), key, parts)
        log.info("attribute judge: %s (copied into %s)", opts.judge, opts.out)
        return judge, attrs, None
    cached = faithfulness.load_classifier(Path(opts.out) / faithfulness.CACHE_NAME)
    if cached is not None and cached.fits(key, parts):
        log.info("attribute judge: using the cached one in %s", opts.out)
        return cached, attrs, None  # no need to load the renders again
    train_imgs, train_labels = judge_training_set(opts, attrs, parts)
    held_imgs, held_labels = split_images(ts.dataset, attrs, parts, "real held-out renders", opts.progress)
    val_imgs, val_recs = faithfulness.render_set(JUDGE_VALIDATION_RENDERS, opts.seed + 1, progress=opts.progress)
    judge = faithfulness.get_classifier(opts.out, Path(opts.data), train_imgs, train_labels, held_imgs, held_labels,
                                        parts, key=key, device=str(device), epochs=opts.classifier_epochs,
                                        progress=opts.progress, val_images=val_imgs,
                                        val_labels=faithfulness.encode_labels(val_recs, parts))
    return judge, attrs, None


def split_images(ds: Any, attrs: dict[str, Any], parts: dict[str, list[str]], desc: str, progress: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of a split that has attributes, at the judge's size (from the smallest stage at least that
    large, so small parts keep their detail), with its labels."""
    imgs, recs = [], []
    stage = next((k for k, s in enumerate(ds.image_sizes) if s >= faithfulness.INPUT_SIZE), len(ds.image_sizes) - 1)
    for i in tqdm(range(len(ds)), desc=desc, unit="img", disable=not progress, leave=False):
        rec = attrs.get(ds.keys[i])
        if rec is None:
            continue
        img = ds.images(i)[stage]
        if img.shape[-1] != faithfulness.INPUT_SIZE:
            img = F.interpolate(img[None], size=faithfulness.INPUT_SIZE, mode="bilinear", antialias=True,
                                align_corners=False)[0]
        imgs.append(img)
        recs.append(rec["attributes"])
    if not imgs:
        raise AttnGANError(f"{desc}: no image of the split is listed in attributes.json")
    return torch.stack(imgs), faithfulness.encode_labels(recs, parts)


def judge_training_set(opts: EvalOptions, attrs: dict[str, Any], parts: dict[str, list[str]]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's TRAIN renders (never the test ones the judge is judged on) plus fresh renders."""
    from trainer.data.dataset import TextImageDataset

    cfg = load_config(None, ["TREE.BRANCH_NUM=2", "TREE.BASE_SIZE=64", f"DATA_FORMAT={opts.data_format}"])
    train = TextImageDataset(opts.data, "train", cfg, vocab=None, train=False)
    imgs, labels = split_images(train, attrs, parts, "judge: data set train renders", opts.progress)
    if opts.judge_renders > 0:
        extra_imgs, extra_recs = faithfulness.render_set(opts.judge_renders, opts.seed, progress=opts.progress)
        imgs, labels = torch.cat([imgs, extra_imgs]), torch.cat([labels, faithfulness.encode_labels(extra_recs, parts)])
    return imgs, labels


def named_for_items(items: list[tuple[int, int]], ts: TestSet, attrs: dict[str, Any]) -> list[dict[str, str]]:
    """For each generated item, the attributes its caption names (matched by the caption's words)."""
    from trainer.data.synth import named_by_words

    by_key: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
    out = []
    for i, k in items:
        key = ts.dataset.keys[i]
        if key not in by_key:
            by_key[key] = named_by_words(attrs.get(key, {}))
        out.append(by_key[key].get(tuple(ts.tokens[i][k]), {}))
    return out


# --------------------------------------------------------------------------------------------- complexity


def measure_complexity(bundle: Bundle, text_encoder: nn.Module, generator: nn.Module,
                       image_encoder: nn.Module | None, runs: int) -> dict[str, Any]:
    import copy

    from attngan.model import build_discriminators

    mc = bundle.config
    te, g = copy.deepcopy(text_encoder).cpu().eval(), copy.deepcopy(generator).cpu().eval()
    params = {"text_encoder": complexity.count_parameters(te), "generator": complexity.count_parameters(g)}
    if image_encoder is not None:
        params["image_encoder"] = complexity.count_parameters(image_encoder)
        if mc.image_encoder == "inception":
            from attngan.inception import INCEPTION_NAMES

            params["image_encoder (trained part, without frozen Inception)"] = sum(
                p.numel() for n, p in image_encoder.named_parameters() if n.split(".")[0] not in INCEPTION_NAMES)
    for i, d in enumerate(build_discriminators(mc)):
        params[f"discriminator {type(d).__name__} (training only)"] = complexity.count_parameters(d)

    captions, lengths = encode_batch([list(range(1, min(mc.words_num, mc.n_words - 1) + 1))], mc.words_num, "cpu")
    g_inputs = torch.randn(1, mc.z_dim), torch.randn(1, mc.condition_dim)

    def forward() -> None:
        with torch.no_grad():
            words, sent = te(captions, lengths)
            g(g_inputs[0], sent, words, captions[:, : words.size(2)] == 0, g_inputs[1])

    total, per_module = complexity.count_flops(forward)
    te_flops = per_module.get("TextEncoder", 0)
    if te_flops == 0:  # the fused LSTM kernel is invisible to the counter; count it by formula
        te_flops = complexity.lstm_flops(te.rnn, int(lengths[0]))
    per_scale = complexity.flops_per_scale(complexity.child_flops(per_module, "Generator"), mc.image_sizes)
    flops = {size: te_flops + f for size, f in per_scale.items()}
    out: dict[str, Any] = {"parameters": params, "flops_per_image": flops, "flops_total": total,
                           "flops_text_encoder": te_flops, "bundle_bytes": complexity.dir_size_bytes(bundle.path)}
    if image_encoder is not None:
        ie = copy.deepcopy(image_encoder).cpu().eval()
        size = mc.image_sizes[-1]
        with torch.no_grad():
            out["flops_image_encoder"], _ = complexity.count_flops(lambda: ie(torch.zeros(1, 3, size, size)))
    lat = complexity.median_latency_ms(forward, runs=runs, warmup=1)
    lat["threads"] = torch.get_num_threads()
    if hasattr(os, "getloadavg"):
        lat["load_average"] = os.getloadavg()[0]
    out["cpu_latency"] = lat
    return out


# --------------------------------------------------------------------------------------------- pictures


@torch.no_grad()
def sample_pictures(ts: TestSet, bundle: Bundle, text_encoder: nn.Module, generator: nn.Module, n: int,
                    device: torch.device, seed: int) -> list[dict[str, Any]]:
    from attngan.render import attention_grid, images_under_attention, to_pil

    seen: set[int] = set()
    chosen: list[int] = []
    for i in range(len(ts.dataset)):  # one per class first, so the grid shows variety
        c = ts.dataset.class_ids[i]
        if c not in seen and any(ts.captions[i]):
            seen.add(c)
            chosen.append(i)
        if len(chosen) == n:
            break
    rows = []
    g = torch.Generator().manual_seed(seed)
    mc = bundle.config
    for i in chosen:
        k = next(k for k, c in enumerate(ts.captions[i]) if c)
        ids = ts.captions[i][k][: mc.words_num]
        captions, lengths = encode_batch([ids], mc.words_num, device)
        words, sent = text_encoder(captions, lengths.to(device))
        z = torch.randn(1, mc.z_dim, generator=g).to(device)
        eps = torch.randn(1, mc.condition_dim, generator=g).to(device)
        images, attention, _, _ = generator(z, sent, words, captions[:, : words.size(2)] == 0, eps)
        tokens = [bundle.vocab.ixtoword[j] for j in ids]
        pil = [to_pil(im[0]) for im in images]
        att = [attention_grid(image, a[0, : len(tokens)].float().cpu().numpy(), tokens, tile=96, columns=10)
               for image, a in zip(images_under_attention(pil, len(attention)), attention)]
        rows.append({"caption": " ".join(ts.tokens[i][k]), "images": pil, "attention": att})
    return rows


# --------------------------------------------------------------------------------------------- main


def fid_row(label: str, key: str, ref: FeatureStats, gen: PassResult, untrained: PassResult | None,
            note: str) -> dict[str, Any]:
    """FID of the generated `key` features against the real ones (`ref`), and the untrained generator's."""
    return {"label": label, "value": frechet_distance(feature_stats(gen.cat(key)), ref),
            "untrained": frechet_distance(feature_stats(untrained.cat(key)), ref) if untrained else None,
            "note": note}


def quality_bars(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    bars = []
    f = metrics.get("faithfulness", {})
    if "judge" in f:
        j = f["judge"]["held_out"]["accuracy"]
        bars.append({"name": "judge accuracy on real held-out renders", "target": ">= 97%",
                     "measured": f"{100 * j:.1f}%", "met": j >= 0.97,
                     "why": "the attribute classifier is too weak for its verdicts to be trusted; train it longer "
                            "(--classifier-epochs) or on more renders"})
        gen = f["generated"]
        g = gen["accuracy"]
        weakest = sorted(gen.get("per_part", {}).items(), key=lambda kv: kv[1])[:3]
        bars.append({"name": "named-attribute accuracy of generated birds", "target": ">= 85%",
                     "measured": report.accuracy_text(gen), "met": g >= 0.85,
                     "why": "the generator does not yet draw every colour its captions name"
                            + (f"; weakest parts {', '.join(f'{k} {100 * v:.1f}%' for k, v in weakest)}"
                               if weakest else "")
                            + (f"; {100 * gen['swapped']:.1f}% of named colours land on another named part"
                               if "swapped" in gen else "")})
    rp = metrics.get("r_precision", {})
    k = metrics.get("protocol", {}).get("candidates", 1)
    if "mean" in rp:
        name = "R-precision" + (f" (overstated: each image is the best of {k} by the same encoders)" if k > 1 else "")
        bars.append({"name": name, "target": ">= 80% (chance 1%)", "measured": f"{100 * rp['mean']:.1f}%",
                     "met": rp["mean"] >= 0.80,
                     "why": "generated images are not yet specific enough to their captions for the DAMSM encoders"
                            + (f" (the encoders rank the real test images at {100 * rp['real_images']['mean']:.1f}%)"
                               if "real_images" in rp else "")})
    fid = metrics.get("fid", {})
    for row in fid.values():
        if isinstance(row, dict) and row.get("value") is not None and row.get("untrained") is not None:
            bars.append({"name": f"{row['label']} far below the untrained generator's", "target": "<= 50% of untrained",
                         "measured": f"{row['value']:.2f} vs {row['untrained']:.2f}",
                         "met": row["value"] <= 0.5 * row["untrained"],
                         "why": "the generator's image distribution is still far from the real test images"})
    return bars


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    t_start = time.perf_counter()
    opts.out = Path(opts.out)
    if opts.images < opts.folds:
        raise AttnGANError(f"--images must be at least {opts.folds} (one per R-precision fold), got {opts.images}")
    if opts.batch_size < 1:
        raise AttnGANError(f"--batch-size must be positive, got {opts.batch_size}")
    if opts.inception_weights and not Path(opts.inception_weights).is_file():
        raise AttnGANError(f"--inception-weights {opts.inception_weights}: file not found")
    check_candidates(opts.candidates)
    psi = check_truncation(opts.truncation)
    if opts.judge and not Path(opts.judge).is_file():
        raise AttnGANError(f"--judge {opts.judge}: file not found (give another evaluation's {faithfulness.CACHE_NAME})")
    logs_dirs = check_logs(opts.logs)
    device = resolve_device(opts.device)
    bundle = load_bundle(opts.bundle)
    check_candidates(opts.candidates, bundle)
    ts = load_test_set(Path(opts.data), bundle, opts.data_format)
    opts.out.mkdir(parents=True, exist_ok=True)
    mc = bundle.config
    text_encoder, generator, image_encoder = bundle.build_networks(device)
    incep = InceptionFeatures(opts.inception_weights).to(device) if opts.inception_weights else None

    judge, attrs, faith_skip = faithfulness_inputs(opts, ts, device)

    items = plan_items(ts, opts.images, opts.seed)
    g = torch.Generator().manual_seed(opts.seed)
    k = opts.candidates
    z_all, eps_all = (psi * noise for noise in item_noise(g, len(items), k, mc.z_dim, mc.condition_dim))
    common: dict[str, Any] = {"items": items, "ts": ts, "words_num": mc.words_num, "batch_size": opts.batch_size,
                              "device": device, "progress": opts.progress, "precision": opts.precision}
    desc = "generating (trained)" if k == 1 else f"generating (trained, best of {k})"
    gen = generation_pass(desc, text_encoder=text_encoder, generator=generator, image_encoder=image_encoder,
                          incep=incep, judge_model=judge.model if judge else None, z_all=z_all, eps_all=eps_all,
                          candidates=k, **common)

    metrics: dict[str, Any] = {
        "bundle": {"path": str(bundle.path), "version": bundle.version, "config": mc.to_dict(),
                   "training": bundle.manifest.get("training", bundle.manifest.get("info", {}))},
        "data": {"path": str(opts.data), "split": "test", "n_items": len(ts.dataset),
                 "n_classes": len(set(ts.dataset.class_ids)), "unknown_word_rate": ts.unknown_rate},
        "protocol": {"n_images": len(items), "seed": opts.seed, "device": str(device), "folds": opts.folds,
                     "precision": opts.precision, "candidates": k, "truncation": psi},
    }

    # R-precision (DM-GAN protocol)
    class_ids = np.array([ts.dataset.class_ids[i] for i, _ in items])
    r_precision_args: tuple[np.ndarray, np.ndarray] | None = None
    if image_encoder is None:
        metrics["r_precision"] = {"skipped": "the bundle has no image encoder (export it with the DAMSM image encoder)"}
    elif len(set(class_ids.tolist())) < 2:
        metrics["r_precision"] = {"skipped": "the test split has a single class; mismatched captions must come "
                                             "from other classes"}
    else:
        rng = np.random.default_rng(opts.seed)
        sent = gen.cat("sent")
        mis = sample_mismatched(class_ids, 99, rng)
        hits = r_precision_hits(gen.cat("img_codes"), sent, sent[mis])
        mean, std = fold_stats(hits, opts.folds, rng)
        metrics["r_precision"] = {"mean": mean, "std": std, "n_images": len(hits), "candidates": 100,
                                  "chance": 0.01, "folds": opts.folds,
                                  "encoders": "the bundle's DAMSM image and text encoders"}
        if k > 1:
            metrics["r_precision"]["picked_by_same_encoders"] = True
        r_precision_args = (sent, mis)

    # FID / IS, and the same for the untrained generator as the reference point
    untrained = None
    if opts.untrained and (image_encoder is not None or incep is not None):
        from attngan.model import Generator, init_weights

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            g0 = Generator(mc)
            g0.apply(init_weights)
        g0 = g0.to(device).eval().requires_grad_(False)
        untrained = generation_pass("generating (untrained reference)", text_encoder=text_encoder, generator=g0,
                                    image_encoder=image_encoder, incep=incep, judge_model=None,
                                    z_all=z_all[:, :1], eps_all=eps_all[:, :1], **common)
    real_damsm, real_incep = real_features(ts, image_encoder, incep, opts.batch_size, device, opts.progress)
    if r_precision_args is not None and real_damsm is not None:
        # the same captions and mismatched candidates, ranked for the REAL image of each item: the ceiling the
        # DAMSM encoders set (generated images can pass it only by pleasing these same encoders)
        sent, mis = r_precision_args
        rng = np.random.default_rng(opts.seed)
        hits = r_precision_hits(real_damsm[[i for i, _ in items]], sent, sent[mis])
        mean, std = fold_stats(hits, opts.folds, rng)
        metrics["r_precision"]["real_images"] = {"mean": mean, "std": std}
        if attrs is not None:  # synthetic birds: how high any matcher could go on these very captions
            truth = [attrs.get(ts.dataset.keys[i], {}).get("attributes", {}) for i, _ in items]
            hits = attribute_oracle_hits(named_for_items(items, ts, attrs), truth, mis)
            mean, std = fold_stats(hits, opts.folds, np.random.default_rng(opts.seed))
            metrics["r_precision"]["attribute_oracle"] = {"mean": mean, "std": std}
    fid: dict[str, Any] = {}
    if incep is not None:
        ref = feature_stats(real_incep)
        fid["inception"] = fid_row(
            "FID (Inception-v3 pool3)", "incep_feats", ref, gen, untrained,
            f"project Inception-v3 with {Path(opts.inception_weights).name}, {len(items)} generated vs "
            f"{ref.n} real test images; compare only with FID computed the same way")
        if gen.incep_probs:
            m, s = inception_score(gen.cat("incep_probs"), splits=opts.folds)
            metrics["inception_score"] = {"mean": m, "std": s, "note": "ImageNet classes of the given weights; the "
                                          "paper's CUB IS used a CUB-fine-tuned Inception, so not comparable"}
        else:
            metrics["inception_score"] = {"skipped": "the Inception weights file has no fc layer"}
    else:
        fid["inception"] = {"skipped": "no --inception-weights given (a local torchvision-format Inception-v3 file)"}
        metrics["inception_score"] = {"skipped": "no --inception-weights given"}
    if image_encoder is not None:
        ref = feature_stats(real_damsm)
        fid["damsm"] = fid_row(
            "DAMSM-FID", "damsm_feats", ref, gen, untrained,
            f"FID on the bundle's DAMSM image-encoder codes ({ref.mu.shape[0]}-d), {len(items)} generated "
            f"vs {ref.n} real test images: NOT comparable to published FID")
    else:
        fid["damsm"] = {"skipped": "the bundle has no image encoder"}
    metrics["fid"] = fid

    # Faithfulness
    if judge is None:
        metrics["faithfulness"] = {"skipped": faith_skip}
    else:
        named = named_for_items(items, ts, attrs)
        labels = faithfulness.encode_labels(named, judge.model.parts)
        pred = torch.from_numpy(gen.cat("judged"))
        res = faithfulness.score(pred, labels, judge.model.parts, judge.judgeable)
        res["captions_without_named_attributes"] = sum(1 for n in named if not n)
        metrics["faithfulness"] = {"judge": judge.meta, "generated": res}
        if opts.judge:
            metrics["faithfulness"]["judge_from"] = str(opts.judge)

    metrics["diversity"] = seed_diversity(items, ts, text_encoder, generator, mc, psi, opts.seed, opts.batch_size,
                                          device, opts.precision)
    metrics["quality_bars"] = quality_bars(metrics)
    metrics["complexity"] = measure_complexity(bundle, text_encoder, generator, image_encoder, opts.latency_runs)

    pictures: dict[str, str] = {}
    if opts.samples > 0:
        rows = sample_pictures(ts, bundle, text_encoder, generator, opts.samples, device, opts.seed)
        save_palette_png(report.sample_grid(rows), opts.out / "samples.png")
        pictures["samples"] = "samples.png"
    if logs_dirs:
        series, starts = report.read_runs_scalars(logs_dirs)
        if series:
            report.plot_training_curves(series, opts.out / "training_curves.png", starts,
                                        bundle_step(bundle, logs_dirs, starts))
            pictures["training_curves"] = "training_curves.png"
        else:
            where = ", ".join(str(p) for p in logs_dirs)
            pictures["training_curves_skipped"] = f"no scalar series in the event files under {where}"
    metrics["pictures"] = pictures
    metrics["protocol"]["seconds"] = time.perf_counter() - t_start
    atomic_write_text(opts.out / "report.md", report.render_markdown(metrics))
    report.write_metrics_json(opts.out, metrics)  # last: a metrics.json newer than the bundle means a whole evaluation
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    parts = []
    rp = m.get("r_precision", {})
    if "mean" in rp:
        parts.append(f"R-precision {100 * rp['mean']:.1f}% ± {100 * rp['std']:.1f}")
    for row in m.get("fid", {}).values():
        if isinstance(row, dict) and "value" in row:
            un = f" (untrained {row['untrained']:.1f})" if row.get("untrained") is not None else ""
            parts.append(f"{row['label']} {row['value']:.2f}{un}")
    dv = m.get("diversity", {})
    if dv.get("ratio") is not None:
        parts.append(f"seed diversity {dv['ratio']:.2f} of real")
    f = m.get("faithfulness", {})
    if "generated" in f:
        parts.append(f"named attributes {100 * f['generated']['accuracy']:.1f}% "
                     f"(judge {100 * f['judge']['held_out']['accuracy']:.1f}%)")
    return "; ".join(parts) if parts else "no quality metric could be computed (see report.md)"

