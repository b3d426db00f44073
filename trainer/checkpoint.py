"""Resumable checkpoints: atomic writes, weights-only loads, RNG state capture, graceful stop on signals.

A checkpoint is one `torch.save`d dict of plain types and tensors, so it loads with
`torch.load(weights_only=True)`. RNG states of python, numpy and torch are stored as tensors/lists.
"""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attngan.errors import AttnGANError
from attngan.fileio import atomic_write

log = logging.getLogger("trainer")

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save, written whole or not at all (`attngan.fileio.atomic_write`): readers never see half a file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint or state dict safely (weights_only); a clear error for missing or bad files."""
    path = Path(path)
    if not path.is_file():
        raise AttnGANError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or not a weights file
        raise AttnGANError(f"cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def gather_rng_states(info: Any) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank r resumes with its own), gathered to rank 0; `info` is a DistInfo."""
    state = rng_state()
    if not info.enabled:
        return [state]
    import torch.distributed as dist

    states: list = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng_state(states: list[dict[str, Any]], rank: int) -> None:
    """This rank's state from gather_rng_states' list (the last one when the run now has more ranks)."""
    set_rng_state(states[min(rank, len(states) - 1)])


def find_latest(model_dir: str | Path, prefix: str, suffix: str = ".pth") -> tuple[Path, int] | None:
    """The highest-numbered `{prefix}{N}{suffix}` in a folder (e.g. netG_epoch_ / text_encoder)."""
    best: tuple[Path, int] | None = None
    for path in Path(model_dir).glob(f"{prefix}*{suffix}"):
        number = path.name[len(prefix): -len(suffix)]
        if number.isdigit() and (best is None or int(number) > best[1]):
            best = (path, int(number))
    return best


class GracefulStop:
    """SIGTERM/SIGINT set a flag that the training loop checks at step boundaries.

    The loop then saves a checkpoint and exits 0. A second signal restores the default behaviour
    (a second Ctrl-C interrupts at once).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.info("received %s: will save a checkpoint and stop after this step", self.signal_name)

    def __enter__(self) -> "GracefulStop":  # noqa: UP037, PYI034
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def vocab_beside(path: Path):
    """The run's `vocab.json` next to a checkpoint (`Model/x.pth` -> `Model/` or the run folder), or None."""
    from attngan.text import Vocabulary

    for folder in (path.parent, path.parent.parent):
        if (folder / "vocab.json").is_file():
            return Vocabulary.load_json(folder / "vocab.json")
    return None
