"""R-precision by the DM-GAN protocol (reference attngan.md §6, serving.md §1.2).

For each generated image: its true caption plus 99 mismatched captions drawn from images of OTHER
classes, all encoded by the DAMSM text encoder; a hit when the true caption has the highest cosine
with the image's DAMSM global code. Results are split into 10 folds; mean ± std of top-1 accuracy.
"""

from __future__ import annotations

import numpy as np

from attngan.errors import AttnGANError


def sample_mismatched(class_ids: np.ndarray, n_mismatched: int, rng: np.random.Generator) -> np.ndarray:
    """For each item i, `n_mismatched` indices j with class_ids[j] != class_ids[i] (N x n_mismatched).

    Drawn with replacement when another class has fewer items than asked for (tiny test splits).
    """
    class_ids = np.asarray(class_ids)
    n = len(class_ids)
    out = np.empty((n, n_mismatched), dtype=np.int64)
    by_class: dict[int, np.ndarray] = {}
    for c in np.unique(class_ids):
        others = np.flatnonzero(class_ids != c)
        if len(others) == 0:
            raise AttnGANError("R-precision needs test captions from at least two classes")
        by_class[int(c)] = others
    for i, c in enumerate(class_ids):
        others = by_class[int(c)]
        out[i] = rng.choice(others, size=n_mismatched, replace=len(others) < n_mismatched)
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def r_precision_hits(image_codes: np.ndarray, true_text: np.ndarray, mismatched_text: np.ndarray) -> np.ndarray:
    """Bool per image: does the true caption (N x D) beat every mismatched one (N x K x D) on cosine?

    Ties count as misses, so a constant encoder scores 0, not 1.
    """
    img = _normalize(image_codes)
    true_sim = (img * _normalize(true_text)).sum(-1)  # N
    mis_sim = np.einsum("nd,nkd->nk", img, _normalize(mismatched_text))  # N x K
    return true_sim > mis_sim.max(axis=1)


def attribute_oracle_hits(named: list[dict[str, str]], truth: list[dict[str, str]], mismatched: np.ndarray,
                          contradiction_cost: float = 10.0) -> np.ndarray:
    """Expected top-1 hit per item of a matcher that reads every attribute of every image perfectly: a caption
    scores +1 per attribute it names that the image has and -`contradiction_cost` per one the image does not
    have; ties with the true caption are broken at random (expected value 1 / (1 + ties)).

    It sets how high R-precision can go on these captions at all: a short caption ("a bird with a red crown")
    may fit an image of another class as well as its own one does.
    """
    def score(caption: dict[str, str], image: dict[str, str]) -> float:
        right = sum(1 for part, value in caption.items() if image.get(part) == value)
        return right - contradiction_cost * (len(caption) - right)

    hits = np.zeros(len(truth))
    for i, image in enumerate(truth):
        own = score(named[i], image)
        others = np.array([score(named[j], image) for j in mismatched[i]])
        if (others > own).any():
            continue
        hits[i] = 1.0 / (1 + int((others == own).sum()))
    return hits


def fold_stats(hits: np.ndarray, folds: int = 10, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Mean and std of the hit rate over `folds` equal parts (shuffled first when `rng` is given)."""
    hits = np.asarray(hits, dtype=np.float64)
    if len(hits) < folds:
        raise AttnGANError(f"R-precision needs at least {folds} images for {folds} folds, got {len(hits)}")
    if rng is not None:
        hits = hits[rng.permutation(len(hits))]
    rates = [part.mean() for part in np.array_split(hits, folds)]
    return float(np.mean(rates)), float(np.std(rates))


def r_precision(
    image_codes: np.ndarray,
    text_codes: np.ndarray,
    class_ids: np.ndarray,
    *,
    n_mismatched: int = 99,
    folds: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """R-precision when image i was generated from caption i (text_codes[i]) of class class_ids[i].

    The mismatched candidates are other items' captions from other classes, as DM-GAN's get_mis_caption.
    """
    rng = np.random.default_rng(seed)
    text_codes = np.asarray(text_codes)
    mis = sample_mismatched(class_ids, n_mismatched, rng)
    hits = r_precision_hits(image_codes, text_codes, text_codes[mis])
    mean, std = fold_stats(hits, folds, rng)
    return {"mean": mean, "std": std, "n_images": len(hits), "candidates": n_mismatched + 1,
            "chance": 1.0 / (n_mismatched + 1)}
