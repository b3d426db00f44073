"""The AttnGAN networks (Xu et al., CVPR 2018) in modern PyTorch.

Module and parameter names follow the original `code/model.py`, so its released checkpoints
(`bird_AttnGAN2.pth`, `text_encoder200.pth`, `image_encoder200.pth`) load with `load_state_dict`:

- TextEncoder      = RNN_ENCODER   (encoder.weight, rnn.*)
- ImageEncoder     = CNN_ENCODER   (Conv2d_1a_3x3 ... Mixed_7c, emb_features, emb_cnn_code); or a small CNN
- Generator        = G_NET / G_DCGAN (ca_net, h_net1..3, img_net1..3 / img_net)
- Discriminator64/128/256 = D_NET64/128/256 (img_code_s16, ..., COND_DNET, UNCOND_DNET)

Differences from the original, all without changing state-dict keys: the discriminator heads return logits
(the original's trailing Sigmoid has no parameters; train with BCE-with-logits), the generator's attention mask
is applied per sample (the original's ordering bug is kept behind `ModelConfig.attn_mask_original`), the
CA noise can be passed in for determinism, and the text encoder accepts unsorted lengths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attngan.errors import AttnGANError
from attngan.inception import INCEPTION_NAMES, inception_blocks, inception_forward, load_inception_weights


@dataclass
class ModelConfig:
    """Architecture only (what is needed to rebuild the networks from a bundle)."""

    n_words: int
    embedding_dim: int = 256
    words_num: int = 18
    gf_dim: int = 32
    df_dim: int = 64
    z_dim: int = 100
    condition_dim: int = 100
    r_num: int = 2
    branch_num: int = 3
    dcgan: bool = False
    attn_mask_original: bool = False
    attn_64: bool = False  # ours: word attention at the 64 px stage too (GAN.WORD_ATTN_64)
    image_encoder: str = "inception"
    image_encoder_size: int = 0  # small encoder: input resized to this size (0: native)

    def __post_init__(self) -> None:
        if self.n_words < 1:
            raise AttnGANError(f"n_words must be positive, got {self.n_words}")
        if not 1 <= self.branch_num <= 3:
            raise AttnGANError(f"TREE.BRANCH_NUM must be 1, 2 or 3 for the generator, got {self.branch_num}")
        if self.image_encoder not in ("inception", "small"):
            raise AttnGANError(f"IMAGE_ENCODER must be 'inception' or 'small', got {self.image_encoder!r}")
        if self.image_encoder_size and (self.image_encoder_size < 64 or self.image_encoder_size % 16):
            raise AttnGANError(f"IMAGE_ENCODER_SIZE must be 0 or a multiple of 16 from 64, got {self.image_encoder_size}")
        if self.attn_64 and self.dcgan:
            raise AttnGANError("GAN.WORD_ATTN_64 is for the attention generator, not the DCGAN variant")
        if self.embedding_dim % 2:
            raise AttnGANError(f"TEXT.EMBEDDING_DIM must be even (bi-LSTM halves), got {self.embedding_dim}")

    @classmethod
    def from_config(cls, cfg: Any, n_words: int) -> ModelConfig:
        return cls(
            n_words=n_words,
            embedding_dim=cfg.TEXT.EMBEDDING_DIM,
            words_num=cfg.TEXT.WORDS_NUM,
            gf_dim=cfg.GAN.GF_DIM,
            df_dim=cfg.GAN.DF_DIM,
            z_dim=cfg.GAN.Z_DIM,
            condition_dim=cfg.GAN.CONDITION_DIM,
            r_num=cfg.GAN.R_NUM,
            branch_num=cfg.TREE.BRANCH_NUM,
            dcgan=cfg.GAN.B_DCGAN,
            attn_mask_original=getattr(cfg.GAN, "ATTN_MASK_ORIGINAL", False),
            attn_64=getattr(cfg.GAN, "WORD_ATTN_64", False),
            image_encoder=getattr(cfg, "IMAGE_ENCODER", "inception"),
            image_encoder_size=getattr(cfg, "IMAGE_ENCODER_SIZE", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AttnGANError(f"unknown model config keys {unknown}; is this bundle from a newer attngan?")
        return cls(**d)

    @property
    def image_sizes(self) -> list[int]:
        """Output resolutions of the generator: [64, 128, 256][:branch_num], or only the last for DCGAN."""
        sizes = [64 * 2**i for i in range(self.branch_num)]
        return sizes[-1:] if self.dcgan else sizes


# ---------------------------------------------------------------- shared blocks


class GLU(nn.Module):
    """First half of the channels times the sigmoid of the second half (F.glu: one fused kernel, ~2.5x faster on CPU
    than slicing, forward and backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(x, dim=1)


def conv1x1(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0, bias=bias)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


def up_block(cin: int, cout: int) -> nn.Sequential:
    """Nearest x2 upsample, conv3x3 to 2*cout, BN, GLU (the original's upBlock)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(cin, cout * 2), nn.BatchNorm2d(cout * 2), GLU())


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = nn.Sequential(conv3x3(c, c * 2), nn.BatchNorm2d(c * 2), GLU(), conv3x3(c, c), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


# ---------------------------------------------------------------- text encoder


class TextEncoder(nn.Module):
    """DAMSM text encoder (RNN_ENCODER): embedding 300, dropout, bidirectional 1-layer LSTM with nhidden/2 per direction."""

    def __init__(self, n_words: int, ninput: int = 300, drop_prob: float = 0.5, nhidden: int = 256) -> None:
        super().__init__()
        self.n_words = n_words
        self.nhidden = nhidden
        self.encoder = nn.Embedding(n_words, ninput)
        self.drop = nn.Dropout(drop_prob)
        # one layer, so the original's dropout=0.5 inside the LSTM had no effect; leave it out (no warning)
        self.rnn = nn.LSTM(ninput, nhidden // 2, num_layers=1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """captions B x T (0-padded), lengths B (any order) -> words_emb B x nhidden x max(lengths), sent_emb B x nhidden."""
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if bool((lengths_cpu < 1).any()):
            raise AttnGANError("every caption needs at least one known word")
        emb = self.drop(self.encoder(captions))
        packed = pack_padded_sequence(emb, lengths_cpu, batch_first=True, enforce_sorted=False)
        output, (h_n, _) = self.rnn(packed)
        output = pad_packed_sequence(output, batch_first=True)[0]  # B x max_len x nhidden, zeros past each length
        words_emb = output.transpose(1, 2)
        sent_emb = h_n.transpose(0, 1).contiguous().view(-1, self.nhidden)  # [fwd_last, bwd_last]
        return words_emb, sent_emb


# ---------------------------------------------------------------- image encoder


class ImageEncoder(nn.Module):
    """DAMSM image encoder: region features B x nef x R x R and a global code B x nef.

    kind="inception" (the paper's CNN_ENCODER): a frozen ImageNet Inception-v3 on the input resized to 299x299
    (bilinear, align_corners=False as modern ports); regions = conv1x1(Mixed_6e) at 17x17, global =
    Linear(avgpool(Mixed_7c)). Pass `inception_weights` (a local torchvision-format file) to load ImageNet weights;
    without them the trunk is random, which is only useful for tests or when a full checkpoint is loaded next.
    The trunk's BatchNorm stays in eval mode even under `.train()` unless `inception_bn_train=True` (the original's
    DAMSM quirk, where the frozen Inception's running statistics kept updating).

    kind="small": four stride-2 conv blocks (3-32-64-128-256) for small data sets and CPUs, trained from scratch or
    started from a pretrained trunk (`attngan train backbone`, the small encoder's counterpart of ImageNet weights).
    It works on the native 64-256 px images, or resizes them to `input_size` first (as Inception resizes to 299, so
    an encoder trained at 128 px reads the generator's 256 px images at the size it knows, 4x cheaper);
    R = round(17 * size / 299) (4 at 64, 7 at 128, 15 at 256), the global code comes from one more block,
    average-pooled. About 3.0M parameters at nef=256. After `freeze_trunk()` the trunk's BatchNorm stays in eval mode.
    """

    def __init__(self, nef: int = 256, kind: str = "inception", inception_weights: str | None = None,
                 inception_bn_train: bool = False, input_size: int = 0) -> None:
        super().__init__()
        self.nef = nef
        self.kind = kind
        self.inception_bn_train = inception_bn_train
        self.input_size = input_size
        self.frozen_trunk = False  # freeze_trunk(): projections-only training over a pretrained trunk
        self.frozen_global = False  # ... and its global block too (unless the trunk came without one)
        if kind == "inception":
            for name, block in inception_blocks().items():
                setattr(self, name, block)
            if inception_weights:
                load_inception_weights(self, inception_weights)
            for name in INCEPTION_NAMES:
                getattr(self, name).requires_grad_(False)
            self.emb_features = conv1x1(768, nef)
            self.emb_cnn_code = nn.Linear(2048, nef)
        elif kind == "small":
            def block(cin: int, cout: int, bn: bool = True) -> nn.Sequential:
                layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn)]
                if bn:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                return nn.Sequential(*layers)

            self.trunk = nn.Sequential(block(3, 32, bn=False), block(32, 64), block(64, 128), block(128, 256))
            self.trunk_global = block(256, 512)
            self.emb_features = conv1x1(256, nef)
            self.emb_cnn_code = nn.Linear(512, nef)
        else:
            raise AttnGANError(f"image encoder kind must be 'inception' or 'small', got {kind!r}")
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.kind == "inception" and not self.inception_bn_train:
            for name in INCEPTION_NAMES:
                getattr(self, name).eval()
        elif self.kind == "small" and self.frozen_trunk:
            self.trunk.eval()
            if self.frozen_global:
                self.trunk_global.eval()
        return self

    def freeze_trunk(self, global_block: bool = True) -> None:
        """Train only the projections (as the paper's DAMSM does over its frozen Inception); `global_block=False`
        trains the global block too (over a detail backbone's trunk, which comes without one)."""
        if self.kind == "small":
            self.frozen_trunk, self.frozen_global = True, global_block
            self.trunk.requires_grad_(False)
            self.trunk_global.requires_grad_(not global_block)
            self.train(self.training)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Small encoder: (trunk map B x 256 x S/16 x S/16, global B x 512) before the projections."""
        x = self.trunk(self.resize(images))
        return x, F.adaptive_avg_pool2d(self.trunk_global(x), 1).flatten(1)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Images at `input_size` (unchanged when it is 0 or already theirs)."""
        if not self.input_size or images.shape[-1] == self.input_size:
            return images
        # in fp32: the antialiased kernel has no bf16 version on CPU (generator output under autocast)
        return F.interpolate(images.float(), size=(self.input_size, self.input_size), mode="bilinear",
                             align_corners=False, antialias=images.shape[-1] > self.input_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "inception":
            x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
            regions, x = inception_forward(self, x)
            code = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.emb_features(regions), self.emb_cnn_code(code)
        return self.project(*self.features(images))

    def project(self, x: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Small encoder: `features()` -> (regions B x nef x R x R, global code B x nef). Split from forward so a
        caller that also reads the pooled features (the GAN's part loss) runs the trunk once."""
        r = max(1, round(17 * x.shape[-1] * 16 / 299))
        regions = F.adaptive_avg_pool2d(x, r) if x.shape[-1] != r else x
        return self.emb_features(regions), self.emb_cnn_code(pooled)


# ---------------------------------------------------------------- generator


class CANet(nn.Module):
    """Conditioning augmentation: sentence embedding -> (c = mu + sigma * eps, mu, logvar). Sampled in eval too."""

    def __init__(self, t_dim: int, c_dim: int) -> None:
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(t_dim, c_dim * 4, bias=True)
        self.relu = GLU()  # the original's name

    def forward(self, sent_emb: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.relu(self.fc(sent_emb))
        mu, logvar = x[:, : self.c_dim], x[:, self.c_dim:]
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        return mu + std * eps.to(std.dtype), mu, logvar


class InitStage(nn.Module):
    """INIT_STAGE_G: cat(c, z) -> fc -> 4x4 -> four up blocks -> ngf/16 x 64 x 64.

    With `words_dim` (ours, GAN.WORD_ATTN_64) the 32 x 32 map before the last up block also attends over the
    caption's words and the last up block reads it beside its word context, as the later stages do. The paper's
    first stage sees the caption only as one sentence vector, so which colour goes on which part must be decoded
    from it everywhere at once; with this each region reads its own words. At 32 x 32, without a residual block
    at 64 px, it is cheap: +66 ms on a batch-32 bf16 forward and backward of the default stage-1 generator here,
    against ~190 ms for attention and a residual block at 64 x 64; `bench/train.py` measured the trainer's
    stage-1 step at 1.01x of the plain one.
    """

    def __init__(self, ngf: int, ncf: int, z_dim: int, words_dim: int = 0, mask_original: bool = False) -> None:
        super().__init__()
        self.gf_dim = ngf
        self.fc = nn.Sequential(nn.Linear(z_dim + ncf, ngf * 4 * 4 * 2, bias=False), nn.BatchNorm1d(ngf * 4 * 4 * 2), GLU())
        self.upsample1 = up_block(ngf, ngf // 2)
        self.upsample2 = up_block(ngf // 2, ngf // 4)
        self.upsample3 = up_block(ngf // 4, ngf // 8)
        self.att = GlobalAttentionGeneral(ngf // 8, words_dim, mask_original) if words_dim else None
        self.upsample4 = up_block(ngf // 4 if words_dim else ngf // 8, ngf // 16)

    def forward(self, z: torch.Tensor, c_code: torch.Tensor, words: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (ngf/16 x 64 x 64 features, attention B x T x 32 x 32 or None without words attention)."""
        x = self.fc(torch.cat((c_code, z), 1)).view(-1, self.gf_dim, 4, 4)
        x = self.upsample3(self.upsample2(self.upsample1(x)))
        attn = None
        if self.att is not None:
            context, attn = self.att(x, words, mask)
            x = torch.cat((x, context), 1)
        return self.upsample4(x), attn


class GlobalAttentionGeneral(nn.Module):
    """Word-context attention of the generator: each pixel attends over the caption's words (softmax over words)."""

    def __init__(self, idf: int, cdf: int, mask_original: bool = False) -> None:
        super().__init__()
        self.conv_context = conv1x1(cdf, idf)
        self.mask_original = mask_original

    def forward(self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """h B x idf x H x W, words B x cdf x T, mask B x T (True = padding) -> (context B x idf x H x W, attn B x T x H x W)."""
        b, _, ih, iw = h.shape
        query_len, source_len = ih * iw, words.size(2)
        target = h.view(b, -1, query_len).transpose(1, 2)  # B x HW x idf
        source = self.conv_context(words.unsqueeze(3)).squeeze(3)  # B x idf x T
        attn = torch.bmm(target, source)  # B x HW x T
        if mask is not None:
            mask = mask[:, :source_len].to(torch.bool)
            if self.mask_original:
                # The original repeats the B x T mask query-major, so logits row r (= sample r // HW) gets the mask
                # of sample r % B: each pixel sees another caption's padding (reference 2.4). Kept for bit-parity.
                rows = mask.repeat(query_len, 1).view(b, query_len, source_len)
            else:
                rows = mask[:, None, :]
            attn = attn.masked_fill(rows, float("-inf"))
        attn = torch.softmax(attn, dim=2).transpose(1, 2).contiguous()  # B x T x HW
        context = torch.bmm(source, attn).view(b, -1, ih, iw)
        return context, attn.view(b, -1, ih, iw)


class NextStage(nn.Module):
    """NEXT_STAGE_G: attention context, concat, R_NUM residual blocks, x2 up block."""

    def __init__(self, ngf: int, nef: int, r_num: int, mask_original: bool = False) -> None:
        super().__init__()
        self.att = GlobalAttentionGeneral(ngf, nef, mask_original)
        self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(r_num)])
        self.upsample = up_block(ngf * 2, ngf)

    def forward(self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        context, attn = self.att(h, words, mask)
        return self.upsample(self.residual(torch.cat((h, context), 1))), attn


class ImageHead(nn.Module):
    """GET_IMAGE_G: conv3x3 to RGB, tanh."""

    def __init__(self, ngf: int) -> None:
        super().__init__()
        self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.img(h)


class Generator(nn.Module):
    """G_NET (images at 64/128/256) or, with mc.dcgan, G_DCGAN (one image at the last stage)."""

    def __init__(self, mc: ModelConfig) -> None:
        super().__init__()
        self.mc = mc
        ngf = mc.gf_dim
        self.ca_net = CANet(mc.embedding_dim, mc.condition_dim)
        self.h_net1 = InitStage(ngf * 16, mc.condition_dim, mc.z_dim,
                                words_dim=mc.embedding_dim if mc.attn_64 else 0, mask_original=mc.attn_mask_original)
        if mc.branch_num > 1:
            self.h_net2 = NextStage(ngf, mc.embedding_dim, mc.r_num, mc.attn_mask_original)
        if mc.branch_num > 2:
            self.h_net3 = NextStage(ngf, mc.embedding_dim, mc.r_num, mc.attn_mask_original)
        if mc.dcgan:
            self.img_net = ImageHead(ngf)
        else:
            for i in range(1, mc.branch_num + 1):
                setattr(self, f"img_net{i}", ImageHead(ngf))

    def forward(self, z: torch.Tensor, sent_emb: torch.Tensor, words_emb: torch.Tensor, mask: torch.Tensor | None,
                eps: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """-> (images per stage in [-1,1], attention B x T x H x W per attentional stage, mu, logvar).

        The attentional stages are the 128 and 256 px ones, and with mc.attn_64 the 64 px one first
        (attngan.render.images_under_attention pairs each map with its stage's image).

        `eps` (B x condition_dim) is the CA noise; None draws it with torch.randn_like as the original.
        """
        c_code, mu, logvar = self.ca_net(sent_emb, eps)
        h, attn = self.h_net1(z, c_code, words_emb, mask)
        images: list[torch.Tensor] = []
        attention: list[torch.Tensor] = [] if attn is None else [attn]
        if not self.mc.dcgan:
            images.append(self.img_net1(h))
        for i in range(2, self.mc.branch_num + 1):
            h, attn = getattr(self, f"h_net{i}")(h, words_emb, mask)
            attention.append(attn)
            if not self.mc.dcgan:
                images.append(getattr(self, f"img_net{i}")(h))
        if self.mc.dcgan:
            images.append(self.img_net(h))
        return images, attention, mu, logvar


# ---------------------------------------------------------------- discriminators


def block3x3_leaky(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def down_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def encode_image_by_16times(ndf: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
    )


class DLogits(nn.Module):
    """D_GET_LOGITS: (optionally sentence-conditioned) 4x4 features -> one logit per image (no sigmoid).

    per_window (ours, the conditional PatchGAN): the last conv slides (stride 1) for one logit per 4 x 4 window.
    """

    def __init__(self, ndf: int, nef: int, condition: bool, per_window: bool = False) -> None:
        super().__init__()
        self.ef_dim = nef
        self.condition = condition
        if condition:
            self.jointConv = block3x3_leaky(ndf * 8 + nef, ndf * 8)
        window = nn.Conv2d(ndf * 8, 1, 4, 1, 1) if per_window else nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4)
        self.outlogits = nn.Sequential(window)

    def forward(self, h: torch.Tensor, sent_emb: torch.Tensor | None = None) -> torch.Tensor:
        """sent_emb: B x nef, the same for every position, or B x nef x H x W, a condition per position (WordDLogits)."""
        if self.condition:
            if sent_emb is None:
                raise ValueError("the conditional head needs the sentence embedding")
            c = sent_emb
            if c.dim() == 2:
                c = c.view(-1, self.ef_dim, 1, 1).expand(-1, -1, h.size(2), h.size(3))
            h = self.jointConv(torch.cat((h, c), 1))
        return self.outlogits(h).view(-1)


@dataclass
class Words:
    """A caption's word features and padding mask, sliced together: what WordDLogits reads (mismatched pairs slice it
    as they slice a sentence batch)."""

    features: torch.Tensor  # B x nef x T
    mask: torch.Tensor  # B x T, True = padding

    def __getitem__(self, index: slice) -> Words:
        return Words(self.features[index], self.mask[index])


class WordDLogits(nn.Module):
    """Ours (TRAIN.HEAD_D_WORDS): D_GET_LOGITS per window, conditioned on the caption's words instead of its sentence
    vector: each window attends over the words with the generator's attention (GlobalAttentionGeneral) and the joint
    conv reads that context beside the window's features. On the default model's DAMSM the sentence vector tells the
    eye ring's colour for 58% of test captions, its word features for 94% (models/README.md)."""

    def __init__(self, ndf: int, nef: int) -> None:
        super().__init__()
        self.attention = GlobalAttentionGeneral(ndf * 8, nef)
        self.logits = DLogits(ndf, ndf * 8, condition=True, per_window=True)

    def forward(self, h: torch.Tensor, words: Words) -> torch.Tensor:
        context, _ = self.attention(h, words.features.to(h.dtype), words.mask)
        return self.logits(h, context)


class _Discriminator(nn.Module):
    def __init__(self, df_dim: int = 64, nef: int = 256, uncond: bool = True) -> None:
        super().__init__()
        self.img_code_s16 = encode_image_by_16times(df_dim)
        self._extra(df_dim)
        self.UNCOND_DNET = DLogits(df_dim, nef, condition=False) if uncond else None
        self.COND_DNET = DLogits(df_dim, nef, condition=True)

    def _extra(self, ndf: int) -> None:
        pass

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images B x 3 x S x S -> features B x 8*df_dim x 4 x 4."""
        return self.img_code_s16(images)


class Discriminator64(_Discriminator):
    """D_NET64."""


class Discriminator128(_Discriminator):
    """D_NET128."""

    def _extra(self, ndf: int) -> None:
        self.img_code_s32 = down_block(ndf * 8, ndf * 16)
        self.img_code_s32_1 = block3x3_leaky(ndf * 16, ndf * 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.img_code_s32_1(self.img_code_s32(self.img_code_s16(images)))


class Discriminator256(_Discriminator):
    """D_NET256."""

    def _extra(self, ndf: int) -> None:
        self.img_code_s32 = down_block(ndf * 8, ndf * 16)
        self.img_code_s64 = down_block(ndf * 16, ndf * 32)
        self.img_code_s64_1 = block3x3_leaky(ndf * 32, ndf * 16)
        self.img_code_s64_2 = block3x3_leaky(ndf * 16, ndf * 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.img_code_s64(self.img_code_s32(self.img_code_s16(images)))
        return self.img_code_s64_2(self.img_code_s64_1(x))


class PatchDiscriminator(nn.Module):
    """Ours (TRAIN.PATCH_D_LOSS): pix2pix's PatchGAN (Isola et al. 2017) on the last stage's image, unconditional.

    One logit per overlapping 70 x 70 px window (30 x 30 of them at 256 px) instead of one per image: a head without
    the eye that every real head has is judged on its own, where the stage's D sees it as a few values of one 4 x 4
    code of the whole bird. TRAIN.HEAD_D_LOSS trains a second one on crops of the head alone (6 x 6 windows per
    64 px crop).
    """

    RECEPTIVE_FIELD = 70

    def __init__(self, ndf: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(*patch_features(ndf), nn.Conv2d(ndf * 8, 1, 4, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images B x 3 x S x S -> logits B x 1 x (S/8 - 2) x (S/8 - 2), one per window."""
        return self.net(images)


def patch_features(ndf: int) -> list[nn.Module]:
    """The PatchGAN's layers before its last: B x 3 x S x S -> B x 8*ndf x (S/8 - 1) x (S/8 - 1)."""
    return [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), down_block(ndf, ndf * 2),
            down_block(ndf * 2, ndf * 4), nn.Conv2d(ndf * 4, ndf * 8, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True)]


class ConditionalPatchDiscriminator(nn.Module):
    """Ours (TRAIN.HEAD_D_CONDITIONAL): the PatchGAN with a stage D's two heads, one logit per window each: the
    unconditional one ("a real head?") and one that reads the sentence as D_GET_LOGITS does ("this caption's head?",
    trained on mismatched pairs too), or with `words` (TRAIN.HEAD_D_WORDS) the caption's words (WordDLogits). The
    stages' losses (trainer.losses.discriminator_loss) apply as they are."""

    def __init__(self, ndf: int, nef: int, words: bool = False) -> None:
        super().__init__()
        self.img_code = nn.Sequential(*patch_features(ndf))
        self.UNCOND_DNET = DLogits(ndf, nef, condition=False, per_window=True)
        self.COND_DNET = WordDLogits(ndf, nef) if words else DLogits(ndf, nef, condition=True, per_window=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images B x 3 x S x S -> features B x 8*ndf x (S/8 - 1) x (S/8 - 1), for the two heads."""
        return self.img_code(images)


DISCRIMINATORS: dict[int, type[_Discriminator]] = {64: Discriminator64, 128: Discriminator128, 256: Discriminator256}


def build_discriminators(mc: ModelConfig) -> list[_Discriminator]:
    """The original's setup: one D per stage with both heads, or a single D256 without UNCOND for AttnDCGAN."""
    if mc.dcgan:
        return [DISCRIMINATORS[mc.image_sizes[-1]](mc.df_dim, mc.embedding_dim, uncond=False)]
    return [DISCRIMINATORS[s](mc.df_dim, mc.embedding_dim, uncond=True) for s in mc.image_sizes]


# ---------------------------------------------------------------- init


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """The original's weights_init, for G and the Ds: orthogonal conv/linear, zero linear bias, BN weight ~ N(1, 0.02).

    Use as `net.apply(init_weights)`.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.orthogonal_(module.weight, 1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.weight.normal_(1.0, 0.02)
        module.bias.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
