"""Files written whole or not at all: written under a unique temporary name beside the target, synced, renamed.

A reader (the service loading a bundle, a resumed run, a rerun of `make train-default` checking what is done) sees
the old file or the new one, never half of one, and several writers of the same file (nodes sharing a folder) do not
write into each other's temporary files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object], mode: int = 0o644, sync: bool = True) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, fsync it, make it `mode`, rename it to `path`.

    `mode` is 0o644 by default (mkstemp's own is 0o600): bundles and runs are read by the service's non-root user
    once copied into an image. `sync=False` skips the fsync where losing the file to a power cut costs nothing
    (a served image is made again on request)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
