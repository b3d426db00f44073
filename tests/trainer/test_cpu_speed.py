"""CPU speed choices of the trainer: thread count under load, bf16 autocast only where it is faster."""

from __future__ import annotations

import os
import time

import pytest
import torch

from attngan.config import load_config
from trainer import runtime


@pytest.fixture
def two_cores(monkeypatch):
    """A 2-core machine seen through its load average only (no /proc/stat readings)."""
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime.CpuSample, "now", classmethod(lambda cls: None))


def _readings(monkeypatch, *samples: tuple[float, float, float]) -> None:
    """CpuSample.now returns these (wall, machine busy seconds, own seconds) in turn, then the last again."""
    queue = list(samples)
    monkeypatch.setattr(runtime.CpuSample, "now",
                        classmethod(lambda cls: cls(*(queue.pop(0) if len(queue) > 1 else queue[0]))))
    monkeypatch.setattr(runtime.time, "sleep", lambda _s: None)


def test_threads_use_only_idle_cores(two_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert runtime.idle_cores() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))  # other engineers' jobs hold the cores
    assert runtime.idle_cores() == 1
    # our own running threads are not "others": 2 threads on an otherwise idle machine keep 2
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert runtime.idle_cores(own_threads=2) == 2


def test_own_data_workers_do_not_count_as_other_load(two_cores, monkeypatch):
    """A run that started on 1 thread (the machine was busy) with one data worker: once the others are gone the
    load is its own thread + its worker, and the re-check goes back to both cores."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    threads = runtime.CpuThreads(torch.device("cpu"), every=0.0, data_workers=1)
    threads.maybe_update()
    assert chosen[-1] == 2
    without = runtime.CpuThreads(torch.device("cpu"), every=0.0)
    without.maybe_update()
    assert chosen[-1] == 1  # the worker's load taken for another process's: stuck on one core


def test_a_stage_started_right_after_another_gets_both_cores(two_cores, monkeypatch):
    """The load average lags by a minute: right after stage 1 ends it still reads ~2 on an idle machine. What the
    other processes use now decides (stage 2 of a recipe used to start on one core and stay there for minutes)."""
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    _readings(monkeypatch, (0.0, 100.0, 5.0), (0.2, 100.0, 5.0))  # nothing busy over the 0.2 s window
    runtime.CpuThreads(torch.device("cpu"))
    assert chosen[-1] == 2
    _readings(monkeypatch, (0.0, 100.0, 5.0), (0.2, 100.4, 5.0))  # two cores busy with another job
    runtime.CpuThreads(torch.device("cpu"))
    assert chosen[-1] == 1


def test_recheck_counts_only_other_processes_cpu_time(two_cores, monkeypatch):
    """While training, the machine's busy time includes this process's own threads: only the rest is others'."""
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    # start: another job holds a core; 60 s later this process used 2 cores' worth and nothing else ran
    _readings(monkeypatch, (0.0, 0.0, 0.0), (0.2, 0.2, 0.0), (60.2, 120.2, 120.0))
    threads = runtime.CpuThreads(torch.device("cpu"), every=0.0)
    assert chosen[-1] == 1
    threads.maybe_update()
    assert chosen[-1] == 2


def test_cpu_readings_on_this_machine_are_plausible():
    if runtime.CpuSample.now() is None:
        pytest.skip("no /proc/stat here")
    first = runtime.CpuSample.now()
    time.sleep(0.05)
    others = runtime.CpuSample.now().others_since(first)
    assert 0.0 <= others <= os.cpu_count() + 1


def test_omp_num_threads_caps_the_choice(two_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.idle_cores() == 1


def test_auto_precision_is_bf16_on_cpu_only_with_native_bf16(monkeypatch):
    cfg = load_config(None, [])
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.amp_dtype(cfg, cpu) is None
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.amp_dtype(cfg, cpu) == torch.bfloat16
    off = load_config(None, ["TRAIN.AMP=fp32"])
    assert runtime.amp_dtype(off, cpu) is None


def test_forced_bf16_on_a_cpu_without_it_warns_and_shipped_configs_leave_it_to_auto(monkeypatch, caplog):
    """bf16 is emulated on CPUs without AMX / AVX512-BF16 (a 2048^2 matmul: 63 s vs 0.28 s fp32 on an AMD EPYC):
    forcing it there is honoured but logged, and the shipped configs say auto so they train at full speed anywhere."""
    import logging

    from tests.trainer.conftest import REPO

    cpu = torch.device("cpu")
    forced = load_config(None, ["TRAIN.AMP=bf16"])
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert runtime.amp_dtype(forced, cpu) == torch.bfloat16
    assert not caplog.records
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert runtime.amp_dtype(forced, cpu) == torch.bfloat16
    assert "emulated" in caplog.text
    for path in sorted((REPO / "trainer" / "cfg").rglob("*.yml")):
        assert load_config(str(path), []).TRAIN.AMP in ("auto", "fp32"), path


def test_attribute_fits_recheck_threads_while_training(monkeypatch):
    """The backbone and the evaluation judge are long fits too: one started while the machine was busy (1 thread)
    must take the second core back once it is free, so the thread count is re-checked at every step."""
    from trainer.evaluate import faithfulness as fz

    checks = []
    monkeypatch.setattr(runtime.CpuThreads, "maybe_update", lambda self: checks.append(self.every))
    model = fz.AttributeClassifier({"crown": ["black", "yellow"]}, width=4)
    images = torch.rand(16, 3, fz.INPUT_SIZE, fz.INPUT_SIZE) * 2 - 1
    labels = torch.randint(0, 2, (16, 1))
    fz.fit_attributes(model, images, labels, epochs=1, batch_size=8, progress=False)
    assert len(checks) == 2  # one re-check per step
