"""The one tokenizer and the one vocabulary, shared by training, export and serving.

`tokenize` is exactly the original training tokenizer (`datasets.py` `load_captions`): replace
"\\ufffd\\ufffd" with a space, lower-case, nltk `RegexpTokenizer(r'\\w+')` (= `re.findall(r'\\w+')`),
strip non-ASCII characters from each token, drop empty tokens. The original web API split on spaces
instead, so "Red," and "red" were different words there; here they are the same, as in training.

`Vocabulary` keeps the original's index space: `ixtoword[0] == "<end>"` (also the padding id), words
from 1. The original `captions.pickle` (a Python 2 pickle) loads with `from_captions_pickle`; our own
form is JSON (`save_json` / `load_json`).
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attngan.errors import AttnGANError
from attngan.fileio import atomic_write_text

END_TOKEN = "<end>"
VOCAB_FORMAT = "attngan-vocab"
_WORD = re.compile(r"\w+")


def tokenize(caption: str) -> list[str]:
    """Split a caption into lower-case ASCII word tokens, exactly as the original training did."""
    text = caption.replace("\ufffd\ufffd", " ").lower()
    tokens = []
    for token in _WORD.findall(text):
        token = token.encode("ascii", "ignore").decode("ascii")
        if token:
            tokens.append(token)
    return tokens


@dataclass
class EncodedCaption:
    """A caption as the model sees it: the known tokens in order, their ids, and the words dropped."""

    tokens: list[str]
    ids: list[int]
    unknown: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


# --- Python 2 pickles -------------------------------------------------------------------------------

# What the original pickles may legitimately contain besides plain containers: numpy arrays/scalars
# (class_info.pickle is sometimes a numpy array) and the bytes helper protocol 2 uses.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            if module == "copy_reg":
                module = "copyreg"
            elif module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_legacy_pickle(path: str | Path) -> Any:
    """Load one of the original data pickles (Python 2, protocol 2) without running arbitrary code.

    Python 2 `str` objects load as `str` (latin1, as issue #15's fix); only containers, numbers,
    strings and numpy arrays are allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise AttnGANError(f"missing data file: {path}")
    try:
        data = path.read_bytes()
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise AttnGANError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); "
                           "re-create it or delete it so it is rebuilt") from None


