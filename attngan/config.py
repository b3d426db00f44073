"""One configuration loader for the whole project.

The YAML files keep the original AttnGAN keys and values (`miscc/config.py`): the defaults below are
the original's, a YAML file overrides them with strict key and type checking, and command-line
overrides (`TRAIN.BATCH_SIZE=8`) go through the same check. Keys that the original did not have are
marked "ours" and default to the original behaviour.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attngan.errors import AttnGANError


@dataclass
class TreeConfig:
    BRANCH_NUM: int = 3
    BASE_SIZE: int = 64


@dataclass
class SmoothConfig:
    GAMMA1: float = 5.0
    GAMMA2: float = 5.0
    GAMMA3: float = 10.0
    LAMBDA: float = 1.0


@dataclass
class TrainConfig:
    BATCH_SIZE: int = 64
    MAX_EPOCH: int = 600
    SNAPSHOT_INTERVAL: int = 2000
    DISCRIMINATOR_LR: float = 2e-4
    GENERATOR_LR: float = 2e-4
    ENCODER_LR: float = 2e-4
    RNN_GRAD_CLIP: float = 0.25
    FLAG: bool = True
    NET_E: str = ""
    NET_G: str = ""
    B_NET_D: bool = True
    SMOOTH: SmoothConfig = field(default_factory=SmoothConfig)
    # ours
    MAX_STEPS: int = 0  # stop after this many optimizer steps (0: run MAX_EPOCH epochs)
    SEED: int = 0  # 0: a random seed, as the original; otherwise reproducible
    AMP: str = "auto"  # auto | bf16 | off
    LOG_INTERVAL: int = 100  # steps between log lines and TensorBoard scalars
    SAMPLE_INTERVAL: int = 1000  # steps between sample grids
    CHECKPOINT_INTERVAL: int = 0  # steps between resumable checkpoints (0: every SNAPSHOT_INTERVAL epochs)
    NET_IMAGE_E: str = ""  # image encoder checkpoint for the GAN's DAMSM loss (default: beside NET_E)
    INCEPTION_WEIGHTS: str = ""  # local torchvision-format Inception-v3 ImageNet weights for DAMSM
    IMAGE_BACKBONE: str = ""  # IMAGE_ENCODER small: pretrained trunk (`attngan train backbone`), frozen in DAMSM
    IMAGE_CODE: str = "learnt"  # small encoder + IMAGE_BACKBONE: 'parts' fixes the global projection to the
    # backbone's part read-out (trainer.backbone.part_code_projection) instead of learning it
    TEXT_RENDERS: int = 0  # DAMSM, IMAGE_CODE parts, synthetic birds: after the data epochs, train the text encoder
    TEXT_RENDER_STEPS: int = 0  # this many steps against the fixed part code of TEXT_RENDERS fresh renders whose
    # parts are drawn independently (trainer.damsm.train_text_on_renders); 0: off
    EMA_DECAY: float = 0.999  # generator parameter EMA (the original's 0.999)
    PART_LOSS: float = 0.0  # GAN, synthetic birds: weight of the cross-entropy between the values each caption
    # names and what IMAGE_BACKBONE's part heads read in every stage's image (trainer.losses.part_loss); 0: off
    DETAIL_BACKBONE: str = ""  # GAN, synthetic birds: an attention-pooled backbone (`attngan train backbone --size
    DETAIL_LOSS: float = 0.0  # 128 --pool attention`); its own trunk and readable heads read the last stage's image
    # at the file's size against what the caption names, with this weight (parts too small for IMAGE_BACKBONE); 0: off
    DETAIL_EVERY_STAGE: bool = False  # DETAIL_LOSS: read every stage's image (each resized to the reader's size,
    # the terms averaged), as PART_LOSS does, so the 64 px stage, where colours are laid out, is asked for small parts
    # too; False: the last stage's image only
    DETAIL_PART_WEIGHTS: str = ""  # DETAIL_LOSS: factors on single parts' terms, e.g. 'eyering=4' (its cross-entropy
    # counts 4 times; trainer.gan.detail_part_weights); '': every part once
    CAPTION_FOCUS: str = ""  # GAN, synthetic birds, PART_LOSS or DETAIL_LOSS on: 'eyering=0.5' trains on one of an
    # image's captions that name the part half the time (when it has one), so a part that few captions name is asked
    # for more often (trainer.gan.caption_focus); '': any of its captions, as the original
    D_AUGMENT: str = ""  # GAN: DiffAugment of every image the discriminators see, e.g. 'translation,cutout'
    # (trainer.augment); '': none, as the original
    PATCH_D_LOSS: float = 0.0  # GAN: weight of G's term from a PatchGAN on the last stage's image (one logit per
    # 70 px window; attngan.model.PatchDiscriminator, ours), trained beside the stages' Ds; 0: off, as the original
    HEAD_D_LOSS: float = 0.0  # GAN: weight of G's term from a PatchGAN on the head alone: a quarter-side crop of the
    # last stage's image around where the detail reader (DETAIL_LOSS) looks for the eye ring, real and fake; 0: off
    HEAD_D_CONDITIONAL: bool = False  # GAN: the head D reads the caption too: each window gets a stage D's two logits,
    # with and without the sentence (mismatched pairs too), so the head is judged against the colours the caption names;
    # switched on when resuming, the PatchGAN's weights carry over (its sentence head starts new)
    HEAD_D_WORDS: bool = False  # GAN, with HEAD_D_CONDITIONAL: that head reads the caption's words instead of its
    # sentence vector, each window attending over them as the generator does (attngan.model.WordDLogits)
    HEAD_D_SWAP_PART: str = ""  # GAN, with HEAD_D_CONDITIONAL, synthetic birds: e.g. 'eyering': each real head whose
    # caption names that part's colour is also shown with the colour swapped for another, as a mismatched pair, so the
    # head D learns to check that part against the words (trainer.gan.swapped_condition); '': off
    RING_MAP: str = ""  # GAN, synthetic birds: a per-pixel reader of the eye ring in 64 px head crops (`attngan train
    RING_MAP_LOSS: float = 0.0  # ring-map`); each generated head (cropped where the detail reader looks, as
    # HEAD_D_LOSS's) is asked for as many pixels of the named ring as a real head has (trainer.ring_map.ring_area_loss),
    # with this weight, so the ring is drawn round the eye at its width, not as a rim; 0: off
    RING_MAP_SHAPE: bool = False  # GAN, with RING_MAP_LOSS: the loss asks for a real head's marks drawn round the
    # generated eye (the eye's disc, the ring's annulus, nothing else; trainer.ring_map.ring_shape_loss) instead of
    # the ring's pixel count
    RING_MAP_COLOUR: float = 0.0  # GAN, with RING_MAP_LOSS: plus this factor on the distance of the ring's annulus
    # (as RING_MAP_SHAPE draws it round the generated eye) from the named ring's colour (ring_map.ring_colour_loss)
    FROZEN_STAGES: int = 0  # GAN: keep the first N generator stages as loaded (--init-from / NET_G), train the rest
    RECREATE_OPTIMIZER: bool = False  # True: the original's fresh Adam every DAMSM epoch (moments reset)
    PAPER_WORD_EXPONENT: bool = False  # True: the paper's (sum exp(g2*cos))^(1/g2) in the word loss
    VALID_BATCHES: int = 50  # DAMSM validation batches per epoch (the original: 50)
    CHANNELS_LAST: bool = False  # channels-last memory format for the convolutional nets
    DETERMINISTIC: bool = False  # CUDA: deterministic kernels (no cuDNN autotuning), so a resumed run repeats the
    # uninterrupted one bit for bit, as it always does on CPU; slower


@dataclass
class GANConfig:
    DF_DIM: int = 64
    GF_DIM: int = 128
    Z_DIM: int = 100
    CONDITION_DIM: int = 100
    R_NUM: int = 2
    B_ATTENTION: bool = True
    B_DCGAN: bool = False
    # ours
    ATTN_MASK_ORIGINAL: bool = False  # reproduce the original's mis-ordered attention mask (reference 2.4)
    WORD_ATTN_64: bool = False  # word attention at the 64 px stage as well (attngan.model.InitStage)


@dataclass
class TextConfig:
    CAPTIONS_PER_IMAGE: int = 10
    EMBEDDING_DIM: int = 256
    WORDS_NUM: int = 18


@dataclass
class Config:
    CONFIG_NAME: str = ""
    DATASET_NAME: str = "birds"
    DATA_DIR: str = ""
    GPU_ID: int = 0
    CUDA: bool = True
    WORKERS: int = 6
    RNN_TYPE: str = "LSTM"
    B_VALIDATION: bool = False
    TREE: TreeConfig = field(default_factory=TreeConfig)
    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    GAN: GANConfig = field(default_factory=GANConfig)
    TEXT: TextConfig = field(default_factory=TextConfig)
    # ours
    DATA_FORMAT: str = "cub"  # cub | custom (a folder of images with same-named .txt captions)
    IMAGE_ENCODER: str = "inception"  # inception (paper) | small (from scratch, for small data sets)
    IMAGE_ENCODER_SIZE: int = 0  # small: resize its input to this size first, as Inception resizes to 299 (0: native)
    OUTPUT_DIR: str = ""  # default: output/<DATASET_NAME>_<CONFIG_NAME>

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Check a value against the default's type, as the original's `_merge_a_into_b` did."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    raise AttnGANError(
        f"config key {key}: expected {type(current).__name__}, got {type(value).__name__} {value!r}"
    )


def _merge(node: Any, values: dict[str, Any], prefix: str) -> None:
    if not isinstance(values, dict):
        raise AttnGANError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping")
    names = {f.name for f in dataclasses.fields(node)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise AttnGANError(f"{full} is not a valid config key")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(node, key, _coerce(value, current, full))


def parse_override(text: str) -> dict[str, Any]:
    """`TRAIN.BATCH_SIZE=8` -> {"TRAIN": {"BATCH_SIZE": 8}} (values parsed as YAML scalars)."""
    if "=" not in text:
        raise AttnGANError(f"override {text!r} must look like KEY=VALUE, e.g. TRAIN.BATCH_SIZE=8")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file, then `KEY=VALUE` overrides; every key and type checked."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AttnGANError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise AttnGANError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        _merge(cfg, data, "")
    for text in overrides:
        _merge(cfg, parse_override(text), "")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, copy.deepcopy(data), "")
    return cfg
