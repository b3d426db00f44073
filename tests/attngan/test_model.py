"""The networks: the original's parameter counts and state-dict keys (so released checkpoints load), shapes,
the attention mask (correct by default, the original's behaviour behind a flag), and the image encoders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attngan.errors import AttnGANError
from attngan.model import (
    Discriminator64,
    Discriminator128,
    Discriminator256,
    Generator,
    GlobalAttentionGeneral,
    ImageEncoder,
    ModelConfig,
    PatchDiscriminator,
    TextEncoder,
    build_discriminators,
    count_parameters,
    init_weights,
)

BIRD = ModelConfig(n_words=5450)
COCO = ModelConfig(n_words=27297, gf_dim=48, df_dim=96, r_num=3)


def on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize(
    ("config", "generator", "text_encoder", "discriminators"),
    [(BIRD, 7_084_592, 2_075_320, (6_313_730, 19_424_002, 71_858_946)),
     (COCO, 13_811_456, 8_629_420, (13_304_450, 42_800_258, 160_774_274))],
    ids=["bird", "coco"],
)
def test_parameter_counts_match_the_original(config, generator, text_encoder, discriminators):
    assert count_parameters(on_meta(lambda: Generator(config))) == generator
    assert count_parameters(on_meta(lambda: TextEncoder(config.n_words))) == text_encoder
    assert tuple(count_parameters(d) for d in on_meta(lambda: build_discriminators(config))) == discriminators


def test_state_dict_keys_and_shapes_are_the_originals():
    g = on_meta(lambda: Generator(BIRD)).state_dict()
    expected = {
        "ca_net.fc.weight": (400, 256),
        "ca_net.fc.bias": (400,),
        "h_net1.fc.0.weight": (16384, 200),
        "h_net1.fc.1.running_mean": (16384,),
        "h_net1.upsample4.1.weight": (64, 64, 3, 3),
        "h_net2.att.conv_context.weight": (32, 256, 1, 1),
        "h_net2.residual.1.block.0.weight": (128, 64, 3, 3),
        "h_net2.residual.1.block.1.weight": (128,),
        "h_net2.residual.1.block.3.weight": (64, 64, 3, 3),
        "h_net2.residual.1.block.4.running_var": (64,),
        "h_net3.upsample.1.weight": (64, 64, 3, 3),
        "img_net1.img.0.weight": (3, 32, 3, 3),
        "img_net3.img.0.weight": (3, 32, 3, 3),
    }
    assert {k: tuple(g[k].shape) for k in expected} == expected
    assert "h_net2.residual.2.block.0.weight" not in g  # R_NUM 2

    t = on_meta(lambda: TextEncoder(5450)).state_dict()
    assert tuple(t["encoder.weight"].shape) == (5450, 300)
    assert tuple(t["rnn.weight_ih_l0"].shape) == (512, 300)
    assert tuple(t["rnn.weight_hh_l0_reverse"].shape) == (512, 128)
    assert set(t) == {"encoder.weight"} | {f"rnn.{w}_l0{r}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                           for r in ("", "_reverse")}

    d = on_meta(lambda: Discriminator256(64)).state_dict()
    for key in ("img_code_s16.0.weight", "img_code_s16.3.running_mean", "img_code_s32.0.weight",
                "img_code_s64_2.1.weight", "COND_DNET.jointConv.0.weight", "COND_DNET.jointConv.1.bias",
                "COND_DNET.outlogits.0.weight", "COND_DNET.outlogits.0.bias", "UNCOND_DNET.outlogits.0.weight"):
        assert key in d, key
    assert tuple(d["COND_DNET.jointConv.0.weight"].shape) == (512, 768, 3, 3)

    e = on_meta(lambda: ImageEncoder()).state_dict()
    assert tuple(e["emb_features.weight"].shape) == (256, 768, 1, 1)
    assert tuple(e["emb_cnn_code.weight"].shape) == (256, 2048)
    assert tuple(e["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape) == (384,)
    assert tuple(e["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)


def test_dcgan_variant_has_one_image_head_and_one_unconditional_free_discriminator():
    config = ModelConfig(n_words=10, gf_dim=8, r_num=0, dcgan=True)
    keys = Generator(config).state_dict()
    assert "img_net.img.0.weight" in keys and not any(k.startswith("img_net1") for k in keys)
    (d,) = build_discriminators(config)
    assert isinstance(d, Discriminator256) and d.UNCOND_DNET is None
    g = Generator(config).eval()
    words, sent = torch.randn(2, 256, 4), torch.randn(2, 256)
    images, attention, _, _ = g(torch.randn(2, 100), sent, words, torch.zeros(2, 4, dtype=torch.bool))
    assert [tuple(i.shape) for i in images] == [(2, 3, 256, 256)]
    assert [tuple(a.shape) for a in attention] == [(2, 4, 64, 64), (2, 4, 128, 128)]


def test_generator_shapes_range_and_explicit_noise_is_deterministic():
    config = ModelConfig(n_words=20, gf_dim=8, r_num=1, embedding_dim=32, z_dim=16, condition_dim=8)
    g = Generator(config)
    g.apply(init_weights)
    g.eval()
    words, sent = torch.randn(2, 32, 5), torch.randn(2, 32)
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    z, eps = torch.randn(2, 16), torch.randn(2, 8)
    images, _attention, mu, logvar = g(z, sent, words, mask, eps=eps)
    assert [tuple(i.shape) for i in images] == [(2, 3, 64, 64), (2, 3, 128, 128), (2, 3, 256, 256)]
    assert all(i.abs().max() <= 1 for i in images)
    assert tuple(mu.shape) == tuple(logvar.shape) == (2, 8)
    again = g(z, sent, words, mask, eps=eps)[0]
    assert all(torch.equal(a, b) for a, b in zip(images, again))
    other = g(z, sent, words, mask)[0]  # CA noise drawn fresh (the original samples in eval too)
    assert not torch.equal(images[-1], other[-1])


def test_init_weights_is_the_originals():
    g = Generator(ModelConfig(n_words=5, gf_dim=8, r_num=1))
    g.apply(init_weights)
    assert torch.count_nonzero(g.ca_net.fc.bias) == 0
    w = g.ca_net.fc.weight  # 400 x 256: orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(w.size(1)), atol=1e-4)
    bn = g.h_net1.fc[1].weight
    assert abs(bn.mean().item() - 1) < 0.01 and 0.01 < bn.std().item() < 0.03


def original_attention(attn_net: GlobalAttentionGeneral, h, words, mask):
    """A line-by-line transcription of the original GlobalAttentionGeneral.forward (mask.repeat(queryL, 1))."""
    ih, iw = h.size(2), h.size(3)
    query_len, (b, source_len) = ih * iw, (words.size(0), words.size(2))
    target_t = h.view(b, -1, query_len).transpose(1, 2).contiguous()
    source_t = attn_net.conv_context(words.unsqueeze(3)).squeeze(3)
    attn = torch.bmm(target_t, source_t).view(b * query_len, source_len)
    attn = attn.masked_fill(mask.repeat(query_len, 1), -float("inf"))
    attn = torch.softmax(attn, dim=1).view(b, query_len, source_len).transpose(1, 2).contiguous()
    return torch.bmm(source_t, attn).view(b, -1, ih, iw), attn.view(b, -1, ih, iw)


def test_attention_mask_is_per_sample_and_the_original_ordering_is_available():
    torch.manual_seed(0)
    h, words = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 5)
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)  # different lengths: they differ
    fixed = GlobalAttentionGeneral(8, 16)
    quirk = GlobalAttentionGeneral(8, 16, mask_original=True)
    quirk.load_state_dict(fixed.state_dict())

    ctx, attn = fixed(h, words, mask)
    assert torch.all(attn[1, 2:] == 0)  # the short caption's padding gets no attention anywhere
    assert torch.allclose(attn.sum(1), torch.ones(2, 4, 4))
    assert attn[0, 2:].min() > 0  # the full caption attends to all its words

    ctx_q, attn_q = quirk(h, words, mask)
    ref_ctx, ref_attn = original_attention(quirk, h, words, mask)
    assert torch.allclose(attn_q, ref_attn) and torch.allclose(ctx_q, ref_ctx)
    assert attn_q[1, 2:].max() > 0  # the original leaks attention onto the padding of sample 1 ...
    assert torch.all(attn_q.view(2, 5, 16)[0, 2:, 1::2] == 0)  # ... and masks real words of sample 0
    assert not torch.allclose(ctx, ctx_q)

    same = torch.zeros(2, 5, dtype=torch.bool)  # equal lengths (or B = 1): both behaviours agree
    assert torch.allclose(fixed(h, words, same)[1], quirk(h, words, same)[1])


def test_text_encoder_handles_unsorted_lengths_and_zero_pads():
    torch.manual_seed(0)
    enc = TextEncoder(30, nhidden=32).eval()
    caps = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]])
    lengths = torch.tensor([2, 4, 1])
    words, sent = enc(caps, lengths)
    assert tuple(words.shape) == (3, 32, 4) and tuple(sent.shape) == (3, 32)
    assert torch.all(words[0, :, 2:] == 0) and torch.all(words[2, :, 1:] == 0)
    w1, s1 = enc(caps[1:2], lengths[1:2])
    assert torch.allclose(w1[0], words[1], atol=1e-6) and torch.allclose(s1[0], sent[1], atol=1e-6)
    # sentence code = [forward state after the last word, backward state after the first word]
    assert torch.allclose(sent[0, :16], words[0, :16, 1], atol=1e-6)
    assert torch.allclose(sent[0, 16:], words[0, 16:, 0], atol=1e-6)


def test_discriminators_return_logits_per_image():
    torch.manual_seed(0)
    sent = torch.randn(2, 32)
    for cls, size in ((Discriminator64, 64), (Discriminator128, 128), (Discriminator256, 256)):
        d = cls(8, nef=32)
        features = d(torch.rand(2, 3, size, size) * 2 - 1)
        assert tuple(features.shape) == (2, 64, 4, 4)
        cond, uncond = d.COND_DNET(features, sent), d.UNCOND_DNET(features)
        assert tuple(cond.shape) == tuple(uncond.shape) == (2,)
        assert (cond.abs() > 0).all()


def test_patch_discriminator_judges_each_70px_window_on_its_own():
    """One logit per window (30 x 30 at 256 px); a pixel changed in one corner moves only the windows that hold it."""
    torch.manual_seed(0)
    d = PatchDiscriminator(8).eval()
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        before = d(images)
        images[:, :, 0, 0] = -images[:, :, 0, 0] + 0.5
        after = d(images)
    assert tuple(before.shape) == (1, 1, 30, 30)
    moved = (before - after).abs()[0, 0] > 0
    rows, cols = moved.nonzero(as_tuple=True)
    assert moved[0, 0] and moved.sum() < 30 * 30
    # window (r, c) reads pixels from 8r - 27 to 8r + 42: only the first few hold pixel (0, 0)
    field = PatchDiscriminator.RECEPTIVE_FIELD
    assert int(rows.max()) * 8 - 27 <= 0 and int(cols.max()) * 8 - 27 <= 0 and field == 70
    assert tuple(d(torch.zeros(2, 3, 64, 64)).shape) == (2, 1, 6, 6)


def test_small_image_encoder_works_at_native_sizes():
    enc = ImageEncoder(nef=32, kind="small").eval()
    for size, regions in ((64, 4), (128, 7), (256, 15)):
        feats, code = enc(torch.rand(2, 3, size, size) * 2 - 1)
        assert tuple(feats.shape) == (2, 32, regions, regions) and tuple(code.shape) == (2, 32)
    assert count_parameters(ImageEncoder(kind="small")) < 4_000_000


def test_inception_encoder_loads_torchvision_weights_and_keeps_bn_frozen(tmp_path):
    enc = ImageEncoder(nef=32)
    trunk = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in enc.state_dict().items()
             if not k.startswith("emb_")}
    trunk["fc.weight"], trunk["AuxLogits.fc.weight"] = torch.randn(1000, 2048), torch.randn(1000, 768)
    path = tmp_path / "inception_v3_google.pth"
    torch.save(trunk, path)
    loaded = ImageEncoder(nef=32, inception_weights=str(path))
    assert torch.equal(loaded.state_dict()["Mixed_6e.branch7x7_2.conv.weight"], trunk["Mixed_6e.branch7x7_2.conv.weight"])
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if not n.startswith("emb_"))
    assert all(p.requires_grad for n, p in loaded.named_parameters() if n.startswith("emb_"))
    loaded.train()
    assert not loaded.Mixed_5b.branch1x1.bn.training and loaded.emb_features.training
    quirk = ImageEncoder(nef=32, inception_bn_train=True).train()
    assert quirk.Mixed_5b.branch1x1.bn.training
    feats, code = loaded.eval()(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert tuple(feats.shape) == (1, 32, 17, 17) and tuple(code.shape) == (1, 32)

    del trunk["Mixed_7c.branch_pool.conv.weight"]
    torch.save(trunk, path)
    with pytest.raises(AttnGANError, match="not a torchvision Inception-v3"):
        ImageEncoder(nef=32, inception_weights=str(path))


def test_model_config_round_trip_and_from_config():
    from attngan.config import load_config

    cfg = load_config(None, ["GAN.GF_DIM=32", "GAN.R_NUM=3", "TEXT.WORDS_NUM=25", "GAN.ATTN_MASK_ORIGINAL=true",
                             "GAN.WORD_ATTN_64=true"])
    mc = ModelConfig.from_config(cfg, n_words=77)
    assert (mc.gf_dim, mc.r_num, mc.words_num, mc.attn_mask_original, mc.attn_64, mc.n_words) == (32, 3, 25, True,
                                                                                                   True, 77)
    assert ModelConfig.from_dict(mc.to_dict()) == mc
    assert mc.image_sizes == [64, 128, 256]


def test_word_attention_at_64px_makes_stage_one_read_the_words():
    """GAN.WORD_ATTN_64 (ours; off in the paper's configs above): stage 1 attends over the caption's words at
    32 x 32, so the 64 px image depends on which words a caption has, not only on its sentence vector."""
    plain = ModelConfig(n_words=20, gf_dim=8, r_num=1, embedding_dim=32, z_dim=16, condition_dim=8)
    attn64 = dataclasses.replace(plain, attn_64=True)
    z, eps, sent = torch.randn(2, 16), torch.randn(2, 8), torch.randn(2, 32)
    words, other_words = torch.randn(2, 32, 5), torch.randn(2, 32, 5)
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    for config, reads_words in ((plain, False), (attn64, True)):
        torch.manual_seed(0)
        g = Generator(config)
        g.apply(init_weights)
        g.eval()
        images, attention, _, _ = g(z, sent, words, mask, eps=eps)
        again = g(z, sent, other_words, mask, eps=eps)[0]
        assert torch.equal(images[0], again[0]) is not reads_words
    assert [tuple(a.shape) for a in attention] == [(2, 5, 32, 32), (2, 5, 64, 64), (2, 5, 128, 128)]
    assert torch.count_nonzero(attention[0][1, 2:]) == 0  # padding gets no attention at stage 1 either
    assert torch.allclose(attention[0].sum(1), torch.ones(2, 32, 32))
    # what it adds to the paper's bird generator: the word projection and the last up block's wider input
    assert count_parameters(on_meta(lambda: Generator(dataclasses.replace(BIRD, attn_64=True)))) == 7_084_592 + 53_248
    with pytest.raises(AttnGANError, match="WORD_ATTN_64"):
        ModelConfig(n_words=20, dcgan=True, attn_64=True)
