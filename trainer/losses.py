"""AttnGAN losses (the original `miscc/losses.py`), vectorised over the batch.

DAMSM: every caption is matched against every image of the batch at once (a B x B similarity matrix);
captions of the same class as the matching one are masked out with -inf, as the original does, so they
are neither positives nor negatives. GAN: the discriminators return logits and the losses use the
numerically stable BCE-with-logits form of the original's Sigmoid + BCELoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.augment import Augment

EPS = 1e-8  # the original's cosine epsilon


def same_class_mask(class_ids: Tensor | None, batch_size: int, device: torch.device) -> Tensor | None:
    """BxB bool, True where i != j but both belong to the same class (those pairs are ignored)."""
    if class_ids is None:
        return None
    class_ids = class_ids.to(device).view(-1)
    mask = class_ids[:, None] == class_ids[None, :]
    mask.fill_diagonal_(False)
    return mask


def _all_pairs_cosine(words: Tensor, regions: Tensor, gamma1: float, pad: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 8-10 for every caption i (words B x D x T) on every image j (regions B x D x R), index [j, i]: the cosine
    between word t and its region context c = sum_r attn_r * region_r (B x B x T), and the attention (B x B x T x R).

    Eq. 8 is a softmax over the words per region, Eq. 9 one over the regions per word (times gamma1), Eq. 10 the
    original's cosine over D, computed without forming the contexts (B x B x D x T, the largest tensor of a DAMSM
    step; its elementwise cosine and backward made the loss up to 9x slower, bench/losses.py): w.c = sum_r attn_r
    (w.region_r), and those dot products are the attention's raw logits; |c|^2 = attn^T (R^T R) attn with each
    image's R x R Gram matrix. All as plain GEMMs (broadcast batched matmuls would copy the regions B times).
    """
    batch, dim, n_regions = regions.shape
    steps = words.size(2)
    flat = regions.transpose(1, 2).reshape(batch * n_regions, dim) @ words.permute(1, 0, 2).reshape(dim, batch * steps)
    raw = flat.view(batch, n_regions, batch, steps).permute(0, 2, 3, 1)  # j x i x T x R: word . region
    logits = raw.masked_fill(pad[None, :, :, None], float("-inf"))
    attn = torch.softmax(logits, dim=-2)  # over words, per region (Eq. 8)
    attn = torch.softmax(attn * gamma1, dim=-1)  # over regions, per word (Eq. 9): j x i x T x R
    dot = (attn * raw).sum(-1)  # word . context
    gram = regions.transpose(1, 2) @ regions  # j x R x R
    flat_attn = attn.reshape(batch, batch * steps, n_regions)
    context_sq = (torch.bmm(flat_attn, gram).view_as(attn) * attn).sum(-1)  # |context|^2
    context_norm = context_sq.clamp_min(EPS * EPS).sqrt()
    word_norm = words.norm(dim=1).clamp_min(EPS)  # i x T
    return dot / (context_norm * word_norm[None]), attn


def words_loss(region_features: Tensor, words_emb: Tensor, lengths: Tensor, class_ids: Tensor | None,
               gamma1: float, gamma2: float, gamma3: float, paper_exponent: bool = False
               ) -> tuple[Tensor, Tensor, Tensor]:
    """DAMSM word-level loss.

    region_features: B x D x H x W (image regions), words_emb: B x D x T, lengths: B (true caption lengths).
    The original sums exp(gamma2 * cos) over words and takes the log; the paper raises the sum to 1/gamma2,
    i.e. divides that log by gamma2 (`paper_exponent=True`).
    Returns (loss images->captions, loss captions->images, attention B x T x H x W of each caption on its image).
    """
    batch, dim, height, width = region_features.shape
    steps = words_emb.size(2)
    regions = region_features.reshape(batch, dim, height * width).float()
    words = words_emb.float()
    lengths = lengths.to(words.device).view(-1).clamp(min=1)
    pad = torch.arange(steps, device=words.device)[None, :] >= lengths[:, None]  # B(captions) x T
    # index [j, i]: image j against caption i
    cos, attn = _all_pairs_cosine(words, regions, gamma1, pad)  # B x B x T, B x B x T x R
    cos = (cos * gamma2).masked_fill(pad[None], float("-inf"))
    sim = torch.logsumexp(cos, dim=2)  # B(images) x B(captions)
    if paper_exponent:
        sim = sim / gamma2
    sim = sim * gamma3
    mask = same_class_mask(class_ids, batch, sim.device)
    if mask is not None:
        sim = sim.masked_fill(mask, float("-inf"))
    labels = torch.arange(batch, device=sim.device)
    loss0 = F.cross_entropy(sim, labels)
    loss1 = F.cross_entropy(sim.t(), labels)
    own = attn[labels, labels].reshape(batch, steps, height, width)  # each caption on its own image
    return loss0, loss1, own


