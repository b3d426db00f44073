"""DAMSM pretraining: the text encoder and the image encoder's projection layers (the original pretrain_DAMSM.py).

Loss w0 + w1 + s0 + s1 (word and sentence matching, both directions). Adam(ENCODER_LR, betas 0.5/0.999),
lr x0.98 per epoch until it reaches ENCODER_LR/10, gradient norm of the RNN clipped to RNN_GRAD_CLIP.
The original re-created Adam every epoch (resetting its moments); we keep one optimizer unless
TRAIN.RECREATE_OPTIMIZER is set. Writes Model/text_encoder{epoch}.pth and Model/image_encoder{epoch}.pth
(plain state dicts, the original names), vocab.json, and a resumable checkpoint.pt.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch

from attngan.config import Config
from attngan.errors import AttnGANError
from trainer import losses
from trainer.checkpoint import (
    GracefulStop,
    atomic_save,
    find_latest,
    gather_rng_states,
    load_weights,
    vocab_beside,
)
from trainer.distributed import average_gradients, barrier, broadcast_module, mean_value
from trainer.runtime import (
    Progress,
    Run,
    autocast,
    batches_per_epoch,
    checkpoint_or_stop,
    log_step,
    make_loader,
    resolve_data_dir,
    resume_checkpoint,
    total_steps,
    train_in_run,
)

log = logging.getLogger("trainer")


def damsm_lr(base: float, epoch: int) -> float:
    """The original schedule: after each epoch, lr *= 0.98 while lr > base / 10."""
    lr = base
    for _ in range(epoch):
        if lr > base / 10.0:
            lr *= 0.98
    return lr


def build_image_encoder(cfg: Config, pretrained: bool = False):
    """The config's DAMSM image encoder; `pretrained`: with its ImageNet Inception weights or, for the small
    encoder, its TRAIN.IMAGE_BACKBONE trunk (frozen, as the paper's Inception is) and, with TRAIN.IMAGE_CODE parts,
    its global projection fixed to the backbone's part read-out."""
    from attngan.model import ImageEncoder, ModelConfig

    ModelConfig.from_config(cfg, 1)  # validates IMAGE_ENCODER and IMAGE_ENCODER_SIZE
    if cfg.TRAIN.IMAGE_CODE not in ("learnt", "parts"):
        raise AttnGANError(f"TRAIN.IMAGE_CODE must be 'learnt' or 'parts', got {cfg.TRAIN.IMAGE_CODE!r}")
    if cfg.TRAIN.IMAGE_CODE == "parts" and not (cfg.IMAGE_ENCODER == "small" and cfg.TRAIN.IMAGE_BACKBONE):
        raise AttnGANError("TRAIN.IMAGE_CODE parts needs IMAGE_ENCODER small and a TRAIN.IMAGE_BACKBONE with part heads")
    weights = (cfg.TRAIN.INCEPTION_WEIGHTS or None) if pretrained else None
    image = ImageEncoder(nef=cfg.TEXT.EMBEDDING_DIM, kind=cfg.IMAGE_ENCODER, inception_weights=weights,
                         input_size=cfg.IMAGE_ENCODER_SIZE)
    if pretrained and cfg.TRAIN.IMAGE_BACKBONE:
        from trainer.backbone import load_backbone

        if cfg.IMAGE_ENCODER != "small":
            raise AttnGANError("TRAIN.IMAGE_BACKBONE is for IMAGE_ENCODER small (Inception takes TRAIN.INCEPTION_WEIGHTS)")
        meta = load_backbone(image, cfg.TRAIN.IMAGE_BACKBONE)
        image.freeze_trunk(global_block=meta.get("pool", "mean") == "mean")
        if cfg.TRAIN.IMAGE_CODE == "parts":
            from trainer.backbone import part_code_projection

            weight, bias = part_code_projection(cfg.TRAIN.IMAGE_BACKBONE, cfg.TEXT.EMBEDDING_DIM, cfg.TRAIN.SEED)
            with torch.no_grad():
                image.emb_cnn_code.weight.copy_(weight)
                image.emb_cnn_code.bias.copy_(bias)
            image.emb_cnn_code.requires_grad_(False)
    return image


def build_encoders(cfg: Config, n_words: int):
    from attngan.model import TextEncoder

    return TextEncoder(n_words, nhidden=cfg.TEXT.EMBEDDING_DIM), build_image_encoder(cfg, pretrained=True)


def remap_embedding(state: dict, old_vocab, new_vocab) -> tuple[dict, int]:
    """Text encoder weights for a new vocabulary: rows of known words copied, new words keep their init."""
    from attngan.model import TextEncoder

    fresh = TextEncoder(len(new_vocab), nhidden=state["rnn.weight_hh_l0"].shape[1] * 2).state_dict()
    old = state["encoder.weight"]
    new = fresh["encoder.weight"].clone()
    known = 0
    for index, word in enumerate(new_vocab.ixtoword):
        old_index = old_vocab.wordtoix.get(word)
        if old_index is not None and old_index < old.shape[0]:
            new[index] = old[old_index]
            known += index > 0
    out = dict(state)
    out["encoder.weight"] = new
    return out, known


def _init_from(path: str, text, image, vocab) -> None:
    """Fine-tune: start from a bundle's (or a text_encoder*.pth's) encoders on this data's vocabulary."""
    from attngan.bundle import load_bundle

    p = Path(path)
    if (p / "manifest.json").is_file():
        bundle = load_bundle(p)
        state, old_vocab = bundle.read_state("text_encoder"), bundle.vocab
        image_state = bundle.read_state("image_encoder") if bundle.has_image_encoder else None
    else:
        state = load_weights(p)
        old_vocab = vocab_beside(p)
        beside = p.with_name(p.name.replace("text_encoder", "image_encoder"))
        image_state = load_weights(beside) if beside != p and beside.is_file() else None
        if old_vocab is None:
            raise AttnGANError(f"no vocab.json beside {p}; fine-tuning needs the vocabulary it was trained with")
    state, known = remap_embedding(state, old_vocab, vocab)
    text.load_state_dict(state)
    if image_state is not None:
        image.load_state_dict(image_state, strict=False)
    log.info("initialised from %s: %d of %d words of this data were known to it", path, known, len(vocab) - 1)


def train_damsm(cfg: Config, data_dir: str | None = None, output_dir: str | None = None,
                init_from: str | None = None) -> Path:
    """Train (or resume) DAMSM; returns the output folder."""

    data = resolve_data_dir(cfg, data_dir)
    if cfg.IMAGE_ENCODER == "inception" and not cfg.TRAIN.INCEPTION_WEIGHTS and not cfg.TRAIN.NET_E:
        raise AttnGANError("IMAGE_ENCODER inception needs ImageNet weights: set TRAIN.INCEPTION_WEIGHTS to a local "
                           "torchvision inception_v3_google .pth, or use IMAGE_ENCODER=small")
    renders, render_steps = cfg.TRAIN.TEXT_RENDERS, cfg.TRAIN.TEXT_RENDER_STEPS
    if renders < 0 or render_steps < 0 or bool(renders) != bool(render_steps):
        raise AttnGANError("TRAIN.TEXT_RENDERS and TRAIN.TEXT_RENDER_STEPS go together: both positive, or both 0 (off)")
    if renders and cfg.TRAIN.IMAGE_CODE != "parts":
        raise AttnGANError("TRAIN.TEXT_RENDERS trains against the fixed part code: set TRAIN.IMAGE_CODE parts")
    if renders and renders < cfg.TRAIN.BATCH_SIZE:
        raise AttnGANError(f"TRAIN.TEXT_RENDERS ({renders}) must be at least TRAIN.BATCH_SIZE ({cfg.TRAIN.BATCH_SIZE})")
    return train_in_run(cfg, output_dir, "DAMSM", _train, data, init_from)


def _train(run: Run, data: Path, init_from: str | None, stop: GracefulStop) -> Path:
    from trainer.data import TextImageDataset

    cfg, info, device = run.cfg, run.info, run.device
    ckpt_path, ckpt, seed = resume_checkpoint(run)

    vocab = None
    if ckpt is None and cfg.TRAIN.NET_E:
        vocab = vocab_beside(Path(cfg.TRAIN.NET_E))
    if ckpt is not None:
        from attngan.text import Vocabulary
        vocab = Vocabulary.from_dict(ckpt["vocab"])
    train_set = TextImageDataset(data, "train", cfg, vocab=vocab, train=True)
    vocab = train_set.vocab
    test_set = TextImageDataset(data, "test", cfg, vocab=vocab, train=False)
    if info.writes_files:
        vocab.save_json(run.out / "vocab.json")

    text, image = build_encoders(cfg, len(vocab))
    start_epoch, step, skip = 0, 0, 0
    if ckpt is None and init_from:
        _init_from(init_from, text, image, vocab)
    elif ckpt is None and cfg.TRAIN.NET_E:
        # the original's resume: NET_E = .../text_encoder{N}.pth, image_encoder{N}.pth beside it
        net_e = Path(cfg.TRAIN.NET_E)
        text.load_state_dict(load_weights(net_e))
        image_path = net_e.with_name(net_e.name.replace("text_encoder", "image_encoder"))
        image.load_state_dict(load_weights(image_path))
        digits = "".join(ch for ch in net_e.stem.replace("text_encoder", "") if ch.isdigit())
        start_epoch = int(digits) + 1 if digits else 0
    text.to(device)
    image.to(device)
    if cfg.TRAIN.CHANNELS_LAST:
        image.to(memory_format=torch.channels_last)
    params = list(text.parameters()) + [p for p in image.parameters() if p.requires_grad]

    def new_optimizer(lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), foreach=True)

    optimizer = new_optimizer(cfg.TRAIN.ENCODER_LR)
    if ckpt is not None:
        text.load_state_dict(ckpt["text_encoder"])
        image.load_state_dict(ckpt["image_encoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step, skip = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["step_in_epoch"])
        run.resumed(ckpt_path, ckpt)
    else:
        broadcast_module(text, info)
        broadcast_module(image, info)

    loader, sampler = make_loader(train_set, run, seed)
    valid_loader, valid_sampler = make_loader(test_set, run, seed + 1, batch_size=min(
        cfg.TRAIN.BATCH_SIZE, len(test_set) // info.world_size))
    data_total = total_steps(cfg, sampler)
    total = data_total + cfg.TRAIN.TEXT_RENDER_STEPS
    if step >= total:
        log.info("DAMSM training already complete (%d steps) in %s", step, run.out)
        return run.out
    g = cfg.TRAIN.SMOOTH
    progress = Progress(total, step, info.is_main, "DAMSM", cfg.TRAIN.LOG_INTERVAL)

    def save(epoch: int, in_epoch: int, **extra) -> None:
        states = gather_rng_states(info)
        if info.writes_files:
            atomic_save({"kind": "damsm", "seed": seed, "epoch": epoch, "step": step, "step_in_epoch": in_epoch,
                         "text_encoder": text.state_dict(), "image_encoder": image.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": states, "vocab": vocab.to_dict(),
                         "config": cfg.to_dict(), **extra}, ckpt_path)
        barrier(info)

    def snapshot(epoch: int) -> None:
        if info.writes_files:
            atomic_save(text.state_dict(), run.model_dir / f"text_encoder{epoch}.pth")
            atomic_save(image.state_dict(), run.model_dir / f"image_encoder{epoch}.pth")
            log.info("saved Model/text_encoder%d.pth and image_encoder%d.pth", epoch, epoch)
        barrier(info)

    stopped = False
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.TRAIN.MAX_EPOCH if step < data_total else start_epoch):
        lr = damsm_lr(cfg.TRAIN.ENCODER_LR, epoch)
        if cfg.TRAIN.RECREATE_OPTIMIZER and skip == 0:
            optimizer = new_optimizer(lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        sampler.set_start(skip * cfg.TRAIN.BATCH_SIZE)
        in_epoch = skip
        skip = 0
        text.train()
        image.train()
        for batch in loader:
            batch = batch.to(device)
            with autocast(device, run.amp):
                words, sent = text(batch.captions, batch.lengths)
                regions, code = image(batch.images[-1])
            w0, w1, _ = losses.words_loss(regions, words, batch.lengths, batch.class_ids, g.GAMMA1, g.GAMMA2,
                                          g.GAMMA3, cfg.TRAIN.PAPER_WORD_EXPONENT)
            s0, s1 = losses.sent_loss(code, sent, batch.class_ids, g.GAMMA3)
            loss = w0 + w1 + s0 + s1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params, info)
            torch.nn.utils.clip_grad_norm_(text.parameters(), cfg.TRAIN.RNN_GRAD_CLIP)
            optimizer.step()
            step += 1
            in_epoch += 1
            values = {"w_loss": (w0 + w1).item(), "s_loss": (s0 + s1).item()}
            if not math.isfinite(values["w_loss"] + values["s_loss"]):
                raise AttnGANError(f"DAMSM loss is not finite at step {step}; lower TRAIN.ENCODER_LR")
            log_step(run, progress, step, values, "damsm/train", lr=lr)
            if checkpoint_or_stop(run, stop, step, save, epoch, in_epoch):
                stopped = True
                break
            if step >= data_total:
                if in_epoch >= batches_per_epoch(sampler, cfg.TRAIN.BATCH_SIZE):
                    in_epoch = 0  # the last step fell on the epoch's end: the epoch ran to its end
                break
        else:
            in_epoch = 0  # the epoch ran to its end
        if stopped:
            break
        valid = _validate(run, text, image, valid_loader, valid_sampler, epoch)
        run.scalars(step, valid, "damsm/valid")
        log.info("epoch %d: valid w_loss %.3f s_loss %.3f, lr %.6f, %.2f steps/s", epoch, valid["w_loss"],
                 valid["s_loss"], lr, progress.rate())
        if epoch % cfg.TRAIN.SNAPSHOT_INTERVAL == 0:
            snapshot(epoch)
        done = step >= data_total or epoch + 1 >= cfg.TRAIN.MAX_EPOCH
        # stopped by MAX_STEPS mid-epoch: a rerun with a larger MAX_STEPS continues inside this epoch
        if in_epoch:
            save(epoch, in_epoch)
        else:
            save(epoch + 1, 0)
        if done:
            snapshot(epoch + 1 if epoch % cfg.TRAIN.SNAPSHOT_INTERVAL else epoch)
            break
    if not stopped and cfg.TRAIN.TEXT_RENDER_STEPS and step < total:
        # after the data epochs: the text encoder on the renders, then its final snapshot is rewritten
        def save_renders(text_optimizer: torch.optim.Optimizer, done: int) -> None:
            nonlocal step
            step = data_total + done
            save(cfg.TRAIN.MAX_EPOCH, 0, text_optimizer=text_optimizer.state_dict())

        _, stopped = train_text_on_renders(run, text, image, vocab, step - data_total,
                                              ckpt.get("text_optimizer") if ckpt is not None else None,
                                              progress, stop, save_renders)
        if not stopped:
            found = find_latest(run.model_dir, "text_encoder")
            snapshot(found[1] if found is not None else cfg.TRAIN.MAX_EPOCH)
    progress.close()
    return run.out


def render_captions(n: int, seed: int, image, vocab, cfg: Config, device: torch.device, amp: torch.dtype | None,
                    captions_per_render: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` fresh synthetic renders with every part drawn independently: their image codes (n x nef, from the
    encoder in eval mode; fixed with IMAGE_CODE parts), and `captions_per_render` captions each, true to the
    render, in the data's vocabulary (n x C x WORDS_NUM ids, n x C lengths). Deterministic for a seed."""
    import numpy as np
    from tqdm import tqdm

    from attngan.text import pad_caption
    from trainer.data import synth
    from trainer.evaluate.faithfulness import render_set

    chunk = 250
    rng = np.random.default_rng([seed, 11])
    codes, ids, lengths = [], np.zeros((n, captions_per_render, cfg.TEXT.WORDS_NUM), np.int64), []
    tokens = unknown = 0
    was_training = image.training
    image.eval()
    with torch.no_grad():
        for start in tqdm(range(0, n, chunk), desc="text on renders: rendering", unit="chunk", leave=False,
                          disable=not sys.stderr.isatty()):
            images, attributes = render_set(min(chunk, n - start), seed * 1000 + start // chunk,
                                            size=cfg.IMAGE_ENCODER_SIZE or 128)
            with autocast(device, amp):
                codes.append(image(images.to(device))[1].float().cpu())
            for i, attrs in enumerate(attributes):
                usage: dict[str, int] = {}
                row = []
                for c in range(captions_per_render):
                    encoded = vocab.encode(synth.make_caption(attrs, rng, usage)["text"])
                    tokens += len(encoded.ids) + len(encoded.unknown)
                    unknown += len(encoded.unknown)
                    if not encoded.ids:
                        raise AttnGANError("the renders' captions share no words with this data's vocabulary: "
                                           "TRAIN.TEXT_RENDERS is for the synthetic birds")
                    ids[start + i, c], kept = pad_caption(encoded.ids, cfg.TEXT.WORDS_NUM)
                    row.append(kept)
                lengths.append(row)
    image.train(was_training)
    if unknown / max(tokens, 1) > 0.05:
        log.warning("%.0f%% of the renders' caption words are not in this data's vocabulary",
                    100 * unknown / tokens)
    return torch.cat(codes), torch.from_numpy(ids), torch.tensor(lengths, dtype=torch.int64)


def train_text_on_renders(run: Run, text, image, vocab, done: int, optimizer_state: dict | None,
                          progress: Progress, stop: GracefulStop, save) -> tuple[int, bool]:
    """TRAIN.TEXT_RENDER_STEPS steps of the sentence loss between the text encoder and the fixed part code of
    TRAIN.TEXT_RENDERS independent-part renders (each step: BATCH_SIZE renders, one of their 5 captions each).

    The data's captions name its species' parts together, so a text encoder trained on them alone learns
    which colours go with which species more than which part each colour word belongs to (on the default data:
    89% of the parts' colours read out from training captions' sentence vectors, 72% from test captions').
    Renders whose parts are drawn independently break those correlations. `done`: steps already taken (resume);
    `save(optimizer, done)` writes the resumable checkpoint. Returns (steps taken, stopped by a signal)."""
    import numpy as np

    cfg, info, device = run.cfg, run.info, run.device
    steps, batch = cfg.TRAIN.TEXT_RENDER_STEPS, cfg.TRAIN.BATCH_SIZE
    seed = cfg.TRAIN.SEED or 1
    log.info("text encoder on %d independent-part renders: %d steps (from %d)", cfg.TRAIN.TEXT_RENDERS, steps, done)
    codes, captions, lengths = render_captions(cfg.TRAIN.TEXT_RENDERS, seed, image, vocab, cfg, device, run.amp)
    codes = codes.to(device)
    params = list(text.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.TRAIN.ENCODER_LR / 2, betas=(0.5, 0.999), foreach=True)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    text.train()
    gamma3 = cfg.TRAIN.SMOOTH.GAMMA3
    while done < steps:
        rng = np.random.default_rng([seed, 13, done, info.rank])  # stateless per step: resumes exactly
        pick = torch.from_numpy(rng.choice(len(codes), batch, replace=False))
        which = torch.from_numpy(rng.integers(captions.shape[1], size=batch))
        _, sent = text(captions[pick, which].to(device), lengths[pick, which])
        s0, s1 = losses.sent_loss(codes[pick.to(device)], sent, None, gamma3)
        loss = s0 + s1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, info)
        torch.nn.utils.clip_grad_norm_(params, cfg.TRAIN.RNN_GRAD_CLIP)
        optimizer.step()
        done += 1
        value = loss.item()
        if not math.isfinite(value):
            raise AttnGANError(f"text-on-renders loss is not finite at step {done}; lower TRAIN.ENCODER_LR")
        log_step(run, progress, progress.step + 1, {"s_loss": value}, "damsm/text_renders")  # the run's step
        if checkpoint_or_stop(run, stop, done, lambda *_, at=done: save(optimizer, at), 0, 0):
            return done, True
    save(optimizer, done)
    return done, False


@torch.no_grad()
def _validate(run: Run, text, image, loader, sampler, epoch: int) -> dict[str, float]:
    cfg, device = run.cfg, run.device
    g = cfg.TRAIN.SMOOTH
    text.eval()
    image.eval()
    sampler.set_epoch(epoch)
    w_total = s_total = 0.0
    count = 0
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, run.amp):
            words, sent = text(batch.captions, batch.lengths)
            regions, code = image(batch.images[-1])
        w0, w1, _ = losses.words_loss(regions, words, batch.lengths, batch.class_ids, g.GAMMA1, g.GAMMA2, g.GAMMA3,
                                      cfg.TRAIN.PAPER_WORD_EXPONENT)
        s0, s1 = losses.sent_loss(code, sent, batch.class_ids, g.GAMMA3)
        w_total += (w0 + w1).item()
        s_total += (s0 + s1).item()
        count += 1
        if count >= cfg.TRAIN.VALID_BATCHES:
            break
    text.train()
    image.train()
    count = max(count, 1)
    return {"w_loss": mean_value(w_total / count, run.info, device),
            "s_loss": mean_value(s_total / count, run.info, device)}


def latest_encoders(run_dir: str | Path) -> tuple[Path, Path]:
    """(text_encoder{N}.pth, image_encoder{N}.pth) with the highest N in RUN/Model."""
    model_dir = Path(run_dir) / "Model"
    found = find_latest(model_dir, "text_encoder")
    if found is None:
        raise AttnGANError(f"no text_encoder*.pth in {model_dir}; train DAMSM first")
    return found[0], model_dir / f"image_encoder{found[1]}.pth"
