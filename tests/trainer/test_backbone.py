"""The small image encoder's pretrained trunk (`attngan train backbone`, TRAIN.IMAGE_BACKBONE) and its input size
(IMAGE_ENCODER_SIZE): it learns parts, DAMSM keeps it frozen, bundles remember the size, bad files are one line."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import torch
import torch.nn.functional as F

from attngan.config import load_config
from attngan.errors import AttnGANError
from attngan.model import ImageEncoder, ModelConfig
from attngan.text import tokenize
from tests.trainer.conftest import PYTHON, REPO, TINY_DAMSM, TINY_GAN, subprocess_env

DAMSM_CFG = str(REPO / "trainer/cfg/DAMSM/bird.yml")
GAN_CFG = str(REPO / "trainer/cfg/bird_attn2.yml")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from trainer.backbone import train_backbone

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("backbone") / "trunk.safetensors"
    meta = train_backbone(out, renders=768, epochs=4, size=64, seed=5, held_out=300, progress=False)
    return out, meta


def test_backbone_learns_the_parts_of_unseen_renders(backbone):
    from trainer.backbone import PartHeads, read_backbone
    from trainer.data.synth import ATTRIBUTE_VALUES
    from trainer.evaluate import faithfulness as fz

    path, meta = backbone
    state, saved = read_backbone(path)
    assert saved == meta and meta["size"] == 64 and meta["renders"] == 768
    assert set(state) and all(k.startswith(("trunk.", "trunk_global.", "heads.")) for k in state)
    assert {f"heads.{p}.weight" for p in ATTRIBUTE_VALUES} <= set(state) and meta["parts"]["crown"][0] == "black"
    # the same held-out renders read by a random trunk with the same heads trained: the pretrained one is far better
    parts = {p: list(v) for p, v in ATTRIBUTE_VALUES.items()}
    assert meta["held_out_accuracy"] > 0.3, meta
    big = ("wing", "belly", "crown", "tail")
    chance = sum(1 / len(parts[p]) for p in big) / len(big)
    assert sum(meta["held_out_per_part"][p] for p in big) / len(big) > 2 * chance, meta
    torch.manual_seed(0)
    untrained = PartHeads(parts, 64).eval()
    images, records = fz.render_set(100, 6, size=64)
    acc = fz.per_part_accuracy(fz.predict(untrained, images), fz.encode_labels(records, parts), parts)
    assert acc["accuracy"] < meta["held_out_accuracy"] - 0.1


def test_damsm_keeps_the_backbone_frozen_and_snapshots_it(birds, backbone, tmp_path):
    from safetensors.torch import load_file

    from trainer.damsm import train_damsm

    path, _ = backbone
    cfg = load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.MAX_STEPS=6", "IMAGE_ENCODER_SIZE=64",
                                               f"TRAIN.IMAGE_BACKBONE={path}"])
    run = train_damsm(cfg, str(birds), str(tmp_path / "damsm"))
    image = torch.load(max((run / "Model").glob("image_encoder*.pth")), map_location="cpu", weights_only=True)
    trunk = {k: v for k, v in load_file(str(path)).items() if not k.startswith("heads.")}
    for k, v in trunk.items():  # weights and BatchNorm statistics untouched by DAMSM
        assert torch.equal(image[k], v), k
    fresh = ImageEncoder(32, kind="small").state_dict()
    assert not torch.allclose(image["emb_cnn_code.weight"].float(), fresh["emb_cnn_code.weight"].float())


def test_damsm_over_a_detail_backbone_trains_the_global_block_it_lacks(birds, tmp_path):
    """A detail backbone (`--pool attention`, whose trunk reads the eye ring where the averaged one cannot) as
    DAMSM's TRAIN.IMAGE_BACKBONE: its trunk is loaded and stays frozen; the global block, which the file does not
    carry, is trained with the projections. The part loss, which reads the global code, refuses the file."""
    from safetensors.torch import load_file

    from trainer.backbone import load_part_reader, train_backbone
    from trainer.damsm import build_image_encoder, train_damsm

    detail = tmp_path / "detail.safetensors"
    train_backbone(detail, renders=64, epochs=1, size=64, seed=5, held_out=16, progress=False, pool="attention")
    cfg = load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.MAX_STEPS=6", "IMAGE_ENCODER_SIZE=64",
                                               f"TRAIN.IMAGE_BACKBONE={detail}"])
    encoder = build_image_encoder(cfg, pretrained=True).train()
    assert not encoder.trunk.training and encoder.trunk_global.training
    assert not any(p.requires_grad for p in encoder.trunk.parameters())
    assert all(p.requires_grad for p in encoder.trunk_global.parameters())
    start = {k: v.clone() for k, v in encoder.state_dict().items() if k.startswith("trunk_global.")}
    run = train_damsm(cfg, str(birds), str(tmp_path / "damsm"))
    image = torch.load(max((run / "Model").glob("image_encoder*.pth")), map_location="cpu", weights_only=True)
    trunk = {k: v for k, v in load_file(str(detail)).items() if k.startswith("trunk.")}
    for k, v in trunk.items():
        assert torch.equal(image[k], v), k
    assert not torch.equal(image["trunk_global.0.weight"], start["trunk_global.0.weight"])  # trained
    with pytest.raises(AttnGANError, match="global code that TRAIN.PART_LOSS"):
        load_part_reader(detail, encoder)


def test_part_code_carries_every_part_and_stays_fixed_in_damsm(birds, backbone, tmp_path):
    """TRAIN.IMAGE_CODE parts: the global code is a rotation of the backbone's part read-out, so each part's value
    can be read back from it by one fixed linear map; DAMSM trains the text side to it and leaves it unchanged."""
    from trainer.backbone import part_code_projection, read_backbone
    from trainer.damsm import build_image_encoder, train_damsm
    from trainer.evaluate import faithfulness as fz

    path, _ = backbone
    state, meta = read_backbone(path)
    weight, bias = part_code_projection(path, 32, seed=3)
    assert weight.shape == (32, 512) and bias.shape == (32,)
    cfg = load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.MAX_STEPS=4", "IMAGE_ENCODER_SIZE=64", "TRAIN.SEED=3",
                                               f"TRAIN.IMAGE_BACKBONE={path}", "TRAIN.IMAGE_CODE=parts"])
    encoder = build_image_encoder(cfg, pretrained=True).eval()
    assert torch.equal(encoder.emb_cnn_code.weight, weight) and not encoder.emb_cnn_code.weight.requires_grad
    images, _ = fz.render_set(64, 8, size=64)
    with torch.no_grad():
        features = encoder.features(images)[1]
    # with as many dimensions as the heads have outputs the rotation is lossless: rotating the code back gives
    # every part's value exactly as the backbone's own heads read it
    full_weight, full_bias = part_code_projection(path, 132, seed=3)
    rotation = torch.linalg.qr(torch.randn(132, 132, generator=torch.Generator().manual_seed(3)))[0]
    readout = (features @ full_weight.T + full_bias) @ rotation
    start = 0
    for part, values in meta["parts"].items():
        logits = features @ state[f"heads.{part}.weight"].T + state[f"heads.{part}.bias"]
        assert torch.equal(readout[:, start:start + len(values)].argmax(1), logits.argmax(1)), part
        start += len(values)
    run = train_damsm(cfg, str(birds), str(tmp_path / "damsm"))
    saved = torch.load(max((run / "Model").glob("image_encoder*.pth")), map_location="cpu", weights_only=True)
    assert torch.equal(saved["emb_cnn_code.weight"], weight) and torch.equal(saved["emb_cnn_code.bias"], bias)
    with pytest.raises(AttnGANError, match="IMAGE_CODE"):
        build_image_encoder(load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.IMAGE_CODE=parts"]), pretrained=True)
    with pytest.raises(AttnGANError, match="'learnt' or 'parts'"):
        build_image_encoder(load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.IMAGE_CODE=pca"]), pretrained=True)


def _render_retrieval(run, cfg, seed: int) -> float:
    """Top-1 retrieval of 96 renders (seed `seed`) by the first of their 5 captions, among all 96 (chance: 1%),
    with the run's final text encoder against the renders' fixed part codes."""
    from attngan.model import TextEncoder
    from attngan.text import Vocabulary
    from trainer.damsm import build_image_encoder, latest_encoders, render_captions

    vocab = Vocabulary.load_json(run / "vocab.json")
    text = TextEncoder(len(vocab), nhidden=cfg.TEXT.EMBEDDING_DIM)
    text.load_state_dict(torch.load(latest_encoders(run)[0], map_location="cpu", weights_only=True))
    image = build_image_encoder(cfg, pretrained=True)
    codes, captions, lengths = render_captions(96, seed, image, vocab, cfg, torch.device("cpu"), None)
    with torch.no_grad():
        _, sent = text.eval()(captions[:, 0], lengths[:, 0])
    similarity = F.normalize(sent, dim=1) @ F.normalize(codes, dim=1).T
    return (similarity.argmax(1) == torch.arange(96)).float().mean().item()


def test_text_on_renders_trains_the_text_encoder_after_the_data_and_resumes(birds, backbone, tmp_path):
    """TRAIN.TEXT_RENDERS / TEXT_RENDER_STEPS: after the data epochs, the text encoder learns to match captions
    of independent-part renders to their fixed part codes (held-out gains need the real scale: models/README.md);
    the final snapshot is rewritten; a finished run given the phase continues with it; an interrupted phase
    resumes to the same weights as an uninterrupted one."""
    from trainer.damsm import train_damsm

    path, _ = backbone
    base = TINY_DAMSM + ["TRAIN.MAX_STEPS=4", "TRAIN.BATCH_SIZE=32", "IMAGE_ENCODER_SIZE=64",
                         f"TRAIN.IMAGE_BACKBONE={path}", "TRAIN.IMAGE_CODE=parts", "TRAIN.CHECKPOINT_INTERVAL=1000"]
    cfg = load_config(DAMSM_CFG, base)
    data_only = train_damsm(cfg, str(birds), str(tmp_path / "one"))
    snapshots = sorted(p.name for p in (data_only / "Model").glob("text_encoder*.pth"))
    before = _render_retrieval(data_only, cfg, seed=3)  # TRAIN.SEED: the render-caption pairs the phase trains on
    assert before < 0.05
    with_renders = load_config(DAMSM_CFG, base + ["TRAIN.TEXT_RENDERS=192", "TRAIN.TEXT_RENDER_STEPS=300"])
    extended = train_damsm(with_renders, str(birds), str(tmp_path / "one"))
    assert sorted(p.name for p in (extended / "Model").glob("text_encoder*.pth")) == snapshots  # rewritten
    assert torch.load(extended / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 304
    assert _render_retrieval(extended, cfg, seed=3) > 0.10

    # a twin run stopped after 150 of the 300 steps and resumed ends with the same weights
    train_damsm(load_config(DAMSM_CFG, base + ["TRAIN.TEXT_RENDERS=192", "TRAIN.TEXT_RENDER_STEPS=150"]),
                str(birds), str(tmp_path / "twin"))
    train_damsm(with_renders, str(birds), str(tmp_path / "twin"))
    from trainer.damsm import latest_encoders

    one = torch.load(latest_encoders(extended)[0], map_location="cpu", weights_only=True)
    two = torch.load(latest_encoders(tmp_path / "twin")[0], map_location="cpu", weights_only=True)
    for k in one:
        assert torch.equal(one[k], two[k]), k

    for sets_, expected in [(["TRAIN.TEXT_RENDERS=192"], "go together"),
                            (["TRAIN.TEXT_RENDERS=4", "TRAIN.TEXT_RENDER_STEPS=5"], "at least TRAIN.BATCH_SIZE"),
                            (["TRAIN.IMAGE_CODE=learnt", "TRAIN.TEXT_RENDERS=192", "TRAIN.TEXT_RENDER_STEPS=5"],
                             "IMAGE_CODE parts")]:
        with pytest.raises(AttnGANError, match=expected):
            train_damsm(load_config(DAMSM_CFG, base + sets_), str(birds), str(tmp_path / "bad"))


def test_dataset_carries_what_each_drawn_caption_names(birds):
    """part_values: every sample's label row is exactly what attributes.json says its caption names."""
    from trainer.data import TextImageDataset
    from trainer.data.synth import ATTRIBUTE_VALUES, load_attributes
    from trainer.evaluate import faithfulness as fz

    parts = {p: list(v) for p, v in ATTRIBUTE_VALUES.items()}
    cfg = load_config(DAMSM_CFG, TINY_DAMSM + ["TEXT.WORDS_NUM=40"])  # no word drop: the caption reads whole
    ds = TextImageDataset(birds, "train", cfg, train=True, part_values=parts)
    attrs = load_attributes(birds)
    seen = 0
    for index in range(len(ds)):
        sample = ds[(index, index)]
        words = " ".join(ds.vocab.ixtoword[int(i)] for i in sample.caption[: sample.length])
        named = [c["named"] for c in attrs[sample.key]["captions"] if " ".join(tokenize(c["text"])) == words]
        assert named, words
        assert torch.equal(sample.parts, fz.encode_labels(named[:1], parts)[0])
        seen += int((sample.parts != fz.IGNORE).sum())
    assert seen > 2 * len(ds)  # captions name 2-5 attributes each
    assert TextImageDataset(birds, "train", cfg)[0].parts is None  # off by default


