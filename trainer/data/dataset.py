"""`TextImageDataset`: (image pyramid, one caption) pairs for DAMSM and GAN training.

Per item, as the original `TextDataset.__getitem__`: the image cropped to 1.5x its bounding box, scaled,
randomly cropped and flipped, at every stage size (64/128/256, or 299 for DAMSM); one of the image's
captions chosen at random, zero-padded to WORDS_NUM (longer: WORDS_NUM random positions kept in order).
`collate_batch` sorts the batch by caption length, descending (the original `prepare_data`), which
`pack_padded_sequence` needed.

Randomness comes from torch's generator (seeded per DataLoader worker by torch), so `torch.manual_seed`
makes a run repeatable. `train=False` (ours): centre crop, no flip, and long captions keep their first
WORDS_NUM words; the caption is still drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attngan.config import Config
from attngan.errors import AttnGANError
from attngan.text import Vocabulary, pad_caption
from trainer.data.records import SplitRecords, remap_captions
from trainer.data.transforms import crop_to_bbox, image_pyramid


@dataclass
class Sample:
    images: list[torch.Tensor]  # 3xSxS in [-1, 1], one per stage
    caption: torch.Tensor  # LongTensor [WORDS_NUM], zero-padded
    length: int
    class_id: int
    key: str
    parts: torch.Tensor | None = None  # LongTensor [P]: the values the caption names (IGNORE elsewhere)


@dataclass
class Batch:
    images: list[torch.Tensor]  # BxCxSxS per stage
    captions: torch.Tensor  # LongTensor BxT
    lengths: torch.Tensor  # LongTensor B, descending
    class_ids: torch.Tensor  # LongTensor B
    keys: list[str]
    parts: torch.Tensor | None = None  # LongTensor BxP with `part_values` (TextImageDataset), else None

    def to(self, device: torch.device | str) -> Batch:
        return Batch([im.to(device, non_blocking=True) for im in self.images],
                     self.captions.to(device), self.lengths.to(device), self.class_ids.to(device), self.keys,
                     None if self.parts is None else self.parts.to(device))


def load_records(data_dir: str | Path, split: str, cfg: Config) -> SplitRecords:
    fmt = cfg.DATA_FORMAT
    if fmt == "cub":
        from trainer.data.cub import load_cub
        return load_cub(data_dir, split, cfg.TEXT.CAPTIONS_PER_IMAGE)
    if fmt == "custom":
        from trainer.data.custom import load_custom
        return load_custom(data_dir, split, cfg.TEXT.CAPTIONS_PER_IMAGE)
    raise AttnGANError(f"DATA_FORMAT must be 'cub' or 'custom', got {fmt!r}")


class TextImageDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir: str | Path, split: str, cfg: Config, vocab: Vocabulary | None = None,
                 train: bool = True, part_values: dict[str, list[str]] | None = None,
                 caption_focus: dict[str, float] | None = None):
        """`part_values` ({part: values}, synthetic birds only): each sample also carries the values its caption
        names (`Sample.parts`), read from the data set's attributes.json. `caption_focus` ({part: probability},
        parts of `part_values`): with that probability a sample's caption is one that names the part, when the
        image has one (TRAIN.CAPTION_FOCUS)."""
        if not data_dir and not cfg.DATA_DIR:
            raise AttnGANError("no data directory: set DATA_DIR in the config or pass --data-dir")
        data_dir = Path(data_dir or cfg.DATA_DIR)
        records = load_records(data_dir, split, cfg)
        self.part_labels = None if part_values is None else _caption_part_labels(data_dir, records, part_values)
        columns = list(part_values or {})
        unknown = [p for p in caption_focus or {} if p not in columns]
        if unknown:
            raise AttnGANError(f"caption focus on {unknown[0]!r}: the data set's labels here are of "
                               f"{', '.join(columns) or 'no part'}")
        # per focused part: its probability and, per image, the captions that name it (label >= 0; IGNORE < 0)
        self.caption_focus = [(q, [torch.nonzero(labels[:, columns.index(p)] >= 0).flatten().tolist()
                                   for labels in self.part_labels])
                              for p, q in (caption_focus or {}).items() if q > 0]
        if vocab is not None and vocab != records.vocab:
            records.captions = remap_captions(records.captions, records.vocab, vocab)
            records.vocab = vocab
        self.data_dir = data_dir
        self.split = split
        self.train = train
        self.words_num = cfg.TEXT.WORDS_NUM
        self.image_sizes = [cfg.TREE.BASE_SIZE * 2 ** i for i in range(cfg.TREE.BRANCH_NUM)]
        self.records = records
        self.vocab: Vocabulary = records.vocab
        self.keys: list[str] = records.keys
        self.class_ids: list[int] = records.class_ids
        if not self.keys:
            raise AttnGANError(f"the {split} split of {data_dir} has no images")

    @property
    def n_words(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.keys)

    def captions(self, index: int) -> list[list[int]]:
        """All captions of image `index` as word ids (unpadded)."""
        return self.records.captions[index]

    def image_path(self, index: int) -> Path:
        return self.records.image_paths[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image, cropped to 1.5x its bounding box (as the original)."""
        path = self.records.image_paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, SyntaxError) as exc:
            raise AttnGANError(f"cannot read image {path}: {exc}") from None
        return crop_to_bbox(img, self.records.bboxes[index])

    def images(self, index: int, rng: np.random.Generator | None = None) -> list[torch.Tensor]:
        return image_pyramid(self.load_image(index), self.image_sizes, train=self.train, rng=rng)

    def __getitem__(self, index: int | tuple[int, int]) -> Sample:
        """`index`, or (index, seed) from the trainer's sampler: the seed fixes this sample's random choices."""
        if isinstance(index, tuple):
            index, seed = index
        else:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        rng = np.random.default_rng(seed)
        caps = self.records.captions[index]
        choice = self._caption_choice(index, rng)
        if not caps[choice]:  # only possible after remapping to another vocabulary
            nonempty = [c for c in caps if c]
            if not nonempty:
                raise AttnGANError(f"no caption of {self.keys[index]} has a word in the vocabulary")
            caps, choice = nonempty, choice % len(nonempty)
        ids, length = pad_caption(caps[choice], self.words_num, rng if self.train else None)
        parts = None
        if self.part_labels is not None:
            parts = self.part_labels[index][self.records.captions[index].index(caps[choice])]
        return Sample(images=self.images(index, rng), caption=torch.from_numpy(ids), length=length,
                      class_id=int(self.class_ids[index]), key=self.keys[index], parts=parts)

    def _caption_choice(self, index: int, rng: np.random.Generator) -> int:
        """Any of the image's captions; with caption focus, first maybe one that names a focused part."""
        if self.caption_focus:
            draw = rng.random()
            for probability, naming in self.caption_focus:
                if draw < probability:
                    if naming[index]:
                        return naming[index][int(rng.integers(0, len(naming[index])))]
                    break
                draw -= probability
        return int(rng.integers(0, len(self.records.captions[index])))