def sent_loss(image_code: Tensor, sent_emb: Tensor, class_ids: Tensor | None, gamma3: float
              ) -> tuple[Tensor, Tensor]:
    """DAMSM sentence-level loss: cosine of global image and sentence vectors, both directions."""
    image_code = image_code.float()
    sent_emb = sent_emb.float()
    scores = image_code @ sent_emb.t()
    norms = image_code.norm(dim=1, keepdim=True) @ sent_emb.norm(dim=1, keepdim=True).t()
    scores = scores / norms.clamp(min=EPS) * gamma3  # rows: images, columns: sentences
    mask = same_class_mask(class_ids, scores.size(0), scores.device)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    labels = torch.arange(scores.size(0), device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def _bce(logits: Tensor, target: float) -> Tensor:
    logits = logits.float().view(-1)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _uncond_head(netD):
    net = getattr(netD, "module", netD)
    return getattr(net, "UNCOND_DNET", None)


def _cond_head(netD):
    return getattr(netD, "module", netD).COND_DNET


def _augmented(images: Tensor, augment: Augment | None) -> Tensor:
    return images if augment is None else augment(images)


def discriminator_loss(netD, real: Tensor, fake: Tensor, sent_emb: Tensor, augment: Augment | None = None
                       ) -> tuple[Tensor, dict[str, float]]:
    """One discriminator's loss: real/fake (conditional and unconditional) plus the mismatched pairs.

    "Wrong" pairs are made as the original does: real image k with sentence k+1 (shift by one).
    `augment` (TRAIN.D_AUGMENT, trainer.augment) transforms real and fake images before D sees them.
    """
    real_features = netD(_augmented(real, augment))
    fake_features = netD(_augmented(fake.detach(), augment))
    cond = _cond_head(netD)
    cond_real = _bce(cond(real_features, sent_emb), 1.0)
    cond_fake = _bce(cond(fake_features, sent_emb), 0.0)
    batch = real_features.size(0)
    cond_wrong = _bce(cond(real_features[: batch - 1], sent_emb[1:batch]), 0.0)
    uncond = _uncond_head(netD)
    parts = {"cond_real": cond_real.item(), "cond_fake": cond_fake.item(), "cond_wrong": cond_wrong.item()}
    if uncond is not None:
        real_err = _bce(uncond(real_features), 1.0)
        fake_err = _bce(uncond(fake_features), 0.0)
        parts.update(uncond_real=real_err.item(), uncond_fake=fake_err.item())
        loss = (real_err + cond_real) / 2.0 + (fake_err + cond_fake + cond_wrong) / 3.0
    else:
        loss = cond_real + (cond_fake + cond_wrong) / 2.0
    return loss, parts


def mismatched_loss(netD, real: Tensor, wrong_condition, augment: Augment | None = None) -> Tensor:
    """More mismatched pairs: real images with captions that do not describe them, which D should call fake."""
    return _bce(_cond_head(netD)(netD(_augmented(real, augment)), wrong_condition), 0.0)


def generator_adversarial_loss(netsD, fakes: list[Tensor], sent_emb: Tensor, augment: Augment | None = None
                               ) -> Tensor:
    """Sum over stages of the unconditional and conditional "fool D" terms (through `augment`, as D saw them)."""
    total = fakes[0].new_zeros((), dtype=torch.float32)
    for netD, fake in zip(netsD, fakes):
        features = netD(_augmented(fake, augment))
        total = total + _bce(_cond_head(netD)(features, sent_emb), 1.0)
        uncond = _uncond_head(netD)
        if uncond is not None:
            total = total + _bce(uncond(features), 1.0)
    return total


def patch_discriminator_loss(netD, real: Tensor, fake: Tensor, augment: Augment | None = None) -> Tensor:
    """TRAIN.PATCH_D_LOSS: every window of a real image is real, every window of a fake one fake (pix2pix's loss)."""
    return (_bce(netD(_augmented(real, augment)), 1.0) + _bce(netD(_augmented(fake.detach(), augment)), 0.0)) / 2.0


def patch_generator_loss(netD, fake: Tensor, augment: Augment | None = None) -> Tensor:
    """G's side of TRAIN.PATCH_D_LOSS: every window of the fake image should pass as real."""
    return _bce(netD(_augmented(fake, augment)), 1.0)


def crop_around(images: Tensor, centres: Tensor, size: int) -> Tensor:
    """A size x size crop of each image centred on its (x, y) in `centres` (B x 2 pixels), moved inside the image
    where the centre is nearer an edge than size / 2. Gradients flow to the pixels, not to the centres."""
    height, width = images.shape[2:]
    corners = (centres.detach().round().long() - size // 2).cpu()
    x0 = corners[:, 0].clamp(0, width - size).tolist()
    y0 = corners[:, 1].clamp(0, height - size).tolist()
    return torch.stack([im[:, y:y + size, x:x + size] for im, x, y in zip(images, x0, y0)])


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, 1)) of the conditioning augmentation, as an element-wise mean (the original)."""
    mu = mu.float()
    logvar = logvar.float()
    return torch.mean(-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()))


def part_loss(logits: dict[str, Tensor], labels: Tensor, ignore_index: int = -100,
              weights: list[float] | None = None) -> Tensor:
    """Ours (TRAIN.PART_LOSS): mean cross-entropy of a frozen part reader's logits ({part: B x values}, in the
    column order of `labels`) against the values the caption names (B x P, `ignore_index` for a part it does not
    name), averaged over the named entries; 0 when the batch names none. `weights` (one per column,
    TRAIN.DETAIL_PART_WEIGHTS) multiplies each part's terms; the average still counts each named entry once."""
    total = labels.new_zeros((), dtype=torch.float32)
    for i, out in enumerate(logits.values()):
        term = F.cross_entropy(out.float(), labels[:, i], ignore_index=ignore_index, reduction="sum")
        total = total + (term if weights is None else term * weights[i])
    return total / (labels != ignore_index).sum().clamp(min=1)
