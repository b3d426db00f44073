"""Losses: the vectorised DAMSM losses equal the original's per-caption loop; GAN losses behave."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import losses


def _original_words_loss(img_features, words_emb, cap_lens, class_ids, g1, g2, g3):
    """A line-by-line port of the original loop (miscc/losses.py words_loss + func_attention)."""
    batch = words_emb.size(0)
    masks = []
    for i in range(batch):
        m = (class_ids == class_ids[i]).clone()
        m[i] = False
        masks.append(m.view(1, -1))
    masks = torch.cat(masks, 0)
    sims = []
    for i in range(batch):
        n = int(cap_lens[i])
        word = words_emb[i, :, :n].unsqueeze(0).repeat(batch, 1, 1)
        context = img_features
        b, d, ql = word.shape
        ih, iw = context.size(2), context.size(3)
        src = context.view(b, d, ih * iw)
        attn = torch.bmm(src.transpose(1, 2), word).view(b * ih * iw, ql)
        attn = torch.softmax(attn, dim=1).view(b, ih * iw, ql).transpose(1, 2).contiguous().view(b * ql, ih * iw)
        attn = torch.softmax(attn * g1, dim=1).view(b, ql, ih * iw)
        wei = torch.bmm(src, attn.transpose(1, 2))
        word_f = word.transpose(1, 2).contiguous().view(b * n, -1)
        wei_f = wei.transpose(1, 2).contiguous().view(b * n, -1)
        row = F.cosine_similarity(word_f, wei_f, dim=1, eps=1e-8).view(b, n)
        row = torch.log(torch.exp(row * g2).sum(dim=1, keepdim=True))
        sims.append(row)
    sims = torch.cat(sims, 1) * g3
    sims = sims.masked_fill(masks, -float("inf"))
    labels = torch.arange(batch)
    return nn.CrossEntropyLoss()(sims, labels), nn.CrossEntropyLoss()(sims.t(), labels)


def test_words_loss_matches_original_loop():
    g = torch.Generator().manual_seed(0)
    B, D, T = 6, 16, 7
    regions = torch.randn(B, D, 5, 5, generator=g)
    words = torch.randn(B, D, T, generator=g)
    lengths = torch.tensor([7, 7, 5, 4, 2, 1])
    for i, n in enumerate(lengths):
        words[i, :, n:] = 0  # padded steps of the LSTM output are zero
    class_ids = torch.tensor([1, 2, 1, 3, 4, 2])
    l0, l1, attn = losses.words_loss(regions, words, lengths, class_ids, 4.0, 5.0, 10.0)
    r0, r1 = _original_words_loss(regions, words, lengths, class_ids, 4.0, 5.0, 10.0)
    assert torch.allclose(l0, r0, atol=1e-5) and torch.allclose(l1, r1, atol=1e-5)
    assert attn.shape == (B, T, 5, 5)
    # each real word's attention over the regions sums to one
    assert torch.allclose(attn[2, :5].sum(dim=(1, 2)), torch.ones(5), atol=1e-5)


def test_words_loss_paper_exponent_divides_by_gamma2():
    g = torch.Generator().manual_seed(1)
    regions = torch.randn(4, 8, 3, 3, generator=g)
    words = torch.randn(4, 8, 5, generator=g)
    lengths = torch.tensor([5, 5, 5, 5])
    a0, _, _ = losses.words_loss(regions, words, lengths, None, 4.0, 5.0, 10.0, paper_exponent=False)
    b0, _, _ = losses.words_loss(regions, words, lengths, None, 4.0, 5.0, 50.0, paper_exponent=True)
    assert torch.allclose(a0, b0, atol=1e-5)  # gamma3 10 == gamma3 50 / gamma2 5 with the exponent


def test_sent_loss_masks_same_class_and_matches_cosine_ce():
    g = torch.Generator().manual_seed(2)
    img, sent = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    class_ids = torch.tensor([0, 1, 0, 2, 3])
    l0, l1 = losses.sent_loss(img, sent, class_ids, 10.0)
    cos = F.cosine_similarity(img[:, None], sent[None], dim=2) * 10.0
    cos[0, 2] = cos[2, 0] = -float("inf")
    labels = torch.arange(5)
    assert torch.allclose(l0, F.cross_entropy(cos, labels), atol=1e-5)
    assert torch.allclose(l1, F.cross_entropy(cos.t(), labels), atol=1e-5)
    # a perfectly aligned batch has a tiny loss; masking keeps it finite
    p0, p1 = losses.sent_loss(img, img, class_ids, 10.0)
    assert math.isfinite(p0.item()) and p0.item() < l0.item() and p1.item() < l1.item()


def test_kl_is_elementwise_mean_and_zero_at_prior():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    assert losses.kl_loss(mu, logvar).item() == 0.0
    mu = torch.ones(3, 4)
    assert losses.kl_loss(mu, logvar).item() == pytest.approx(0.5)


class _TinyD(nn.Module):
    def __init__(self, uncond=True):
        super().__init__()
        self.trunk = nn.Linear(4, 3)
        self.COND_DNET = _Cond()
        self.UNCOND_DNET = nn.Linear(3, 1) if uncond else None

    def forward(self, x):
        return self.trunk(x)


class _Cond(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, features, sent):
        return self.fc(torch.cat([features, sent], 1))


@pytest.mark.parametrize("uncond", [True, False])
def test_discriminator_loss_is_the_original_combination(uncond):
    torch.manual_seed(0)
    d = _TinyD(uncond)
    real, fake, sent = torch.randn(4, 4), torch.randn(4, 4, requires_grad=True), torch.randn(4, 2)
    loss, parts = losses.discriminator_loss(d, real, fake, sent)
    bce = nn.BCELoss()
    rf, ff = d(real), d(fake)
    cr = bce(torch.sigmoid(d.COND_DNET(rf, sent)), torch.ones(4, 1))
    cf = bce(torch.sigmoid(d.COND_DNET(ff, sent)), torch.zeros(4, 1))
    cw = bce(torch.sigmoid(d.COND_DNET(rf[:3], sent[1:])), torch.zeros(3, 1))
    if uncond:
        ur = bce(torch.sigmoid(d.UNCOND_DNET(rf)), torch.ones(4, 1))
        uf = bce(torch.sigmoid(d.UNCOND_DNET(ff)), torch.zeros(4, 1))
        expected = (ur + cr) / 2 + (uf + cf + cw) / 3
    else:
        expected = cr + (cf + cw) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert fake.grad is None  # fakes are detached for D
    assert parts["cond_wrong"] == pytest.approx(cw.item(), abs=1e-6)


def test_bce_with_logits_is_stable_for_confident_discriminators():
    d = _TinyD()
    with torch.no_grad():
        d.UNCOND_DNET.bias.fill_(-200.0)  # sigmoid saturates to exactly 0.0 in float32
    loss = losses.generator_adversarial_loss([d], [torch.randn(2, 4)], torch.randn(2, 2))
    assert math.isfinite(loss.item()) and loss.item() > 100  # BCELoss would clamp at log(1e-12)


def test_patch_losses_are_the_mean_bce_over_every_window():
    """A PatchGAN's logit maps (TRAIN.PATCH_D_LOSS): at logits of 0 both losses are ln 2; D's fakes are detached."""
    d = nn.Conv2d(3, 1, 4, 2, 1)
    with torch.no_grad():
        d.weight.zero_()
        d.bias.zero_()
    real, fake = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16, requires_grad=True)
    loss_d = losses.patch_discriminator_loss(d, real, fake)
    assert loss_d.item() == pytest.approx(math.log(2), abs=1e-6)
    loss_d.backward()
    assert fake.grad is None
    with torch.no_grad():
        d.bias.fill_(2.0)  # every window says "real": G's loss is small, D's fake term large
    loss_g = losses.patch_generator_loss(d, fake)
    assert loss_g.item() == pytest.approx(F.softplus(torch.tensor(-2.0)).item(), abs=1e-6)
    with torch.no_grad():
        d.weight.fill_(0.01)
    losses.patch_generator_loss(d, fake).backward()
    assert fake.grad.abs().sum() > 0  # G learns through D


def test_crop_around_takes_the_pixels_at_each_centre_and_stays_inside():
    """TRAIN.HEAD_D_LOSS's crops: the size x size pixels around each image's own centre, moved inside the image at
    an edge; G's gradient reaches the cropped pixels only."""
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16).requires_grad_(True)
    centres = torch.tensor([[5.2, 9.0], [15.0, -3.0]])  # (x, y); the second is past the right and top edges
    crops = losses.crop_around(images, centres, 4)
    assert crops.shape == (2, 3, 4, 4)
    assert torch.equal(crops[0], images[0, :, 7:11, 3:7])
    assert torch.equal(crops[1], images[1, :, 0:4, 12:16])
    crops.sum().backward()
    assert images.grad.sum().item() == 2 * 3 * 16 and images.grad[0, :, 7:11, 3:7].eq(1).all()
