"""The batching engine with the real (tiny) model: batches form, deadlines drop queued work, the queue is bounded."""

from __future__ import annotations

import time

import pytest

from service.engine import DeadlineExceeded, Engine, NotReady, QueueFull


def sample(maker, name: str) -> float:
    return maker.metrics.registry.get_sample_value(name) or 0.0


def test_waiting_requests_share_one_forward_pass(app):
    maker = app.extensions["attngan"]
    enc = maker.caption("a small red bird").encoded
    batches, captions = sample(maker, "attngan_batch_size_count"), sample(maker, "attngan_batch_size_sum")
    jobs = maker.engine.submit([(enc, s) for s in range(300, 304)], deadline=time.monotonic() + 60)
    results = [job.future.result(60) for job in jobs]
    assert sample(maker, "attngan_batch_size_count") == batches + 1  # max_batch_size is 4: one pass
    assert sample(maker, "attngan_batch_size_sum") == captions + 4
    assert [r.images[-1].size for r in results] == [(256, 256)] * 4
    assert len({r.images[-1].tobytes() for r in results}) == 4  # four seeds, four birds
    alone = maker.engine.submit([(enc, 302)], deadline=time.monotonic() + 60)[0].future.result(60)
    assert alone.images[-1].tobytes() == results[2].images[-1].tobytes()  # batch company changes nothing


def test_expired_jobs_are_dropped_unrun(app):
    maker = app.extensions["attngan"]
    enc = maker.caption("a small red bird").encoded
    before = sample(maker, "attngan_batch_size_sum")
    job = maker.engine.submit([(enc, 1)], deadline=time.monotonic() - 1)[0]
    with pytest.raises(DeadlineExceeded):
        job.future.result(30)
    assert sample(maker, "attngan_batch_size_sum") == before


def test_bounded_queue_refuses_with_retry_after(app):
    model = app.extensions["attngan"].engine.model
    engine = Engine(lambda: model, max_batch_size=1, max_wait_s=0.0, queue_size=1).start()
    try:
        assert engine.wait_ready(30)
        enc = model.vocab.encode("a small red bird")
        far = time.monotonic() + 60
        first = engine.submit([(enc, 1), (enc, 2)], far)  # fills the running slot and the queue
        with pytest.raises(QueueFull) as info:
            engine.submit([(enc, 3)], far)
        assert info.value.retry_after_s >= 1
        for job in first:
            job.future.result(60)
        engine.submit([(enc, 4)], far)[0].future.result(60)  # room again once drained
    finally:
        engine.stop()


def test_not_ready_until_loaded_and_load_errors_are_reported():
    def broken():
        raise RuntimeError("weights unreadable")

    engine = Engine(broken).start()
    time.sleep(0.2)
    assert not engine.ready.is_set() and "weights unreadable" in engine.error
    with pytest.raises(NotReady, match="weights unreadable"):
        engine.submit([], time.monotonic() + 1)
    engine.stop()


def test_auto_precision_is_measured_at_warm_up(bundle_dir, caplog, monkeypatch):
    from attngan import pipeline
    from service.app import load_model
    from service.settings import Settings

    monkeypatch.setattr(pipeline, "cpu_has_fast_bf16", lambda: True)  # measured on any CPU, as on AMX / AVX512-BF16
    with caplog.at_level("INFO", logger="service.app"):
        model = load_model(Settings(bundle_dir=str(bundle_dir), precision="auto", torch_threads=1,
                                    max_batch_size=2), str(bundle_dir))
    chosen = next(r for r in caplog.records if r.getMessage() == "precision chosen")
    assert chosen.fp32_ms > 0 and chosen.batch_sizes == [1, 2]
    assert model.precision == chosen.precision
    # the faster one (within 5 %) wins; bf16 only when clearly faster
    if abs(chosen.bf16_ms - chosen.fp32_ms * 0.95) > 0.5:  # the logged times are rounded to 0.1 ms
        assert (model.precision == "bf16") == (chosen.bf16_ms < chosen.fp32_ms * 0.95)


def test_auto_precision_skips_bf16_on_a_cpu_that_emulates_it(bundle_dir, caplog, monkeypatch):
    """Without AMX / AVX512-BF16, bf16 is emulated and several times slower: auto keeps fp32 without loading
    and timing a bf16 copy (which cost seconds of start-up on such machines)."""
    from attngan import pipeline
    from attngan.pipeline import TextToImage
    from service.app import load_model
    from service.settings import Settings

    monkeypatch.setattr(pipeline, "cpu_has_fast_bf16", lambda: False)
    loaded: list[str] = []
    real = TextToImage.from_bundle.__func__

    def spy(cls, path, device="cpu", precision="auto", candidates=1, truncation=1.0):
        loaded.append(precision)
        return real(cls, path, device=device, precision=precision, candidates=candidates, truncation=truncation)

    monkeypatch.setattr(TextToImage, "from_bundle", classmethod(spy))
    with caplog.at_level("INFO", logger="service.app"):
        model = load_model(Settings(bundle_dir=str(bundle_dir), precision="auto", torch_threads=1,
                                    max_batch_size=2), str(bundle_dir))
    chosen = next(r for r in caplog.records if r.getMessage() == "precision chosen")
    assert model.precision == chosen.precision == "fp32" and chosen.bf16_ms is None
    assert loaded == ["fp32"]
