"""DAMSM and GAN training on synthetic birds: losses go down, snapshots/resume/export work, bad input is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from attngan.config import load_config
from attngan.errors import AttnGANError
from tests.trainer.conftest import PYTHON, REPO, TINY_DAMSM, TINY_GAN, sets, subprocess_env

DAMSM_CFG = str(REPO / "trainer/cfg/DAMSM/bird.yml")
GAN_CFG = str(REPO / "trainer/cfg/bird_attn2.yml")


def _metrics(run: Path, tag: str) -> list[dict]:
    lines = (run / "logs" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["tag"] == tag]


@pytest.fixture(scope="module")
def damsm_run(birds, tmp_path_factory) -> Path:
    from trainer.damsm import train_damsm

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("damsm")
    cfg = load_config(DAMSM_CFG, TINY_DAMSM + ["TRAIN.MAX_STEPS=40", "TRAIN.LOG_INTERVAL=1"])
    return train_damsm(cfg, str(birds), str(out))


def test_damsm_loss_decreases_and_writes_original_checkpoints(damsm_run):
    rows = _metrics(damsm_run, "damsm/train")
    first = sum(r["w_loss"] + r["s_loss"] for r in rows[:5]) / 5
    last = sum(r["w_loss"] + r["s_loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert rows[-1]["step"] == 40
    model = damsm_run / "Model"
    text = torch.load(max(model.glob("text_encoder*.pth")), map_location="cpu", weights_only=True)
    assert "encoder.weight" in text and "rnn.weight_ih_l0_reverse" in text  # the original's key names
    assert any(model.glob("image_encoder*.pth"))
    assert (damsm_run / "vocab.json").is_file()
    assert list((damsm_run / "logs").glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def gan_run(birds, damsm_run, tmp_path_factory) -> Path:
    from trainer.damsm import latest_encoders
    from trainer.gan import train_gan

    torch.set_num_threads(1)
    text, _ = latest_encoders(damsm_run)
    out = tmp_path_factory.mktemp("gan")
    cfg = load_config(GAN_CFG, TINY_GAN + ["TREE.BRANCH_NUM=2", "TRAIN.MAX_STEPS=24", "TRAIN.LOG_INTERVAL=1",
                                           "TRAIN.SAMPLE_INTERVAL=24", f"TRAIN.NET_E={text}"])
    return train_gan(cfg, str(birds), str(out))


@pytest.mark.slow
def test_gan_trains_and_exports_a_bundle_that_generates(gan_run, tmp_path):
    from attngan.bundle import load_bundle
    from trainer.cli import export_run

    rows = _metrics(gan_run, "gan/train")
    assert len(rows) == 24
    # the discriminators learn to tell real from fake: their loss falls from chance (~1.39)
    for key in ("errD0", "errD1"):
        first = sum(r[key] for r in rows[:4]) / 4
        last = sum(r[key] for r in rows[-4:]) / 4
        assert last < first, (key, first, last)
    assert list((gan_run / "Model").glob("netG_epoch_*.pth")) and (gan_run / "Model" / "netD1.pth").is_file()
    assert list((gan_run / "Image").glob("G_average_*.png"))
    bundle = load_bundle(export_run(gan_run, tmp_path / "bundle"))
    assert bundle.config.branch_num == 2 and bundle.has_image_encoder
    assert bundle.manifest["training"]["steps"] == 24
    _, generator, _ = bundle.build_networks()
    ckpt = torch.load(gan_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    for name, value in ckpt["ema"].items():  # the bundle's generator is the EMA one
        assert torch.equal(generator.state_dict()[name], value)
    # --raw: the generator as trained, not its average (which differs from it after 24 steps)
    raw = load_bundle(export_run(gan_run, tmp_path / "raw", raw=True))
    raw_state = raw.build_networks()[1].state_dict()
    assert all(torch.equal(raw_state[name], value) for name, value in ckpt["netG"].items())
    assert any(not torch.equal(raw_state[name], value) for name, value in ckpt["ema"].items())
    assert raw.manifest["training"]["generator_from"] == "checkpoint.pt (raw, step 24)"
    # an epoch snapshot reports the steps done when it was written (here the last epoch's: all 24)
    from trainer.gan import latest_generator

    _, last_epoch = latest_generator(gan_run)
    snapshot = load_bundle(export_run(gan_run, tmp_path / "snapshot", epoch=last_epoch))
    assert snapshot.manifest["training"]["steps"] == 24
    assert snapshot.manifest["training"]["epochs"] == last_epoch + 1
    res = _cli(["export", "--run", str(gan_run), "--out", str(tmp_path / "both"), "--raw", "--epoch", "0"])
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].endswith(
        "--raw exports the checkpoint's latest generator; --epoch's snapshots are weight averages")
    assert not (tmp_path / "both").exists()


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "attngan.cli", *args], check=False, capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=300, **kw)


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes_to_identical_weights(birds, damsm_run, tmp_path):
    from trainer.damsm import latest_encoders

    text, _ = latest_encoders(damsm_run)
    args = ["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), *sets(TINY_GAN),
            *sets(["TRAIN.MAX_STEPS=14", "TRAIN.LOG_INTERVAL=1", f"TRAIN.NET_E={text}"])]
    full = _cli([*args, "--output-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "interrupted"
    proc = subprocess.Popen([PYTHON, "-m", "attngan.cli", *args, "--output-dir", str(out)], cwd=REPO,
                            env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stderr:  # wait for step 4 (of 14), then ask it to stop
        lines.append(line)
        if "step 4/14" in line or time.time() > deadline:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=240)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-2000:]
    assert "received SIGTERM" in log and "checkpoint saved" in log
    stopped_at = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert 4 <= stopped_at < 14

    again = _cli([*args, "--output-dir", str(out)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {out / 'checkpoint.pt'}" in again.stderr
    a = torch.load(tmp_path / "full" / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 14
    for name in a["netG"]:
        assert torch.equal(a["netG"][name], b["netG"][name]), name
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert all(torch.equal(a["netsD"][0][k], b["netsD"][0][k]) for k in a["netsD"][0])

    # A hard kill (OOM killer, lost node) saves nothing: the rerun resumes from the last periodic checkpoint,
    # repeats the lost steps exactly, and the metrics log shows each step once with the uninterrupted run's values.
    killed = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, "-m", "attngan.cli", *args, "--set", "TRAIN.CHECKPOINT_INTERVAL=5",
                             "--output-dir", str(killed)], cwd=REPO, env=subprocess_env(),
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    log_file = killed / "logs" / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline:  # kill once step 6 is logged, before the step-10 save
        if log_file.exists() and '"step": 6,' in log_file.read_text():
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 5
    assert [r["step"] for r in _metrics(killed, "gan/train")][-1] >= 6  # logged after the checkpoint, then lost
    again = _cli([*args, "--output-dir", str(killed)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "at epoch" in again.stderr and "step 5" in again.stderr
    assert _metrics(killed, "gan/train") == _metrics(tmp_path / "full", "gan/train")
    c = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(a["ema"][name], c["ema"][name]) for name in a["ema"])


@pytest.mark.slow
def test_group_sigterm_with_a_data_worker_saves_and_resumes(birds, damsm_run, tmp_path):
    """SIGTERM to the whole process group (a group kill; Ctrl-C sends SIGINT the same way) reaches the data worker
    too: the worker ignores it and the trainer saves and exits 0; the rerun ends with the uninterrupted run's weights."""
    import os

    from trainer.damsm import latest_encoders

    text, _ = latest_encoders(damsm_run)
    args = ["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), *sets(TINY_GAN),
            *sets(["TRAIN.MAX_STEPS=10", "TRAIN.LOG_INTERVAL=1", f"TRAIN.NET_E={text}", "WORKERS=1"])]
    full = _cli([*args, "--output-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-2000:]
    args += ["--output-dir", str(tmp_path / "run")]
    proc = subprocess.Popen([PYTHON, "-m", "attngan.cli", *args], cwd=REPO, env=subprocess_env(),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stderr:
        lines.append(line)
        if "step 3/10" in line or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=240)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-2000:]
    assert "checkpoint saved" in log and "killed by signal" not in log
    again = _cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 10
    for name in a["ema"]:  # with a data worker too, the resumed run is the uninterrupted one
        assert torch.equal(a["ema"][name], b["ema"][name]), name


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_trains_and_checkpoints(birds, tmp_path):
    out = tmp_path / "ddp"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "attngan.cli",
           "train", "damsm", "--cfg", DAMSM_CFG, "--data-dir", str(birds), "--output-dir", str(out),
           *sets(TINY_DAMSM), *sets(["TRAIN.MAX_STEPS=3", "TRAIN.BATCH_SIZE=4", "CUDA=false"])]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in res.stderr
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # one RNG state per rank
    assert list((out / "Model").glob("text_encoder*.pth"))


