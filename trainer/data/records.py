"""What a data layout reader returns: one split's images, classes, boxes and encoded captions."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError
from attngan.fileio import atomic_write
from attngan.text import Vocabulary, tokenize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SPLITS = ("train", "test")


@dataclass
class SplitRecords:
    vocab: Vocabulary
    keys: list[str]
    class_ids: list[int]
    captions: list[list[list[int]]]  # per image: its captions as word ids
    image_paths: list[Path]
    bboxes: list[tuple[int, int, int, int] | None]  # x, y, w, h (None: no crop)

    def __len__(self) -> int:
        return len(self.keys)


def check_split_args(data_dir: str | Path, split: str) -> Path:
    """What every layout reader checks first: the folder exists and the split is one of SPLITS."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AttnGANError(f"data directory not found: {data_dir}")
    if split not in SPLITS:
        raise AttnGANError(f"split must be 'train' or 'test', got {split!r}")
    return data_dir


def read_caption_lines(path: Path) -> list[list[str]]:
    """A captions file -> token lists, one per non-empty line (the original skipped empty lines)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise AttnGANError(f"missing captions file: {path}") from None
    except OSError as exc:
        raise AttnGANError(f"cannot read captions file {path}: {exc.strerror}") from None
    out = []
    for line in text.split("\n"):
        tokens = tokenize(line)
        if tokens:  # the original kept lines without words as empty captions; they break the RNN
            out.append(tokens)
    return out


def write_pickle(path: Path, obj: Any) -> bool:
    """Write a protocol-2 pickle (readable by the original Python 2 code) atomically.

    Returns False when the data directory is read-only (the data is then only kept in memory).
    """
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(obj, protocol=2)))
        return True
    except OSError:
        return False


def remap_captions(captions: list[list[list[int]]], source: Vocabulary,
                   target: Vocabulary) -> list[list[list[int]]]:
    """Re-encode id captions from one vocabulary into another (unknown words dropped)."""
    if source == target:
        return captions
    table = [target.wordtoix.get(w, 0) for w in source.ixtoword]
    return [[[table[i] for i in cap if table[i] > 0] for cap in caps] for caps in captions]