def test_caption_focus_trains_on_captions_that_name_the_part(birds):
    """TRAIN.CAPTION_FOCUS: with eyering=1 every image that has a caption naming its eye ring is shown one; with
    eyering=0.5 about half the time; off, the draws are the original's, sample for sample."""
    from trainer.data import TextImageDataset
    from trainer.data.synth import ATTRIBUTE_VALUES
    from trainer.evaluate import faithfulness as fz
    from trainer.gan import caption_focus

    parts = {p: list(v) for p, v in ATTRIBUTE_VALUES.items()}
    ring = list(parts).index("eyering")
    cfg = load_config(DAMSM_CFG, TINY_DAMSM)
    plain = TextImageDataset(birds, "train", cfg, train=True, part_values=parts)
    has_ring_caption = [i for i in range(len(plain)) if bool((plain.part_labels[i][:, ring] >= 0).any())]
    assert 0 < len(has_ring_caption) < len(plain)

    def named_share(ds) -> float:
        return sum(int(ds[(i, s)].parts[ring] >= 0) for i in has_ring_caption for s in range(20)) / (
            20 * len(has_ring_caption))

    always = TextImageDataset(birds, "train", cfg, train=True, part_values=parts, caption_focus={"eyering": 1.0})
    half = TextImageDataset(birds, "train", cfg, train=True, part_values=parts, caption_focus={"eyering": 0.5})
    assert named_share(always) == 1.0
    base = named_share(plain)
    assert base < 0.5 and 0.5 + base / 2 - 0.1 < named_share(half) < 0.5 + base / 2 + 0.1
    others = [i for i in range(len(plain)) if i not in has_ring_caption]  # no caption names it: any caption
    assert {int(always[(i, s)].parts[ring]) for i in others for s in range(3)} == {fz.IGNORE}
    off = TextImageDataset(birds, "train", cfg, train=True, part_values=parts, caption_focus={})
    assert all(torch.equal(off[(i, i)].caption, plain[(i, i)].caption) for i in range(len(plain)))

    assert caption_focus(load_config(DAMSM_CFG, ["TRAIN.CAPTION_FOCUS=eyering=0.5, crown=0.25"]), parts) == {
        "eyering": 0.5, "crown": 0.25}
    for value, expected in [("eyering=2", "0 <= NUMBER <= 1"), ("eyering", "PART=NUMBER"),
                            ("eyering=0.7,crown=0.6", "add up to 1.3"),
                            ("nape=0.5", "'nape', which is not among the parts the part and detail losses read: eye")]:
        with pytest.raises(AttnGANError, match=expected):
            caption_focus(load_config(DAMSM_CFG, [f"TRAIN.CAPTION_FOCUS={value}"]), {"eyering": [], "crown": []})
    with pytest.raises(AttnGANError, match=r"read: none \(TRAIN.PART_LOSS and TRAIN.DETAIL_LOSS are off\)"):
        caption_focus(load_config(DAMSM_CFG, ["TRAIN.CAPTION_FOCUS=eyering=0.5"]), {})
    with pytest.raises(AttnGANError, match="caption focus on 'eyering'"):
        TextImageDataset(birds, "train", cfg, part_values={"crown": parts["crown"]}, caption_focus={"eyering": 1})


