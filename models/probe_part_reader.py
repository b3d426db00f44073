"""Does the generator satisfy its own part loss? The part reader against the evaluation's judge, part by part.

The GAN's part loss (TRAIN.PART_LOSS) trains the generator against the image backbone's part heads; the evaluation
scores its birds with a separate attribute judge. This draws the evaluation's birds (the same test captions, seed
and noise as `attngan evaluate`), reads each one with both, and prints per part how often each says the named
colour is drawn. A part the reader passes and the judge fails ("reader only") is one where the generator learnt to
satisfy the reader rather than to draw the part; a part that even the reader fails is one the loss does not teach.

    .venv/bin/python models/probe_part_reader.py --bundle models/default --data data/default \
        --backbone output/default_backbone.safetensors \
        --judge models/default/eval/attribute_classifier.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a model bundle whose DAMSM trunk is the backbone's")
    ap.add_argument("--data", required=True, help="a synthetic-bird data set (attngan data synth)")
    ap.add_argument("--backbone", required=True, help="the TRAIN.IMAGE_BACKBONE file the bundle was trained with")
    ap.add_argument("--judge", required=True, help="an evaluation's attribute_classifier.safetensors")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args()

    from attngan.bundle import load_bundle
    from trainer.backbone import load_part_reader
    from trainer.evaluate import faithfulness
    from trainer.evaluate.run import (
        EvalOptions,
        encode_batch,
        faithfulness_inputs,
        item_noise,
        load_test_set,
        named_for_items,
        plan_items,
    )

    torch.set_grad_enabled(False)
    device = torch.device("cpu")
    bundle = load_bundle(args.bundle)
    mc = bundle.config
    ts = load_test_set(Path(args.data), bundle, "cub")
    text_encoder, generator, image_encoder = bundle.build_networks(device)
    image_encoder = image_encoder.float()
    opts = EvalOptions(bundle=Path(args.bundle), data=Path(args.data), out=Path(args.judge).parent,
                       images=args.images, seed=args.seed, judge=args.judge)
    judge, attrs, skipped = faithfulness_inputs(opts, ts, device)
    if judge is None:
        raise SystemExit(f"no judge: {skipped}")
    reader = load_part_reader(args.backbone, image_encoder).float()

    items = plan_items(ts, args.images, args.seed)  # the evaluation's captions and noise, so its numbers reproduce
    z_all, eps_all = item_noise(torch.Generator().manual_seed(args.seed), len(items), 1, mc.z_dim, mc.condition_dim)
    judged, read = [], {p: [] for p in reader.parts}
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        captions, lengths = encode_batch([ts.captions[i][k] for i, k in chunk], mc.words_num, device)
        words, sent = text_encoder(captions, lengths)
        mask = captions[:, : words.size(2)] == 0
        end = start + len(chunk)
        birds = generator(z_all[start:end, 0], sent, words, mask, eps_all[start:end, 0])[0][-1].float().clamp(-1, 1)
        judged.append(faithfulness.predict(judge.model, birds))
        _, pooled = image_encoder.features(birds)
        for part, logits in reader(pooled).items():
            read[part].append(logits.argmax(1))
    judged_all = torch.cat(judged)

    named = named_for_items(items, ts, attrs)
    judge_labels = faithfulness.encode_labels(named, judge.model.parts)
    reader_labels = faithfulness.encode_labels(named, reader.parts)
    judge_parts = list(judge.model.parts)
    print(f"{len(items)} birds of {args.bundle}; named colour drawn, by the judge and by the part loss's reader")
    print(f"{'part':12s} {'named':>6s} {'judge':>7s} {'reader':>7s} {'both':>7s} {'reader only':>12s}")
    for col, part in enumerate(reader.parts):
        if part not in judge.judgeable:
            continue
        has = reader_labels[:, col] >= 0
        reader_ok = torch.cat(read[part])[has] == reader_labels[has, col]
        j = judge_parts.index(part)
        judge_ok = judged_all[has, j] == judge_labels[has, j]
        print(f"{part:12s} {int(has.sum()):6d} {100 * judge_ok.float().mean():6.1f}% "
              f"{100 * reader_ok.float().mean():6.1f}% {100 * (reader_ok & judge_ok).float().mean():6.1f}% "
              f"{100 * (reader_ok & ~judge_ok).float().mean():11.1f}%")


if __name__ == "__main__":
    main()
