"""AttnGAN training (the original trainer.py `condGANTrainer.train`).

Per step: the frozen DAMSM text encoder embeds the captions; G runs once; each discriminator takes its own
Adam step on real / fake / mismatched pairs; then G takes one step on the adversarial terms of every stage,
the DAMSM word and sentence losses of the last stage (x LAMBDA, frozen image encoder) and the KL term; an
EMA of G's parameters (0.999) is kept. Model/netG_epoch_{N}.pth holds the EMA generator, Model/netD{i}.pth the
discriminators (the original names); checkpoint.pt holds everything needed to resume exactly.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from attngan.config import Config
from attngan.errors import AttnGANError
from trainer import losses
from trainer.augment import policy as augment_policy
from trainer.checkpoint import (
    CHECKPOINT_NAME,
    GracefulStop,
    atomic_save,
    find_latest,
    gather_rng_states,
    load_weights,
    vocab_beside,
)
from trainer.distributed import average_gradients, barrier, broadcast_module
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
HEAD_PART = "eyering"  # TRAIN.HEAD_D_LOSS crops around where the detail reader looks for it


def ema_state(generator: torch.nn.Module, ema: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """G's state dict with the averaged parameters swapped in (BN buffers stay current, as the original)."""
    state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
    for name, value in ema.items():
        state[name] = value.detach().clone()
    return state


def _load_encoders(cfg: Config, init_bundle):
    """(text encoder, image encoder, vocabulary or None, source) from a bundle or from NET_E (+ image encoder)."""
    from attngan.model import TextEncoder
    from trainer.damsm import build_image_encoder

    if init_bundle is not None:
        text, _, image = init_bundle.build_networks("cpu", image_encoder=True)
        if image is None:
            raise AttnGANError(f"bundle {init_bundle.path} has no image encoder, which the GAN's DAMSM loss needs; "
                               "set TRAIN.NET_E to a DAMSM run's text_encoder*.pth instead")
        return text, image, init_bundle.vocab
    if not cfg.TRAIN.NET_E:
        raise AttnGANError("TRAIN.NET_E is empty: point it at a DAMSM text_encoder*.pth (train one with "
                           "`attngan train damsm`), e.g. --set TRAIN.NET_E=output/x/Model/text_encoder10.pth")
    net_e = Path(cfg.TRAIN.NET_E)
    text_state = load_weights(net_e)
    if "encoder.weight" not in text_state:
        raise AttnGANError(f"{net_e} is not a text encoder state dict (no encoder.weight)")
    n_words = text_state["encoder.weight"].shape[0]
    text = TextEncoder(n_words, nhidden=cfg.TEXT.EMBEDDING_DIM)
    text.load_state_dict(text_state)
    image_path = Path(cfg.TRAIN.NET_IMAGE_E) if cfg.TRAIN.NET_IMAGE_E else \
        net_e.with_name(net_e.name.replace("text_encoder", "image_encoder"))
    image = build_image_encoder(cfg)
    state = load_weights(image_path)
    try:
        image.load_state_dict(state)
    except RuntimeError as exc:
        raise AttnGANError(f"{image_path} does not fit IMAGE_ENCODER={cfg.IMAGE_ENCODER}: "
                           f"{str(exc).splitlines()[0]}") from None
    return text, image, vocab_beside(net_e)


def _has_checkpoint(cfg: Config, output_dir: str | None) -> bool:
    from trainer.runtime import resolve_output_dir

    return (resolve_output_dir(cfg, output_dir, "AttnGAN") / CHECKPOINT_NAME).is_file()


def train_gan(cfg: Config, data_dir: str | None = None, output_dir: str | None = None,
              init_from: str | None = None) -> Path:
    """Train (or resume) AttnGAN; returns the output folder."""
    data = resolve_data_dir(cfg, data_dir)
    augment_policy(cfg.TRAIN.D_AUGMENT)  # a bad policy is one line before any output is made
    _loss_weight(cfg, "PATCH_D_LOSS")
    if _loss_weight(cfg, "HEAD_D_LOSS") > 0 and not _loss_weight(cfg, "DETAIL_LOSS"):
        raise AttnGANError("TRAIN.HEAD_D_LOSS crops the head where the detail reader looks for the eye ring: set "
                           "TRAIN.DETAIL_LOSS and TRAIN.DETAIL_BACKBONE (an attention-pooled backbone) too")
    if cfg.TRAIN.HEAD_D_CONDITIONAL and not _loss_weight(cfg, "HEAD_D_LOSS"):
        raise AttnGANError("TRAIN.HEAD_D_CONDITIONAL makes the head D read the caption: set TRAIN.HEAD_D_LOSS (its "
                           "weight) too")
    if detail_part_weights(cfg) and not _loss_weight(cfg, "DETAIL_LOSS"):
        raise AttnGANError("TRAIN.DETAIL_PART_WEIGHTS weighs parts of the detail loss: set TRAIN.DETAIL_LOSS and "
                           "TRAIN.DETAIL_BACKBONE too")
    if cfg.TRAIN.HEAD_D_WORDS and not cfg.TRAIN.HEAD_D_CONDITIONAL:
        raise AttnGANError("TRAIN.HEAD_D_WORDS makes the head D's conditional head read the words: set "
                           "TRAIN.HEAD_D_CONDITIONAL too")
    if cfg.TRAIN.HEAD_D_SWAP_PART:
        from trainer.data.synth import SWAPPABLE_PARTS

        if not cfg.TRAIN.HEAD_D_CONDITIONAL:
            raise AttnGANError("TRAIN.HEAD_D_SWAP_PART shows the head D captions with a part's colour swapped as "
                               "mismatched pairs: set TRAIN.HEAD_D_CONDITIONAL too")
        if cfg.TRAIN.HEAD_D_SWAP_PART not in SWAPPABLE_PARTS:
            raise AttnGANError(f"TRAIN.HEAD_D_SWAP_PART {cfg.TRAIN.HEAD_D_SWAP_PART!r} is not a part named by colour: "
                               f"one of {', '.join(SWAPPABLE_PARTS)}")
    if _loss_weight(cfg, "RING_MAP_LOSS") > 0 and not _loss_weight(cfg, "DETAIL_LOSS"):
        raise AttnGANError("TRAIN.RING_MAP_LOSS reads the head where the detail reader looks for the eye ring: set "
                           "TRAIN.DETAIL_LOSS and TRAIN.DETAIL_BACKBONE (an attention-pooled backbone) too")
    if (cfg.TRAIN.RING_MAP_SHAPE or _loss_weight(cfg, "RING_MAP_COLOUR")) and not _loss_weight(cfg, "RING_MAP_LOSS"):
        raise AttnGANError("TRAIN.RING_MAP_SHAPE and TRAIN.RING_MAP_COLOUR change the ring map's loss: set "
                           "TRAIN.RING_MAP_LOSS (its weight) and TRAIN.RING_MAP too")
    if not cfg.TRAIN.NET_E and not init_from and not _has_checkpoint(cfg, output_dir):
        _load_encoders(cfg, None)  # raises the one-line "NET_E is empty" error before any output is made
    return train_in_run(cfg, output_dir, "AttnGAN", _train, data, init_from)