def test_part_loss_pulls_an_image_towards_the_named_values(backbone):
    """The gradient the generator gets: images optimised on the part loss alone come to be read as the values
    named for them (through the frozen trunk and heads, as in the GAN step)."""
    from trainer import losses
    from trainer.backbone import load_backbone, load_part_reader
    from trainer.evaluate import faithfulness as fz

    path, _ = backbone
    encoder = ImageEncoder(16, kind="small", input_size=64)
    load_backbone(encoder, path)
    encoder.eval().requires_grad_(False)
    reader = load_part_reader(path, encoder, min_accuracy=0).eval().requires_grad_(False)
    named = [{"crown": "red", "belly": "blue"}, {"wing": "yellow", "tail": "black"}, {"crown": "green"}]
    labels = fz.encode_labels(named, reader.parts)
    torch.manual_seed(0)
    pixels = torch.zeros(3, 3, 64, 64, requires_grad=True)
    opt = torch.optim.Adam([pixels], lr=0.05)

    def loss_now() -> torch.Tensor:
        return losses.part_loss(reader(encoder.features(torch.tanh(pixels))[1]), labels)

    first = loss_now().item()
    for _ in range(30):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < 0.3 * first
    logits = reader(encoder.features(torch.tanh(pixels))[1])
    for row, wanted in enumerate(named):
        for part, value in wanted.items():
            assert reader.parts[part][int(logits[part][row].argmax())] == value, (part, value)
    assert losses.part_loss(logits, torch.full_like(labels, fz.IGNORE)).item() == 0.0  # nothing named
    # TRAIN.DETAIL_PART_WEIGHTS: a factor multiplies one part's terms; the mean still counts each named entry once
    ones = losses.part_loss(logits, labels, weights=[1.0] * len(reader.parts))
    assert torch.equal(ones, losses.part_loss(logits, labels))
    crown = list(reader.parts).index("crown")
    only_crown = torch.full_like(labels, fz.IGNORE)
    only_crown[:, crown] = labels[:, crown]
    crown_sum = losses.part_loss(logits, only_crown) * (only_crown != fz.IGNORE).sum()
    weights = [4.0 if i == crown else 1.0 for i in range(len(reader.parts))]
    expected = ones + 3 * crown_sum / (labels != fz.IGNORE).sum()
    assert torch.allclose(losses.part_loss(logits, labels, weights=weights), expected)