def test_bad_config_and_data_paths_give_one_line(tmp_path, birds):
    cases = [
        (["train", "gan", "--cfg", str(tmp_path / "missing.yml")], "config file not found"),
        (["train", "damsm", "--cfg", DAMSM_CFG, "--data-dir", str(tmp_path / "nope")], "data folder not found"),
        (["train", "damsm", "--cfg", DAMSM_CFG, "--set", "TRAIN.BATCH_SIZ=8"], "not a valid config key"),
        (["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), "--set", "TRAIN.NET_E=",
          "--output-dir", str(tmp_path / "o")], "TRAIN.NET_E is empty"),
        (["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), "--set", "TRAIN.D_AUGMENT=translation,hue",
          "--output-dir", str(tmp_path / "o")], "TRAIN.D_AUGMENT: unknown transform 'hue'"),
        (["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), "--set", "TRAIN.PATCH_D_LOSS=-1",
          "--output-dir", str(tmp_path / "o")], "TRAIN.PATCH_D_LOSS must be 0 (off) or positive"),
        (["export", "--run", str(tmp_path), "--out", str(tmp_path / "b")], "checkpoint.pt is missing"),
    ]
    for args, expected in cases:
        res = _cli(args)
        assert res.returncode == 1, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, res.stderr)


def test_damsm_schedule_and_corrupt_checkpoint(tmp_path):
    from trainer.checkpoint import atomic_save, load_weights
    from trainer.damsm import damsm_lr

    assert damsm_lr(0.002, 0) == 0.002
    assert damsm_lr(0.002, 1) == pytest.approx(0.00196)
    assert damsm_lr(0.002, 500) == damsm_lr(0.002, 200) <= 0.0002  # stops decaying at ENCODER_LR / 10
    path = atomic_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(load_weights(path)["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*.tmp"))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(AttnGANError, match="cannot load"):
        load_weights(path)


