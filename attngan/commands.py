"""`attngan generate` (images from captions, no server) and `attngan import-original` (released checkpoints -> bundle)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from attngan.errors import AttnGANError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 100  # the original's evaluation seed


def default_bundle_path() -> Path:
    """$ATTNGAN_BUNDLE, else models/default in the repository."""
    env = os.environ.get("ATTNGAN_BUNDLE")
    return Path(env) if env else REPO_ROOT / "models" / "default"


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate", help="generate bird images from captions with a model bundle",
        description="Generate images from a caption (or a file of captions, one per line) with a model bundle.",
    )
    gen.add_argument("caption", nargs="?", help="the caption, e.g. 'a small red bird with a black crown'")
    gen.add_argument("-o", "--output", default="bird.png",
                     help="output PNG for one caption (default bird.png); stage images and attention maps go beside it")
    gen.add_argument("--captions-file", type=Path, help="a text file with one caption per line (batch mode)")
    gen.add_argument("--out-dir", type=Path, help="batch mode: where to write NNNN.png, one per line")
    gen.add_argument("--batch-size", type=int, default=16, help="batch mode: captions per forward pass (default 16)")
    gen.add_argument("--bundle", type=Path, help="model bundle directory (default $ATTNGAN_BUNDLE or models/default)")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED,
                     help=f"noise seed (default {DEFAULT_SEED}); batch mode uses seed + line number")
    gen.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    gen.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                     help="auto: bf16 on GPUs and CPUs with AVX512/AMX, else fp32")
    gen.add_argument("--candidates", type=int, default=1,
                     help="best of N: draw each caption N times and keep the image the DAMSM encoders match best "
                          "to it (default 1; N generator passes; needs the bundle's image encoder)")
    gen.add_argument("--truncation", type=float, default=1.0, metavar="PSI",
                     help="draw the noise at PSI times its spread, 0..1: lower keeps closer to the caption, with less "
                          "variety between seeds (default 1: the paper's sampling; 0: one image per caption)")
    gen.set_defaults(func=run_generate)

    imp = subparsers.add_parser(
        "import-original", help="turn the original AttnGAN release (.pth + captions.pickle) into a bundle",
        description="Import taoxugit/AttnGAN checkpoints (e.g. bird_AttnGAN2.pth, text_encoder200.pth and the "
                    "data's captions.pickle) into a model bundle that `attngan generate` and the service load. "
                    "The architecture is read from the checkpoint; --cfg is checked against it.",
    )
    imp.add_argument("--netG", required=True, type=Path, help="generator checkpoint, e.g. bird_AttnGAN2.pth")
    imp.add_argument("--text-encoder", required=True, type=Path, help="DAMSM text encoder, e.g. text_encoder200.pth")
    imp.add_argument("--captions", required=True, type=Path, help="the data set's captions.pickle (the vocabulary)")
    imp.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    imp.add_argument("--cfg", type=Path, help="the original yml (e.g. eval_bird.yml): WORDS_NUM and a shape check")
    imp.add_argument("--image-encoder", type=Path, help="optional DAMSM image encoder, e.g. image_encoder200.pth")
    imp.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    imp.set_defaults(func=run_import_original)


# ---------------------------------------------------------------- generate


def _output_paths(output: Path, sizes: list[int], n_attention: int) -> tuple[list[Path], list[Path]]:
    stem, suffix = output.with_suffix(""), output.suffix or ".png"
    images = [Path(f"{stem}_{s}{suffix}") for s in sizes[:-1]] + [output]
    maps = [Path(f"{stem}_attn{k + 1}{suffix}") for k in range(n_attention)]
    return images, maps


def _read_captions(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise AttnGANError(f"captions file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise AttnGANError(f"{path} is not UTF-8 text") from None
    captions = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not captions:
        raise AttnGANError(f"{path} has no captions (one per line)")
    return captions


def run_generate(args: argparse.Namespace) -> int:
    if args.captions_file is None and not args.caption:
        raise AttnGANError("give a caption, e.g. attngan generate \"a small red bird\" -o bird.png, "
                           "or --captions-file F --out-dir D")
    if args.captions_file is not None and args.caption:
        raise AttnGANError("give either a caption or --captions-file, not both")
    if args.captions_file is not None and args.out_dir is None:
        raise AttnGANError("--captions-file needs --out-dir (where to write one image per line)")
    if args.batch_size < 1:
        raise AttnGANError(f"--batch-size must be at least 1, got {args.batch_size}")
    output = Path(args.output)
    if args.captions_file is None and output.suffix.lower() not in (".png", ""):
        raise AttnGANError(f"output {output} must be a .png file")
    bundle_path = args.bundle or default_bundle_path()
    if not bundle_path.is_dir():
        raise AttnGANError(f"model bundle not found: {bundle_path} (pass --bundle DIR or set ATTNGAN_BUNDLE; "
                           "make one with `attngan export` or `attngan import-original`)")

    from attngan.pipeline import TextToImage

    lines = _read_captions(args.captions_file) if args.captions_file is not None else None
    t2i = TextToImage.from_bundle(bundle_path, device=args.device, precision=args.precision,
                                  candidates=args.candidates, truncation=args.truncation)
    if lines is None:
        return _generate_one(t2i, args.caption, output, args.seed)
    return _generate_file(t2i, lines, args.out_dir, args.seed, args.batch_size)


def _generate_one(t2i: Any, caption: str, output: Path, seed: int) -> int:
    encoded = t2i.prepare(caption)
    result = t2i.generate([encoded], [seed])[0]
    if output.suffix == "":
        output = output.with_suffix(".png")
    output.parent.mkdir(parents=True, exist_ok=True)
    image_paths, map_paths = _output_paths(output, t2i.config.image_sizes, len(result.attention))
    for image, path in zip(result.images, image_paths):
        image.save(path)
    for grid, path in zip(result.attention_grids(), map_paths):
        grid.save(path)
    print(f"words used: {' '.join(result.tokens)}")
    if encoded.unknown:
        print(f"unknown words (ignored): {' '.join(encoded.unknown)}")
    chosen = f", best of {t2i.candidates}: candidate {result.candidate}" if t2i.candidates > 1 else ""
    chosen += f", truncation {t2i.truncation:g}" if t2i.truncation != 1 else ""
    print(f"wrote {', '.join(str(p) for p in image_paths + map_paths)} (model {t2i.version}, seed {seed}{chosen})")
    return 0


def _generate_file(t2i: Any, lines: list[tuple[int, str]], out_dir: Path, seed: int, batch_size: int) -> int:
    from tqdm import tqdm

    prepared = []
    for number, text in lines:
        try:
            prepared.append((number, t2i.prepare(text)))
        except AttnGANError as exc:
            raise AttnGANError(f"line {number}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown: set[str] = set()
    with tqdm(total=len(prepared), unit="img", desc="generate", file=sys.stderr) as bar:
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start: start + batch_size]
            results = t2i.generate([e for _, e in chunk], [seed + number for number, _ in chunk])
            for (number, encoded), result in zip(chunk, results):
                result.images[-1].save(out_dir / f"{number:04d}.png")
                unknown.update(encoded.unknown)
            bar.update(len(chunk))
    if unknown:
        print(f"unknown words (ignored): {' '.join(sorted(unknown))}")
    print(f"wrote {len(prepared)} images to {out_dir} as NNNN.png by line number (model {t2i.version})")
    return 0


# ---------------------------------------------------------------- import-original


def infer_model_config(netg: dict, n_words: int) -> dict[str, Any]:
    """Read the architecture from a G_NET / G_DCGAN state dict (the release has no config inside)."""
    try:
        ca = netg["ca_net.fc.weight"]
        fc = netg["h_net1.fc.0.weight"]
    except KeyError as exc:
        raise AttnGANError(f"not an AttnGAN generator checkpoint: key {exc.args[0]} is missing") from None
    condition_dim = ca.shape[0] // 4
    branch_num = 1 + sum(any(k.startswith(f"h_net{i}.") for k in netg) for i in (2, 3))
    residual = {k.split(".")[2] for k in netg if k.startswith("h_net2.residual.")}
    return {
        "n_words": n_words,
        "embedding_dim": int(ca.shape[1]),
        "gf_dim": int(fc.shape[0] // (16 * 4 * 4 * 2)),
        "z_dim": int(fc.shape[1] - condition_dim),
        "condition_dim": int(condition_dim),
        "r_num": len(residual),
        "branch_num": branch_num,
        "dcgan": "img_net.img.0.weight" in netg,
    }


def _with_bn_counters(module: Any, state: dict) -> dict:
    """The 2018 checkpoints predate BN's num_batches_tracked; add zeros so the state dict is complete."""
    full = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in full:
            full[key] = value.new_zeros(())
    return full