def test_detail_loss_reads_every_stage_only_when_asked():
    """TRAIN.DETAIL_EVERY_STAGE: the detail reader's loss reaches the 64 px stage's image (resized to the reader's
    size), as the mean of each stage's term; off, only the last stage's image is read, once (the head crops' reading
    is reused when given)."""
    from trainer import losses
    from trainer.backbone import PartHeads
    from trainer.gan import detail_loss

    torch.manual_seed(0)
    reader = PartHeads({"crown": ["red", "blue", "green"], "eyering": ["none", "black"]}, 64, "attention").eval()
    labels = torch.tensor([[0, 1], [2, -100]])
    fakes = [(torch.rand(2, 3, s, s) * 2 - 1).requires_grad_() for s in (32, 64, 128)]
    last = detail_loss(reader, fakes, labels, None, every_stage=False)
    assert torch.allclose(last, losses.part_loss(reader(fakes[-1]), labels))
    last.backward()
    assert fakes[0].grad is None and fakes[1].grad is None and fakes[2].grad.abs().sum() > 0
    every = detail_loss(reader, fakes, labels, [1.0, 4.0], every_stage=True)
    expected = sum(losses.part_loss(reader(f), labels, weights=[1.0, 4.0]) for f in fakes) / 3
    assert torch.allclose(every, expected)
    every.backward()
    assert fakes[0].grad.abs().sum() > 0 and fakes[1].grad.abs().sum() > 0
    given = {p: torch.zeros(2, len(v)) for p, v in reader.parts.items()}  # a reading already made: not read again
    assert torch.allclose(detail_loss(reader, fakes, labels, None, every_stage=False, last_read=given),
                          losses.part_loss(given, labels))


