"""A simpler layout for your own data (`DATA_FORMAT: custom`).

    DATA_DIR/
      <name>.jpg + <name>.txt              an image and its captions, one per line (any number >= 1)
      <class>/<name>.png + <class>/<name>.txt   images in subfolders: the top folder is the class
      split.txt            optional: "<key> train|test" per line, key = path without extension
      train.txt, test.txt  optional instead of split.txt: one key per line

Images may be .jpg/.jpeg/.png/.webp/.bmp. Without a split file, every 10th image (sorted by key) is a
test image. Class ids: top-level subfolders are numbered 1, 2, ... in sorted order; an image directly
in DATA_DIR gets a class of its own (like COCO in the original, so class-aware losses never treat two
unrelated images as the same class). No bounding boxes: the whole image is used. The vocabulary is
every word of train + test, sorted. Each image may have fewer than CAPTIONS_PER_IMAGE captions; the
first CAPTIONS_PER_IMAGE are used.
"""

from __future__ import annotations

from pathlib import Path

from attngan.errors import AttnGANError
from attngan.text import Vocabulary
from trainer.data.cub import read_split_keys
from trainer.data.records import IMAGE_EXTENSIONS, SPLITS, SplitRecords, check_split_args, read_caption_lines


def find_images(data_dir: Path) -> dict[str, Path]:
    """{key: image path} for every image under data_dir (key = relative path without extension)."""
    images: dict[str, Path] = {}
    for path in sorted(data_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        rel = path.relative_to(data_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        key = rel.with_suffix("").as_posix()
        if key in images:
            raise AttnGANError(f"two images share the key {key!r}: {images[key].name} and {path.name}")
        images[key] = path
    return images


def split_keys(data_dir: Path, keys: list[str]) -> dict[str, list[str]]:
    has_split = (data_dir / "split.txt").is_file() or (
        (data_dir / "train.txt").is_file() and (data_dir / "test.txt").is_file())
    if not has_split:
        return {"train": [k for i, k in enumerate(keys) if i % 10 != 9],
                "test": [k for i, k in enumerate(keys) if i % 10 == 9]}
    split = read_split_keys(data_dir)
    known = set(keys)
    for name in SPLITS:
        for key in split[name]:
            if key not in known:
                raise AttnGANError(f"split file names {key!r} but there is no such image in {data_dir}")
    return split


def load_custom(data_dir: str | Path, split: str, captions_per_image: int = 10) -> SplitRecords:
    data_dir = check_split_args(data_dir, split)
    images = find_images(data_dir)
    if not images:
        raise AttnGANError(f"no images (.jpg/.png/...) found under {data_dir}")
    all_keys = sorted(images)
    splits = split_keys(data_dir, all_keys)
    tokens: dict[str, list[list[list[str]]]] = {}
    for name in SPLITS:
        tokens[name] = []
        for key in splits[name]:
            txt = images[key].with_suffix(".txt")
            if not txt.is_file():
                raise AttnGANError(f"image {images[key]} has no captions file {txt.name} beside it")
            caps = read_caption_lines(txt)
            if not caps:
                raise AttnGANError(f"{txt} has no captions (one per line)")
            tokens[name].append(caps[:captions_per_image])
    vocab = Vocabulary.build(t for name in SPLITS for per in tokens[name] for t in per)
    folders = sorted({k.split("/", 1)[0] for k in all_keys if "/" in k})
    folder_id = {f: i + 1 for i, f in enumerate(folders)}
    key_index = {k: i for i, k in enumerate(all_keys)}
    keys = splits[split]
    class_ids = [folder_id[k.split("/", 1)[0]] if "/" in k else len(folders) + 1 + key_index[k] for k in keys]
    captions = [[[vocab.wordtoix[w] for w in cap] for cap in per] for per in tokens[split]]
    return SplitRecords(vocab=vocab, keys=keys, class_ids=class_ids, captions=captions,
                        image_paths=[images[k] for k in keys], bboxes=[None] * len(keys))
