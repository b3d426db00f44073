"""`attngan evaluate` end to end on a tiny data set and bundle, and its bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch

from attngan.cli import main

torch.set_num_threads(1)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_writes_metrics_report_and_pictures(tmp_path, tiny_data, tiny_bundle_dir, capsys):
    from torch.utils.tensorboard import SummaryWriter

    for run in ("stage1", "stage2"):
        w = SummaryWriter(str(tmp_path / run / "logs"))
        for step in range(5):
            w.add_scalar("gan/errG", 1.0 / (step + 1), step)
            w.add_scalar("gan/errD0", 0.5, step)
        w.close()
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                                "--images", "20", "--batch-size", "8", "--samples", "2",
                                "--logs", str(tmp_path / "stage1"), "--logs", str(tmp_path / "stage2"))
    assert code == 0, err
    assert "R-precision" in stdout
    m = json.loads((out / "metrics.json").read_text())
    rp = m["r_precision"]
    assert rp["n_images"] == 20 and rp["candidates"] == 100 and 0.0 <= rp["mean"] <= 1.0
    assert 0.0 <= rp["real_images"]["mean"] <= 1.0  # the encoders' ceiling on the real test images
    damsm = m["fid"]["damsm"]
    assert damsm["label"] == "DAMSM-FID" and "NOT comparable" in damsm["note"]
    assert damsm["value"] >= 0 and damsm["untrained"] >= 0
    assert "skipped" in m["fid"]["inception"] and "skipped" in m["inception_score"]
    assert "attributes.json" in m["faithfulness"]["skipped"]
    c = m["complexity"]
    assert c["parameters"]["generator"] > 0 and set(c["flops_per_image"]) == {"64", "128"}
    assert c["flops_per_image"]["128"] > c["flops_per_image"]["64"] > 0
    assert c["bundle_bytes"] > 0 and c["cpu_latency"]["median_ms"] > 0
    report = (out / "report.md").read_text()
    assert "NOT the paper's numbers" in report and "DAMSM-FID" in report and "Skipped:" in report
    assert "R-precision of the real test images" in report
    lat = c["cpu_latency"]  # a busy machine reads high: the fastest run and the load are there to compare
    assert 0 < lat["min_ms"] <= lat["median_ms"] and lat["load_average"] >= 0
    assert f"fastest {lat['min_ms']:.0f} ms" in report and "load average" in report
    for png in ("samples.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000
    dv = m["diversity"]  # 4 seeds of each of the 20 captions against 4 real birds of each test species
    assert dv["captions"] == 20 and dv["seeds"] == 4 and dv["generated"] > 0 and dv["real"] > 0
    assert dv["ratio"] == pytest.approx(dv["generated"] / dv["real"])
    assert "seed diversity" in report and f"seed diversity {dv['ratio']:.2f} of real" in stdout


def test_runs_that_ran_one_after_another_share_one_step_axis(tmp_path):
    """A grown model's curves: the second run's steps follow the first's, and where it starts is marked."""
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    from trainer.evaluate import report
    from trainer.evaluate.run import bundle_step

    for run, steps in (("default_AttnGAN64", range(0, 101, 25)), ("default_AttnGAN", range(0, 51, 25))):
        w = SummaryWriter(str(tmp_path / run / "logs"))
        for step in steps:
            w.add_scalar("gan/errG", float(step), step)
            if run == "default_AttnGAN":
                w.add_scalar("gan/errD2", 1.0, step)  # a tag only the later run has
        w.close()
    series, starts = report.read_runs_scalars([tmp_path / "default_AttnGAN64", tmp_path / "default_AttnGAN" / "logs"])
    assert [s for s, _ in series["gan/errG"]] == [0, 25, 50, 75, 100, 100, 125, 150]
    assert [v for _, v in series["gan/errG"]][-3:] == [0.0, 25.0, 50.0]
    assert series["gan/errD2"] == [(100, 1.0), (125, 1.0), (150, 1.0)]
    assert starts == [(0, "default_AttnGAN64"), (100, "default_AttnGAN")]
    # the bundle was exported at step 25 of the last run, which went on to step 50
    bundle = SimpleNamespace(manifest={"training": {"steps": 25, "source_run": "output/default_AttnGAN"}})
    runs = [tmp_path / "default_AttnGAN64", tmp_path / "default_AttnGAN" / "logs"]
    assert bundle_step(bundle, runs, starts) == 125
    assert bundle_step(bundle, runs[:1], starts[:1]) is None  # its run not given: not marked
    png = report.plot_training_curves(series, tmp_path / "curves.png", starts, bundle_step=125)
    assert png.stat().st_size > 1000


