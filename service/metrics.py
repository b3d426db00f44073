"""Prometheus series for the service.

With several gunicorn workers each process writes its samples to `PROMETHEUS_MULTIPROC_DIR` (set by
`gunicorn_conf.py` before the workers fork) and `/metrics` merges them, so a scrape sees the whole
container, not whichever worker answered. Without that variable (tests, `flask run`) the series live in
a registry private to the app, so two apps in one process never collide.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported for app.py
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("attngan_requests_total", "HTTP requests by route, method and status code",
                                ["route", "method", "code"], registry=r)
        self.latency = Histogram("attngan_request_duration_seconds", "End-to-end request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("attngan_queue_wait_seconds", "Time a caption waited before its batch ran",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.generation_seconds = Histogram("attngan_generation_seconds", "Time of one batched forward pass",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("attngan_batch_size", "Captions per forward pass",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.images = Counter("attngan_images_generated_total", "Birds generated (not served from cache)",
                              registry=r)
        self.cache_hits = Counter("attngan_cache_hits_total", "Requests answered from the result cache",
                                  registry=r)
        self.cache_misses = Counter("attngan_cache_misses_total", "Requests that needed a generation",
                                    registry=r)
        self.rejected = Counter("attngan_rejected_total", "Requests refused by the engine",
                                ["reason"], registry=r)  # queue_full | deadline | not_ready
        self.storage_errors = Counter("attngan_storage_errors_total", "Failed storage operations",
                                      ["op"], registry=r)
        self.queue_depth = Gauge("attngan_queue_depth", "Captions waiting for the model",
                                 multiprocess_mode="livesum", registry=r)
        self.model_ready = Gauge("attngan_model_ready", "1 when this worker's model is loaded and warm",
                                 multiprocess_mode="livemin", registry=r)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
