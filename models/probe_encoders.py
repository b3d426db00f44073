"""What do a bundle's DAMSM encoders know about parts? Linear read-outs on the synthetic birds.

For each judgeable part, two linear probes (softmax regression, fitted on the TRAIN split, scored on the TEST split,
whose species training never saw):
- text: from the sentence vector of each caption that names the part, its named colour;
- image: from the DAMSM global code of each real image, the part's true colour.
A read-out right on train captions but much less on test ones means the encoder learnt the training species
rather than parts and colours, and whatever is trained from it (the generator) inherits that. Also prints the
encoders' R-precision on the real test images (first caption of each, 99 mismatched from other classes).

    .venv/bin/python models/probe_encoders.py --bundle models/default --data data/default
    .venv/bin/python models/probe_encoders.py --bundle models/default --data data/default \
        --text-encoder output/default_DAMSM/Model/text_encoder45.pth   # a DAMSM run's encoders instead
    .venv/bin/python models/probe_encoders.py --parts crown,eyering   # does the sentence say the eye ring's colour?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PARTS = ["crown", "nape", "throat", "back", "wing", "wingbar", "breast", "belly", "tail", "leg"]


def encode_split(data: Path, split: str, bundle, text_encoder, image_encoder, attrs: dict, words_num: int) -> dict:
    """Sentence vectors and named attributes of every caption; DAMSM codes and true attributes of every image."""
    from attngan.config import load_config
    from trainer.data.dataset import TextImageDataset
    from trainer.data.synth import named_by_words
    from trainer.evaluate.run import encode_batch

    cfg = load_config(None, ["TREE.BRANCH_NUM=1", "TREE.BASE_SIZE=128", f"TEXT.WORDS_NUM={words_num}"])
    ds = TextImageDataset(data, split, cfg, vocab=bundle.vocab, train=False)
    sents, named, truth, codes, first = [], [], [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            record = attrs[ds.keys[i]]
            by_words = named_by_words(record)
            captions = ds.captions(i)
            ids, lengths = encode_batch(captions, words_num, torch.device("cpu"))
            first.append(sum(len(s) for s in sents))
            sents.append(text_encoder(ids, lengths)[1].numpy())
            named += [by_words.get(tuple(ds.vocab.ixtoword[j] for j in c), {}) for c in captions]
            truth.append(record["attributes"])
        for start in range(0, len(ds), 64):
            batch = torch.stack([ds.images(i)[-1] for i in range(start, min(len(ds), start + 64))])
            codes.append(image_encoder(batch)[1].float().numpy())
    return {"sent": np.concatenate(sents), "named": named, "truth": truth, "codes": np.concatenate(codes),
            "first": np.array(first), "classes": np.array(ds.class_ids)}


def linear_probe(x: np.ndarray, y: list[int], x_test: np.ndarray, y_test: list[int], n_classes: int,
                 steps: int = 300) -> tuple[float, float]:
    """Softmax regression on standardised features (full batch Adam); (train accuracy, test accuracy)."""
    torch.manual_seed(0)
    xt, xs = torch.tensor(x, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xt, xs = (xt - mean) / std, (xs - mean) / std
    yt, ys = torch.tensor(y), torch.tensor(y_test)
    head = torch.nn.Linear(xt.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        return ((head(xt).argmax(1) == yt).float().mean().item(), (head(xs).argmax(1) == ys).float().mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="data/default")
    parser.add_argument("--text-encoder", default="", help="a DAMSM run's text_encoder*.pth (its image_encoder "
                                                           "beside it) instead of the bundle's encoders")
    parser.add_argument("--words-num", type=int, default=0, help="caption words read (default: the bundle's)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to probe (default: the "
                        "judgeable ones; eyering, nape and the rest of trainer.data.synth.ATTRIBUTE_VALUES work too)")
    args = parser.parse_args()
    from attngan.bundle import load_bundle
    from trainer.checkpoint import load_weights
    from trainer.evaluate.rprecision import r_precision_hits, sample_mismatched

    bundle = load_bundle(args.bundle)
    text_encoder, _, image_encoder = bundle.build_networks("cpu", image_encoder=True)
    if args.text_encoder:
        text_encoder.load_state_dict(load_weights(args.text_encoder))
        image_encoder.load_state_dict(load_weights(args.text_encoder.replace("text_encoder", "image_encoder")))
    text_encoder.eval()
    image_encoder.eval()
    data = Path(args.data)
    attrs = json.loads((data / "attributes.json").read_text())
    attrs = attrs.get("images", attrs)
    words_num = args.words_num or bundle.config.words_num
    train = encode_split(data, "train", bundle, text_encoder, image_encoder, attrs, words_num)
    test = encode_split(data, "test", bundle, text_encoder, image_encoder, attrs, words_num)

    sent = test["sent"][test["first"]]
    hits = r_precision_hits(test["codes"], sent, sent[sample_mismatched(test["classes"], 99, np.random.default_rng(100))])
    print(f"R-precision of the real test images (first caption each): {100 * hits.mean():.1f}%")
    print(f"{'part':8s} {'text: train / test captions':>28s} {'image: train / test images':>28s}")
    rows = []
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        values = sorted({t[part] for t in train["truth"] + test["truth"] if part in t})
        index = {v: k for k, v in enumerate(values)}
        sel = [k for k, n in enumerate(train["named"]) if part in n]
        sel_test = [k for k, n in enumerate(test["named"]) if part in n]
        text = linear_probe(train["sent"][sel], [index[train["named"][k][part]] for k in sel], test["sent"][sel_test],
                            [index[test["named"][k][part]] for k in sel_test], len(values))
        image = linear_probe(train["codes"], [index[t[part]] for t in train["truth"]], test["codes"],
                             [index[t[part]] for t in test["truth"]], len(values))
        rows.append((*text, *image))
        print(f"{part:8s} {100 * text[0]:18.0f}% / {100 * text[1]:3.0f}% {100 * image[0]:18.0f}% / {100 * image[1]:3.0f}%")
    mean = np.mean(rows, axis=0)
    print(f"{'mean':8s} {100 * mean[0]:18.0f}% / {100 * mean[1]:3.0f}% {100 * mean[2]:18.0f}% / {100 * mean[3]:3.0f}%")


if __name__ == "__main__":
    main()
