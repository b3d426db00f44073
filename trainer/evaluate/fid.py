"""Fréchet distance and Inception Score from features / class probabilities.

The metrics here are pure functions of arrays, so they can be tested with known answers; which
network made the features (the project's Inception-v3, or the DAMSM image encoder for the labelled
"DAMSM-FID") is decided by the caller and written next to every number it reports.

No scipy: the trace of sqrtm(S1 @ S2) equals the sum of square roots of the eigenvalues of
A @ S2 @ A with A = sqrtm(S1), which is symmetric PSD, so two `eigh` calls in float64 suffice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attngan.errors import AttnGANError


@dataclass
class FeatureStats:
    mu: np.ndarray  # D
    sigma: np.ndarray  # D x D
    n: int

    def save(self, path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n)

    @classmethod
    def load(cls, path) -> FeatureStats:
        with np.load(path) as d:
            return cls(mu=d["mu"], sigma=d["sigma"], n=int(d["n"]))


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and (unbiased) covariance of N x D features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise AttnGANError(f"FID needs at least 2 feature vectors (N x D), got shape {x.shape}")
    return FeatureStats(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), n=x.shape[0])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (Heusel et al. 2017)."""
    if a.mu.shape != b.mu.shape:
        raise AttnGANError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    root = _sqrt_psd(a.sigma)
    inner = root @ b.sigma @ root
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0, None)).sum())
    fid = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)
    return max(fid, 0.0)


def fid_from_features(x: np.ndarray, y: np.ndarray) -> float:
    return frechet_distance(feature_stats(x), feature_stats(y))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` equal parts (improved-gan protocol)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < splits:
        raise AttnGANError(f"Inception Score needs at least {splits} probability rows, got shape {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
