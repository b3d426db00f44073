"""The one tokenizer (exactly the original's), the vocabulary, and caption padding."""

from __future__ import annotations

import numpy as np
import pytest
from nltk.tokenize import RegexpTokenizer

from attngan.errors import AttnGANError
from attngan.text import EncodedCaption, Vocabulary, pad_caption, tokenize

STRINGS = [
    "This bird has a yellow crown and a black eyering.",
    "A small bird with a WHITE belly, and grey wings!!",
    "this is a red bird with black wings and a short orange beak",
    "bird's wings: blue/green; tail-feathers -- long",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n",
    "under_score and digits 123 a1b2",
    "Café crème brûlée naïve",
    "émigré ñandú",
    "日本語 bird 鳥",
    "\ufffd\ufffd",
    "",
    "...!!!???",
    "x",
]


def _nltk(text: str) -> list[str]:
    """The original: RegexpTokenizer(r'\\w+') on the lower-cased caption, then non-ASCII stripped."""
    tokens = RegexpTokenizer(r"\w+").tokenize(text.replace("\ufffd\ufffd", " ").lower())
    return [t.encode("ascii", "ignore").decode("ascii") for t in tokens if t.encode("ascii", "ignore")]


@pytest.mark.parametrize("text", STRINGS)
def test_tokenize_equals_the_original(text):
    assert tokenize(text) == _nltk(text)


def test_tokenize_many_random_strings_match_nltk():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,;:!?'\"()\t\n") + [
        "é", "ñ", "ß", "ü", "鳥", "\ufffd"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))).tolist())
        assert tokenize(text) == _nltk(text), repr(text)


def test_tokenize_edge_cases():
    assert tokenize("") == []
    assert tokenize(" .,;!? ") == []
    assert tokenize("red\ufffd\ufffdbird") == ["red", "bird"]
    assert tokenize("Eye-Ring, BEAK.") == ["eye", "ring", "beak"]
    assert tokenize("naïve café") == ["nave", "caf"]  # non-ASCII characters stripped, as the original
    assert tokenize("鳥 bird") == ["bird"]  # a token with nothing ASCII left is dropped
    # Combining marks are not \w for Python's `re` (nor for the original's Python 2 `re`); nltk >= 3.9
    # compiles with the `regex` engine, which would keep "di\u0307y" whole. We follow the original.
    assert tokenize("DİY") == ["di", "y"]


def test_vocabulary_build_encode_and_unknown_words():
    v = Vocabulary.build([["red", "bird"], ["a", "bird", "with", "red", "wings"]])
    assert v.ixtoword[0] == "<end>" and v.wordtoix["<end>"] == 0
    assert v.ixtoword[1:] == ["a", "bird", "red", "wings", "with"]
    assert len(v) == 6
    enc = v.encode("A red bird with BLUE wings, and a zebra!")
    assert isinstance(enc, EncodedCaption)
    assert enc.tokens == ["a", "red", "bird", "with", "wings", "a"]
    assert enc.ids == [v.wordtoix[t] for t in enc.tokens]
    assert enc.unknown == ["blue", "and", "zebra"]  # reported, not silently lost
    allunk = v.encode("zebra giraffe")
    assert allunk.ids == [] and allunk.tokens == [] and allunk.unknown == ["zebra", "giraffe"]
    assert v.encode("").ids == [] and v.encode("").unknown == []
    assert v.decode([2, 3, 0, 1]) == ["bird", "red"]


def test_vocabulary_json_round_trip_and_errors(tmp_path):
    v = Vocabulary(["<end>", "zeta", "alpha", "ümlaut"])
    path = v.save_json(tmp_path / "vocab.json")
    assert Vocabulary.load_json(path) == v
    assert Vocabulary.from_dict(v.to_dict()).ixtoword == v.ixtoword
    with pytest.raises(AttnGANError, match="must start with '<end>'"):
        Vocabulary(["bird", "<end>"])
    with pytest.raises(AttnGANError, match="appears twice"):
        Vocabulary(["<end>", "bird", "bird"])
    with pytest.raises(AttnGANError, match="not found"):
        Vocabulary.load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AttnGANError, match="bad.json is not valid JSON"):
        Vocabulary.load_json(tmp_path / "bad.json")
    with pytest.raises(AttnGANError, match="not a vocabulary"):
        Vocabulary.from_dict({"ixtoword": ["<end>"]})


def test_pad_caption_short_and_long():
    ids, n = pad_caption([5, 6, 7], 5)
    assert ids.dtype == np.int64 and ids.tolist() == [5, 6, 7, 0, 0] and n == 3
    ids, n = pad_caption([], 4)
    assert ids.tolist() == [0, 0, 0, 0] and n == 0
    long = list(range(1, 26))
    ids, n = pad_caption(long, 18)  # inference: deterministic, the first words
    assert ids.tolist() == long[:18] and n == 18
    kept = set()
    for seed in range(20):  # training: 18 random positions, kept in order
        ids, n = pad_caption(long, 18, np.random.default_rng(seed))
        assert n == 18 and ids.tolist() == sorted(ids.tolist()) and set(ids.tolist()) <= set(long)
        kept.add(tuple(ids.tolist()))
    assert len(kept) > 1
    a, _ = pad_caption(long, 18, np.random.default_rng(1))
    b, _ = pad_caption(long, 18, np.random.default_rng(1))
    assert a.tolist() == b.tolist()
    with pytest.raises(AttnGANError):
        pad_caption([1], 0)


def test_captions_pickle_errors(tmp_path):
    import pickle

    path = tmp_path / "captions.pickle"
    path.write_bytes(pickle.dumps([[[1, 2]], [], ["<end>", "a", "b"], {"<end>": 0, "a": 1, "b": 2}], protocol=2))
    vocab, train, test = Vocabulary.from_captions_pickle(path)
    assert vocab.ixtoword == ["<end>", "a", "b"] and train == [[1, 2]] and test == []
    path.write_bytes(pickle.dumps([[[1, 9]], [], ["<end>", "a"], {"<end>": 0, "a": 1}], protocol=2))
    with pytest.raises(AttnGANError, match="out of range"):
        Vocabulary.from_captions_pickle(path)
    path.write_bytes(pickle.dumps({"not": "a list"}, protocol=2))
    with pytest.raises(AttnGANError, match="must hold"):
        Vocabulary.from_captions_pickle(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(AttnGANError, match="not a readable pickle"):
        Vocabulary.from_captions_pickle(path)
