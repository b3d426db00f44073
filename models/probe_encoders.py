"""What do a bundle's DAMSM encoders know about parts? Linear read-outs on the synthetic birds.

For each judgeable part, three probes (fitted on the TRAIN split, scored on the TEST split, whose species training
never saw):
- text: from the sentence vector of each caption that names the part, its named colour (softmax regression);
- words: the same from the caption's word features, pooled by four learnt attention queries over the words, then
  softmax regression (what a D or generator that attends over the words could read, TRAIN.HEAD_D_WORDS);
- image: from the DAMSM global code of each real image, the part's true colour (softmax regression).
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
    sents, words, masks, named, truth, codes, first = [], [], [], [], [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            record = attrs[ds.keys[i]]
            by_words = named_by_words(record)
            captions = ds.captions(i)
            ids, lengths = encode_batch(captions, words_num, torch.device("cpu"))
            first.append(sum(len(s) for s in sents))
            word_features, sent = text_encoder(ids, lengths)
            sents.append(sent.numpy())
            words.append(torch.nn.functional.pad(word_features, (0, words_num - word_features.size(2))))
            masks.append(torch.arange(words_num)[None] >= lengths[:, None])  # True = padding
            named += [by_words.get(tuple(ds.vocab.ixtoword[j] for j in c), {}) for c in captions]
            truth.append(record["attributes"])
        for start in range(0, len(ds), 64):
            batch = torch.stack([ds.images(i)[-1] for i in range(start, min(len(ds), start + 64))])
            codes.append(image_encoder(batch)[1].float().numpy())
    return {"sent": np.concatenate(sents), "words": torch.cat(words), "mask": torch.cat(masks), "named": named,
            "truth": truth, "codes": np.concatenate(codes),
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


def attention_probe(words: torch.Tensor, mask: torch.Tensor, y: list[int], words_test: torch.Tensor,
                    mask_test: torch.Tensor, y_test: list[int], n_classes: int, queries: int = 4, steps: int = 400
                    ) -> tuple[float, float]:
    """Word features B x D x T (mask B x T, True = padding) pooled by `queries` learnt attention queries, then softmax
    regression (minibatch Adam); (train accuracy, test accuracy)."""
    torch.manual_seed(0)
    dim = words.shape[1]
    query, head = torch.nn.Linear(dim, queries), torch.nn.Linear(dim * queries, n_classes)
    opt = torch.optim.Adam([*query.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)
    yt, ys = torch.tensor(y), torch.tensor(y_test)

    def logits(w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        attn = query(w.transpose(1, 2)).masked_fill(m[..., None], float("-inf")).softmax(1)  # B x T x queries
        return head(torch.einsum("bdt,btq->bdq", w, attn).flatten(1))

    for _ in range(steps):
        batch = torch.randint(0, len(yt), (512,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits(words[batch], mask[batch]), yt[batch]).backward()
        opt.step()
    with torch.no_grad():
        return ((logits(words, mask).argmax(1) == yt).float().mean().item(),
                (logits(words_test, mask_test).argmax(1) == ys).float().mean().item())


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
    from attngan.errors import AttnGANError
    from trainer.checkpoint import load_weights
    from trainer.data.synth import ATTRIBUTE_VALUES, load_attributes
    from trainer.evaluate.rprecision import r_precision_hits, sample_mismatched

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ATTRIBUTE_VALUES]
    if unknown or not parts:
        parser.error(f"--parts {args.parts}: give parts of trainer.data.synth.ATTRIBUTE_VALUES "
                     f"({', '.join(ATTRIBUTE_VALUES)})")
    try:
        bundle = load_bundle(args.bundle)
        attrs = load_attributes(Path(args.data))
    except AttnGANError as exc:  # a missing bundle, a data set without attributes.json: one line
        parser.error(str(exc))

    text_encoder, _, image_encoder = bundle.build_networks("cpu", image_encoder=True)
    if args.text_encoder:
        text_encoder.load_state_dict(load_weights(args.text_encoder))
        image_encoder.load_state_dict(load_weights(args.text_encoder.replace("text_encoder", "image_encoder")))
    text_encoder.eval()
    image_encoder.eval()
    data = Path(args.data)
    words_num = args.words_num or bundle.config.words_num
    train = encode_split(data, "train", bundle, text_encoder, image_encoder, attrs, words_num)
    test = encode_split(data, "test", bundle, text_encoder, image_encoder, attrs, words_num)

    sent = test["sent"][test["first"]]
    hits = r_precision_hits(test["codes"], sent, sent[sample_mismatched(test["classes"], 99, np.random.default_rng(100))])
    print(f"R-precision of the real test images (first caption each): {100 * hits.mean():.1f}%")
    print(f"{'part':8s} {'text: train / test captions':>28s} {'words: train / test captions':>29s} "
          f"{'image: train / test images':>28s}")
    rows = []
    for part in parts:
        values = sorted({t[part] for t in train["truth"] + test["truth"] if part in t})
        index = {v: k for k, v in enumerate(values)}
        sel = [k for k, n in enumerate(train["named"]) if part in n]
        sel_test = [k for k, n in enumerate(test["named"]) if part in n]
        text = linear_probe(train["sent"][sel], [index[train["named"][k][part]] for k in sel], test["sent"][sel_test],
                            [index[test["named"][k][part]] for k in sel_test], len(values))
        words = attention_probe(train["words"][sel], train["mask"][sel], [index[train["named"][k][part]] for k in sel],
                                test["words"][sel_test], test["mask"][sel_test],
                                [index[test["named"][k][part]] for k in sel_test], len(values))
        image = linear_probe(train["codes"], [index[t[part]] for t in train["truth"]], test["codes"],
                             [index[t[part]] for t in test["truth"]], len(values))
        rows.append((*text, *words, *image))
        print(f"{part:8s} " + " ".join(f"{100 * a:18.0f}% / {100 * b:3.0f}%" for a, b in (text, words, image)))
    mean = np.mean(rows, axis=0)
    print(f"{'mean':8s} " + " ".join(f"{100 * mean[k]:18.0f}% / {100 * mean[k + 1]:3.0f}%" for k in (0, 2, 4)))


if __name__ == "__main__":
    main()
