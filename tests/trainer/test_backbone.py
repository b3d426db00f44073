"""The small image encoder's pretrained trunk (`attngan train backbone`, TRAIN.IMAGE_BACKBONE) and its input size
(IMAGE_ENCODER_SIZE): it learns parts, DAMSM keeps it frozen, bundles remember the size, bad files are one line."""

from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn.functional as F

from attngan.config import load_config
from attngan.errors import AttnGANError
from attngan.model import ImageEncoder, ModelConfig
from tests.trainer.conftest import PYTHON, REPO, TINY_DAMSM, subprocess_env

DAMSM_CFG = str(REPO / "trainer/cfg/DAMSM/bird.yml")


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
    image = torch.load(max((run / "Model").glob("image_encoder*.pth")), weights_only=True)
    trunk = {k: v for k, v in load_file(str(path)).items() if not k.startswith("heads.")}
    for k, v in trunk.items():  # weights and BatchNorm statistics untouched by DAMSM
        assert torch.equal(image[k], v), k
    fresh = ImageEncoder(32, kind="small").state_dict()
    assert not torch.allclose(image["emb_cnn_code.weight"].float(), fresh["emb_cnn_code.weight"].float())


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
    saved = torch.load(max((run / "Model").glob("image_encoder*.pth")), weights_only=True)
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
    text.load_state_dict(torch.load(latest_encoders(run)[0], weights_only=True))
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
    assert torch.load(extended / "checkpoint.pt", weights_only=True)["step"] == 304
    assert _render_retrieval(extended, cfg, seed=3) > 0.10

    # a twin run stopped after 150 of the 300 steps and resumed ends with the same weights
    train_damsm(load_config(DAMSM_CFG, base + ["TRAIN.TEXT_RENDERS=192", "TRAIN.TEXT_RENDER_STEPS=150"]),
                str(birds), str(tmp_path / "twin"))
    train_damsm(with_renders, str(birds), str(tmp_path / "twin"))
    from trainer.damsm import latest_encoders

    one = torch.load(latest_encoders(extended)[0], weights_only=True)
    two = torch.load(latest_encoders(tmp_path / "twin")[0], weights_only=True)
    for k in one:
        assert torch.equal(one[k], two[k]), k

    for sets_, expected in [(["TRAIN.TEXT_RENDERS=192"], "go together"),
                            (["TRAIN.TEXT_RENDERS=4", "TRAIN.TEXT_RENDER_STEPS=5"], "at least TRAIN.BATCH_SIZE"),
                            (["TRAIN.IMAGE_CODE=learnt", "TRAIN.TEXT_RENDERS=192", "TRAIN.TEXT_RENDER_STEPS=5"],
                             "IMAGE_CODE parts")]:
        with pytest.raises(AttnGANError, match=expected):
            train_damsm(load_config(DAMSM_CFG, base + sets_), str(birds), str(tmp_path / "bad"))


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
