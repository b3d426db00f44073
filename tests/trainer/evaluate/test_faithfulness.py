"""The caption-faithfulness judge: its training data, augmentation, judgeable parts, scoring, and that a
trained judge reads real renders right and is not fooled by a flat grey blob."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attngan.errors import AttnGANError
from trainer.data.synth import ATTRIBUTE_VALUES
from trainer.evaluate import faithfulness as fa


def test_sampled_attributes_avoid_combinations_drawn_identically():
    rng = np.random.default_rng(0)
    seen = {p: set() for p in ATTRIBUTE_VALUES}
    for _ in range(400):
        a = fa.sample_attributes(rng)
        assert set(a) == set(ATTRIBUTE_VALUES) and all(a[p] in ATTRIBUTE_VALUES[p] for p in a)
        assert a["wingbar"] != a["wing"]
        assert a["eyering"] not in (a["crown"], a["throat"])
        assert a["bill_color"] not in (a["crown"], a["throat"])
        for p, v in a.items():
            seen[p].add(v)
    assert all(seen[p] == set(ATTRIBUTE_VALUES[p]) for p in seen)  # every value of every part occurs


def test_render_set_is_deterministic_and_loader_shaped():
    x, recs = fa.render_set(3, seed=5)
    y, recs2 = fa.render_set(3, seed=5)
    assert x.shape == (3, 3, fa.INPUT_SIZE, fa.INPUT_SIZE) and recs == recs2 and torch.equal(x, y)
    assert x.min() >= -1 and x.max() <= 1
    assert not torch.equal(fa.render_set(1, seed=6)[0][0], x[0])


def test_thin_rims_are_labelled_none_and_off_changes_nothing():
    x, recs = fa.render_set(6, seed=5)
    x0, recs0 = fa.render_set(6, seed=5, thin_rims=0.0)
    assert torch.equal(x, x0) and recs == recs0  # the option off draws nothing more: the same renders
    thin, thin_recs = fa.render_set(6, seed=5, thin_rims=1.0)
    assert all(r["eyering"] == "none" for r in thin_recs) and any(r["eyering"] != "none" for r in recs)
    assert not torch.equal(thin, x)
    assert [{**r, "eyering": "none"} for r in recs[:1]] == thin_recs[:1]  # sampled as before, only relabelled


def test_augment_keeps_shape_range_and_is_seeded():
    x, _ = fa.render_set(4, seed=1)
    a = fa.augment(x.clone(), torch.Generator().manual_seed(0))
    b = fa.augment(x.clone(), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # it does change the images
    # ... but not the colours: the mean colour of each image stays close
    assert (a.mean((2, 3)) - x.mean((2, 3))).abs().max() < 0.15


def test_judgeable_parts_and_score_leave_out_unreadable_parts():
    parts = {"crown": ["red", "blue"], "eye": ["black", "red"]}
    ok, why = fa.judgeable_parts({"per_part": {"crown": 0.99, "eye": 0.5}}, parts)
    assert ok == ["crown"] and "50%" in why["eye"]
    labels = fa.encode_labels([{"crown": "red", "eye": "red"}, {"crown": "blue", "eye": "black"}], parts)
    pred = torch.tensor([[0, 0], [1, 0]])  # crown right twice, eye wrong once
    res = fa.score(pred, labels, parts, judgeable=ok)
    assert res["accuracy"] == 1.0 and res["per_image_all_correct"] == 1.0 and res["not_judged"] == ["eye"]
    assert "eye" not in res["per_part"]
    full = fa.score(pred, labels, parts)
    assert full["accuracy"] == pytest.approx(3 / 4) and full["per_image_all_correct"] == 0.5
    assert full["swapped"] == 0.0  # the wrong eye is black, a colour this caption does not name


def test_score_counts_colours_drawn_on_the_wrong_part():
    """A red crown and a black eye asked; a black crown and a red eye drawn: both are swaps, not random errors."""
    parts = {"crown": ["red", "blue", "black"], "eye": ["black", "red", "white"]}
    labels = fa.encode_labels([{"crown": "red", "eye": "black"}, {"crown": "blue", "eye": "black"},
                               {"crown": "red"}], parts)
    pred = torch.tensor([[2, 1], [1, 2], [1, 1]])  # swapped twice; right, wrong (white) ; wrong (blue, unnamed)
    res = fa.score(pred, labels, parts)
    assert res["accuracy"] == pytest.approx(1 / 5) and res["swapped"] == pytest.approx(2 / 5)
    assert fa.score(pred, labels, parts, judgeable=["crown"])["swapped"] == pytest.approx(1 / 3)


def test_accuracy_carries_its_interval_so_a_bar_met_by_a_hair_says_so():
    """Half of 100 verdicts right: the Wilson 95% interval is 40.4-59.6%; all right still leaves room below."""
    assert fa.wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert fa.wilson_interval(1.0, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    parts = {"crown": ["red", "blue"]}
    labels = fa.encode_labels([{"crown": "red"}] * 100, parts)
    res = fa.score(torch.tensor([[0]] * 50 + [[1]] * 50), labels, parts)
    assert res["interval_95"] == pytest.approx([0.4038, 0.5962], abs=1e-4)
    from trainer.evaluate.run import quality_bars

    generated = {"accuracy": 0.8546, "interval_95": list(fa.wilson_interval(0.8546, 2902))}
    bars = quality_bars({"faithfulness": {"judge": {"held_out": {"accuracy": 0.994}}, "generated": generated}})
    bar = next(b for b in bars if b["name"] == "named-attribute accuracy of generated birds")
    assert bar["met"] and bar["measured"] == "85.5% (95% interval 84.1-86.7%)"


def test_stale_cache_is_retrained_and_meta_round_trips(tmp_path):
    parts = {"crown": ["red", "blue"]}
    model = fa.AttributeClassifier(parts, width=8)
    fa.save_classifier(tmp_path / fa.CACHE_NAME, model, {"key": "old", "judgeable": ["crown"]})
    cached = fa.load_classifier(tmp_path / fa.CACHE_NAME)
    assert cached is not None and cached.meta["key"] == "old" and cached.judgeable == ["crown"]
    assert cached.model.width == 8
    (tmp_path / fa.CACHE_NAME).write_bytes(b"not safetensors")
    assert fa.load_classifier(tmp_path / fa.CACHE_NAME) is None  # corrupt cache: retrain, not crash


@pytest.fixture(scope="module")
def small_judge():
    """A judge of three big parts, trained briefly on fresh renders (the real recipe, fewer steps)."""
    torch.set_num_threads(1)
    parts = {p: ATTRIBUTE_VALUES[p] for p in ("crown", "breast", "back")}
    x, recs = fa.render_set(512, seed=11)
    model = fa.train_classifier(x, fa.encode_labels(recs, parts), parts, epochs=24, progress=False, width=16,
                                lr=5e-3)
    return model, parts


@pytest.mark.slow
def test_trained_judge_reads_real_renders_and_rejects_a_grey_blob(small_judge):
    model, parts = small_judge
    x, recs = fa.render_set(48, seed=12)  # renders it never saw
    res = fa.judge(model, x, recs)
    assert res["accuracy"] >= 0.9, res
    # a real render with its own attributes is judged right
    right = [i for i in range(len(recs)) if fa.judge(model, x[i:i + 1], [recs[i]])["accuracy"] == 1.0]
    assert len(right) >= 0.75 * len(recs)
    # a flat grey image does not have a yellow crown, a red breast or a blue back
    grey = torch.full((1, 3, 64, 64), 132 / 127.5 - 1)
    named = [{"crown": "yellow", "breast": "red", "back": "blue"}]
    assert fa.judge(model, grey, named)["accuracy"] == 0.0
    pred = fa.predict(model, grey)[0]
    assert parts["crown"][int(pred[0])] != "yellow"


def test_evaluate_trains_judges_and_caches_the_judge_at_128px(tmp_path):
    """`attngan evaluate`'s judge step on a tiny synthetic data set: 128 px renders from the loader, held-out
    and validation accuracy and judgeable parts in the meta, and the cached judge reused without reloading."""
    from types import SimpleNamespace

    from attngan.config import load_config
    from trainer.data.dataset import TextImageDataset
    from trainer.data.synth import synthesize
    from trainer.evaluate.run import EvalOptions, faithfulness_inputs

    torch.set_num_threads(1)
    data = synthesize(tmp_path / "d", 24, seed=3, size=128, n_classes=4)
    cfg = load_config(None, ["TREE.BRANCH_NUM=1", "TREE.BASE_SIZE=64"])  # a 64 px bundle: judged at 128 anyway
    ts = SimpleNamespace(dataset=TextImageDataset(data, "test", cfg, train=False))
    opts = EvalOptions(bundle=tmp_path / "b", data=data, out=tmp_path / "o", classifier_epochs=1, judge_renders=48,
                       progress=False)
    opts.out.mkdir()
    judge, attrs, skipped = faithfulness_inputs(opts, ts, torch.device("cpu"))
    assert skipped is None and len(attrs) == 24
    meta = judge.meta
    assert meta["input_size"] == 128 and meta["n_train"] == 18 + 48 and meta["n_held_out"] == 6
    assert set(meta["judgeable"]) | set(meta["not_judgeable"]) == set(ATTRIBUTE_VALUES)
    assert set(meta["held_out"]["per_part"]) == set(meta["judgeable"])
    assert (opts.out / fa.CACHE_NAME).is_file()
    again, _, _ = faithfulness_inputs(opts, ts, torch.device("cpu"))
    assert again.meta["key"] == meta["key"] and again.meta["train_seconds"] == meta["train_seconds"]
    assert again.meta["judgeable"] == meta["judgeable"]
    # --judge: another evaluation's judge scores this one (copied in, not retrained); one for other settings,
    # or a file that is not a judge, is a clear error
    other = EvalOptions(bundle=tmp_path / "b", data=data, out=tmp_path / "o2", classifier_epochs=1, judge_renders=48,
                        progress=False, judge=str(opts.out / fa.CACHE_NAME))
    other.out.mkdir()
    reused, _, _ = faithfulness_inputs(other, ts, torch.device("cpu"))
    assert reused.meta["train_seconds"] == meta["train_seconds"] and reused.judgeable == meta["judgeable"]
    assert (other.out / fa.CACHE_NAME).read_bytes() == (opts.out / fa.CACHE_NAME).read_bytes()
    other.judge_renders = 96
    with pytest.raises(AttnGANError, match="trained for other data or settings"):
        faithfulness_inputs(other, ts, torch.device("cpu"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    other.judge = str(tmp_path / "junk.safetensors")
    with pytest.raises(AttnGANError, match="not an attribute judge file"):
        faithfulness_inputs(other, ts, torch.device("cpu"))