def test_part_and_detail_losses_in_the_gan_travel_in_the_checkpoint_and_check_their_inputs(birds, backbone, tmp_path,
                                                                                          monkeypatch, caplog):
    """TRAIN.PART_LOSS in the GAN: the backbone's part heads read every stage's image against what the caption
    names (logged as p_loss); TRAIN.DETAIL_LOSS: a backbone file's own trunk and heads read the last stage's image
    (d_loss). Both travel in the checkpoint, and their misuses are one line each. What they do to a generator at
    scale is measured in models/README.md."""
    from trainer.backbone import train_backbone
    from trainer.damsm import latest_encoders, train_damsm
    from trainer.gan import train_gan

    path, meta = backbone
    # the tiny test backbone reads no part at the real threshold (90%); keep the heads better than average
    monkeypatch.setattr("trainer.backbone.READER_MIN_ACCURACY", meta["held_out_accuracy"])
    detail_path = tmp_path / "detail.safetensors"
    detail_meta = train_backbone(detail_path, renders=768, epochs=4, size=64, seed=5, held_out=300, progress=False,
                                 pool="attention", parts=["crown", "wing", "belly", "tail", "leg"])
    assert list(detail_meta["parts"]) == ["crown", "wing", "belly", "tail", "leg"]
    readable = {p for p, a in detail_meta["held_out_per_part"].items() if a >= meta["held_out_accuracy"]}
    assert readable, detail_meta
    damsm = train_damsm(load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.MAX_STEPS=4", "IMAGE_ENCODER_SIZE=64",
                                                             f"TRAIN.IMAGE_BACKBONE={path}"]),
                        str(birds), str(tmp_path / "damsm"))
    text, _ = latest_encoders(damsm)
    base = TINY_GAN + ["IMAGE_ENCODER_SIZE=64", f"TRAIN.NET_E={text}", f"TRAIN.IMAGE_BACKBONE={path}",
                       "TRAIN.PART_LOSS=5", "TRAIN.LOG_INTERVAL=1", "TRAIN.CHECKPOINT_INTERVAL=1000",
                       f"TRAIN.DETAIL_BACKBONE={detail_path}", "TRAIN.DETAIL_LOSS=2"]
    run = train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=40"]), str(birds), str(tmp_path / "gan"))
    rows = [r for r in map(json.loads, (run / "logs" / "metrics.jsonl").read_text().splitlines())
            if r["tag"] == "gan/train"]
    assert len(rows) == 40 and all(r["p_loss"] > 0 and r["d_loss"] > 0 for r in rows)
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    kept = {p for p, a in meta["held_out_per_part"].items() if a >= meta["held_out_accuracy"]}
    assert set(ckpt["part_values"]) == kept and 0 < len(kept) < len(meta["parts"])  # weak heads left out
    assert {f"heads.{p}.weight" for p in kept} <= set(ckpt["part_reader"])
    assert set(ckpt["detail_values"]) == readable and ckpt["detail_size"] == 64
    assert ckpt["detail_pool"] == "attention" and ckpt["detail_reader"]["where.weight"].shape[0] == len(readable)
    assert {f"heads.{p}.weight" for p in readable} | {"encoder.trunk.0.0.weight"} <= set(ckpt["detail_reader"])
    # resumes from its checkpoint even when the backbone file has gone, here with one part's detail term weighed up
    # and half the captions naming it
    moved = path.with_name("moved.safetensors")
    path.rename(moved)
    detail_path.rename(tmp_path / "detail_moved.safetensors")
    weighed = f"TRAIN.DETAIL_PART_WEIGHTS={min(readable)}=4"
    try:
        logging.getLogger("trainer").addHandler(caplog.handler)  # the trainer's logger does not propagate
        with caplog.at_level(logging.INFO, logger="trainer"):
            train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=44", weighed,
                                                   f"TRAIN.CAPTION_FOCUS={min(readable)}=0.5"]),
                      str(birds), str(tmp_path / "gan"))
    finally:
        logging.getLogger("trainer").removeHandler(caplog.handler)
        moved.rename(path)
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 44
    assert "the run's own reader from its checkpoint" in caplog.text  # says why a new DETAIL_BACKBONE is not read
    assert f"caption focus: a caption naming the {min(readable)} 50% of the time" in caplog.text

    other = tmp_path / "other.safetensors"
    train_backbone(other, renders=64, epochs=1, size=64, seed=9, held_out=8, progress=False)
    for extra, expected in [(["TRAIN.IMAGE_BACKBONE="], "set TRAIN.IMAGE_BACKBONE"),
                            ([f"TRAIN.IMAGE_BACKBONE={other}"], "trunk is not"),
                            (["TRAIN.PART_LOSS=-1"], "PART_LOSS must be"),
                            (["TRAIN.DETAIL_BACKBONE="], "set TRAIN.DETAIL_BACKBONE"),
                            ([f"TRAIN.DETAIL_BACKBONE={tmp_path / 'none.safetensors'}"], "DETAIL_BACKBONE .* does not exist"),
                            ([f"TRAIN.IMAGE_BACKBONE={tmp_path / 'detail_moved.safetensors'}"], "global code that TRAIN.PART_LOSS"),
                            (["TRAIN.DETAIL_LOSS=-1"], "DETAIL_LOSS must be"),
                            (["TRAIN.DETAIL_PART_WEIGHTS=eyering"], "must look like PART=NUMBER"),
                            ([f"TRAIN.DETAIL_BACKBONE={tmp_path / 'detail_moved.safetensors'}", "TRAIN.DETAIL_PART_WEIGHTS=nape=2"],
                             "'nape', which is not among the parts the detail reader reads"),
                            (["TRAIN.DETAIL_LOSS=0", "TRAIN.DETAIL_PART_WEIGHTS=crown=2"], "set TRAIN.DETAIL_LOSS"),
                            ([f"TRAIN.DETAIL_BACKBONE={tmp_path / 'detail_moved.safetensors'}", "TRAIN.CAPTION_FOCUS=beak=0.5"],
                             "'beak', which is not among the parts the part and detail losses read")]:
        with pytest.raises(AttnGANError, match=expected):
            train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=2"] + extra), str(birds), str(tmp_path / "bad"))