def test_missing_bundle_is_one_line_error(tmp_path, tiny_data, capsys):
    code, _, err = run_cli(capsys, "--bundle", str(tmp_path / "nope"), "--data", str(tiny_data),
                           "--out", str(tmp_path / "o"))
    assert code == 1 and err.count("\n") == 1 and "bundle not found" in err


def test_wrong_vocabulary_is_a_clear_error(tmp_path, tiny_data, capsys, make_bundle):
    other = make_bundle(tmp_path / "other", tiny_data, words=["cat", "dog", "sat", "mat"])
    code, _, err = run_cli(capsys, "--bundle", str(other), "--data", str(tiny_data), "--out", str(tmp_path / "o"))
    assert code == 1 and err.count("\n") == 1
    assert "vocabulary does not match" in err and "bird" in err


def test_forced_faithfulness_without_attributes_fails(tmp_path, tiny_data, tiny_bundle_dir, capsys):
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data),
                           "--out", str(tmp_path / "o"), "--faithfulness", "on")
    assert code == 1 and "attributes.json" in err


def test_bad_flags_fail_before_work(tmp_path, tiny_data, tiny_bundle_dir, capsys):
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data),
                           "--out", str(tmp_path / "o"), "--logs", str(tmp_path))
    assert code == 1 and "no TensorBoard event files" in err
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data),
                           "--out", str(tmp_path / "o"), "--inception-weights", str(tmp_path / "none.pth"))
    assert code == 1 and "file not found" in err
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data),
                           "--out", str(tmp_path / "o"), "--judge", str(tmp_path / "none.safetensors"))
    assert code == 1 and err.count("\n") == 1 and "--judge" in err and "file not found" in err
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tmp_path / "nodata"),
                           "--out", str(tmp_path / "o"))
    assert code == 1 and "not found" in err
    assert not (tmp_path / "o").exists()


def test_plan_items_follows_dm_gan_loop(tiny_data, tiny_bundle_dir):
    from attngan.bundle import load_bundle
    from trainer.evaluate.run import load_test_set, plan_items

    ts = load_test_set(tiny_data, load_bundle(tiny_bundle_dir), "cub")
    items = plan_items(ts, 30, seed=0)
    assert len(items) == 30
    first_pass = [i for i, _ in items[: len(ts.dataset)]]
    assert sorted(first_pass) == list(range(len(ts.dataset)))  # every test image once per pass
    assert items == plan_items(ts, 30, seed=0)


def test_named_attributes_are_matched_by_caption_words(tmp_path, make_cub, make_bundle):
    from attngan.bundle import load_bundle
    from trainer.evaluate.run import load_test_set, named_for_items

    data = make_cub(tmp_path / "d", with_attributes=True)
    bundle = make_bundle(tmp_path / "b", data)
    ts = load_test_set(data, load_bundle(bundle), "cub")
    attrs = json.loads((data / "attributes.json").read_text())["images"]
    named = named_for_items([(0, 3), (len(ts.dataset) - 1, 9)], ts, attrs)
    assert named[0] == attrs[ts.dataset.keys[0]]["captions"][3]["named"]
    assert named[1]["crown"] == attrs[ts.dataset.keys[-1]]["attributes"]["crown"]


def test_bf16_metrics_match_fp32(tmp_path, tiny_data, tiny_bundle_dir, capsys):
    """The serving fast path (bf16) is checked on metrics too: same captions and noise, near-identical results."""
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                               "--images", "20", "--batch-size", "10", "--samples", "1", "--no-untrained",
                               "--precision", precision)
        assert code == 0, err
        results[precision] = json.loads((out / "metrics.json").read_text())
    assert results["bf16"]["protocol"]["precision"] == "bf16"
    assert abs(results["bf16"]["r_precision"]["mean"] - results["fp32"]["r_precision"]["mean"]) <= 0.1
    fp32_fid = results["fp32"]["fid"]["damsm"]["value"]
    assert abs(results["bf16"]["fid"]["damsm"]["value"] - fp32_fid) <= 0.05 * fp32_fid + 1e-3


