"""The CUB loader on original-format files, the custom layout, transforms, and clear errors on bad data."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.config import Config
from attngan.errors import AttnGANError
from attngan.text import Vocabulary
from trainer.data import Batch, TextImageDataset, collate_batch
from trainer.data.transforms import bbox_crop_box, crop_to_bbox, image_pyramid


def small_cfg(**text) -> Config:
    cfg = Config()
    cfg.TEXT.WORDS_NUM = text.get("words_num", 18)
    return cfg


# --- original format --------------------------------------------------------------------------------


def test_loads_original_py2_pickles(original_cub):
    root, made = original_cub
    ds = TextImageDataset(root, "train", small_cfg())
    assert ds.keys == made["keys"]["train"]
    assert ds.class_ids == [1, 1, 2]
    assert ds.vocab.ixtoword == made["ixtoword"]  # the shipped order is kept, not re-sorted
    assert ds.n_words == len(made["ixtoword"])
    assert ds.captions(1) == made["captions"]["train"][10:20]
    assert ds.image_sizes == [64, 128, 256]
    test = TextImageDataset(root, "test", small_cfg(), train=False)
    assert test.keys == made["keys"]["test"] and test.class_ids == [3, 3]


def test_sample_and_batch_shapes_ranges_and_order(original_cub):
    root, _ = original_cub
    ds = TextImageDataset(root, "train", small_cfg())
    torch.manual_seed(0)
    samples = [ds[i] for i in range(len(ds))]
    for s in samples:
        assert [tuple(t.shape) for t in s.images] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
        for t in s.images:
            assert t.dtype == torch.float32 and t.min() >= -1.0 and t.max() <= 1.0
        assert s.caption.dtype == torch.int64 and s.caption.shape == (18,)
        assert 1 <= s.length <= 18 and (s.caption[:s.length] > 0).all() and (s.caption[s.length:] == 0).all()
    batch = collate_batch(samples)
    assert isinstance(batch, Batch)
    assert batch.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)
    assert batch.captions.shape == (3, 18) and [t.shape[0] for t in batch.images] == [3, 3, 3]
    for i, key in enumerate(batch.keys):  # every field reordered together
        j = ds.keys.index(key)
        assert batch.class_ids[i] == ds.class_ids[j]
        assert batch.captions[i].tolist() in [s.caption.tolist() for s in samples if s.key == key]


def test_long_caption_random_drop_and_repeatable_with_seed(original_cub):
    root, made = original_cub
    ds = TextImageDataset(root, "train", small_cfg())
    long_ids = made["captions"]["train"][0]
    assert len(long_ids) == 25
    seen = set()
    torch.manual_seed(3)
    for _ in range(60):
        s = ds[0]
        if s.length == 18:
            kept = s.caption.tolist()
            it = iter(long_ids)  # kept words are a subsequence of the caption, in order
            assert all(any(w == x for x in it) for w in kept)
            seen.add(tuple(kept))
    assert len(seen) > 1  # a random drop, not a truncation
    torch.manual_seed(7)
    a = [ds[0].caption.tolist() for _ in range(5)]
    torch.manual_seed(7)
    b = [ds[0].caption.tolist() for _ in range(5)]
    assert a == b


def test_eval_mode_is_deterministic_centre_crop(original_cub):
    root, _ = original_cub
    ds = TextImageDataset(root, "train", small_cfg(), train=False)
    first = ds.images(2)
    assert all(torch.equal(x, y) for x, y in zip(first, ds.images(2)))


def test_given_vocabulary_remaps_captions(original_cub):
    root, _ = original_cub
    vocab = Vocabulary(["<end>", "bird", "red", "blue"])
    ds = TextImageDataset(root, "train", small_cfg(), vocab=vocab)
    assert ds.vocab is vocab and ds.n_words == 4
    for i in range(len(ds)):
        for cap in ds.captions(i):
            assert all(1 <= w <= 3 for w in cap)


def test_works_with_dataloader(original_cub):
    root, _ = original_cub
    ds = TextImageDataset(root, "train", small_cfg())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, drop_last=True, collate_fn=collate_batch)
    batches = list(loader)
    assert len(batches) == 1 and batches[0].captions.shape == (2, 18)


# --- building missing pickles --------------------------------------------------------------------------


def test_builds_missing_captions_and_class_info_like_the_original(original_cub):
    root, made = original_cub
    for name in ("captions.pickle", "train/class_info.pickle", "test/class_info.pickle"):
        (root / name).unlink()
    ds = TextImageDataset(root, "train", small_cfg())
    raw = (root / "captions.pickle").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, readable by the original Python 2 code
    train_caps, test_caps, ixtoword, wordtoix = pickle.loads(raw)
    assert ixtoword[0] == "<end>" and wordtoix["<end>"] == 0
    words = [ixtoword[i] for i in range(1, len(ixtoword))]
    assert words == sorted(words)  # train + test words, reproducible order
    assert len(train_caps) == 30 and len(test_caps) == 20
    assert ds.class_ids == [1, 1, 2]  # from the NNN. class folder
    assert ds.vocab.decode(ds.captions(0)[1]) == made["texts"][made["keys"]["train"][0]][1].lower().replace(
        ",", "").replace(".", "").split()


def test_builds_split_from_split_txt(original_cub):
    root, made = original_cub
    for name in ("captions.pickle", "train", "test"):
        p = root / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(AttnGANError, match="train.txt"):
        TextImageDataset(root, "train", small_cfg())
    (root / "split.txt").write_text("".join(f"{k} {s}\n" for s in ("train", "test") for k in made["keys"][s]))
    ds = TextImageDataset(root, "test", small_cfg())
    assert ds.keys == made["keys"]["test"] and ds.class_ids == [3, 3]
    assert (root / "train" / "filenames.pickle").is_file()


# --- malformed inputs: one clear line naming the file ---------------------------------------------------


def test_corrupt_pickle_names_the_file(original_cub):
    root, _ = original_cub
    (root / "train" / "class_info.pickle").write_bytes(b"not a pickle at all")
    with pytest.raises(AttnGANError, match=r"class_info\.pickle is not a readable pickle"):
        TextImageDataset(root, "train", small_cfg())


def test_pickle_with_code_is_refused(original_cub):
    root, _ = original_cub
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(AttnGANError, match="filenames.pickle"):
        TextImageDataset(root, "train", small_cfg())


def test_missing_image_names_the_file(original_cub):
    root, made = original_cub
    key = made["keys"]["test"][1]
    (root / "CUB_200_2011" / "images" / f"{key}.jpg").unlink()
    with pytest.raises(AttnGANError, match="missing image: .*Grey_Bird_0002_32.jpg"):
        TextImageDataset(root, "test", small_cfg())


def test_image_without_captions_file(original_cub):
    root, made = original_cub
    (root / "captions.pickle").unlink()
    (root / "text" / f"{made['keys']['test'][0]}.txt").unlink()
    with pytest.raises(AttnGANError, match=r"missing captions file: .*Grey_Bird_0001_31\.txt"):
        TextImageDataset(root, "train", small_cfg())


def test_captions_file_with_too_few_lines(original_cub):
    root, made = original_cub
    (root / "captions.pickle").unlink()
    path = root / "text" / f"{made['keys']['train'][2]}.txt"
    path.write_text("a red bird\n\nwith blue wings\n")
    with pytest.raises(AttnGANError, match=r"Blue_Bird_0001_21\.txt has 2 captions; each image needs 10"):
        TextImageDataset(root, "train", small_cfg())


def test_missing_bounding_box_and_missing_dir(original_cub, tmp_path):
    root, _ = original_cub
    lines = (root / "CUB_200_2011" / "bounding_boxes.txt").read_text().splitlines()
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(AttnGANError, match="Grey_Bird_0002_32 has no bounding box"):
        TextImageDataset(root, "test", small_cfg())
    with pytest.raises(AttnGANError, match="data directory not found"):
        TextImageDataset(tmp_path / "nope", "train", small_cfg())
    with pytest.raises(AttnGANError, match="split must be"):
        TextImageDataset(root, "val", small_cfg())


def test_captions_pickle_that_disagrees_with_filenames(original_cub, py2_pickle):
    root, _ = original_cub
    (root / "train" / "filenames.pickle").write_bytes(py2_pickle([b"001.Red_Bird/Red_Bird_0001_11"]))
    (root / "train" / "class_info.pickle").write_bytes(py2_pickle([1]))
    with pytest.raises(AttnGANError, match="30 train captions but train/filenames.pickle has 1 keys"):
        TextImageDataset(root, "train", small_cfg())


# --- transforms ---------------------------------------------------------------------------------------


def test_bbox_crop_is_the_original_rule():
    # r = int(max(60, 40) * 0.75) = 45, centre (40, 40) -> [-5, -5, 85, 85] clipped to the 120x90 image
    assert bbox_crop_box((10, 20, 60, 40), 120, 90) == (0, 0, 85, 85)
    assert bbox_crop_box((100, 10, 55, 60), 160, 80) == (82, 0, 160, 80)  # non-square at borders
    img = Image.new("RGB", (120, 90))
    assert crop_to_bbox(img, (10, 20, 60, 40)).size == (85, 85)
    assert crop_to_bbox(img, None).size == (120, 90)


def test_pyramid_sizes_ranges_and_flip():
    arr = np.zeros((100, 150, 3), dtype=np.uint8)
    arr[:, :75] = 255  # left half white
    img = Image.fromarray(arr)
    out = image_pyramid(img, [64, 128, 256], train=False)
    assert [tuple(t.shape) for t in out] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
    assert out[2].min() == -1.0 and out[2].max() == 1.0
    lefts = set()
    for seed in range(12):
        t = image_pyramid(img, [64], train=True, rng=np.random.default_rng(seed))[0]
        lefts.add(float(t[:, :, 0].mean()) > 0)
    assert lefts == {True, False}  # flipped sometimes, not always
    assert tuple(image_pyramid(img, [299], train=True, rng=np.random.default_rng(0))[0].shape) == (3, 299, 299)


# --- custom layout ---------------------------------------------------------------------------------------


def _custom(root: Path) -> None:
    for i, sub in enumerate(["sparrows", "sparrows", "robins", ""]):
        d = root / sub if sub else root
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (80, 60), (i * 40, 10, 10)).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text("a red bird\nwith black wings\n")


def test_custom_layout(tmp_path):
    root = tmp_path / "mine"
    _custom(root)
    (root / "split.txt").write_text("sparrows/img0 train\nrobins/img2 train\nimg3 train\nsparrows/img1 test\n")
    cfg = small_cfg()
    cfg.DATA_FORMAT = "custom"
    ds = TextImageDataset(root, "train", cfg)
    assert ds.keys == ["sparrows/img0", "robins/img2", "img3"]
    assert ds.class_ids[0] == 2 and ds.class_ids[1] == 1  # folders numbered in sorted order
    assert ds.class_ids[2] not in (1, 2)  # a root image is its own class
    assert ds.vocab.ixtoword == ["<end>", "a", "bird", "black", "red", "wings", "with"]
    s = ds[0]
    assert s.images[0].shape == (3, 64, 64) and s.length in (3, 3)
    test = TextImageDataset(root, "test", cfg)
    assert test.keys == ["sparrows/img1"]


def test_custom_image_without_caption(tmp_path):
    root = tmp_path / "mine"
    _custom(root)
    (root / "robins" / "img2.txt").unlink()
    cfg = small_cfg()
    cfg.DATA_FORMAT = "custom"
    with pytest.raises(AttnGANError, match=r"img2\.png has no captions file img2\.txt"):
        TextImageDataset(root, "train", cfg)