def _caption_part_labels(data_dir: Path, records: SplitRecords, part_values: dict[str, list[str]]
                         ) -> list[torch.Tensor]:
    """Per image, P-long label rows of what each of its captions names (the data's own words, before any
    vocabulary remapping, matched to attributes.json's captions)."""
    from trainer.data.synth import load_attributes, named_by_words
    from trainer.evaluate.faithfulness import encode_labels

    attrs = load_attributes(data_dir)
    out = []
    for key, caps in zip(records.keys, records.captions):
        by_words = named_by_words(attrs.get(key, {}))
        named = []
        for ids in caps:
            words = tuple(records.vocab.ixtoword[i] for i in ids)
            if words not in by_words:
                raise AttnGANError(f"{data_dir / 'attributes.json'} has no caption {' '.join(words)!r} of {key}: "
                                   "the attributes file is not this data set's")
            named.append(by_words[words])
        out.append(encode_labels(named, part_values))
    return out


def collate_batch(samples: list[Sample]) -> Batch:
    """Stack samples and sort them by caption length, descending (stable, so ties keep their order)."""
    if not samples:
        raise ValueError("collate_batch needs at least one sample")
    lengths = torch.tensor([s.length for s in samples], dtype=torch.long)
    order = torch.sort(lengths, descending=True, stable=True).indices
    images = [torch.stack([samples[i].images[stage] for i in order.tolist()])
              for stage in range(len(samples[0].images))]
    captions = torch.stack([samples[i].caption for i in order.tolist()])
    class_ids = torch.tensor([samples[i].class_id for i in order.tolist()], dtype=torch.long)
    parts = None if samples[0].parts is None else torch.stack([samples[i].parts for i in order.tolist()])
    return Batch(images=images, captions=captions, lengths=lengths[order], class_ids=class_ids,
                 keys=[samples[i].key for i in order.tolist()], parts=parts)