@pytest.mark.slow
def test_torchrun_two_processes_train_the_gan(birds, damsm_run, tmp_path):
    """The GAN's per-network gradient all-reduce (no DDP wrapper) works across 2 gloo processes."""
    from trainer.damsm import latest_encoders

    text, _ = latest_encoders(damsm_run)
    out = tmp_path / "ddp-gan"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "attngan.cli",
           "train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), "--output-dir", str(out), *sets(TINY_GAN),
           *sets(["TRAIN.MAX_STEPS=3", "TRAIN.BATCH_SIZE=4", f"TRAIN.NET_E={text}", "CUDA=false"])]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3


@pytest.mark.slow
def test_two_nodes_each_keep_the_whole_run_and_resume(birds, damsm_run, tmp_path):
    """A multi-node run (torchrun --nnodes 2; here two launchers on loopback, each node with its own folder, as a
    SageMaker job's hosts have): every node writes the checkpoint and the snapshots to its own disk, so every node
    resumes from its own, and the next stage on any node finds the generator (the SageMaker entry point runs the
    stages on every host)."""
    import socket

    from trainer.damsm import latest_encoders
    from trainer.gan import latest_generator

    text, _ = latest_encoders(damsm_run)
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for steps in (3, 5):  # trained, then resumed on both nodes
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs = [subprocess.Popen(
            [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
             "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "attngan.cli", "train", "gan", "--cfg",
             GAN_CFG, "--data-dir", str(birds), "--output-dir", str(out), *sets(TINY_GAN),
             *sets([f"TRAIN.MAX_STEPS={steps}", "TRAIN.BATCH_SIZE=4", f"TRAIN.NET_E={text}", "CUDA=false"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env())
            for rank, out in enumerate(nodes)]
        try:
            errors = [p.communicate(timeout=300)[1] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
        ckpts = [torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True) for out in nodes]
        assert ckpts[0]["step"] == ckpts[1]["step"] == steps and len(ckpts[1]["rng"]) == 2
        assert all(torch.equal(ckpts[0]["ema"][k], ckpts[1]["ema"][k]) for k in ckpts[0]["ema"])
        assert latest_generator(nodes[1])[0].is_file() and (nodes[1] / "vocab.json").is_file()
    assert "resumed from" in errors[0] and not (nodes[1] / "logs" / "metrics.jsonl").exists()  # logs: node 0's


@pytest.mark.slow
def test_raising_max_steps_continues_mid_epoch_to_identical_weights(birds, damsm_run, tmp_path):
    """Extending a finished run (MAX_STEPS 6 -> 10) picks up inside the epoch where it stopped, with the
    discriminators' random augmentation (TRAIN.D_AUGMENT) drawing the same numbers as the uninterrupted run, and
    the PatchGAN (TRAIN.PATCH_D_LOSS) and its optimizer carried in the checkpoint."""
    from trainer.damsm import latest_encoders

    text, _ = latest_encoders(damsm_run)
    args = ["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), *sets(TINY_GAN),
            *sets(["TRAIN.LOG_INTERVAL=1", f"TRAIN.NET_E={text}", "TRAIN.D_AUGMENT=translation,cutout",
                   "TRAIN.PATCH_D_LOSS=1"])]
    full = _cli([*args, "--set", "TRAIN.MAX_STEPS=10", "--output-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "extended"
    first = _cli([*args, "--set", "TRAIN.MAX_STEPS=6", "--output-dir", str(out)])
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["step_in_epoch"] > 0  # 6 is not a multiple of the steps per epoch
    again = _cli([*args, "--set", "TRAIN.MAX_STEPS=10", "--output-dir", str(out)])
    assert again.returncode == 0, again.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 10
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert len(a["netsD"]) == 2  # the 64 px stage's D and the PatchGAN
    assert all(torch.equal(a["netsD"][-1][k], b["netsD"][-1][k]) for k in a["netsD"][-1])
    assert (out / "Model" / "netD_patch.pth").is_file()
    assert _metrics(out, "gan/train")[-1]["errD_patch"] > 0
    without = _cli([*args, "--set", "TRAIN.MAX_STEPS=12", "--set", "TRAIN.PATCH_D_LOSS=0", "--output-dir", str(out)])
    assert without.returncode == 1 and "TRAIN.PATCH_D_LOSS and TRAIN.HEAD_D_LOSS add one each" in without.stderr.strip().splitlines()[-1]
    # a run whose last step is an epoch's last (8 = 2 epochs of 4) records the next epoch, as a natural end does
    boundary = tmp_path / "boundary"
    first = _cli([*args, "--set", "TRAIN.MAX_STEPS=8", "--output-dir", str(boundary)])
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = torch.load(boundary / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (8, 2, 0)
    again = _cli([*args, "--set", "TRAIN.MAX_STEPS=10", "--output-dir", str(boundary)])
    assert again.returncode == 0, again.stderr[-2000:]
    c = torch.load(boundary / "checkpoint.pt", map_location="cpu", weights_only=True)
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], c["ema"][name]), name


def test_a_64px_run_grows_into_more_stages(birds, damsm_run, tmp_path):
    """Progressive training: a one-stage run's generator and D0 start a two-stage run; the 128 px stage starts
    fresh. The other direction, and a different width, are one-line errors."""
    from trainer.damsm import latest_encoders

    text, _ = latest_encoders(damsm_run)
    args = ["train", "gan", "--cfg", GAN_CFG, "--data-dir", str(birds), *sets(TINY_GAN),
            *sets([f"TRAIN.NET_E={text}", "TRAIN.SNAPSHOT_INTERVAL=1"])]
    small = _cli([*args, "--set", "TRAIN.MAX_STEPS=4", "--output-dir", str(tmp_path / "s64")])
    assert small.returncode == 0, small.stderr[-2000:]
    source = max((tmp_path / "s64" / "Model").glob("netG_epoch_*.pth"))
    grown = _cli([*args, "--set", "TREE.BRANCH_NUM=2", "--set", "TRAIN.MAX_STEPS=2",
                  "--output-dir", str(tmp_path / "s128"), "--init-from", str(source)])
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert "growing the generator: h_net2, img_net2 start from scratch" in grown.stderr
    assert "discriminator 0 from" in grown.stderr
    ckpt = torch.load(tmp_path / "s128" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["netsD"]) == 2 and "h_net2.att.conv_context.weight" in ckpt["netG"]

    # TRAIN.FROZEN_STAGES=1: the 64 px stage stays exactly as loaded (weights and BatchNorm statistics), the new
    # stage trains; freezing a generator that was never trained is a one-line error
    kept = _cli([*args, "--set", "TREE.BRANCH_NUM=2", "--set", "TRAIN.MAX_STEPS=2", "--set", "TRAIN.FROZEN_STAGES=1",
                 "--output-dir", str(tmp_path / "frozen"), "--init-from", str(source)])
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert "frozen generator stages: ca_net, h_net1, img_net1" in kept.stderr
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    after = torch.load(tmp_path / "frozen" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for k, v in loaded.items():
        assert torch.equal(after["netG"][k], v) and torch.equal(after["ema"].get(k, v), v), k
    trained = [k for k in after["ema"] if k.startswith(("h_net2.", "img_net2."))]
    assert len(after["optG"]["state"]) == len(trained) > 0  # Adam holds the new stage's parameters only
    cold = _cli([*args, "--set", "TREE.BRANCH_NUM=2", "--set", "TRAIN.MAX_STEPS=2", "--set", "TRAIN.FROZEN_STAGES=1",
                 "--output-dir", str(tmp_path / "cold")])
    assert cold.returncode != 0 and "start from a trained generator" in cold.stderr.strip().splitlines()[-1]

    shrink = _cli([*args, "--set", "TRAIN.MAX_STEPS=2", "--output-dir", str(tmp_path / "bad"),
                   "--init-from", str(max((tmp_path / "s128" / "Model").glob("netG_epoch_*.pth")))])
    assert shrink.returncode != 0
    assert "does not fit the config: it has h_net2" in shrink.stderr.strip().splitlines()[-1]
    wider = _cli([*args, "--set", "GAN.GF_DIM=16", "--set", "TRAIN.MAX_STEPS=2", "--output-dir", str(tmp_path / "w"),
                  "--init-from", str(source)])
    assert wider.returncode != 0 and "GF_DIM" in wider.stderr.strip().splitlines()[-1]


def test_growing_keeps_the_source_weights_and_initialises_the_new_stage():
    from attngan.model import Generator, ModelConfig
    from trainer.gan import load_grown_generator

    small = Generator(ModelConfig(n_words=20, gf_dim=4, embedding_dim=16, condition_dim=8, z_dim=8, branch_num=1))
    big = Generator(ModelConfig(n_words=20, gf_dim=4, embedding_dim=16, condition_dim=8, z_dim=8, branch_num=3))
    fresh = {k: v.clone() for k, v in big.state_dict().items()}
    assert load_grown_generator(big, small.state_dict(), "s") == ["h_net2", "h_net3", "img_net2", "img_net3"]
    for k, v in big.state_dict().items():
        assert torch.equal(v, small.state_dict()[k] if k in small.state_dict() else fresh[k]), k
    with pytest.raises(AttnGANError, match="it lacks ca_net"):
        load_grown_generator(big, {k: v for k, v in small.state_dict().items() if not k.startswith("ca_net")}, "s")

    # word attention at 64 px belongs to stage 1: it grows with it, and is not bolted onto a stage 1 without it
    def attn64(branches: int) -> Generator:
        return Generator(ModelConfig(n_words=20, gf_dim=4, embedding_dim=16, condition_dim=8, z_dim=8,
                                     branch_num=branches, attn_64=True))

    small64, big64 = attn64(1), attn64(3)
    assert load_grown_generator(big64, small64.state_dict(), "s") == ["h_net2", "h_net3", "img_net2", "img_net3"]
    assert torch.equal(big64.state_dict()["h_net1.att.conv_context.weight"],
                       small64.state_dict()["h_net1.att.conv_context.weight"])
    with pytest.raises(AttnGANError, match="h_net1.upsample4.1.weight .*WORD_ATTN_64"):
        load_grown_generator(big64, small.state_dict(), "s")
    with pytest.raises(AttnGANError, match="it has h_net1.att.conv_context.weight.*WORD_ATTN_64"):
        load_grown_generator(big, small64.state_dict(), "s")


def test_head_d_is_shown_real_heads_with_the_eye_ring_colour_swapped():
    """TRAIN.HEAD_D_SWAP_PART: the captions of the batch that name the eye ring's colour come back with another
    colour in its place (rows and word features, as the head D reads them), the same swaps for the same step, and
    the head D's loss counts each such real head as one more mismatched pair; off, or with no caption naming the
    ring, nothing changes."""
    from attngan.model import ConditionalPatchDiscriminator, TextEncoder
    from attngan.text import Vocabulary, tokenize
    from trainer.gan import head_condition, head_discriminator_loss, swapped_condition

    texts = ["a bird with a red crown and white belly", "the bird has a yellow crown and a black eyering",
             "this bird has a grey back, and its eye ring is bright blue"]
    colours = ["white", "yellow", "black", "orange", "red", "blue", "grey"]
    vocab = Vocabulary.build([tokenize(t) for t in texts] + [colours])
    rows = [[vocab.wordtoix[w] for w in tokenize(t)] for t in texts]
    lengths = torch.tensor([len(r) for r in rows])
    captions = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        captions[i, : len(r)] = torch.tensor(r)
    torch.manual_seed(0)
    text_encoder, headD = TextEncoder(len(vocab), nhidden=16).eval(), ConditionalPatchDiscriminator(8, 16, words=True)
    index, condition = swapped_condition(headD, text_encoder, vocab, captions, lengths, "eyering", (1, 7))
    assert index.tolist() == [1, 2] and condition.features.shape[:2] == (2, 16)
    again = swapped_condition(headD, text_encoder, vocab, captions, lengths, "eyering", (1, 7))[1]
    assert torch.equal(again.features, condition.features)  # resumable: the same swaps at the same step
    words, _ = text_encoder(captions[index], lengths[index])
    assert not torch.allclose(words, condition.features[..., : words.size(2)])  # one colour word changed ...
    assert torch.equal(condition.mask, captions[index][:, : words.size(2)] == 0)  # ... and the lengths kept
    assert swapped_condition(headD, text_encoder, vocab, captions, lengths, "", (1, 7)) is None
    assert swapped_condition(headD, text_encoder, vocab, captions[:1], lengths[:1], "eyering", (1, 7)) is None
    real, fake = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    all_words, all_sent = text_encoder(captions, lengths)
    cond = head_condition(headD, all_sent, all_words, captions[:, : all_words.size(2)] == 0)
    headD.eval()  # the same BatchNorm statistics for both calls
    without = head_discriminator_loss(headD, real, fake, cond)
    with_swaps = head_discriminator_loss(headD, real, fake, cond, swap=(index, condition))
    assert with_swaps.item() > without.item()


def test_head_discriminator_trains_on_heads_and_travels_in_the_checkpoint(birds, damsm_run, tmp_path, monkeypatch):
    """TRAIN.HEAD_D_LOSS: one more PatchGAN, on crops of the last stage's image (real and generated) around where the
    detail reader looks for the eye ring. It trains beside the stages' Ds (errD_head, errG_head), is carried in the
    checkpoint with its optimizer and saved as netD_head.pth; without a reader of the eye ring it is one line."""
    from trainer.backbone import train_backbone
    from trainer.damsm import latest_encoders
    from trainer.gan import head_crop_size, train_gan

    assert (head_crop_size(256), head_crop_size(128), head_crop_size(64)) == (64, 32, 32)
    monkeypatch.setattr("trainer.backbone.READER_MIN_ACCURACY", 0.0)  # a tiny reader: keep its heads whatever they read
    readers = {}
    for name, parts in (("eyering", ["crown", "eyering"]), ("crown", ["crown"])):
        readers[name] = tmp_path / f"{name}.safetensors"
        train_backbone(readers[name], renders=96, epochs=1, size=64, seed=5, held_out=16, progress=False,
                       pool="attention", parts=parts)
    text, _ = latest_encoders(damsm_run)
    base = TINY_GAN + [f"TRAIN.NET_E={text}", "TRAIN.LOG_INTERVAL=1", "TRAIN.DETAIL_LOSS=1", "TRAIN.HEAD_D_LOSS=2",
                       f"TRAIN.DETAIL_BACKBONE={readers['eyering']}"]
    run = train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=3"]), str(birds), str(tmp_path / "gan"))
    rows = _metrics(run, "gan/train")
    assert len(rows) == 3 and all(r["errD_head"] > 0 and r["errG_head"] > 0 for r in rows)
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["netsD"]) == 2 and len(ckpt["optsD"]) == 2  # the 64 px stage's D and the head's
    assert (run / "Model" / "netD_head.pth").is_file()
    head = torch.load(run / "Model" / "netD_head.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(head[k], ckpt["netsD"][-1][k]) for k in head)
    for extra, expected in [(["TRAIN.HEAD_D_LOSS=0", "TRAIN.MAX_STEPS=4"], "HEAD_D_LOSS add one each"),
                            (["TRAIN.DETAIL_LOSS=0"], "HEAD_D_LOSS crops the head where the detail reader looks"),
                            ([f"TRAIN.DETAIL_BACKBONE={readers['crown']}"], "no attention for 'eyering'"),
                            (["TRAIN.HEAD_D_LOSS=-1"], "HEAD_D_LOSS must be 0")]:
        out = run if "add one each" in expected else tmp_path / "bad"
        with pytest.raises(AttnGANError, match=expected):
            train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=2", *extra]), str(birds), str(out))

    # TRAIN.HEAD_D_CONDITIONAL: each window of the head D gets a logit with the sentence and one without
    cond = ["TRAIN.HEAD_D_CONDITIONAL=true"]
    run_c = train_gan(load_config(GAN_CFG, base + cond + ["TRAIN.MAX_STEPS=2"]), str(birds), str(tmp_path / "cond"))
    rows = _metrics(run_c, "gan/train")
    assert len(rows) == 2 and all(r["errD_head"] > 0 and r["errG_head"] > 0 for r in rows)
    head = torch.load(run_c / "Model" / "netD_head.pth", map_location="cpu", weights_only=True)
    assert any(k.startswith("COND_DNET.jointConv") for k in head) and any(k.startswith("UNCOND_DNET") for k in head)
    for out, extra, expected in [(run_c, ["TRAIN.MAX_STEPS=4"], "switched on mid-run, not off"),
                                 (tmp_path / "bad", cond + ["TRAIN.HEAD_D_LOSS=0"], "set TRAIN.HEAD_D_LOSS")]:
        with pytest.raises(AttnGANError, match=expected):
            train_gan(load_config(GAN_CFG, base + extra), str(birds), str(out))
    # TRAIN.HEAD_D_WORDS: its conditional head reads the caption's words; set from the start of the conditional head
    words = cond + ["TRAIN.HEAD_D_WORDS=true"]
    run_w = train_gan(load_config(GAN_CFG, base + words + ["TRAIN.MAX_STEPS=2"]), str(birds), str(tmp_path / "words"))
    assert all(r["errD_head"] > 0 and r["errG_head"] > 0 for r in _metrics(run_w, "gan/train"))
    head = torch.load(run_w / "Model" / "netD_head.pth", map_location="cpu", weights_only=True)
    assert any(k.startswith("COND_DNET.attention.conv_context") for k in head)
    for out, extra, expected in [(run_c, words + ["TRAIN.MAX_STEPS=4"], "TRAIN.HEAD_D_WORDS with it, not later"),
                                 (tmp_path / "bad", ["TRAIN.HEAD_D_WORDS=true"], "set TRAIN.HEAD_D_CONDITIONAL"),
                                 (tmp_path / "bad", ["TRAIN.HEAD_D_SWAP_PART=eyering"], "set TRAIN.HEAD_D_CONDITIONAL"),
                                 (tmp_path / "bad", words + ["TRAIN.HEAD_D_SWAP_PART=beak"], "'beak' is not a part named")]:
        with pytest.raises(AttnGANError, match=expected):
            train_gan(load_config(GAN_CFG, base + extra), str(birds), str(out))
    # switched on mid-run (as the default model's last stage, with the words): the PatchGAN run resumes with a
    # word-conditional head D and trains on, here shown eye-ring-swapped captions too
    train_gan(load_config(GAN_CFG, base + words + ["TRAIN.HEAD_D_SWAP_PART=eyering", "TRAIN.MAX_STEPS=4"]),
              str(birds), str(run))
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 4 and any(k.startswith("COND_DNET.attention") for k in ckpt["netsD"][-1])


def test_ring_map_loss_reads_generated_heads_and_travels_in_the_checkpoint(birds, damsm_run, tmp_path, monkeypatch):
    """TRAIN.RING_MAP_LOSS: each generated head, cropped where the detail reader looks for the eye ring (here without
    a head D), is read by the ring map (r_loss); the map travels in the checkpoint, so a run resumes without its file;
    missing settings are one line."""
    from trainer.backbone import train_backbone
    from trainer.damsm import latest_encoders
    from trainer.gan import train_gan
    from trainer.ring_map import train_ring_map

    monkeypatch.setattr("trainer.backbone.READER_MIN_ACCURACY", 0.0)
    reader = tmp_path / "reader.safetensors"
    train_backbone(reader, renders=96, epochs=1, size=64, seed=5, held_out=16, progress=False, pool="attention",
                   parts=["crown", "eyering"])
    ring_map = tmp_path / "ring_map.safetensors"
    train_ring_map(ring_map, renders=64, epochs=1, seed=3, held_out=16, progress=False, device="cpu")
    text, _ = latest_encoders(damsm_run)
    base = TINY_GAN + [f"TRAIN.NET_E={text}", "TRAIN.LOG_INTERVAL=1", "TRAIN.DETAIL_LOSS=1",
                       f"TRAIN.DETAIL_BACKBONE={reader}", "TRAIN.RING_MAP_LOSS=2", f"TRAIN.RING_MAP={ring_map}",
                       "TRAIN.CAPTION_FOCUS=eyering=1"]
    run = train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=2"]), str(birds), str(tmp_path / "gan"))
    rows = _metrics(run, "gan/train")
    assert len(rows) == 2 and all(r["r_loss"] > 0 for r in rows)  # every caption names the ring: each step reads it
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["ring_map_meta"]["ring_area"] > 0 and "out.2.weight" in ckpt["ring_map"]
    ring_map.unlink()  # the checkpoint carries the map; resumed with the shape and colour losses instead
    resumed = ["TRAIN.MAX_STEPS=3", "TRAIN.RING_MAP_SHAPE=true", "TRAIN.RING_MAP_COLOUR=1"]
    train_gan(load_config(GAN_CFG, base + resumed), str(birds), str(run))
    rows = _metrics(run, "gan/train")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["r_loss"] > 0
    for extra, expected in [(["TRAIN.DETAIL_LOSS=0"], "RING_MAP_LOSS reads the head where the detail reader looks"),
                            (["TRAIN.RING_MAP="], "set TRAIN.RING_MAP"), ([], "TRAIN.RING_MAP .* does not exist"),
                            (["TRAIN.RING_MAP_LOSS=-1"], "RING_MAP_LOSS must be 0"),
                            (["TRAIN.RING_MAP_LOSS=0", "TRAIN.RING_MAP_SHAPE=true"], "set TRAIN.RING_MAP_LOSS"),
                            (["TRAIN.RING_MAP_LOSS=0", "TRAIN.RING_MAP_COLOUR=1"], "set TRAIN.RING_MAP_LOSS"),
                            (["TRAIN.RING_MAP_COLOUR=-1"], "RING_MAP_COLOUR must be 0")]:
        with pytest.raises(AttnGANError, match=expected):
            train_gan(load_config(GAN_CFG, base + ["TRAIN.MAX_STEPS=2", *extra]), str(birds), str(tmp_path / "bad"))


def test_a_patchgan_head_d_carries_into_a_conditional_one():
    """TRAIN.HEAD_D_CONDITIONAL switched on when resuming: the PatchGAN's trunk and window logits, with their Adam
    moments, become the conditional D's trunk and unconditional head; its sentence head starts fresh."""
    from attngan.model import ConditionalPatchDiscriminator, PatchDiscriminator
    from trainer.gan import carry_patch_into_conditional

    torch.manual_seed(0)
    patch = PatchDiscriminator(8)
    opt = torch.optim.Adam(patch.parameters())
    patch(torch.randn(2, 3, 32, 32)).mean().backward()
    opt.step()
    conditional = ConditionalPatchDiscriminator(8, 16)
    fresh_sentence_head = {k: v.clone() for k, v in conditional.COND_DNET.state_dict().items()}
    opt_c = torch.optim.Adam(conditional.parameters())
    carry_patch_into_conditional(conditional, opt_c, patch.state_dict(), opt.state_dict())
    images = torch.randn(2, 3, 32, 32)
    patch.eval(), conditional.eval()
    with torch.no_grad():
        assert torch.equal(conditional.UNCOND_DNET(conditional(images)).view(-1), patch(images).view(-1))
    assert all(torch.equal(v, conditional.COND_DNET.state_dict()[k]) for k, v in fresh_sentence_head.items())
    carried = opt_c.state_dict()["state"]
    names = [n for n, _ in conditional.named_parameters()]
    assert {names[i] for i in carried} == {n for n in names if not n.startswith("COND_DNET")}
    assert torch.equal(carried[names.index("img_code.0.weight")]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_conditional_head_discriminator_reads_the_caption():
    """The conditional head D's loss changes with the sentence (it judges real heads against the next caption as
    mismatched pairs); the PatchGAN's does not. Both give one logit per window."""
    from attngan.model import ModelConfig
    from trainer.gan import build_head_discriminator, head_discriminator_loss, head_generator_loss

    torch.manual_seed(0)
    cfg = load_config(GAN_CFG, ["TRAIN.HEAD_D_LOSS=2"])
    mc = ModelConfig.from_config(cfg, 20)
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    sent, other = torch.randn(4, mc.embedding_dim), torch.randn(4, mc.embedding_dim)
    patch = build_head_discriminator(cfg, mc)
    cfg.TRAIN.HEAD_D_CONDITIONAL = True
    conditional = build_head_discriminator(cfg, mc)
    with torch.no_grad():
        windows = patch(real).shape[-2:]
        features = conditional(real)
        per_window = 4 * windows.numel()
        assert conditional.UNCOND_DNET(features).numel() == conditional.COND_DNET(features, sent).numel() == per_window
        assert head_discriminator_loss(patch, real, fake, sent) == head_discriminator_loss(patch, real, fake, other)
        with_sent = head_discriminator_loss(conditional, real, fake, sent)
        assert with_sent != head_discriminator_loss(conditional, real, fake, other)
        assert head_generator_loss(conditional, fake, sent) != head_generator_loss(conditional, fake, other)
    cfg.TRAIN.HEAD_D_LOSS = 0
    assert build_head_discriminator(cfg, mc) is None


def test_word_conditioned_head_discriminator_reads_the_words_not_the_sentence():
    """TRAIN.HEAD_D_WORDS: each window attends over the caption's words. Its losses change with a word, not with the
    sentence vector nor with the features at padded positions; the mismatched pairs slice words and mask together."""
    from attngan.model import ModelConfig, Words
    from trainer.gan import (
        build_head_discriminator,
        head_condition,
        head_discriminator_loss,
        head_generator_loss,
    )

    torch.manual_seed(0)
    cfg = load_config(GAN_CFG, ["TRAIN.HEAD_D_LOSS=2", "TRAIN.HEAD_D_CONDITIONAL=true"])
    mc = ModelConfig.from_config(cfg, 20)
    sentence_d = build_head_discriminator(cfg, mc)
    cfg.TRAIN.HEAD_D_WORDS = True
    word_d = build_head_discriminator(cfg, mc)
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    sent, other_sent = torch.randn(4, mc.embedding_dim), torch.randn(4, mc.embedding_dim)
    words = torch.randn(4, mc.embedding_dim, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True  # the last two positions are padding
    assert head_condition(sentence_d, sent, words, mask) is sent
    cond = head_condition(word_d, sent, words, mask)
    assert isinstance(cond, Words) and cond[1:4].features.shape[0] == cond[1:4].mask.shape[0] == 3
    assert head_condition(word_d, other_sent, words, mask).features is words  # the sentence is not read

    changed_word, changed_padding = words.clone(), words.clone()
    changed_word[:, :, 1] += 3.0
    changed_padding[:, :, 5] += 3.0
    with torch.no_grad():
        windows = sentence_d.UNCOND_DNET(sentence_d(real)).numel()
        assert word_d.COND_DNET(word_d(real), cond).numel() == windows
        loss = head_discriminator_loss(word_d, real, fake, cond)
        assert loss != head_discriminator_loss(word_d, real, fake, Words(changed_word, mask))
        assert torch.allclose(loss, head_discriminator_loss(word_d, real, fake, Words(changed_padding, mask)))
        g_loss = head_generator_loss(word_d, fake, cond)
        assert g_loss != head_generator_loss(word_d, fake, Words(changed_word, mask))
