"""Files written whole or not at all (attngan.fileio): what a rerun, a resumed run or the service reads."""

from __future__ import annotations

import json
import stat

import pytest

from attngan.fileio import atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"old": 1}\n')

    def half_then_crash(tmp):
        tmp.write_text('{"new": ', encoding="utf-8")
        raise KeyboardInterrupt  # a Ctrl-C or SIGTERM in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_are_readable_by_others_and_folders_are_made(tmp_path):
    target = atomic_write_text(tmp_path / "run" / "logs" / "config.json", "{}")
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0o600: the service runs as another user
    unsynced = atomic_write(tmp_path / "image.png", lambda tmp: tmp.write_bytes(b"png"), sync=False)
    assert unsynced.read_bytes() == b"png" and stat.S_IMODE(unsynced.stat().st_mode) == 0o644


def test_writers_of_the_same_file_use_their_own_temporaries(tmp_path):
    """Two writers of one file (nodes sharing a run folder) never write into each other's temporary file."""
    target = tmp_path / "vocab.json"
    seen = []

    def outer(tmp):
        seen.append(tmp)
        atomic_write_text(target, "inner")  # a second writer while the first is half-way
        tmp.write_text("outer", encoding="utf-8")

    atomic_write(target, outer)
    assert target.read_text() == "outer" and seen[0].name != target.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.json"]
