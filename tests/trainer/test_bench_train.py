"""bench/train.py on a fresh checkout: the default recipe's steps are timed, with what reads its birds back."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench_train(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its `_common`
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_train", mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_bench_times_the_default_recipe_without_its_trained_backbones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the configs' backbone files (output/...) are not here, as on a fresh clone
    bench = _bench_train(monkeypatch)
    assert bench.main(["--configs", "default64,default64_unread", "--seconds", "0.01", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out
    # DAMSM over an untrained backbone of the recipe's shape, then stage 1 with and without its readers
    assert re.search(r"default64 DAMSM batch +48 fp32 \(baseline\) +[\d.]+ it/s", out)
    gflop = r" \| GAN \| 32 \| fp32 \(baseline\) \| [\d.]+ \| [\d.]+ \| [\d.]+x \| ([\d.]+) \|"  # GFLOP/iteration
    with_readers, without = re.search(r"\| default64" + gflop, out), re.search(r"\| default64_unread" + gflop, out)
    assert with_readers and without
    # the part heads read the 64 px image through the DAMSM trunk, the detail backbone through its own: more work
    assert float(with_readers.group(1)) > float(without.group(1))
    assert "default64_unread GAN iterations/s against default64's in this run" in out
    assert not list(tmp_path.iterdir())  # the untrained backbone went to a scratch folder, not beside the run