def run_import_original(args: argparse.Namespace) -> int:
    from attngan.bundle import check_state_dict, write_bundle
    from attngan.config import load_config
    from attngan.inception import read_state_dict
    from attngan.model import Generator, ImageEncoder, ModelConfig, TextEncoder
    from attngan.text import Vocabulary

    vocab, train_caps, test_caps = Vocabulary.from_captions_pickle(args.captions)
    netg = read_state_dict(args.netG)
    text = read_state_dict(args.text_encoder)
    if "encoder.weight" not in text:
        raise AttnGANError(f"{args.text_encoder} is not a DAMSM text encoder (no encoder.weight)")
    n_emb = int(text["encoder.weight"].shape[0])
    if n_emb != len(vocab):
        raise AttnGANError(f"the text encoder has {n_emb} words but {args.captions} has {len(vocab)}: "
                           "use the captions.pickle of the data set the encoder was trained on (CUB 5450, COCO 27297)")
    fields = infer_model_config(netg, len(vocab))
    if "rnn.weight_hh_l0" in text and 2 * int(text["rnn.weight_hh_l0"].shape[1]) != fields["embedding_dim"]:
        raise AttnGANError(f"the text encoder makes {2 * int(text['rnn.weight_hh_l0'].shape[1])}-d embeddings but "
                           f"the generator expects {fields['embedding_dim']}-d: not checkpoints of one setup")
    words_num = 18
    if args.cfg is not None:
        cfg = load_config(args.cfg)
        expected = {"gf_dim": cfg.GAN.GF_DIM, "z_dim": cfg.GAN.Z_DIM, "condition_dim": cfg.GAN.CONDITION_DIM,
                    "r_num": cfg.GAN.R_NUM, "branch_num": cfg.TREE.BRANCH_NUM, "dcgan": cfg.GAN.B_DCGAN,
                    "embedding_dim": cfg.TEXT.EMBEDDING_DIM}
        wrong = [f"{k}: cfg {v}, checkpoint {fields[k]}" for k, v in expected.items() if fields[k] != v]
        if wrong:
            raise AttnGANError(f"{args.cfg} does not describe {args.netG} ({'; '.join(wrong)})")
        words_num = cfg.TEXT.WORDS_NUM
    config = ModelConfig(words_num=words_num, **fields)

    generator = Generator(config)
    text_encoder = TextEncoder(config.n_words, nhidden=config.embedding_dim)
    check_state_dict("generator", generator, netg, where=str(args.netG))
    check_state_dict("text encoder", text_encoder, text, where=str(args.text_encoder))
    states = {"generator": _with_bn_counters(generator, netg), "text_encoder": text}
    image_state = None
    if args.image_encoder is not None:
        image_encoder = ImageEncoder(config.embedding_dim, kind="inception")
        image_state = read_state_dict(args.image_encoder)
        check_state_dict("image encoder", image_encoder, image_state, where=str(args.image_encoder))
        image_state = _with_bn_counters(image_encoder, image_state)
    info = {
        "source": "taoxugit/AttnGAN release",
        "files": {"netG": args.netG.name, "text_encoder": args.text_encoder.name, "captions": args.captions.name,
                  **({"image_encoder": args.image_encoder.name} if args.image_encoder else {})},
        "captions": {"train": len(train_caps), "test": len(test_caps)},
    }
    out = write_bundle(args.out, config=config, vocab=vocab, generator=states["generator"],
                       text_encoder=states["text_encoder"], image_encoder=image_state, info=info, half=args.half)
    from attngan.bundle import load_bundle

    bundle = load_bundle(out)
    print(f"wrote bundle {out} (version {bundle.version}; {len(vocab)} words, GF_DIM {config.gf_dim}, "
          f"R_NUM {config.r_num}, {config.branch_num} stages{', DCGAN' if config.dcgan else ''})")
    return 0
