"""bench/_common.py: a benchmark replaces only its own section of docs/benchmarks.md."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_section_replaces_only_its_own_section(tmp_path):
    c = _common()
    doc = tmp_path / "benchmarks.md"
    c.write_section("Generation", "gen v1", doc)
    c.write_section("Serving", "serve v1\n\n### detail\nkept", doc)
    c.write_section("Training", "train v1", doc)
    c.write_section("Generation", "gen v2", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "gen v1" not in text and "gen v2" in text
    assert "serve v1" in text and "### detail\nkept" in text and "train v1" in text
    assert text.index("## Generation") < text.index("## Serving") < text.index("## Training")
    assert text.count("## Generation") == 1


def test_md_table_and_ratio():
    c = _common()
    t = c.md_table(["a", "b"], [[1, 2.34567], ["x", "y"]])
    assert t.splitlines()[0] == "| a | b |" and "2.35" in t
    assert c.ratio(3.0, 1.5) == "2.00x" and c.ratio(1.0, 0) == "n/a"
