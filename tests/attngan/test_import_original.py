"""`attngan import-original` and `attngan generate`, through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from attngan.bundle import load_bundle
from attngan.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def import_args(release: dict[str, Path], out: Path) -> list[str]:
    return ["import-original", "--netG", str(release["netG"]), "--text-encoder", str(release["text_encoder"]),
            "--captions", str(release["captions"]), "--out", str(out)]


def test_original_release_imports_and_generates(capsys, tmp_path, original_release, vocab):
    bundle_dir = tmp_path / "bundle"
    code, out, err = run(capsys, *import_args(original_release, bundle_dir))
    assert code == 0, err
    assert "wrote bundle" in out and "R_NUM 2" in out
    bundle = load_bundle(bundle_dir)
    assert bundle.vocab == vocab
    assert (bundle.config.gf_dim, bundle.config.r_num, bundle.config.embedding_dim, bundle.config.z_dim) == (8, 2, 256, 100)
    original = torch.load(original_release["netG"], map_location="cpu", weights_only=True)
    _, generator, _ = bundle.build_networks()
    for key, value in original.items():
        assert torch.equal(generator.state_dict()[key], value), key

    output = tmp_path / "out" / "bird.png"
    code, out, err = run(capsys, "generate", "--bundle", str(bundle_dir), "A red crown and zebra wings", "-o",
                         str(output), "--seed", "5")
    assert code == 0, err
    assert "words used: a red crown and wings" in out and "unknown words (ignored): zebra" in out
    sizes = {name: Image.open(output.parent / name).size for name in
             ("bird.png", "bird_64.png", "bird_128.png", "bird_attn1.png", "bird_attn2.png")}
    assert sizes["bird.png"] == (256, 256) and sizes["bird_64.png"] == (64, 64) and sizes["bird_128.png"] == (128, 128)
    assert sizes["bird_attn1.png"][0] > 128

    again = tmp_path / "again.png"
    assert run(capsys, "generate", "--bundle", str(bundle_dir), "A red crown and zebra wings", "-o", str(again),
               "--seed", "5")[0] == 0
    assert Image.open(again).tobytes() == Image.open(output).tobytes()


def test_batch_generation_from_a_captions_file(capsys, tmp_path, lively_bundle):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red bird\n\nsmall yellow belly\nblack wings and grey tail\n", encoding="utf-8")
    out_dir = tmp_path / "many"
    code, _out, err = run(capsys, "generate", "--bundle", str(lively_bundle), "--captions-file", str(captions),
                         "--out-dir", str(out_dir), "--batch-size", "2")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["0001.png", "0003.png", "0004.png"]
    assert "generate" in err  # tqdm progress on stderr

    captions.write_text("a red bird\nqwerty zebra\n", encoding="utf-8")
    code, _, err = run(capsys, "generate", "--bundle", str(lively_bundle), "--captions-file", str(captions),
                       "--out-dir", str(tmp_path / "bad"))
    assert code == 1 and "line 2:" in err and err.count("\n") == 1


def test_vocabulary_mismatch_is_one_line(capsys, tmp_path, original_release, helpers):
    helpers.write_py2_captions_pickle(original_release["captions"], ["<end>", "red", "bird"], [[1, 2]], [[2]])
    code, _out, err = run(capsys, *import_args(original_release, tmp_path / "b"))
    assert code == 1 and err.count("\n") == 1
    assert "has 3" in err and "captions.pickle" in err
    assert not (tmp_path / "b").exists()


def test_cfg_is_checked_against_the_checkpoint(capsys, tmp_path, original_release):
    cfg = tmp_path / "eval_bird.yml"
    cfg.write_text("GAN:\n  GF_DIM: 32\n  R_NUM: 2\nTEXT:\n  WORDS_NUM: 25\nTREE:\n  BRANCH_NUM: 3\n")
    code, _, err = run(capsys, *import_args(original_release, tmp_path / "b"), "--cfg", str(cfg))
    assert code == 1 and "gf_dim: cfg 32, checkpoint 8" in err and err.count("\n") == 1

    cfg.write_text("GAN:\n  GF_DIM: 8\n  R_NUM: 2\nTEXT:\n  WORDS_NUM: 25\nTREE:\n  BRANCH_NUM: 3\n")
    code, _, err = run(capsys, *import_args(original_release, tmp_path / "b"), "--cfg", str(cfg))
    assert code == 0, err
    assert load_bundle(tmp_path / "b").config.words_num == 25


def test_a_generator_that_is_not_attngan_is_refused(capsys, tmp_path, original_release):
    torch.save({"fc.weight": torch.zeros(2, 2)}, original_release["netG"])
    code, _, err = run(capsys, *import_args(original_release, tmp_path / "b"))
    assert code == 1 and "not an AttnGAN generator checkpoint" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "a red bird", "--bundle", "/nonexistent/bundle"], "model bundle not found"),
        (["generate", "--bundle", "."], "give a caption"),
        (["generate", "a red bird", "-o", "bird.jpg"], "must be a .png"),
        (["generate", "--captions-file", "c.txt"], "needs --out-dir"),
        (["generate", "a red bird", "--bundle", "{lively}", "--candidates", "2"], "has none"),
        (["generate", "a red bird", "--bundle", "{lively}", "--candidates", "0"], "from 1 to 32"),
        (["generate", "a red bird", "--bundle", "{lively}", "--truncation", "1.5"], "truncation must be a number"),
    ],
)
def test_generate_errors_are_one_line(capsys, monkeypatch, tmp_path, lively_bundle, argv, message):
    monkeypatch.setenv("ATTNGAN_BUNDLE", str(tmp_path / "missing"))
    code, _, err = run(capsys, *[a.format(lively=lively_bundle) for a in argv])
    assert code == 1 and message in err and err.count("\n") == 1


def test_generate_best_of_n_says_which_candidate_it_kept(capsys, tmp_path, ranked_bundle):
    code, out, err = run(capsys, "generate", "--bundle", str(ranked_bundle), "this bird has a red crown",
                         "--candidates", "3", "-o", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "best of 3: candidate " in out and (tmp_path / "b.png").is_file()


def test_generate_truncation_zero_draws_one_bird_per_caption(capsys, tmp_path, lively_bundle):
    import numpy as np
    from PIL import Image

    paths = []
    for seed in ("1", "2"):
        paths.append(tmp_path / f"b{seed}.png")
        code, out, err = run(capsys, "generate", "--bundle", str(lively_bundle), "this bird has a red crown",
                             "--truncation", "0", "--seed", seed, "-o", str(paths[-1]))
        assert code == 0 and "truncation 0" in out, err
    a, b = (np.asarray(Image.open(p)) for p in paths)
    assert np.array_equal(a, b)


def test_default_bundle_comes_from_the_environment(capsys, monkeypatch, tmp_path, lively_bundle):
    monkeypatch.setenv("ATTNGAN_BUNDLE", str(lively_bundle))
    code, _out, err = run(capsys, "generate", "red crown", "-o", str(tmp_path / "b.png"))
    assert code == 0, err
    assert (tmp_path / "b.png").is_file()
    monkeypatch.setenv("ATTNGAN_BUNDLE", str(tmp_path / "none"))
    code, _, err = run(capsys, "generate", "red crown", "-o", str(tmp_path / "c.png"))
    assert code == 1 and "ATTNGAN_BUNDLE" in err
