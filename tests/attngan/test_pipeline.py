"""TextToImage: caption checks, same seed -> same image whatever the batch, attention maps, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attngan.errors import AttnGANError
from attngan.pipeline import TextToImage, resolve_precision
from attngan.render import attention_grid, to_pil


@pytest.fixture(scope="module")
def t2i(lively_bundle) -> TextToImage:
    return TextToImage.from_bundle(lively_bundle, precision="fp32")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_prepare_reports_unknown_words_and_rejects_unusable_captions(t2i):
    encoded = t2i.prepare("This bird has a RED crown, and zebra stripes!")
    assert encoded.tokens == ["this", "bird", "has", "a", "red", "crown", "and"]
    assert encoded.unknown == ["zebra", "stripes"]
    with pytest.raises(AttnGANError, match="empty"):
        t2i.prepare("   ")
    with pytest.raises(AttnGANError, match="none of the caption's words"):
        t2i.prepare("zebra stripes everywhere")
    long = t2i.prepare(" ".join(["red"] * 30))
    assert len(long.ids) == t2i.config.words_num == 12


def test_images_and_attention_have_the_stage_shapes(t2i):
    (out,) = t2i.generate([t2i.prepare("a small red bird with black wings")], seeds=[1])
    assert [im.size for im in out.images] == [(64, 64), (128, 128), (256, 256)]
    assert out.tokens == ["a", "small", "red", "bird", "with", "black", "wings"]
    assert [a.shape for a in out.attention] == [(7, 64, 64), (7, 128, 128)]
    for a in out.attention:  # each pixel's attention over the caption's words sums to one
        np.testing.assert_allclose(a.sum(0), 1.0, atol=1e-4)
    assert pixels(out.images[-1]).std() > 20  # the fixture's weights make real contrast, so comparisons mean something


def test_same_seed_same_image_regardless_of_batch(t2i):
    short, long = t2i.prepare("red crown"), t2i.prepare("this small bird has a yellow belly and grey tail")
    alone = t2i.generate([short], [7])[0]
    batched = t2i.generate([long, short, short], [3, 7, 8])
    for a, b in zip(alone.images, batched[1].images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    for a, b in zip(alone.attention, batched[1].attention):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(pixels(batched[1].images[-1]) - pixels(batched[2].images[-1])).mean() > 0.1  # seed matters
    again = t2i.generate([short], [7])[0]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(alone.images, again.images))


def test_generate_checks_its_arguments(t2i):
    assert t2i.generate([], []) == []
    with pytest.raises(AttnGANError, match="seeds"):
        t2i.generate([t2i.prepare("red")], [1, 2])


def test_best_of_n_keeps_the_candidate_the_damsm_encoders_match_best(ranked_bundle):
    """Candidate k of a seed is the k-th draw of that seed's noise stream; the kept one has the highest caption-image
    cosine of all N, and candidate 0 is the image the seed gives without best-of-N."""
    from attngan.bundle import load_bundle

    n = 4
    best_of = TextToImage.from_bundle(ranked_bundle, precision="fp32", candidates=n)
    plain = TextToImage.from_bundle(ranked_bundle, precision="fp32")
    text_encoder, generator, image_encoder = load_bundle(ranked_bundle).build_networks()
    caption = plain.prepare("this bird has a red crown and black wings")
    tokens = torch.tensor([caption.ids])
    picked = []
    for seed in range(6):
        (out,) = best_of.generate([caption], [seed])
        g = torch.Generator().manual_seed(seed)
        noise = [(torch.randn(1, plain.config.z_dim, generator=g), torch.randn(1, plain.config.condition_dim, generator=g))
                 for _ in range(n)]
        with torch.no_grad():
            words, sent = text_encoder(tokens, torch.tensor([len(caption.ids)]))
            mask = tokens == 0
            images = [generator(z, sent, words, mask, eps=eps)[0][-1] for z, eps in noise]
            scores = [float(torch.cosine_similarity(image_encoder(im.clamp(-1, 1))[1], sent)[0]) for im in images]
        assert out.candidate == int(np.argmax(scores)) and out.score == pytest.approx(max(scores), abs=1e-5)
        assert np.abs(pixels(out.images[-1]) - pixels(to_pil(images[out.candidate][0]))).max() <= 1
        assert np.abs(pixels(plain.generate([caption], [seed])[0].images[-1]) - pixels(to_pil(images[0][0]))).max() <= 1
        picked.append(out.candidate)
    assert len(set(picked)) > 1  # the ranking really chooses
    batched = best_of.generate([plain.prepare("yellow belly"), caption], [9, 3])[1]
    assert batched.candidate == picked[3] and np.abs(pixels(batched.images[-1]) - pixels(
        best_of.generate([caption], [3])[0].images[-1])).max() <= 1


def test_best_of_n_checks_its_count_and_needs_an_image_encoder(lively_bundle, ranked_bundle):
    for bad in (0, 33, True, 2.0):
        with pytest.raises(AttnGANError, match="candidates must be an integer from 1 to 32"):
            TextToImage.from_bundle(ranked_bundle, candidates=bad)
    with pytest.raises(AttnGANError, match="DAMSM image encoder"):
        TextToImage.from_bundle(lively_bundle, candidates=2)


def test_truncation_scales_the_noise_between_the_seed_image_and_the_caption_mean(lively_bundle, t2i):
    """psi 1 is the plain sampling; psi 0 gives one image per caption whatever the seed; psi 0.5 is the seed's own
    noise at half its spread, so it lies between the two."""
    caption = [t2i.prepare("this bird has a red crown and black wings")]
    plain = [t2i.generate(caption, [s])[0].images[-1] for s in (1, 2)]
    same = TextToImage.from_bundle(lively_bundle, precision="fp32", truncation=1.0)
    assert np.array_equal(pixels(same.generate(caption, [1])[0].images[-1]), pixels(plain[0]))
    mean = TextToImage.from_bundle(lively_bundle, precision="fp32", truncation=0)
    means = [mean.generate(caption, [s])[0].images[-1] for s in (1, 2)]
    assert np.array_equal(pixels(means[0]), pixels(means[1]))
    half = TextToImage.from_bundle(lively_bundle, precision="fp32", truncation=0.5).generate(caption, [1])[0].images[-1]

    def gap(a, b) -> float:
        return float(np.abs(pixels(a) - pixels(b)).mean())

    assert 0 < gap(half, means[0]) < gap(plain[0], means[0]) and 0 < gap(half, plain[0])
    mixed = t2i.generate(caption * 3, [1, 1, 2], truncations=[0, None, 0.0])  # one batch, each its own
    for got, expected in zip(mixed, (means[0], plain[0], means[0])):  # batched: within a grey level
        assert np.abs(pixels(got.images[-1]) - pixels(expected)).max() <= 1
        assert gap(got.images[-1], expected) < gap(got.images[-1], plain[0] if expected is means[0] else means[0])
    with pytest.raises(AttnGANError, match="truncations"):
        t2i.generate(caption, [1], truncations=[0.5, 0.5])
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(AttnGANError, match="truncation must be a number from 0 to 1"):
            TextToImage.from_bundle(lively_bundle, truncation=bad)


def test_bf16_images_are_close_to_fp32(lively_bundle, t2i):
    """Tolerance: mean absolute difference under 4 of 255 grey levels on every stage's image."""
    bf16 = TextToImage.from_bundle(lively_bundle, precision="bf16")
    assert bf16.precision == "bf16"
    caption = [t2i.prepare("this bird has a red crown and black wings")]
    a, b = t2i.generate(caption, [11])[0], bf16.generate(caption, [11])[0]
    for x, y in zip(a.images, b.images):
        assert np.abs(pixels(x) - pixels(y)).mean() < 4.0


