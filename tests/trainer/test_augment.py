"""TRAIN.D_AUGMENT: what the discriminators see is shifted and cut out, never recoloured, and G learns through it."""

from __future__ import annotations

import pytest
import torch

from attngan.errors import AttnGANError
from trainer import losses
from trainer.augment import cutout, policy, translation


def _images(batch: int = 6, side: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, 3, side, side) + 0.5  # no zeros, so every 0 in an output was put there


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_translation_shifts_each_image_by_at_most_an_eighth_and_pads_with_zeros():
    x = _images()
    torch.manual_seed(1)
    out = translation(x)
    offsets = set()
    for image, moved in zip(x, out):
        found = [(dy, dx) for dy in range(-8, 9) for dx in range(-8, 9) if torch.equal(_shifted(image, dy, dx), moved)]
        assert len(found) == 1, "each output is its input moved by one whole-pixel offset within 8 px"
        offsets.add(found[0])
    assert len(offsets) > 1  # each image draws its own offset


def test_cutout_blanks_one_square_of_half_the_side_and_keeps_every_other_pixel():
    x = _images(batch=32)
    torch.manual_seed(2)
    out = cutout(x)
    for image, cut in zip(x, out):
        blank = (cut == 0).all(0)
        assert torch.equal(cut[:, ~blank], image[:, ~blank])
        rows, cols = blank.any(1).nonzero().flatten(), blank.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert blank.sum() == height * width and rows[-1] - rows[0] + 1 == height  # one solid rectangle
        assert 0 < height <= 32 and 0 < width <= 32
        inside = 0 < rows[0] and rows[-1] < 63 and 0 < cols[0] and cols[-1] < 63
        assert not inside or (height, width) == (32, 32)  # clipped only by the image's edge


def test_a_policy_keeps_colours_and_layout_and_lets_gradients_through():
    augment = policy("translation,cutout")
    x = _images().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = augment(x)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the discriminators' layout on CPU
    shown = out[out != 0]
    assert torch.isin(shown, x.detach()).all()  # pixels move or vanish; no new colour appears
    out.sum().backward()
    assert x.grad.sum() == pytest.approx((out != 0).sum().item())  # each pixel shown passes its gradient once


def test_policy_names_and_errors():
    assert policy("") is None and policy(" , ") is None
    with pytest.raises(AttnGANError, match="unknown transform 'color'.*translation, cutout"):
        policy("translation,color")


def test_the_losses_show_augmented_images_to_every_discriminator_call():
    seen = []

    def augment(x):
        seen.append(x.requires_grad)
        return x.flip(-1)

    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    d.COND_DNET = lambda features, sent: (features * sent).sum(1, keepdim=True)
    d.UNCOND_DNET = None
    real, sent = torch.randn(4, 1, 2, 4), torch.randn(4, 3)
    fake = torch.randn(4, 1, 2, 4, requires_grad=True)
    plain, _ = losses.discriminator_loss(d, real, fake, sent)
    flipped, _ = losses.discriminator_loss(d, real, fake, sent, augment)
    assert seen == [False, False] and not torch.allclose(plain, flipped)  # real and the detached fake
    assert torch.allclose(flipped, losses.discriminator_loss(d, real.flip(-1), fake.flip(-1), sent)[0])
    g_loss = losses.generator_adversarial_loss([d], [fake], sent, augment)
    assert seen[-1] is True  # G's term goes through the augmentation to the generator's images
    assert torch.allclose(g_loss, losses.generator_adversarial_loss([d], [fake.flip(-1)], sent))
