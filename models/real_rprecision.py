"""R-precision of REAL test images under a bundle's own DAMSM encoders: the ceiling the DAMSM sets.

`attngan evaluate` ranks generated images; this ranks the real test images with the same protocol (one caption
per image chosen with seed 100, 99 mismatched captions from other classes, top-1, 10 folds), so a low number
here means the encoders, not the generator, limit R-precision.

    .venv/bin/python models/real_rprecision.py [--bundle models/default] [--data data/default]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attngan.bundle import load_bundle
from attngan.text import pad_caption


def main() -> None:
    from attngan.config import load_config
    from trainer.data import TextImageDataset
    from trainer.evaluate.rprecision import fold_stats, r_precision_hits, sample_mismatched

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="data/default")
    parser.add_argument("--cfg", default="trainer/cfg/default/gan.yml", help="config giving the image sizes")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    text_encoder, _, image_encoder = bundle.build_networks("cpu", image_encoder=True)
    cfg = load_config(args.cfg)
    ds = TextImageDataset(args.data, "test", cfg, vocab=bundle.vocab, train=False)
    rng = np.random.default_rng(args.seed)
    codes, sents = [], []
    with torch.no_grad():
        for start in range(0, len(ds), 50):
            idx = range(start, min(start + 50, len(ds)))
            images = torch.stack([ds.images(i)[-1] for i in idx])
            caps, lens = [], []
            for i in idx:
                options = ds.captions(i)
                ids, n = pad_caption(options[rng.integers(len(options))], cfg.TEXT.WORDS_NUM)
                caps.append(ids)
                lens.append(n)
            _, sent = text_encoder(torch.as_tensor(np.stack(caps)), torch.as_tensor(lens))
            _, code = image_encoder(images.float())
            codes.append(code.float().numpy())
            sents.append(sent.float().numpy())
    image_codes, sent_codes = np.concatenate(codes), np.concatenate(sents)
    rng = np.random.default_rng(args.seed)
    mismatched = sample_mismatched(np.array(ds.class_ids), 99, rng)
    hits = r_precision_hits(image_codes, sent_codes, sent_codes[mismatched])
    mean, std = fold_stats(hits, 10, rng)
    print(f"real-image R-precision {100 * mean:.1f}% +- {100 * std:.1f} ({len(hits)} images, 100 candidates)")


if __name__ == "__main__":
    main()
