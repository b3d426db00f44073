"""Text to image inference: load a bundle once, then turn captions into images and attention maps.

    t2i = TextToImage.from_bundle("models/default")
    out = t2i.generate([t2i.prepare("a small red bird with a black crown")], seeds=[7])
    out[0].images[-1].save("bird.png")

Same seed, same image: z and the conditioning-augmentation noise of each caption are drawn from a
`torch.Generator` seeded with that caption's seed, so an image does not depend on what else was in the batch.

Best of N (`candidates=N`): each caption is drawn N times (candidate 0 is the seed's usual image, candidate k the
k-th further draw from the same seeded stream) and the candidate whose DAMSM image code is closest to the
caption's sentence vector is kept, the way DALL-E re-ranked its samples with CLIP. It costs N generator passes
and needs a bundle with the DAMSM image encoder. Measured on the default model (models/README.md, "Best of N"):
named attributes 85.7% -> 86.8% of 1,000 held-out captions at N=8.

Truncation (`truncation=psi`, 0..1): z and the conditioning-augmentation noise are drawn at psi times their
standard deviation, the GAN "truncation trick" that trades variety between seeds for images closer to what the
caption asks (psi 1: the paper's sampling; 0: one image per caption, whatever the seed). It costs no time.
Measured on the default model (models/README.md, "Truncation"): named attributes 85.7% at psi 1 and at 0.3 of
1,000 held-out captions, R-precision 83.8% -> 87.9%, seed diversity 0.78 -> 0.40 of the data's (its predecessor:
85.9% -> 86.9%; the plain-recipe default: 71.1% -> 72.9% at 0.5, 73.4% at 0.3).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attngan.bundle import Bundle, load_bundle
from attngan.errors import AttnGANError
from attngan.model import ModelConfig
from attngan.render import to_pil
from attngan.text import EncodedCaption, Vocabulary, pad_caption

PRECISIONS = ("auto", "fp32", "bf16")
MAX_CANDIDATES = 32


@dataclass
class Generated:
    images: list[Image.Image]  # one per stage: 64, 128, 256 px (only the last for AttnDCGAN)
    attention: list[np.ndarray]  # one per attentional stage: T x H x W, T = len(tokens)
    tokens: list[str]
    candidate: int = 0  # which of the seed's candidates this is (0 without best-of-N)
    score: float | None = None  # its DAMSM caption-image cosine, when candidates were ranked

    def attention_grids(self, last: int | None = None) -> list[Image.Image]:
        """One per-word attention grid per attentional stage, over the image of the stage it fed; `last`: only
        the last so many stages' (the others are not drawn)."""
        from attngan.render import attention_grid, images_under_attention

        pairs = list(zip(images_under_attention(self.images, len(self.attention)), self.attention))
        return [attention_grid(image, attn, self.tokens) for image, attn in pairs[-last if last else None:]]


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16 (native bf16 dot products). Elsewhere, AVX512 ones included, bf16 is
    emulated: the default model generated 3.2x slower in bf16 than fp32 on an AMD EPYC (AVX2)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise AttnGANError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def check_candidates(candidates: object, bundle: Bundle | None = None) -> int:
    """The best-of-N count, 1..MAX_CANDIDATES; above 1 the bundle must have the image encoder that ranks them."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise AttnGANError(f"candidates must be an integer from 1 to {MAX_CANDIDATES}, got {candidates!r}")
    if bundle is not None and candidates > 1 and not bundle.has_image_encoder:
        raise AttnGANError(f"best of {candidates} ranks images with the DAMSM image encoder, and {bundle.path} "
                           "has none (export the model with it, or use 1 candidate)")
    return candidates


def check_truncation(truncation: object) -> float:
    """The noise scale psi, a number from 0 to 1."""
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 <= truncation <= 1:
        raise AttnGANError(f"truncation must be a number from 0 to 1 (1: the paper's sampling), got {truncation!r}")
    return float(truncation)


def best_candidates(image_codes: torch.Tensor, sent_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of k per caption: rows are caption-major (caption 0's k candidates, then caption 1's, ...), each with
    its DAMSM image code and its caption's sentence vector. Returns the kept row of each caption and its cosine."""
    scores = torch.nn.functional.cosine_similarity(image_codes.float(), sent_emb.float(), dim=1).cpu().view(-1, k)
    best = scores.argmax(dim=1)
    return torch.arange(scores.size(0)) * k + best, scores.gather(1, best[:, None])[:, 0]


