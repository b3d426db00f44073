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
    restore_rng_state,
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
        load_backbone(image, cfg.TRAIN.IMAGE_BACKBONE)
        image.freeze_trunk()
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
    if info.is_main:
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
        restore_rng_state(ckpt["rng"], info.rank)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, start_epoch, step)
    else:
        broadcast_module(text, info)
        broadcast_module(image, info)

    loader, sampler = make_loader(train_set, run, seed)
    valid_loader, valid_sampler = make_loader(test_set, run, seed + 1, batch_size=min(
        cfg.TRAIN.BATCH_SIZE, len(test_set) // info.world_size))
    total = total_steps(cfg, sampler)
    if step >= total:
        log.info("DAMSM training already complete (%d steps) in %s", step, run.out)
        return run.out
    g = cfg.TRAIN.SMOOTH
    progress = Progress(total, step, info.is_main, "DAMSM", cfg.TRAIN.LOG_INTERVAL)

    def save(epoch: int, in_epoch: int) -> None:
        states = gather_rng_states(info)
        if info.is_main:
            atomic_save({"kind": "damsm", "seed": seed, "epoch": epoch, "step": step, "step_in_epoch": in_epoch,
                         "text_encoder": text.state_dict(), "image_encoder": image.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": states, "vocab": vocab.to_dict(),
                         "config": cfg.to_dict()}, ckpt_path)
        barrier(info)

    def snapshot(epoch: int) -> None:
        if info.is_main:
            atomic_save(text.state_dict(), run.model_dir / f"text_encoder{epoch}.pth")
            atomic_save(image.state_dict(), run.model_dir / f"image_encoder{epoch}.pth")
            log.info("saved Model/text_encoder%d.pth and image_encoder%d.pth", epoch, epoch)
        barrier(info)

    stopped = False
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.TRAIN.MAX_EPOCH):
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
            if step >= total:
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
        done = step >= total or epoch + 1 >= cfg.TRAIN.MAX_EPOCH
        # stopped by MAX_STEPS mid-epoch: a rerun with a larger MAX_STEPS continues inside this epoch
        if in_epoch:
            save(epoch, in_epoch)
        else:
            save(epoch + 1, 0)
        if done:
            snapshot(epoch + 1 if epoch % cfg.TRAIN.SNAPSHOT_INTERVAL else epoch)
            break
    progress.close()
    return run.out


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
