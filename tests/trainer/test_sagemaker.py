"""The SageMaker entry point in a simulated /opt/ml tree: trains DAMSM then the GAN, leaves a loadable bundle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import PYTHON, REPO, subprocess_env


def _opt_ml(root: Path, birds: Path, hyperparameters: dict[str, str]) -> dict[str, str]:
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    env = subprocess_env()
    env.update(SM_ROOT=str(root), SM_CHANNEL_TRAIN=str(birds), SM_MODEL_DIR=str(root / "model"),
               SM_OUTPUT_DATA_DIR=str(root / "output" / "data"), SM_HOSTS='["algo-1"]', SM_CURRENT_HOST="algo-1")
    return env


@pytest.mark.slow
def test_sagemaker_entry_point_end_to_end(birds, tmp_path):
    from attngan.bundle import load_bundle

    # the default model's recipe (config=default): image backbone, DAMSM over it, the 64 px GAN stage alone (word
    # attention on), the three-stage GAN grown from it; plus the optional steps: the 64 px stage restarted from its
    # EMA generator before growing, and the detail stage; every GAN run reads its birds with the detail backbone the
    # job trains first (the recipe's 128 px, attention-pooled); shrunk to seconds
    common = "TREE.BASE_SIZE=64 IMAGE_ENCODER_SIZE=64 WORKERS=0 CUDA=false TRAIN.BATCH_SIZE=8 " \
        "TEXT.EMBEDDING_DIM=32 TEXT.WORDS_NUM=10"
    hp = {"config": "default", "gan_detail_config": "default/gan_detail.yml", "gan_grow_restart_steps": "1500",
          "damsm_epochs": "1", "gan_epochs": "1", "max_steps": "3", "set": common,
          "damsm_set": "TREE.BRANCH_NUM=1,TRAIN.IMAGE_CODE=parts,TRAIN.TEXT_RENDERS=8,TRAIN.TEXT_RENDER_STEPS=2",
          # a 64-render backbone reads no part well enough for the part or detail loss (test_backbone.py has them)
          "gan_set": "GAN.GF_DIM=8,GAN.DF_DIM=8,GAN.R_NUM=1,GAN.Z_DIM=16,GAN.CONDITION_DIM=16,TRAIN.PART_LOSS=0,"
                     "TRAIN.DETAIL_LOSS=0",
          "backbone_renders": "64", "backbone_epochs": "1", "detail_backbone_epochs": "2"}
    env = _opt_ml(tmp_path, birds, hp)
    res = subprocess.run([PYTHON, "-m", "trainer.sagemaker"], check=False, env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = load_bundle(tmp_path / "model")
    assert bundle.config.gf_dim == 8 and bundle.config.attn_64 and bundle.manifest["training"]["steps"] == 3
    assert bundle.config.branch_num == 3 and (tmp_path / "checkpoints" / "gan_grow" / "checkpoint.pt").is_file()
    assert "growing the generator: h_net2, h_net3, img_net2, img_net3" in res.stderr
    assert bundle.config.image_encoder == "small" and bundle.config.image_encoder_size == 64
    backbone = tmp_path / "checkpoints" / "image_backbone.safetensors"
    assert backbone.is_file()  # trained once, found in place by a restarted job
    gan_commands = [line for line in res.stderr.splitlines() if "GAN" in line and "attngan.cli train gan" in line]
    assert len(gan_commands) == 4 and all(f"TRAIN.IMAGE_BACKBONE={backbone}" in c for c in gan_commands)
    restart, grown = tmp_path / "checkpoints" / "gan_grow_restart", gan_commands[2]
    assert f"--init-from {tmp_path / 'checkpoints' / 'gan_grow' / 'Model'}" in gan_commands[1]
    assert gan_commands[1].endswith("TRAIN.MAX_STEPS=3")  # the restart's 1,500 steps, capped by max_steps
    assert f"--init-from {restart / 'Model'}" in grown and (restart / "checkpoint.pt").is_file()
    detail = tmp_path / "checkpoints" / "detail_backbone.safetensors"
    assert all(f"TRAIN.DETAIL_BACKBONE={detail}" in c for c in gan_commands) and "--init-from" in gan_commands[3]
    detail_command = next(line for line in res.stderr.splitlines() if "detail backbone: " in line)
    assert "--pool attention" in detail_command and "--size 128" in detail_command and "--seed 51" in detail_command
    assert "--epochs 2" in detail_command  # detail_backbone_epochs; the image backbone's are backbone_epochs
    assert "--epochs 1" in next(line for line in res.stderr.splitlines() if "image backbone: " in line)
    assert detail.is_file()
    assert (tmp_path / "checkpoints" / "gan_detail" / "checkpoint.pt").is_file()  # the bundle's run
    from safetensors.torch import load_file

    trunk = {k: v for k, v in load_file(str(backbone)).items() if not k.startswith("heads.")}
    image = bundle.read_state("image_encoder")
    assert all(torch.equal(image[k].float(), v.float()) for k, v in trunk.items())  # frozen through DAMSM
    assert (tmp_path / "checkpoints" / "damsm" / "checkpoint.pt").is_file()  # resumable after a restart
    assert (tmp_path / "checkpoints" / "gan" / "checkpoint.pt").is_file()
    assert not (tmp_path / "output" / "failure").exists()


def test_sagemaker_failure_file_and_multinode_plan(birds, tmp_path):
    from trainer.sagemaker import _train_cmd, read_job

    env = _opt_ml(tmp_path, birds, {"config": "nope"})
    res = subprocess.run([PYTHON, "-m", "trainer.sagemaker"], check=False, env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text().strip()
    assert "config='nope'" in reason and len(reason.splitlines()) == 1

    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"gan_epochs": "2", "nproc_per_node": "4", "set": "TRAIN.BATCH_SIZE=8"}))
    env.update(SM_HOSTS='["algo-1", "algo-2"]', SM_CURRENT_HOST="algo-2")
    job = read_job(env)
    assert (job.node_rank, job.world_size, job.is_leader) == (1, 8, False)
    cmd = _train_cmd(job, "gan", job.gan_cfg, job.gan_set, tmp_path / "gan")
    assert "--master-addr=algo-1" in cmd and "--node-rank=1" in cmd and "--nnodes=2" in cmd
    assert "TRAIN.MAX_EPOCH=2" in cmd and "TRAIN.BATCH_SIZE=8" in cmd


def test_sagemaker_overrides_keep_commas_inside_a_value(birds, tmp_path):
    """Overrides are separated by spaces or commas, but a comma inside a value (per-part weights) stays in it."""
    from trainer.sagemaker import read_job

    hp = {"config": "default", "set": "TRAIN.BATCH_SIZE=8 , WORKERS=0",
          "gan_set": "TRAIN.DETAIL_PART_WEIGHTS=eyering=4,bill_shape=2,TRAIN.HEAD_D_LOSS=2 GAN.R_NUM=1"}
    job = read_job(_opt_ml(tmp_path, birds, hp))
    assert job.gan_set[:5] == ["TRAIN.BATCH_SIZE=8", "WORKERS=0", "TRAIN.DETAIL_PART_WEIGHTS=eyering=4,bill_shape=2",
                               "TRAIN.HEAD_D_LOSS=2", "GAN.R_NUM=1"]
    assert job.damsm_set[:2] == ["TRAIN.BATCH_SIZE=8", "WORKERS=0"]


def test_sagemaker_detail_backbone_follows_the_configs(birds, tmp_path):
    """The default preset's GAN runs read their birds with a detail backbone, so the job trains one; a job whose
    runs do not (DETAIL_LOSS 0), or that names its own file, trains none."""
    from trainer.sagemaker import _needs_detail_backbone, read_job

    cases = [({"config": "default"}, True),
             ({"config": "default", "gan_set": "TRAIN.DETAIL_LOSS=0"}, False),
             ({"config": "default", "gan_set": "TRAIN.DETAIL_BACKBONE=/data/detail.safetensors"}, False),
             ({"config": "synth"}, False),
             ({"config": "synth", "gan_detail_config": "default/gan_detail.yml"}, True)]
    for i, (hp, needed) in enumerate(cases):
        env = _opt_ml(tmp_path / str(i), birds, hp)
        job = read_job(env)
        assert _needs_detail_backbone(job) is needed, hp
        assert job.detail_backbone_size == 128
