"""The original CUB-200-2011 layout (as the AttnGAN / StackGAN metadata ships it).

    DATA_DIR/
      captions.pickle                 [train_caps, test_caps, ixtoword, wordtoix] (Python 2, protocol 2)
      train/filenames.pickle          keys, e.g. "002.Laysan_Albatross/Laysan_Albatross_0002_1027"
      train/class_info.pickle         one class id per key
      test/filenames.pickle, test/class_info.pickle
      text/<key>.txt                  ten captions, one per line
      CUB_200_2011/images.txt         "<id> <key>.jpg"
      CUB_200_2011/bounding_boxes.txt "<id> <x> <y> <w> <h>"
      CUB_200_2011/images/<key>.jpg

Missing pickles are built like the original builds `captions.pickle`: the split comes from
`train/filenames.pickle` + `test/filenames.pickle`, or else from `train.txt` + `test.txt` (one key per
line) or `split.txt` ("<key> train|test" per line) in DATA_DIR; class ids from the "NNN." prefix of the
key's class folder. Vocabulary = every word of train + test (as the original), sorted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from attngan.errors import AttnGANError
from attngan.text import Vocabulary, as_text, read_legacy_pickle
from trainer.data.records import SPLITS, SplitRecords, check_split_args, read_caption_lines, write_pickle

log = logging.getLogger(__name__)


def image_dir(data_dir: Path) -> Path:
    cub = data_dir / "CUB_200_2011" / "images"
    return cub if cub.is_dir() else data_dir / "images"


def read_filenames(data_dir: Path, split: str, obj: object = None) -> list[str]:
    path = data_dir / split / "filenames.pickle"
    obj = read_legacy_pickle(path) if obj is None else obj
    if not isinstance(obj, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in obj):
        raise AttnGANError(f"{path} must hold a list of image keys")
    return [as_text(k) for k in obj]


def read_class_info(data_dir: Path, split: str, n: int, obj: object = None) -> list[int]:
    path = data_dir / split / "class_info.pickle"
    obj = read_legacy_pickle(path) if obj is None else obj
    try:
        ids = [int(c) for c in obj]
    except (TypeError, ValueError):
        raise AttnGANError(f"{path} must hold a list of integer class ids") from None
    if len(ids) != n:
        raise AttnGANError(f"{path} has {len(ids)} class ids but {split}/filenames.pickle has {n} keys")
    return ids


def read_bboxes(data_dir: Path) -> dict[str, tuple[int, int, int, int]] | None:
    """{key: (x, y, w, h)} from CUB_200_2011/images.txt + bounding_boxes.txt (None if there is no CUB dir)."""
    root = data_dir / "CUB_200_2011"
    images_txt, boxes_txt = root / "images.txt", root / "bounding_boxes.txt"
    if not images_txt.exists() and not boxes_txt.exists():
        return None
    for path in (images_txt, boxes_txt):
        if not path.is_file():
            raise AttnGANError(f"missing data file: {path} (CUB needs both images.txt and bounding_boxes.txt)")
    names: dict[str, str] = {}
    for lineno, line in enumerate(images_txt.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AttnGANError(f"{images_txt}:{lineno}: expected '<id> <file>', got {line!r}")
        names[parts[0]] = parts[1].rsplit(".", 1)[0]
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for lineno, line in enumerate(boxes_txt.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            x, y, w, h = (int(float(v)) for v in parts[1:])  # the original: pandas .astype(int)
        except ValueError:
            raise AttnGANError(f"{boxes_txt}:{lineno}: expected '<id> <x> <y> <w> <h>', got {line!r}") from None
        if parts[0] not in names:
            raise AttnGANError(f"{boxes_txt}:{lineno}: image id {parts[0]} is not in {images_txt}")
        boxes[names[parts[0]]] = (x, y, w, h)
    return boxes


def class_id_from_key(key: str) -> int:
    """"017.Cardinal/Cardinal_0001_17057" -> 17 (the StackGAN class_info convention)."""
    m = re.match(r"(\d+)\.", key)
    if m is None:
        raise AttnGANError(f"cannot tell the class of {key!r}: keys must look like 'NNN.Class_Name/image'")
    return int(m.group(1))


def read_split_keys(data_dir: Path) -> dict[str, list[str]]:
    """Train/test keys when there are no filenames pickles: train.txt + test.txt, or split.txt."""
    def keys_of(path: Path) -> list[str]:
        return [k.strip().removesuffix(".jpg") for k in path.read_text(encoding="utf-8").splitlines() if k.strip()]

    if (data_dir / "train.txt").is_file() and (data_dir / "test.txt").is_file():
        return {s: keys_of(data_dir / f"{s}.txt") for s in SPLITS}
    split_txt = data_dir / "split.txt"
    if split_txt.is_file():
        out: dict[str, list[str]] = {"train": [], "test": []}
        for lineno, line in enumerate(split_txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in out:
                raise AttnGANError(f"{split_txt}:{lineno}: expected '<key> train|test', got {line!r}")
            out[parts[1]].append(parts[0].removesuffix(".jpg"))
        return out
    raise AttnGANError(
        f"{data_dir / 'train' / 'filenames.pickle'} is missing and there is no split to build it from: "
        f"add train.txt + test.txt (one image key per line) or split.txt ('<key> train|test') to {data_dir}")


def build_missing_pickles(data_dir: Path, captions_per_image: int = 10) -> dict[str, object]:
    """Whatever of the original pickles is missing, built as the original builds them: {relative path: data}."""
    built: dict[str, object] = {}
    have_names = all((data_dir / s / "filenames.pickle").is_file() for s in SPLITS)
    if have_names:
        keys = {s: read_filenames(data_dir, s) for s in SPLITS}
    else:
        if (data_dir / "captions.pickle").is_file():
            raise AttnGANError(f"{data_dir / 'captions.pickle'} exists but train/ or test/filenames.pickle "
                               "is missing; restore them or delete captions.pickle to rebuild both")
        keys = read_split_keys(data_dir)
        for split in SPLITS:
            built[f"{split}/filenames.pickle"] = keys[split]
    for split in SPLITS:
        if not (data_dir / split / "class_info.pickle").is_file():
            built[f"{split}/class_info.pickle"] = [class_id_from_key(k) for k in keys[split]]
    if not (data_dir / "captions.pickle").is_file():
        tokens = {s: load_caption_tokens(data_dir, keys[s], captions_per_image) for s in SPLITS}
        vocab = Vocabulary.build(t for s in SPLITS for caps in tokens[s] for t in caps)
        caps = {s: [[vocab.wordtoix[w] for w in cap] for per in tokens[s] for cap in per] for s in SPLITS}
        ixtoword = dict(enumerate(vocab.ixtoword))
        built["captions.pickle"] = [caps["train"], caps["test"], ixtoword, dict(vocab.wordtoix)]
    return built


def ensure_pickles(data_dir: Path, captions_per_image: int = 10) -> dict[str, object]:
    """Build and write the missing pickles (protocol 2, like the original); returns what was built.

    A read-only data directory (e.g. a mounted training channel) keeps the built data in memory only.
    """
    built = build_missing_pickles(data_dir, captions_per_image)
    unwritten = [name for name, obj in built.items() if not write_pickle(data_dir / name, obj)]
    if built:
        log.info("built %s in %s", ", ".join(built), data_dir)
    if unwritten:
        log.warning("could not write %s into %s (read-only?); using them from memory", ", ".join(unwritten),
                    data_dir)
    return built


def load_caption_tokens(data_dir: Path, keys: list[str], captions_per_image: int) -> list[list[list[str]]]:
    """text/<key>.txt for each key -> the first `captions_per_image` captions as tokens."""
    out = []
    for key in keys:
        path = data_dir / "text" / f"{key}.txt"
        caps = read_caption_lines(path)
        if len(caps) < captions_per_image:
            raise AttnGANError(f"{path} has {len(caps)} captions; each image needs {captions_per_image} "
                               "(one per line, or lower TEXT.CAPTIONS_PER_IMAGE)")
        out.append(caps[:captions_per_image])
    return out


def load_cub(data_dir: str | Path, split: str, captions_per_image: int = 10) -> SplitRecords:
    """Read one split of a CUB-layout data set (building missing pickles first)."""
    data_dir = check_split_args(data_dir, split)
    built = ensure_pickles(data_dir, captions_per_image)

    def read(name: str) -> object:
        return built[name] if name in built else read_legacy_pickle(data_dir / name)

    keys = read_filenames(data_dir, split, read(f"{split}/filenames.pickle"))
    class_ids = read_class_info(data_dir, split, len(keys), read(f"{split}/class_info.pickle"))
    vocab, train_caps, test_caps = Vocabulary.from_captions_data(read("captions.pickle"),
                                                                 data_dir / "captions.pickle")
    flat = train_caps if split == "train" else test_caps
    if len(flat) != len(keys) * captions_per_image:
        raise AttnGANError(
            f"{data_dir / 'captions.pickle'} has {len(flat)} {split} captions but {split}/filenames.pickle has "
            f"{len(keys)} keys x {captions_per_image} captions (TEXT.CAPTIONS_PER_IMAGE); rebuild it")
    captions = [flat[i * captions_per_image:(i + 1) * captions_per_image] for i in range(len(keys))]
    boxes = read_bboxes(data_dir)
    if boxes is not None:
        for key in keys:
            if key not in boxes:
                raise AttnGANError(f"image {key} has no bounding box in {data_dir / 'CUB_200_2011'}/images.txt")
    root = image_dir(data_dir)
    paths = [root / f"{key}.jpg" for key in keys]
    for path in paths:
        if not path.is_file():
            raise AttnGANError(f"missing image: {path}")
    return SplitRecords(
        vocab=vocab, keys=keys, class_ids=class_ids, captions=captions, image_paths=paths,
        bboxes=[boxes[k] for k in keys] if boxes is not None else [None] * len(keys))
