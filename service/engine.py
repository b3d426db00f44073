"""The batching engine: one model per worker process, fed by a bounded queue.

Request threads call `submit` and wait on futures; one engine thread owns the model. It takes the first
waiting job, waits up to `max_wait_s` for more (never past `max_batch_size`), runs one batched forward
pass and hands each caller its result. The queue is bounded (`QueueFull` -> 503 with Retry-After) and
every job carries a deadline: jobs that expire while queued are dropped unrun (-> 504), so an overload
never turns into a backlog of work nobody is waiting for.

The model is loaded in the engine thread after gunicorn forks the worker, so the master never touches
CUDA (pytorch #68861), and the worker's heartbeat keeps running while weights load and warm up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from attngan.text import EncodedCaption

log = logging.getLogger("service.engine")


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the generation queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class NotReady(Exception):
    pass


class Model(Protocol):
    """What the engine needs from a model (`attngan.pipeline.TextToImage` fits)."""

    version: str

    def generate(self, captions: list[EncodedCaption], seeds: list[int],
                 truncations: list[float | None] | None = None) -> list[Any]: ...


@dataclass
class Job:
    caption: EncodedCaption
    seed: int
    deadline: float  # time.monotonic()
    truncation: float | None = None  # the request's noise scale (None: the model's)
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Engine:
    def __init__(self, load: Callable[[], Model], *, max_batch_size: int = 4, max_wait_s: float = 0.01,
                 queue_size: int = 16, metrics: Any = None, on_fatal: Callable[[str], None] | None = None):
        self._load = load
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.model: Model | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.5  # moving average of one batch, for Retry-After
        self.busy = 0  # jobs in the batch being generated

    # lifecycle

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="attngan-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    # requests

    def depth(self) -> int:
        return len(self._jobs)

    def retry_after_s(self) -> int:
        batches_ahead = (len(self._jobs) + self.busy) / self.max_batch_size + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def submit(self, items: Sequence[tuple[EncodedCaption, int]], deadline: float,
               truncation: float | None = None) -> list[Job]:
        """Queue all items or none (QueueFull). Each returned job's future yields one result."""
        if not self.ready.is_set():
            raise NotReady(self.error or "the model is still loading")
        with self._cond:
            in_system = len(self._jobs) + self.busy
            capacity = self.queue_size + self.max_batch_size
            # a request bigger than the whole capacity is still served when the engine is idle
            if in_system + len(items) > capacity and in_system > 0:
                raise QueueFull(self.retry_after_s())
            jobs = [Job(caption, seed, deadline, truncation) for caption, seed in items]
            self._jobs.extend(jobs)
            self._gauge()
            self._cond.notify()
        return jobs

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._jobs))

    # the engine thread

    def _run(self) -> None:
        try:
            self.model = self._load()
        except Exception as exc:  # noqa: BLE001 - any load failure is fatal and reported in one line
            self.error = f"model failed to load: {exc}"
            log.error(self.error)
            if self.on_fatal:
                self.on_fatal(self.error)
            return
        self.ready.set()
        if self.metrics is not None:
            self.metrics.model_ready.set(1)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._generate(batch)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            # the first job is here: wait a little for company, never past max_wait_s
            until = time.monotonic() + self.max_wait_s
            while len(self._jobs) < self.max_batch_size and not self._stopping:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[Job] = []
            now = time.monotonic()
            while self._jobs and len(batch) < self.max_batch_size:
                job = self._jobs.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up (its deadline passed)
                if now >= job.deadline:
                    job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                batch.append(job)
            self.busy = len(batch)
            self._gauge()
            return batch

    def _generate(self, batch: list[Job]) -> None:
        if not batch:
            return
        start = time.monotonic()
        try:
            results = self.model.generate([j.caption for j in batch], [j.seed for j in batch],
                                          [j.truncation for j in batch])
        except Exception as exc:
            log.exception("generation failed")
            for job in batch:
                job.future.set_exception(exc)
            return
        finally:
            self.busy = 0
        elapsed = time.monotonic() - start
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.generation_seconds.observe(elapsed)
            for job in batch:
                self.metrics.queue_seconds.observe(start - job.enqueued)
        for job, result in zip(batch, results):
            job.future.set_result(result)