def test_input_size_resizes_like_inception_and_travels_in_bundles(tmp_path):
    from attngan.bundle import load_bundle, write_bundle

    torch.manual_seed(0)
    enc = ImageEncoder(16, kind="small", input_size=64).eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    regions, code = enc(x)
    small = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    regions64, code64 = enc(small)
    assert regions.shape == (2, 16, 4, 4) and torch.allclose(code, code64) and torch.allclose(regions, regions64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the GAN feeds it bf16 images under autocast
        assert enc(x.bfloat16())[1].shape == (2, 16)
    with pytest.raises(AttnGANError, match="IMAGE_ENCODER_SIZE"):
        ModelConfig(n_words=5, image_encoder="small", image_encoder_size=100)
    from attngan.model import Generator, TextEncoder
    from attngan.text import Vocabulary

    vocab = Vocabulary.build([["a", "red", "bird"]])
    config = ModelConfig(n_words=len(vocab), embedding_dim=16, gf_dim=4, df_dim=4, branch_num=1,
                         image_encoder="small", image_encoder_size=64)
    bundle_dir = write_bundle(tmp_path / "b", config=config, vocab=vocab, generator=Generator(config).state_dict(),
                              text_encoder=TextEncoder(len(vocab), nhidden=16).state_dict(),
                              image_encoder=enc.state_dict())
    bundle = load_bundle(bundle_dir)
    assert bundle.config.image_encoder_size == 64
    _, _, image = bundle.build_networks(image_encoder=True)
    assert image is not None and image.input_size == 64


def test_bad_backbone_files_are_one_line(birds, tmp_path):
    from safetensors.torch import save_file

    not_backbone = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(not_backbone))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for path, expected in [(tmp_path / "missing.safetensors", "does not exist"),
                           (not_backbone, "not an image backbone"), (garbage, "not a safetensors")]:
        cfg = load_config(DAMSM_CFG, TINY_DAMSM + [f"TRAIN.IMAGE_BACKBONE={path}"])
        from trainer.damsm import build_image_encoder

        with pytest.raises(AttnGANError, match=expected):
            build_image_encoder(cfg, pretrained=True)
    cfg = load_config(DAMSM_CFG, [f"TRAIN.IMAGE_BACKBONE={not_backbone}"])  # the Inception encoder
    with pytest.raises(AttnGANError, match="IMAGE_ENCODER small"):
        from trainer.damsm import build_image_encoder

        build_image_encoder(cfg, pretrained=True)
    res = subprocess.run([PYTHON, "-m", "attngan.cli", "train", "backbone", "--out", str(tmp_path / "x.safetensors"),
                          "--renders", "10"], capture_output=True, text=True, cwd=REPO, env=subprocess_env(),
                         timeout=120, check=False)
    assert res.returncode != 0 and "--renders must be at least" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = subprocess.run([PYTHON, "-m", "attngan.cli", "train", "backbone", "--out", str(tmp_path / "x.safetensors"),
                          "--pool", "attention", "--parts", "crown,eye_ring"], capture_output=True, text=True,
                         cwd=REPO, env=subprocess_env(), timeout=120, check=False)
    assert res.returncode != 0 and "no part 'eye_ring'" in res.stderr and "eyering" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    bad_devices = [("bogus", "use auto, cpu, cuda or cuda:N")]
    if not torch.cuda.is_available():
        bad_devices.append(("cuda", "CUDA is not available"))
    for device, expected in bad_devices:  # refused before any rendering
        res = subprocess.run([PYTHON, "-m", "attngan.cli", "train", "backbone", "--out", str(tmp_path / "x.safetensors"),
                              "--device", device], capture_output=True, text=True, cwd=REPO, env=subprocess_env(),
                             timeout=120, check=False)
        assert res.returncode == 1 and expected in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_attention_centres_are_where_a_part_looks():
    """TRAIN.HEAD_D_LOSS crops around the centre of mass of the detail reader's attention for the eye ring: with the
    attention all on one cell of the trunk's map, the centre is that cell's, in the input image's pixels."""
    from trainer.backbone import PartHeads

    reader = PartHeads({"crown": ["red", "blue"], "eyering": ["none", "black"]}, size=64, pool="attention").eval()
    images = torch.zeros(2, 3, 128, 128)
    with torch.no_grad():
        trunk = reader.encoder.trunk(reader.encoder.resize(images))
    assert trunk.shape[2:] == (4, 4)  # a 64 px reader: one cell per 32 px of these 128 px images
    logits = torch.full((2, 2, 4, 4), -1e4)
    logits[0, 1, 1, 3] = 0.0  # image 0: all of the eye ring's attention on row 1, column 3
    logits[1, 1, 2:4, 0] = 0.0  # image 1: split between rows 2 and 3 of column 0


    class FixedAttention(torch.nn.Module):  # the attention conv's output, as the trunk's map would give it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    reader.where = FixedAttention()
    centres = reader.attention_centres(images, "eyering")
    assert centres.tolist() == [[112.0, 48.0], [16.0, 96.0]]
    with pytest.raises(AttnGANError, match="no attention for 'nape'"):
        reader.attention_centres(images, "nape")
    mean_pooled = PartHeads({"eyering": ["none", "black"]}, size=64, pool="mean")
    with pytest.raises(AttnGANError, match="no attention for 'eyering'"):
        mean_pooled.attention_centres(images, "eyering")