def _train(run: Run, data: Path, init_from: str | None, stop: GracefulStop) -> Path:
    from attngan.bundle import load_bundle
    from attngan.model import Generator, ModelConfig, PatchDiscriminator, build_discriminators, init_weights
    from trainer.data import TextImageDataset

    cfg, info, device = run.cfg, run.info, run.device
    d_augment = augment_policy(cfg.TRAIN.D_AUGMENT)
    ckpt_path, ckpt, seed = resume_checkpoint(run)
    if ckpt is not None and ckpt.get("kind") != "gan":
        raise AttnGANError(f"{ckpt_path} is a {ckpt.get('kind')} checkpoint; use another --output-dir for the GAN")

    init_bundle = None
    init_g = None
    if init_from and ckpt is None:
        p = Path(init_from)
        if (p / "manifest.json").is_file():
            init_bundle = load_bundle(p)
        elif p.is_file():
            init_g = load_weights(p)
        else:
            raise AttnGANError(f"--init-from {p}: neither a bundle folder nor a netG .pth file")
    if ckpt is not None:  # resume: the encoders travel in the checkpoint (NET_E may be gone)
        from attngan.model import TextEncoder
        from attngan.text import Vocabulary
        from trainer.damsm import build_image_encoder

        vocab = Vocabulary.from_dict(ckpt["vocab"])
        text_encoder = TextEncoder(len(vocab), nhidden=cfg.TEXT.EMBEDDING_DIM)
        text_encoder.load_state_dict(ckpt["text_encoder"])
        image_encoder = build_image_encoder(cfg)
        image_encoder.load_state_dict(ckpt["image_encoder"])
    else:
        text_encoder, image_encoder, vocab = _load_encoders(cfg, init_bundle)
    given_vocab = vocab
    reader = _part_reader(cfg, ckpt, image_encoder)
    detail = _detail_reader(cfg, ckpt)
    part_values = {**(reader.parts if reader is not None else {}), **(detail.parts if detail is not None else {})}
    focus = caption_focus(cfg, part_values) if cfg.TRAIN.CAPTION_FOCUS else None
    if focus:
        log.info("caption focus: %s", ", ".join(f"a caption naming the {p} {q:.0%} of the time" for p, q in focus.items()))
    train_set = TextImageDataset(data, "train", cfg, vocab=vocab, train=True, part_values=part_values or None,
                                 caption_focus=focus)
    columns = {p: i for i, p in enumerate(part_values)}  # each reader's parts as columns of batch.parts
    reader_cols = None if reader is None else [columns[p] for p in reader.parts]
    detail_cols = None if detail is None else [columns[p] for p in detail.parts]
    detail_weights = None
    if detail is not None and cfg.TRAIN.DETAIL_PART_WEIGHTS:
        factors = detail_part_weights(cfg, detail.parts)
        detail_weights = [factors.get(p, 1.0) for p in detail.parts]
        log.info("detail loss part weights: %s", ", ".join(f"{p} x{w:g}" for p, w in factors.items()))
    vocab = train_set.vocab
    n_words = text_encoder.encoder.weight.shape[0]
    if len(vocab) != n_words:
        raise AttnGANError(f"the text encoder knows {n_words} words but the data's vocabulary has {len(vocab)}; "
                           "use the captions.pickle / vocab.json the encoder was trained with")
    if given_vocab is not None and ckpt is None and info.is_main:
        _report_unknown(data, cfg, vocab)
    if info.writes_files:
        vocab.save_json(run.out / "vocab.json")

    mc = ModelConfig.from_config(cfg, n_words)
    if init_bundle is not None:
        mismatch = {k: (getattr(init_bundle.config, k), getattr(mc, k)) for k in
                    ("gf_dim", "z_dim", "condition_dim", "r_num", "dcgan", "embedding_dim")
                    if getattr(init_bundle.config, k) != getattr(mc, k)}
        if init_bundle.config.branch_num > mc.branch_num:  # fewer stages than the bundle: nothing to grow into
            mismatch["branch_num"] = (init_bundle.config.branch_num, mc.branch_num)
        if mismatch:
            raise AttnGANError(f"--init-from bundle architecture differs from the config: {mismatch}")
    netG = Generator(mc)
    netG.apply(init_weights)
    netsD = build_discriminators(mc)
    patch_weight = _loss_weight(cfg, "PATCH_D_LOSS")
    patchD = PatchDiscriminator(2 * mc.df_dim) if patch_weight > 0 else None
    head_weight = _loss_weight(cfg, "HEAD_D_LOSS")
    ring_weight = _loss_weight(cfg, "RING_MAP_LOSS")
    if head_weight > 0 or ring_weight > 0:
        detail.require_attention(HEAD_PART)
    ring_map, ring_meta = _ring_map(cfg, ckpt)
    ring_colour = _loss_weight(cfg, "RING_MAP_COLOUR")
    ring_col = columns[HEAD_PART] if ring_map is not None else None
    headD = build_head_discriminator(cfg, mc)
    every_d = [*netsD, *(d for d in (patchD, headD) if d is not None)]
    for d in every_d:
        d.apply(init_weights)
    start_epoch, step, skip = 0, 0, 0
    if init_bundle is not None:
        load_grown_generator(netG, init_bundle.read_state("generator"), f"bundle {init_bundle.path}")
        log.info("fine-tuning from bundle %s (version %s)", init_bundle.path, init_bundle.version)
    elif init_g is not None:
        grown = load_grown_generator(netG, init_g, str(init_from))
        # the discriminators of the stages the source had: the original's netD{i}.pth beside netG, where they are
        source_stages = mc.branch_num - len({module[-1] for module in grown})  # grown: h_net2, img_net2, ...
        if grown and mc.dcgan:
            source_stages = 0  # the DCGAN variant has one D at the largest size, which a grown model did not have
        for i, d in enumerate(netsD[:source_stages]):
            d_path = Path(init_from).parent / f"netD{i}.pth"
            if d_path.is_file():
                try:
                    d.load_state_dict(load_weights(d_path))
                except RuntimeError as exc:
                    raise AttnGANError(f"{d_path} does not fit the config: {str(exc).splitlines()[0]}") from None
                log.info("discriminator %d from %s", i, d_path)
        log.info("fine-tuning from generator %s", init_from)
    elif ckpt is None and cfg.TRAIN.NET_G:
        net_g = Path(cfg.TRAIN.NET_G)
        netG.load_state_dict(load_weights(net_g))
        digits = net_g.stem[net_g.stem.rfind("_") + 1:]
        start_epoch = int(digits) + 1 if digits.isdigit() else 0
        if cfg.TRAIN.B_NET_D:
            for i, d in enumerate(netsD):
                d.load_state_dict(load_weights(net_g.parent / f"netD{i}.pth"))
        log.info("resuming the original way from %s (epoch %d)", net_g, start_epoch)

    readers = [r for r in (reader, detail, ring_map) if r is not None]
    for net in [text_encoder, image_encoder, netG, *every_d, *readers]:
        net.to(device)
    if cfg.TRAIN.CHANNELS_LAST:
        # not the generator on CPU: there its BatchNorms get NCHW gradients from F.glu for channels-last inputs, a
        # mixed-format backward ~8x slower than either format alone (GAN steps 1.16-1.44x faster without; bench/train.py)
        generator = [netG] if device.type != "cpu" else []
        for net in [image_encoder, *generator, *every_d, *([detail] if detail is not None else [])]:
            net.to(memory_format=torch.channels_last)
    for net in [text_encoder, image_encoder, *readers]:
        net.eval().requires_grad_(False)
    frozen = frozen_stages(netG, cfg.TRAIN.FROZEN_STAGES,
                           loaded=ckpt is not None or init_bundle is not None or init_g is not None or bool(cfg.TRAIN.NET_G))

    # foreach: one multi-tensor kernel per Adam stage instead of one per parameter (same update, fewer launches)
    optG = torch.optim.Adam([p for p in netG.parameters() if p.requires_grad], lr=cfg.TRAIN.GENERATOR_LR,
                            betas=(0.5, 0.999), foreach=True)
    optsD = [torch.optim.Adam(d.parameters(), lr=cfg.TRAIN.DISCRIMINATOR_LR, betas=(0.5, 0.999), foreach=True)
             for d in every_d]
    if ckpt is not None:
        if len(ckpt["netsD"]) != len(every_d):
            raise AttnGANError(f"{ckpt_path} was trained with {len(ckpt['netsD'])} discriminators, this config has "
                               f"{len(every_d)} (TRAIN.PATCH_D_LOSS and TRAIN.HEAD_D_LOSS add one each): resume with the run's own config")
        netG.load_state_dict(ckpt["netG"])
        for d, o, s, o_state in zip(every_d, optsD, ckpt["netsD"], ckpt["optsD"]):
            if d is headD and _is_conditional(d) and "net.0.weight" in s:
                carry_patch_into_conditional(d, o, s, o_state)  # TRAIN.HEAD_D_CONDITIONAL switched on mid-run
                log.info("head D: the PatchGAN's weights carried into the conditional one; its caption head is new")
                continue
            try:
                d.load_state_dict(s)
            except RuntimeError:
                raise AttnGANError(f"{ckpt_path}'s discriminators do not fit this config (TRAIN.HEAD_D_CONDITIONAL "
                                   "can be switched on mid-run, not off, and TRAIN.HEAD_D_WORDS with it, not later): "
                                   "resume with the run's own config") from None
            o.load_state_dict(o_state)
        optG.load_state_dict(ckpt["optG"])
        start_epoch, step, skip = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["step_in_epoch"])
    else:
        for net in [netG, *every_d]:
            broadcast_module(net, info)
    ema = {n: p.detach().clone() for n, p in netG.named_parameters()}
    if ckpt is not None:
        for n, v in ckpt["ema"].items():
            ema[n].copy_(v)
        run.resumed(ckpt_path, ckpt)
    ema_avg = [ema[n] for n, p in netG.named_parameters() if p.requires_grad]  # frozen stages: exactly as loaded
    ema_live = [p for _, p in netG.named_parameters() if p.requires_grad]

    loader, sampler = make_loader(train_set, run, seed)
    total = total_steps(cfg, sampler)
    if step >= total:
        log.info("GAN training already complete (%d steps) in %s", step, run.out)
        return run.out

    g = cfg.TRAIN.SMOOTH
    batch_size = cfg.TRAIN.BATCH_SIZE
    fixed = None  # captions + noise for sample grids, from the first batch seen
    gen_fixed = torch.Generator().manual_seed(seed)
    progress = Progress(total, step, info.is_main, "AttnGAN", cfg.TRAIN.LOG_INTERVAL)
    decay = cfg.TRAIN.EMA_DECAY

    def save(epoch: int, in_epoch: int) -> None:
        states = gather_rng_states(info)
        if info.writes_files:
            atomic_save({"kind": "gan", "seed": seed, "epoch": epoch, "step": step, "step_in_epoch": in_epoch,
                         "netG": netG.state_dict(), "netsD": [d.state_dict() for d in every_d],
                         "optG": optG.state_dict(), "optsD": [o.state_dict() for o in optsD],
                         "ema": ema, "rng": states, "vocab": vocab.to_dict(), "config": cfg.to_dict(),
                         "model_config": mc.to_dict(),
                         "text_encoder": text_encoder.state_dict(), "image_encoder": image_encoder.state_dict(),
                         **({} if reader is None else {"part_reader": reader.state_dict(),
                                                       "part_values": reader.parts}),
                         **({} if detail is None else {"detail_reader": detail.state_dict(),
                                                       "detail_values": detail.parts,
                                                       "detail_size": detail.encoder.input_size,
                                                       "detail_pool": detail.pool}),
                         **({} if ring_map is None else {"ring_map": ring_map.state_dict(),
                                                         "ring_map_meta": ring_meta})},
                        ckpt_path)
        barrier(info)

    def snapshot(epoch: int) -> None:
        if info.writes_files:
            atomic_save(ema_state(netG, ema), run.model_dir / f"netG_epoch_{epoch}.pth")
            for i, d in enumerate(netsD):
                atomic_save(d.state_dict(), run.model_dir / f"netD{i}.pth")
            if patchD is not None:
                atomic_save(patchD.state_dict(), run.model_dir / "netD_patch.pth")
            if headD is not None:
                atomic_save(headD.state_dict(), run.model_dir / "netD_head.pth")
            log.info("saved Model/netG_epoch_%d.pth (EMA) and %d discriminators", epoch, len(every_d))
        barrier(info)

    stopped = False
    for epoch in range(start_epoch, cfg.TRAIN.MAX_EPOCH):
        sampler.set_epoch(epoch)
        sampler.set_start(skip * batch_size)
        in_epoch = skip
        skip = 0
        netG.train()
        for module in frozen:
            module.eval()  # frozen stages keep their BatchNorm statistics too
        for d in every_d:
            d.train()
        for batch in loader:
            batch = batch.to(device)
            if cfg.TRAIN.CHANNELS_LAST:
                batch.images = [im.contiguous(memory_format=torch.channels_last) for im in batch.images]
            with torch.no_grad():
                words, sent = text_encoder(batch.captions, batch.lengths)
            mask = batch.captions[:, : words.size(2)] == 0
            noise = torch.randn(batch_size, mc.z_dim, device=device)
            if fixed is None:
                fixed = (batch.captions[:8].clone(), batch.lengths[:8].clone(), batch.keys[:8],
                         torch.randn(min(8, batch_size), mc.z_dim, generator=gen_fixed).to(device))
            with autocast(device, run.amp):
                fakes, _, mu, logvar = netG(noise, sent, words, mask)
            reals = batch.images[-len(fakes):] if mc.dcgan else batch.images[: len(fakes)]

            fake_read = None  # the detail reader's read of fakes[-1], when finding the heads made one
            if headD is not None or ring_map is not None:
                with autocast(device, run.amp):
                    fake_heads, fake_read = generated_heads(detail, fakes[-1])
            if headD is not None:
                with autocast(device, run.amp):
                    real_heads = crop_heads(detail, reals[-1])
                head_cond = head_condition(headD, sent, words, mask)
                swap = swapped_condition(headD, text_encoder, vocab, batch.captions, batch.lengths,
                                         cfg.TRAIN.HEAD_D_SWAP_PART, (cfg.TRAIN.SEED, step))

            values: dict[str, float] = {}
            for i, (d, opt) in enumerate(zip(every_d, optsD)):
                opt.zero_grad(set_to_none=True)
                with autocast(device, run.amp):
                    if d is patchD:  # last, on the last stage's images
                        errD = losses.patch_discriminator_loss(d, reals[-1], fakes[-1], d_augment)
                    elif d is headD:
                        errD = head_discriminator_loss(d, real_heads, fake_heads, head_cond, d_augment, swap)
                    else:
                        errD, _ = losses.discriminator_loss(d, reals[i], fakes[i], sent, d_augment)
                errD.backward()
                average_gradients(d.parameters(), info)
                opt.step()
                values["errD_patch" if d is patchD else "errD_head" if d is headD else f"errD{i}"] = errD.item()

            for d in every_d:
                d.requires_grad_(False)  # G's step needs no discriminator weight gradients
            optG.zero_grad(set_to_none=True)
            with autocast(device, run.amp):
                errG = losses.generator_adversarial_loss(netsD, fakes, sent, d_augment)
                if patchD is not None:
                    errG_patch = losses.patch_generator_loss(patchD, fakes[-1], d_augment) * patch_weight
                if headD is not None:
                    errG_head = head_generator_loss(headD, fake_heads, head_cond, d_augment) * head_weight
                if reader is None:
                    regions, code = image_encoder(fakes[-1])
                else:  # the last stage's trunk pass serves both the DAMSM and the part loss
                    p_loss = 0.0
                    for fake in fakes:
                        features, pooled = image_encoder.features(fake)
                        p_loss = p_loss + losses.part_loss(reader(pooled), batch.parts[:, reader_cols])
                    p_loss = p_loss * (cfg.TRAIN.PART_LOSS / len(fakes))
                    regions, code = image_encoder.project(features, pooled)
            w0, w1, _ = losses.words_loss(regions, words, batch.lengths, batch.class_ids, g.GAMMA1, g.GAMMA2,
                                          g.GAMMA3, cfg.TRAIN.PAPER_WORD_EXPONENT)
            s0, s1 = losses.sent_loss(code, sent, batch.class_ids, g.GAMMA3)
            kl = losses.kl_loss(mu, logvar)
            w_loss, s_loss = (w0 + w1) * g.LAMBDA, (s0 + s1) * g.LAMBDA
            total_g = errG + w_loss + s_loss + kl
            if reader is not None:
                total_g = total_g + p_loss
            if patchD is not None:
                total_g = total_g + errG_patch
            if headD is not None:
                total_g = total_g + errG_head
            if detail is not None:
                with autocast(device, run.amp):
                    d_loss = detail_loss(detail, fakes, batch.parts[:, detail_cols], detail_weights,
                                         cfg.TRAIN.DETAIL_EVERY_STAGE, fake_read)
                    d_loss = d_loss * cfg.TRAIN.DETAIL_LOSS
                total_g = total_g + d_loss
            if ring_map is not None:
                with autocast(device, run.amp):
                    r_loss = ring_loss(ring_map, ring_meta, fake_heads, batch.parts[:, ring_col],
                                       cfg.TRAIN.RING_MAP_SHAPE, ring_colour) * ring_weight
                total_g = total_g + r_loss
            total_g.backward()
            average_gradients(netG.parameters(), info)
            optG.step()
            for d in every_d:
                d.requires_grad_(True)
            with torch.no_grad():  # avg = decay * avg + (1 - decay) * p, for all parameters at once
                torch._foreach_mul_(ema_avg, decay)
                torch._foreach_add_(ema_avg, ema_live, alpha=1 - decay)

            step += 1
            in_epoch += 1
            values.update(errG=errG.item(), w_loss=w_loss.item(), s_loss=s_loss.item(), kl=kl.item())
            if reader is not None:
                values["p_loss"] = p_loss.item()
            if detail is not None:
                values["d_loss"] = d_loss.item()
            if ring_map is not None:
                values["r_loss"] = r_loss.item()
            if patchD is not None:
                values["errG_patch"] = errG_patch.item()
            if headD is not None:
                values["errG_head"] = errG_head.item()
            if not math.isfinite(sum(values.values())):
                raise AttnGANError(f"GAN loss is not finite at step {step}: {values}; lower the learning rates")
            log_step(run, progress, step, values, "gan/train")
            if info.is_main and cfg.TRAIN.SAMPLE_INTERVAL and step % cfg.TRAIN.SAMPLE_INTERVAL == 0:
                save_samples(run, netG, ema, text_encoder, vocab, fixed, epoch, step)
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
        done = step >= total or epoch + 1 >= cfg.TRAIN.MAX_EPOCH
        if epoch % cfg.TRAIN.SNAPSHOT_INTERVAL == 0 or done:
            snapshot(epoch)
        # stopped by MAX_STEPS mid-epoch: a rerun with a larger MAX_STEPS continues inside this epoch
        if in_epoch:
            save(epoch, in_epoch)
        else:
            save(epoch + 1, 0)
        if done:
            if info.is_main and fixed is not None:
                save_samples(run, netG, ema, text_encoder, vocab, fixed, epoch, step)
            log.info("GAN training done: %d steps, %.2f steps/s; output %s", step, progress.rate(), run.out)
            break
    progress.close()
    return run.out


