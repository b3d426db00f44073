"""Does a run's head D check the eye ring against the words? Real heads, their caption against a swapped one.

The conditional head D (TRAIN.HEAD_D_CONDITIONAL, TRAIN.HEAD_D_WORDS) can only ask the generator for the ring the
caption names if it tells a caption that names the ring right from the same caption with the ring's colour changed.
For each held-out image with a caption naming the part's colour, this crops the head as the GAN does (where the
detail reader looks for the eye ring), scores it with the head D's caption head (mean over its windows) under the true
caption and under the caption with that colour swapped (`trainer.data.synth.swap_named_colour`, as
TRAIN.HEAD_D_SWAP_PART makes them), and prints how often the true caption scores higher: 50% is a head D that does
not look at the part.

    .venv/bin/python models/probe_head_d.py --run output/eye/swap --bundle models/default \
        --backbone output/default_detail_backbone.safetensors --data data/default
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a GAN run with a word-reading head D (its checkpoint.pt)")
    ap.add_argument("--bundle", required=True, help="the bundle whose text encoder the run trained with")
    ap.add_argument("--backbone", required=True, help="the run's TRAIN.DETAIL_BACKBONE (where the heads are cropped)")
    ap.add_argument("--data", required=True, help="a synthetic-bird data set (attngan data synth)")
    ap.add_argument("--part", default="eyering")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=300, help="held-out images with a caption naming the part")
    args = ap.parse_args()

    from attngan.bundle import load_bundle
    from attngan.config import load_config
    from attngan.errors import AttnGANError
    from attngan.model import ConditionalPatchDiscriminator, Words
    from trainer.backbone import load_detail_reader
    from trainer.data.dataset import TextImageDataset
    from trainer.evaluate.run import encode_batch
    from trainer.gan import crop_heads, swapped_condition

    checkpoint = Path(args.run) / "checkpoint.pt"
    if not checkpoint.is_file():
        ap.error(f"{checkpoint}: no such file (--run is a GAN run's output folder)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["netsD"][-1]
    if not any(k.startswith("COND_DNET.attention") for k in state):
        ap.error(f"{args.run}: its last discriminator is not a word-reading head D (TRAIN.HEAD_D_WORDS)")
    ndf, nef = state["img_code.0.weight"].shape[0], state["COND_DNET.attention.conv_context.weight"].shape[1]
    headD = ConditionalPatchDiscriminator(ndf, nef, words=True)
    headD.load_state_dict(state)
    headD.eval()
    try:  # a missing bundle, backbone or data set: one line
        bundle = load_bundle(args.bundle)
        detail = load_detail_reader(args.backbone, min_accuracy=0.0).eval()  # where it looks, at any accuracy
        words_num = bundle.config.words_num
        cfg = load_config(None, ["TREE.BRANCH_NUM=3", "TREE.BASE_SIZE=64", f"TEXT.WORDS_NUM={words_num}"])
        ds = TextImageDataset(args.data, args.split, cfg, vocab=bundle.vocab, train=False)
    except AttnGANError as exc:
        ap.error(str(exc))
    text_encoder = bundle.build_networks("cpu", image_encoder=False)[0]
    text_encoder.eval()
    device = torch.device("cpu")
    above = total = 0
    with torch.no_grad():
        for i in range(len(ds)):
            swap = None
            for caption in ds.captions(i):
                ids, lengths = encode_batch([caption], words_num, device)
                swap = swapped_condition(headD, text_encoder, bundle.vocab, ids, lengths, args.part, (0, i))
                if swap is not None:
                    break
            if swap is None:
                continue
            features = headD(crop_heads(detail, ds.images(i)[-1][None]))
            words, _ = text_encoder(ids, lengths)
            true = headD.COND_DNET(features, Words(words, ids[:, : words.size(2)] == 0)).mean()
            above += bool(true > headD.COND_DNET(features, swap[1]).mean())
            total += 1
            if total == args.images:
                break
    if not total:
        raise SystemExit(f"no {args.split} caption names the {args.part}'s colour")
    print(f"{args.run}: the true caption scored above the {args.part}-swapped one on {above} of {total} real "
          f"{args.split} heads ({100 * above / total:.1f}%; 50% = the head D does not read the {args.part})")


if __name__ == "__main__":
    main()