def test_auto_precision_follows_the_hardware(monkeypatch):
    """bf16 only with native bf16 dot products (AMX or AVX512-BF16): plain AVX512 emulates it too."""
    for amx, avx512_bf16, expected in [(False, False, torch.float32), (True, False, torch.bfloat16),
                                       (False, True, torch.bfloat16)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    with pytest.raises(AttnGANError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_render_maps_values_and_draws_one_tile_per_word():
    image = to_pil(torch.stack([torch.full((4, 4), -1.0), torch.zeros(4, 4), torch.ones(4, 4)]))
    assert image.getpixel((0, 0)) == (0, 127, 255)
    attention = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    grid = attention_grid(to_pil(torch.zeros(3, 32, 32)), attention, ["red", "crown", "bird"], tile=32)
    assert grid.size == (4 * 32, 32 + 18)
    one_word = np.asarray(grid)[18:, 32:64].astype(int)
    assert one_word.std() > 10  # the heat map shows where the word attended


def test_each_attention_map_is_drawn_over_the_stage_it_fed():
    from attngan.render import images_under_attention

    assert images_under_attention(["64", "128", "256"], 2) == ["128", "256"]  # the paper's generator
    assert images_under_attention(["64", "128", "256"], 3) == ["64", "128", "256"]  # GAN.WORD_ATTN_64
    assert images_under_attention(["64"], 1) == ["64"]  # a 64 px stage trained with it
    assert images_under_attention(["256"], 2) == ["256", "256"]  # DCGAN: one image, two maps
