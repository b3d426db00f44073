"""Content-addressed results: the same model, tokens and seed always give the same bird.

`cache_key` hashes exactly what determines the output (the model version, the normalised tokens the
model sees, the seed, and best-of-N's N), so "The bird, RED!" and "the bird red" share an entry and a new model never
serves an old picture. The key names a folder in storage (`<key>/small.png`, ...), which makes the
store the cache shared by all workers and replicas; `ResultCache` is the per-process LRU in front of it
that remembers which keys are complete, so a hot request costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


def cache_key(model_version: str, tokens: Sequence[str], seed: int, candidates: int = 1,
              truncation: float = 1.0) -> str:
    """`candidates` (best of N) and `truncation` change the bird, so they are part of the key (1 and 1.0 leave the
    key as it always was)."""
    fields = [model_version, " ".join(tokens), str(int(seed))] + ([f"best-of-{candidates}"] if candidates > 1 else [])
    fields += [f"truncation-{float(truncation)!r}"] if truncation != 1 else []
    text = "\x1f".join(fields)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultCache:
    """A thread-safe LRU of key -> small record (which images exist for that key)."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._items.get(key)
            if record is not None:
                self._items.move_to_end(key)
            return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._items[key] = record
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