def as_text(value: Any) -> str:
    """A Python 2 string loaded as bytes or str -> str."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return str(value)


# --- Vocabulary -------------------------------------------------------------------------------------


class Vocabulary:
    """Words <-> ids. Index 0 is "<end>" (padding); every other word has one id."""

    def __init__(self, ixtoword: Iterable[str]):
        self.ixtoword: list[str] = list(ixtoword)
        if not self.ixtoword or self.ixtoword[0] != END_TOKEN:
            raise AttnGANError(f"a vocabulary must start with {END_TOKEN!r} at index 0")
        self.wordtoix: dict[str, int] = {}
        for ix, word in enumerate(self.ixtoword):
            if word in self.wordtoix:
                raise AttnGANError(f"vocabulary word {word!r} appears twice (ids {self.wordtoix[word]} and {ix})")
            self.wordtoix[word] = ix

    def __len__(self) -> int:
        return len(self.ixtoword)

    def __contains__(self, word: str) -> bool:
        return word in self.wordtoix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.ixtoword == other.ixtoword

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    # building and loading

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]]) -> Vocabulary:
        """Every word seen (the original's threshold is 0), sorted so the ids are reproducible.

        The original numbered words in Python 2 dict order, which cannot be reproduced; to reuse its
        checkpoints, load its `captions.pickle` instead.
        """
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        counts.pop(END_TOKEN, None)
        return cls([END_TOKEN, *sorted(counts)])

    @classmethod
    def from_captions_pickle(cls, path: str | Path) -> tuple[Vocabulary, list[list[int]], list[list[int]]]:
        """Load the original `captions.pickle` = [train_caps, test_caps, ixtoword, wordtoix]."""
        return cls.from_captions_data(read_legacy_pickle(path), path)

    @classmethod
    def from_captions_data(cls, data: Any, path: str | Path = "captions.pickle",
                           ) -> tuple[Vocabulary, list[list[int]], list[list[int]]]:
        """The unpickled `captions.pickle` list -> (vocabulary, train captions, test captions)."""
        if not isinstance(data, (list, tuple)) or len(data) != 4:
            raise AttnGANError(f"{path} must hold [train_captions, test_captions, ixtoword, wordtoix]")
        train_caps, test_caps, ixtoword, wordtoix = data
        try:
            if isinstance(ixtoword, dict):
                items = {int(k): as_text(v) for k, v in ixtoword.items()}
                if sorted(items) != list(range(len(items))):
                    raise ValueError("ixtoword ids are not 0..N-1")
                words = [items[i] for i in range(len(items))]
            else:
                words = [as_text(w) for w in ixtoword]
            vocab = cls(words)
            if isinstance(wordtoix, dict):
                for word, ix in wordtoix.items():
                    if vocab.wordtoix.get(as_text(word)) != int(ix):
                        raise ValueError(f"wordtoix[{as_text(word)!r}] = {ix} disagrees with ixtoword")
            n = len(vocab)
            captions = []
            for caps in (train_caps, test_caps):
                caps = [[int(i) for i in cap] for cap in caps]
                for cap in caps:
                    if any(i <= 0 or i >= n for i in cap):
                        raise ValueError(f"caption ids {cap} out of range 1..{n - 1}")
                captions.append(caps)
        except AttnGANError as exc:
            raise AttnGANError(f"{path}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise AttnGANError(f"{path} is not a valid captions pickle: {exc}") from None
        return vocab, captions[0], captions[1]

    def to_dict(self) -> dict[str, Any]:
        return {"format": VOCAB_FORMAT, "version": 1, "ixtoword": list(self.ixtoword)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise AttnGANError(f"not a vocabulary: expected a mapping with format {VOCAB_FORMAT!r}")
        words = data.get("ixtoword")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise AttnGANError("vocabulary 'ixtoword' must be a list of strings")
        return cls(words)

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise AttnGANError(f"vocabulary file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AttnGANError(f"vocabulary file {path} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except AttnGANError as exc:
            raise AttnGANError(f"{path}: {exc}") from None

    # encoding

    def encode_tokens(self, tokens: Iterable[str]) -> EncodedCaption:
        known, ids, unknown = [], [], []
        for token in tokens:
            ix = self.wordtoix.get(token)
            if ix is None or ix == 0:
                unknown.append(token)
            else:
                known.append(token)
                ids.append(ix)
        return EncodedCaption(tokens=known, ids=ids, unknown=unknown)

    def encode(self, caption: str) -> EncodedCaption:
        """Tokenize and map to ids; words not in the vocabulary are dropped and listed in `unknown`."""
        return self.encode_tokens(tokenize(caption))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at the first 0 (padding)."""
        words = []
        for ix in ids:
            ix = int(ix)
            if ix == 0:
                break
            words.append(self.ixtoword[ix])
        return words


def pad_caption(ids: list[int], words_num: int,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Zero-pad (or shorten) a caption to `words_num` ids; returns (int64 array, kept length).

    Longer captions: with `rng`, the original training rule (keep `words_num` randomly chosen
    positions, in order: a random word drop, not a truncation); without, keep the first `words_num`.
    """
    if words_num <= 0:
        raise AttnGANError(f"WORDS_NUM must be positive, got {words_num}")
    ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    out = np.zeros(words_num, dtype=np.int64)
    n = len(ids_arr)
    if n <= words_num:
        out[:n] = ids_arr
        return out, n
    if rng is None:
        out[:] = ids_arr[:words_num]
    else:
        keep = np.sort(rng.permutation(n)[:words_num])
        out[:] = ids_arr[keep]
    return out, words_num