def test_read_and_locate_is_one_pass_of_read_and_centres():
    """The head stage reads each generated bird once a step for both the detail loss and the head crop: the same logits
    (with their gradient to the image) and the same centres (without one) as the two separate calls."""
    from trainer.backbone import PartHeads

    torch.manual_seed(0)
    reader = PartHeads({"crown": ["red", "blue"], "eyering": ["none", "black", "white"]}, size=64,
                       pool="attention").eval().requires_grad_(False)
    images = torch.rand(3, 3, 128, 128, requires_grad=True)
    read, centres = reader.read_and_locate(images, "eyering")
    with torch.no_grad():
        expected_read, expected_centres = reader(images), reader.attention_centres(images, "eyering")
    assert read.keys() == expected_read.keys()
    for part in read:
        assert torch.equal(read[part], expected_read[part])
    assert torch.equal(centres, expected_centres) and not centres.requires_grad
    read["eyering"].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(AttnGANError, match="no attention for 'nape'"):
        reader.read_and_locate(images, "nape")


def test_thin_rims_must_be_a_share(tmp_path):
    from trainer.backbone import train_backbone

    for bad in (-0.1, 1.5):
        with pytest.raises(AttnGANError, match="--thin-rims is a share"):
            train_backbone(tmp_path / "x.safetensors", thin_rims=bad)
    assert not (tmp_path / "x.safetensors").exists()