class TextToImage:
    """A loaded model (eval mode, no gradients) that generates batches of images."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", precision: str = "auto",
                 candidates: int = 1, truncation: float = 1.0) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AttnGANError("device 'cuda' requested but CUDA is not available; use --device cpu")
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormals from tiny weights make CPU convs ~9x slower
        check_candidates(candidates, bundle)
        self.bundle = bundle
        self.candidates = candidates
        self.truncation = check_truncation(truncation)
        self.dtype = resolve_precision(precision, self.device)
        self.text_encoder, self.generator, self.image_encoder = bundle.build_networks(
            self.device, image_encoder=candidates > 1)
        if self.dtype == torch.bfloat16:
            # bf16 convolutions run in oneDNN/cuDNN's NHWC kernels: 1.7-3x faster than NCHW here (docs/benchmarks.md)
            self.generator.to(memory_format=torch.channels_last)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "auto",
                    candidates: int = 1, truncation: float = 1.0) -> TextToImage:
        return cls(load_bundle(path), device=device, precision=precision, candidates=candidates,
                   truncation=truncation)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def vocab(self) -> Vocabulary:
        return self.bundle.vocab

    @property
    def config(self) -> ModelConfig:
        return self.bundle.config

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def prepare(self, caption: str) -> EncodedCaption:
        """Tokenize and encode a caption; words past WORDS_NUM are dropped (the first WORDS_NUM are kept)."""
        if not isinstance(caption, str) or not caption.strip():
            raise AttnGANError("the caption is empty; describe a bird, e.g. 'a small red bird with a black crown'")
        encoded = self.vocab.encode(caption)
        if not encoded.ids:
            shown = ", ".join(encoded.unknown[:5]) or caption.strip()[:40]
            raise AttnGANError(f"none of the caption's words are in the model's vocabulary ({shown}); "
                               "use words from the training captions")
        n = self.config.words_num
        if len(encoded.ids) > n:
            encoded = EncodedCaption(tokens=encoded.tokens[:n], ids=encoded.ids[:n],
                                     unknown=encoded.unknown)
        return encoded

    def _noise(self, seeds: list[int], truncations: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """z and eps of each seed's candidates, seed-major (rows seed_0/cand_0, seed_0/cand_1, ...), each times its
        caption's truncation."""
        z, eps = [], []
        for seed, psi in zip(seeds, truncations):
            g = torch.Generator().manual_seed(int(seed) % (2**63))
            for _ in range(self.candidates):
                z.append(psi * torch.randn(self.config.z_dim, generator=g))
                eps.append(psi * torch.randn(self.config.condition_dim, generator=g))
        return torch.stack(z).to(self.device), torch.stack(eps).to(self.device)

    def generate(self, captions: list[EncodedCaption], seeds: list[int],
                 truncations: list[float | None] | None = None) -> list[Generated]:
        """One batched forward pass; returns one Generated per caption, in order. `truncations`: each caption's
        own truncation (None: the model's), so one batch can mix requests that ask for different ones."""
        if len(captions) != len(seeds):
            raise AttnGANError(f"got {len(captions)} captions but {len(seeds)} seeds")
        if truncations is not None and len(truncations) != len(captions):
            raise AttnGANError(f"got {len(captions)} captions but {len(truncations)} truncations")
        psis = [self.truncation if t is None else check_truncation(t) for t in truncations or [None] * len(captions)]
        if not captions:
            return []
        if any(len(c.ids) == 0 for c in captions):
            raise AttnGANError("a caption has no known words; call prepare() first")
        width = min(max(len(c.ids) for c in captions), self.config.words_num)
        padded, lengths = [], []
        for c in captions:
            ids, n = pad_caption(c.ids, width, rng=None)
            padded.append(ids)
            lengths.append(n)
        tokens = torch.from_numpy(np.stack(padded)).to(self.device)
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        z, eps = self._noise(seeds, psis)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.dtype == torch.bfloat16
                    else contextlib.nullcontext())
        k = self.candidates
        with torch.inference_mode():
            words_emb, sent_emb = self.text_encoder(tokens, lengths_t.to(self.device))
            mask = tokens[:, : words_emb.size(2)] == 0
            if k > 1:
                words_emb, sent_emb, mask = (t.repeat_interleave(k, dim=0) for t in (words_emb, sent_emb, mask))
            with autocast:
                images, attention, _, _ = self.generator(z, sent_emb, words_emb, mask, eps=eps)
            rows, scores = torch.arange(len(captions)), None
            if k > 1:
                assert self.image_encoder is not None
                # fp32, so that the pick does not hinge on bf16 rounding
                _, codes = self.image_encoder(images[-1].float().clamp(-1, 1))
                rows, scores = best_candidates(codes, sent_emb, k)
            images = [im[rows.to(im.device)].float().cpu() for im in images]
            attention = [a[rows.to(a.device)].float().cpu() for a in attention]
        out = []
        for i, c in enumerate(captions):
            n = lengths[i]
            out.append(Generated(
                images=[to_pil(im[i]) for im in images],
                attention=[a[i, :n].numpy().copy() for a in attention],
                tokens=list(c.tokens[:n]),
                candidate=int(rows[i]) - i * k if k > 1 else 0,
                score=None if scores is None else float(scores[i]),
            ))
        return out