def head_crop_size(image_size: int) -> int:
    """TRAIN.HEAD_D_LOSS's crop side: a quarter of the image (64 px at 256, a bird's head), at least 32 px, the least
    a PatchDiscriminator gives windows for."""
    return min(image_size, max(image_size // 4, 32))


def build_head_discriminator(cfg: Config, mc):
    """TRAIN.HEAD_D_LOSS's discriminator, or None when off: a PatchGAN (one logit per window, no caption), or with
    TRAIN.HEAD_D_CONDITIONAL the same windows judged with and without the sentence (TRAIN.HEAD_D_WORDS: the words), as
    the stages' Ds do."""
    from attngan.model import ConditionalPatchDiscriminator, PatchDiscriminator

    if not cfg.TRAIN.HEAD_D_LOSS:
        return None
    if cfg.TRAIN.HEAD_D_CONDITIONAL:
        return ConditionalPatchDiscriminator(2 * mc.df_dim, mc.embedding_dim, words=cfg.TRAIN.HEAD_D_WORDS)
    return PatchDiscriminator(2 * mc.df_dim)


def _is_conditional(headD) -> bool:
    return hasattr(getattr(headD, "module", headD), "COND_DNET")


def head_condition(headD, sent: torch.Tensor, words: torch.Tensor, mask: torch.Tensor):
    """What the head D reads of the caption: the sentence vector (unread by a PatchGAN), or with TRAIN.HEAD_D_WORDS
    the word features and their padding mask."""
    from attngan.model import WordDLogits, Words

    if isinstance(getattr(getattr(headD, "module", headD), "COND_DNET", None), WordDLogits):
        return Words(words, mask)
    return sent


def carry_patch_into_conditional(headD, optD: torch.optim.Optimizer, patch_state: dict, patch_opt_state: dict
                                 ) -> None:
    """Resume a PatchGAN head D as a conditional one: its trunk and window logits become the trunk and the
    unconditional head, with their Adam moments; the sentence head keeps its fresh weights and starts without."""
    from attngan.model import PatchDiscriminator

    trunk = len(headD.img_code)  # the PatchGAN's net.{trunk} is its last conv, the window logits

    def renamed(name: str) -> str:
        index, _, rest = name.removeprefix("net.").partition(".")
        return f"UNCOND_DNET.outlogits.0.{rest}" if int(index) == trunk else f"img_code.{index}.{rest}"

    state = headD.state_dict()
    state.update({renamed(k): v for k, v in patch_state.items()})
    headD.load_state_dict(state)
    patch_names = [n for n, _ in PatchDiscriminator(headD.img_code[0].out_channels).named_parameters()]
    names = [n for n, _ in headD.named_parameters()]
    moments = {names.index(renamed(patch_names[i])): v for i, v in patch_opt_state["state"].items()}
    optD.load_state_dict({"state": moments, "param_groups": optD.state_dict()["param_groups"]})


def head_discriminator_loss(headD, real_heads: torch.Tensor, fake_heads: torch.Tensor, condition,
                            augment=None, swap=None) -> torch.Tensor:
    """The head D's loss: the PatchGAN's, or a stage D's (real/fake with the caption, and real heads with the next
    caption in the batch as mismatched pairs). `condition`: head_condition's; `swap`: swapped_condition's, more
    mismatched pairs, counted as the next-caption ones are."""
    if not _is_conditional(headD):
        return losses.patch_discriminator_loss(headD, real_heads, fake_heads, augment)
    loss = losses.discriminator_loss(headD, real_heads, fake_heads, condition, augment)[0]
    if swap is not None:
        rows, swapped = swap
        loss = loss + losses.mismatched_loss(headD, real_heads[rows], swapped, augment) / 3.0
    return loss


def swapped_condition(headD, text_encoder, vocab, captions: torch.Tensor, lengths: torch.Tensor, part: str,
                      seed: tuple[int, int]):
    """TRAIN.HEAD_D_SWAP_PART: (rows, condition) of the batch's captions that name `part`'s colour, each with that
    colour swapped for another (`swap_named_colour`), read as head_condition reads captions; None when the option is
    off or no caption names the part. A head D shown the next caption as the mismatched one learns the species'
    big parts; one shown the same caption with only the eye ring's colour changed must look at the eye ring."""
    if not part:
        return None
    import numpy as np

    from trainer.data.synth import swap_named_colour

    rng = np.random.default_rng(seed)  # (SEED, step): the same swaps when a run resumes
    rows, swapped = [], captions.clone()
    for i in range(captions.size(0)):
        tokens = swap_named_colour([vocab.ixtoword[int(t)] for t in captions[i, : int(lengths[i])]], part, rng)
        ids = None if tokens is None else [vocab.wordtoix.get(w) for w in tokens]
        if ids is None or None in ids:
            continue
        swapped[i, : len(ids)] = torch.tensor(ids, dtype=captions.dtype)
        rows.append(i)
    if not rows:
        return None
    index = torch.tensor(rows, device=captions.device)
    with torch.no_grad():
        words, sent = text_encoder(swapped[index], lengths[index])
    return index, head_condition(headD, sent, words, swapped[index][:, : words.size(2)] == 0)


def head_generator_loss(headD, fake_heads: torch.Tensor, condition, augment=None) -> torch.Tensor:
    """G's side of the head D: every generated head should pass as real (and, conditional, as its caption's)."""
    if _is_conditional(headD):
        return losses.generator_adversarial_loss([headD], [fake_heads], condition, augment)
    return losses.patch_generator_loss(headD, fake_heads, augment)


def crop_heads(detail, images: torch.Tensor) -> torch.Tensor:
    """TRAIN.HEAD_D_LOSS's view: each image cropped where the detail reader looks for the eye ring in it. The centre
    carries no gradient; the crop carries the image's."""
    with torch.no_grad():
        centres = detail.attention_centres(images.detach(), HEAD_PART)
    return losses.crop_around(images, centres, head_crop_size(images.shape[-1]))


def detail_loss(detail, fakes: list[torch.Tensor], labels: torch.Tensor, weights: list[float] | None,
                every_stage: bool, last_read: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The detail reader's part loss on the last stage's image (`last_read`: its reading when the head crops
    already made one) or, `every_stage` (TRAIN.DETAIL_EVERY_STAGE), the mean of it over every stage's image."""
    loss = losses.part_loss(detail(fakes[-1]) if last_read is None else last_read, labels, weights=weights)
    if not every_stage:
        return loss
    for fake in fakes[:-1]:
        loss = loss + losses.part_loss(detail(fake), labels, weights=weights)
    return loss / len(fakes)


def ring_loss(ring_map, meta: dict, heads: torch.Tensor, ring_values: torch.Tensor, shape: bool = False,
              colour: float = 0.0) -> torch.Tensor:
    """TRAIN.RING_MAP_LOSS (before its weight): the ring map's area loss (`shape`, TRAIN.RING_MAP_SHAPE: its shape
    loss) on the generated heads, each scaled to the map's crop (a 256 px image's heads are already), plus `colour`
    (TRAIN.RING_MAP_COLOUR) times the annulus's distance from the named colour; `ring_values`: the eye ring each
    caption names."""
    from trainer.ring_map import ring_area_loss, ring_colour_loss, ring_shape_loss

    if heads.shape[-1] != meta["crop"]:
        heads = F.interpolate(heads, size=(meta["crop"], meta["crop"]), mode="bilinear", align_corners=False)
    logits = ring_map(heads)
    loss = (ring_shape_loss if shape else ring_area_loss)(logits, ring_values, meta["ring_area"])
    if colour > 0:
        loss = loss + colour * ring_colour_loss(heads, logits, ring_values, meta["ring_area"])
    return loss


def generated_heads(detail, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generated birds' heads (what the head D and the ring map read) and the detail reader's read of the birds
    (the detail loss's, with its gradient), from the one pass that finds their heads."""
    fake_read, centres = detail.read_and_locate(fake, HEAD_PART)
    return losses.crop_around(fake, centres, head_crop_size(fake.shape[-1])), fake_read


def _loss_weight(cfg: Config, key: str) -> float:
    """TRAIN.<key>, a loss weight: 0 (off) or positive, else one line."""
    weight = getattr(cfg.TRAIN, key)
    if weight < 0 or not math.isfinite(weight):
        raise AttnGANError(f"TRAIN.{key} must be 0 (off) or positive, got {weight}")
    return weight


def _part_numbers(key: str, text: str, example: str, parts: Iterable[str] | None, reader: str,
                  upper: float = math.inf) -> dict[str, float]:
    """TRAIN.`key` ('PART=NUMBER,...') as {part: number}; one line when it is malformed, a number is outside
    [0, upper], or (given the `reader`'s `parts`) it names a part the reader does not read."""
    numbers: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = (t.strip() for t in item.partition("="))
        try:
            number = float(value)  # '' (no '=') and words raise; nan and inf fail the check below
        except ValueError:
            number = math.nan
        if not name or not (0 <= number <= upper and math.isfinite(number)):
            bound = f"0 <= NUMBER <= {upper:g}" if math.isfinite(upper) else "NUMBER >= 0"
            raise AttnGANError(f"TRAIN.{key}: {item!r} must look like PART=NUMBER with {bound}, e.g. {example!r}")
        numbers[name] = number
    if parts is not None:
        parts = list(parts)
        unread = [p for p in numbers if p not in parts]
        if unread:
            raise AttnGANError(f"TRAIN.{key} names {unread[0]!r}, which is not among the parts {reader} read"
                               f"{'s' if reader.endswith('reader') else ''}: "
                               f"{', '.join(parts) or 'none (TRAIN.PART_LOSS and TRAIN.DETAIL_LOSS are off)'}")
    return numbers


def detail_part_weights(cfg: Config, parts: Iterable[str] | None = None) -> dict[str, float]:
    """TRAIN.DETAIL_PART_WEIGHTS as {part: factor} ('eyering=4,bill=2'), checked against the detail reader's
    `parts` when given."""
    return _part_numbers("DETAIL_PART_WEIGHTS", cfg.TRAIN.DETAIL_PART_WEIGHTS, "eyering=4", parts,
                         "the detail reader")


def caption_focus(cfg: Config, parts: Iterable[str] | None = None) -> dict[str, float]:
    """TRAIN.CAPTION_FOCUS as {part: probability} ('eyering=0.5'), checked against the parts the GAN's readers
    read (their labels pick the captions) when given; the probabilities add up to at most 1."""
    focus = _part_numbers("CAPTION_FOCUS", cfg.TRAIN.CAPTION_FOCUS, "eyering=0.5", parts,
                          "the part and detail losses", upper=1.0)
    if sum(focus.values()) > 1 + 1e-9:
        raise AttnGANError(f"TRAIN.CAPTION_FOCUS: the probabilities add up to {sum(focus.values()):g}, more than 1")
    return focus


def _part_reader(cfg: Config, ckpt: dict | None, image_encoder):
    """TRAIN.PART_LOSS > 0: the frozen part heads over `image_encoder`'s trunk (from the checkpoint when resuming,
    else from TRAIN.IMAGE_BACKBONE, whose trunk must be the encoder's); None when the loss is off."""
    from trainer.backbone import PartReader, load_part_reader

    weight = _loss_weight(cfg, "PART_LOSS")
    if not weight:
        return None
    if ckpt is not None and "part_reader" in ckpt:
        reader = PartReader(ckpt["part_values"], image_encoder.emb_cnn_code.in_features)
        reader.load_state_dict(ckpt["part_reader"])
        return reader
    if not cfg.TRAIN.IMAGE_BACKBONE:
        raise AttnGANError("TRAIN.PART_LOSS reads the generated birds with the part heads of the image backbone: "
                           "set TRAIN.IMAGE_BACKBONE to the file its DAMSM was trained over")
    reader = load_part_reader(cfg.TRAIN.IMAGE_BACKBONE, image_encoder)
    log.info("part loss x%g: %d parts read by %s", weight, len(reader.parts), cfg.TRAIN.IMAGE_BACKBONE)
    return reader


def _detail_reader(cfg: Config, ckpt: dict | None):
    """TRAIN.DETAIL_LOSS > 0: TRAIN.DETAIL_BACKBONE's own trunk and readable heads, frozen (from the checkpoint
    when resuming); None when the loss is off."""
    from trainer.backbone import PartHeads, load_detail_reader

    weight = _loss_weight(cfg, "DETAIL_LOSS")
    if not weight:
        return None
    if ckpt is not None and "detail_reader" in ckpt:
        detail = PartHeads(ckpt["detail_values"], int(ckpt["detail_size"]), ckpt.get("detail_pool", "mean"))
        detail.load_state_dict(ckpt["detail_reader"])
        log.info("detail loss x%g: the run's own reader from its checkpoint (%d parts); TRAIN.DETAIL_BACKBONE is read "
                 "only when a run starts, so a resumed run keeps its loss", weight, len(detail.parts))
        return detail
    if not cfg.TRAIN.DETAIL_BACKBONE:
        raise AttnGANError("TRAIN.DETAIL_LOSS reads the largest generated image with a detail backbone: set "
                           "TRAIN.DETAIL_BACKBONE (`attngan train backbone --size 128 --pool attention`)")
    detail = load_detail_reader(cfg.TRAIN.DETAIL_BACKBONE)
    log.info("detail loss x%g: %d parts read at %d px by %s (%s)", weight, len(detail.parts),
             detail.encoder.input_size, cfg.TRAIN.DETAIL_BACKBONE, ", ".join(detail.parts))
    return detail


def _ring_map(cfg: Config, ckpt: dict | None):
    """TRAIN.RING_MAP_LOSS > 0: (the frozen ring map, its metadata), from the checkpoint when resuming, else from
    TRAIN.RING_MAP; (None, None) when the loss is off."""
    from trainer.ring_map import RingMap, load_ring_map

    weight = _loss_weight(cfg, "RING_MAP_LOSS")
    if not weight:
        return None, None
    if ckpt is not None and "ring_map" in ckpt:
        ring_map = RingMap()
        ring_map.load_state_dict(ckpt["ring_map"])
        return ring_map.eval(), ckpt["ring_map_meta"]
    if not cfg.TRAIN.RING_MAP:
        raise AttnGANError("TRAIN.RING_MAP_LOSS reads each generated head with a ring map: set TRAIN.RING_MAP "
                           "(`attngan train ring-map`)")
    ring_map, meta = load_ring_map(cfg.TRAIN.RING_MAP)
    log.info("ring map loss x%g: %s (held-out ring IoU %.0f%%; a ring is %.0f px of a head)", weight,
             cfg.TRAIN.RING_MAP, 100 * meta["held_out_ring_iou"], meta["ring_area"])
    return ring_map, meta


def load_grown_generator(netG: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a generator with the same or fewer stages into `netG`; returns the modules the source lacked.

    Growing is how the default model trains on a CPU: the 64 px stage alone first (a step costs ~1/14 of a
    three-stage step per image), then the 128/256 px stages added on top of it. The stages the source lacks keep
    their fresh initialisation; everything the source has must fit exactly.
    """
    own = netG.state_dict()
    foreign = [k for k in state if k not in own]
    if foreign:
        raise AttnGANError(f"{source} does not fit the config: it has {foreign[0]}, which this generator lacks "
                           "(more stages, DCGAN vs attention stages, or GAN.WORD_ATTN_64)")
    wrong = [k for k in state if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise AttnGANError(f"{source} does not fit the config: {k} is {tuple(state[k].shape)}, the config makes "
                           f"{tuple(own[k].shape)} (GF_DIM, Z_DIM, CONDITION_DIM, GAN.WORD_ATTN_64 or the vocabulary "
                           "differ)")
    grown = sorted({k.split(".")[0] for k in own if k not in state})
    if any(not (m.startswith(("h_net", "img_net")) and m[-1] in "23") for m in grown):
        raise AttnGANError(f"{source} does not fit the config: it lacks {', '.join(grown)}; only the 128 and "
                           "256 px stages can be added")
    netG.load_state_dict(state, strict=False)
    if grown:
        log.info("growing the generator: %s start from scratch on top of %s", ", ".join(grown), source)
    return grown


def frozen_stages(netG: torch.nn.Module, n: int, loaded: bool) -> list[torch.nn.Module]:
    """TRAIN.FROZEN_STAGES: freeze the first `n` stages (stage 1: conditioning augmentation, the initial stage and
    its 64 px head; stage i > 1: h_net{i}, img_net{i}); returns the frozen modules, to be kept in eval mode.

    The upper stages then learn to refine exactly the 64 px images the source draws (fine-tuning the 128/256 px
    stages alone). On the default model this did not keep the 64 px stage's caption specificity at 256 px
    (R-precision 76.1% at 64 px, 66.8% at 256 px after 750 steps; models/README.md)."""
    mc = netG.mc
    if n < 0 or n >= mc.branch_num:
        raise AttnGANError(f"TRAIN.FROZEN_STAGES must be from 0 to BRANCH_NUM - 1 ({mc.branch_num - 1}), got {n}")
    if n and not loaded:
        raise AttnGANError("TRAIN.FROZEN_STAGES keeps loaded stages as they are: start from a trained generator "
                           "(--init-from or TRAIN.NET_G)")
    if n and mc.dcgan:
        raise AttnGANError("TRAIN.FROZEN_STAGES is for the attention generator, not the DCGAN variant")
    names = ["ca_net", "h_net1", "img_net1"] + [f"{m}{i}" for i in range(2, n + 1) for m in ("h_net", "img_net")]
    modules = [getattr(netG, name) for name in names] if n else []
    for module in modules:
        module.requires_grad_(False)
    if modules:
        log.info("frozen generator stages: %s", ", ".join(names))
    return modules


def _report_unknown(data: Path, cfg: Config, vocab) -> None:
    """Fine-tuning on new data with a fixed vocabulary: say how many of its words the model does not know."""
    from trainer.data.dataset import load_records

    records = load_records(data, "train", cfg)
    words = set(records.vocab.ixtoword[1:])
    unknown = sorted(w for w in words if w not in vocab.wordtoix)
    if unknown:
        log.warning("%d of %d words of this data are not in the model's vocabulary and are dropped (e.g. %s)",
                    len(unknown), len(words), ", ".join(unknown[:8]))
    else:
        log.info("all %d words of this data are in the model's vocabulary", len(words))


@torch.no_grad()
def save_samples(run: Run, netG, ema: dict, text_encoder, vocab, fixed, epoch: int, step: int) -> Path:
    """With the EMA weights: the fixed captions' images at every stage, plus per-word attention grids."""
    from PIL import Image

    from attngan.render import attention_grid, to_pil

    captions, lengths, _keys, noise = fixed
    model = copy.deepcopy(netG).eval()
    model.load_state_dict(ema_state(netG, ema))
    words, sent = text_encoder(captions, lengths)
    mask = captions[:, : words.size(2)] == 0
    n = noise.size(0)
    fakes, attention, _, _ = model(noise, sent[:n], words[:n], mask[:n])
    tile = 128
    rows = []
    for k in range(n):
        tokens = [vocab.ixtoword[int(i)] for i in captions[k, : int(lengths[k])]]
        stage_tiles = [to_pil(f[k]).resize((tile, tile)) for f in fakes]
        row = stage_tiles
        if attention:
            row.append(attention_grid(to_pil(fakes[-1][k]), attention[-1][k].float().cpu().numpy(), tokens,
                                      tile=tile // 2, columns=9))
        rows.append(row)
    width = max(sum(im.width for im in row) for row in rows)
    height = sum(max(im.height for im in row) for row in rows)
    sheet = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for im in row:
            sheet.paste(im, (x, y))
            x += im.width
        y += max(im.height for im in row)
    path = run.image_dir / f"G_average_{epoch}_{step}.png"
    sheet.save(path)
    return path


def latest_generator(run_dir: str | Path) -> tuple[Path, int]:
    found = find_latest(Path(run_dir) / "Model", "netG_epoch_")
    if found is None:
        raise AttnGANError(f"no netG_epoch_*.pth in {Path(run_dir) / 'Model'}; train the GAN first")
    return found