def test_best_of_n_keeps_for_each_caption_an_image_the_encoders_match_at_least_as_well(
        tmp_path, tiny_data, tiny_bundle_dir, capsys):
    import numpy as np

    from attngan.bundle import load_bundle
    from trainer.evaluate.run import generation_pass, item_noise, load_test_set, plan_items

    bundle = load_bundle(tiny_bundle_dir)
    text_encoder, generator, image_encoder = bundle.build_networks()
    ts = load_test_set(tiny_data, bundle, "cub")
    items = plan_items(ts, 12, seed=0)
    cosines = []
    for k in (1, 4):
        z, eps = item_noise(torch.Generator().manual_seed(0), len(items), k, bundle.config.z_dim,
                            bundle.config.condition_dim)
        res = generation_pass("test", items, ts, text_encoder, generator, image_encoder, None, None,
                              bundle.config.words_num, z, eps, 5, torch.device("cpu"), False, candidates=k)
        codes, sent = res.cat("img_codes"), res.cat("sent")
        cosines.append((codes * sent).sum(1) / np.linalg.norm(codes, axis=1) / np.linalg.norm(sent, axis=1))
    assert len(cosines[1]) == 12 and (cosines[1] >= cosines[0] - 1e-5).all() and (cosines[1] > cosines[0]).any()

    out = tmp_path / "best4"
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                           "--images", "12", "--samples", "0", "--no-untrained", "--candidates", "4")
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["candidates"] == 4 and m["r_precision"]["picked_by_same_encoders"]
    assert any("overstated" in bar["name"] for bar in m["quality_bars"])
    assert "best of 4 candidates" in (out / "report.md").read_text()
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                           "--candidates", "0")
    assert code == 1 and "from 1 to 32" in err


def test_truncation_reaches_the_generator_and_the_report(tmp_path, tiny_data, tiny_bundle_dir, capsys, monkeypatch):
    from trainer.evaluate import run as evaluate_run

    spreads = []
    real_pass = evaluate_run.generation_pass

    def spy(*args, **kwargs):
        spreads.append(float(kwargs["z_all"].std()) + float(kwargs["eps_all"].std()))
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(evaluate_run, "generation_pass", spy)
    out = tmp_path / "psi"
    for psi in ("1", "0.5", "0"):
        code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                               "--images", "12", "--samples", "0", "--no-untrained", "--truncation", psi)
        assert code == 0, err
    assert spreads[2] == 0 and spreads[1] == pytest.approx(spreads[0] / 2)  # the same draws, scaled
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["truncation"] == 0.0
    assert m["diversity"]["generated"] == 0.0  # no noise, one bird per caption: the collapse the check reports
    assert "noise truncated to 0 of its spread" in (out / "report.md").read_text()
    code, _, err = run_cli(capsys, "--bundle", str(tiny_bundle_dir), "--data", str(tiny_data), "--out", str(out),
                           "--truncation", "2")
    assert code == 1 and "truncation must be a number from 0 to 1" in err


def test_training_curves_show_each_step_once_across_resumes(tmp_path):
    """A run killed after logging steps it never saved is resumed into a new event file that logs those steps
    again: the curves keep the resumed run's values, once per step, in step order."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from trainer.evaluate.report import read_scalars

    for values in ({1: 3.0, 2: 2.5, 3: 9.0, 4: 9.5}, {3: 2.0, 4: 1.5, 5: 1.0}):  # killed after 4, resumed from 2
        w = SummaryWriter(str(tmp_path / "logs"))
        for step, v in values.items():
            w.add_scalar("gan/train/errG", v, step)
        w.close()
        time.sleep(1.1)  # event files are named by their start second
    assert read_scalars(tmp_path / "logs")["gan/train/errG"] == [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5), (5, 1.0)]


def test_a_missed_attribute_bar_names_the_weakest_parts():
    from trainer.evaluate.run import quality_bars

    generated = {"accuracy": 0.685, "swapped": 0.138,
                 "per_part": {"crown": 0.708, "nape": 0.335, "wingbar": 0.293, "leg": 0.599, "breast": 0.852}}
    bars = quality_bars({"faithfulness": {"judge": {"held_out": {"accuracy": 0.994}}, "generated": generated}})
    bar = next(b for b in bars if b["name"] == "named-attribute accuracy of generated birds")
    assert not bar["met"] and bar["measured"] == "68.5%"
    assert "weakest parts wingbar 29.3%, nape 33.5%, leg 59.9%" in bar["why"]
    assert "13.8% of named colours land on another named part" in bar["why"]
