"""The SageMaker entry point in a simulated /opt/ml tree: trains DAMSM then the GAN, leaves a loadable bundle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from attngan.errors import AttnGANError
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
    # attention on), the three-stage GAN grown from it, then the two head stages (the first from a bundle of the
    # three-stage run, the second resuming a copy of the first); plus the optional restart of the 64 px stage from
    # its EMA generator before growing; shrunk to seconds. The recipe's GAN runs read their birds with a detail
    # backbone the job trains first; this job's do not (TRAIN.DETAIL_LOSS=0), so it trains none
    common = "TREE.BASE_SIZE=64 IMAGE_ENCODER_SIZE=64 WORKERS=0 CUDA=false TRAIN.BATCH_SIZE=8 " \
        "TEXT.EMBEDDING_DIM=32 TEXT.WORDS_NUM=10"
    hp = {"config": "default", "gan_grow_restart_steps": "1500",
          "damsm_epochs": "1", "gan_epochs": "1", "max_steps": "3", "set": common,
          "damsm_set": "TREE.BRANCH_NUM=1,TRAIN.IMAGE_CODE=parts,TRAIN.TEXT_RENDERS=8,TRAIN.TEXT_RENDER_STEPS=2",
          # a 64-render backbone reads no part well enough for the part or detail loss, nor finds the head for the
          # head D (test_backbone.py and test_training.py have them)
          "gan_set": "GAN.GF_DIM=8,GAN.DF_DIM=8,GAN.R_NUM=1,GAN.Z_DIM=16,GAN.CONDITION_DIM=16,TRAIN.PART_LOSS=0,"
                     "TRAIN.DETAIL_LOSS=0,TRAIN.HEAD_D_LOSS=0,TRAIN.HEAD_D_CONDITIONAL=false,TRAIN.HEAD_D_WORDS=false",
          "backbone_renders": "64", "backbone_epochs": "1"}
    env = _opt_ml(tmp_path, birds, hp)
    res = subprocess.run([PYTHON, "-m", "trainer.sagemaker"], check=False, env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = load_bundle(tmp_path / "model")
    # the bundle comes from the last head stage, which resumed a copy of the first at its step 3 and trained 3 more
    assert bundle.config.gf_dim == 8 and bundle.config.attn_64 and bundle.manifest["training"]["steps"] == 6
    assert bundle.config.branch_num == 3 and (tmp_path / "checkpoints" / "gan_grow" / "checkpoint.pt").is_file()
    assert "growing the generator: h_net2, h_net3, img_net2, img_net3" in res.stderr
    assert bundle.config.image_encoder == "small" and bundle.config.image_encoder_size == 64
    backbone = tmp_path / "checkpoints" / "image_backbone.safetensors"
    assert backbone.is_file()  # trained once, found in place by a restarted job
    gan_commands = [line for line in res.stderr.splitlines() if "GAN" in line and "attngan.cli train gan" in line]
    assert len(gan_commands) == 5 and all(f"TRAIN.IMAGE_BACKBONE={backbone}" in c for c in gan_commands)
    restart, grown = tmp_path / "checkpoints" / "gan_grow_restart", gan_commands[2]
    assert f"--init-from {tmp_path / 'checkpoints' / 'gan_grow' / 'Model'}" in gan_commands[1]
    assert gan_commands[1].endswith("TRAIN.MAX_STEPS=3")  # the restart's 1,500 steps, capped by max_steps
    assert f"--init-from {restart / 'Model'}" in grown and (restart / "checkpoint.pt").is_file()
    detail = tmp_path / "checkpoints" / "detail_backbone.safetensors"
    assert not detail.exists() and not any("TRAIN.DETAIL_BACKBONE=" in c for c in gan_commands)
    checkpoints = tmp_path / "checkpoints"
    head, head_cond = gan_commands[3], gan_commands[4]
    assert "default/gan_head.yml" in head and f"--init-from {checkpoints / 'gan_bundle'}" in head
    assert load_bundle(checkpoints / "gan_bundle").manifest["training"]["steps"] == 3  # the three-stage run's, fp16
    assert "default/gan_head_cond.yml" in head_cond and "--init-from" not in head_cond
    assert head_cond.endswith("TRAIN.MAX_STEPS=6")
    first = torch.load(checkpoints / "gan_detail" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert first["step"] == 3  # the copy was resumed; the first head stage's run stays as it was
    assert "--epochs 1" in next(line for line in res.stderr.splitlines() if "image backbone: " in line)
    assert (checkpoints / "gan_detail_2" / "checkpoint.pt").is_file()  # the bundle's run
    from safetensors.torch import load_file

    trunk = {k: v for k, v in load_file(str(backbone)).items() if not k.startswith("heads.")}
    image = bundle.read_state("image_encoder")
    # frozen through DAMSM and the GAN (rounded to fp16: the head stages start from a half-precision bundle of the
    # three-stage run, as make train-default's do)
    assert all(torch.equal(image[k].float(), v.half().float()) for k, v in trunk.items())
    assert (tmp_path / "checkpoints" / "damsm" / "checkpoint.pt").is_file()  # resumable after a restart
    assert (tmp_path / "checkpoints" / "gan" / "checkpoint.pt").is_file()
    assert not (tmp_path / "output" / "failure").exists()
    # fp16 weights, as make train-default exports the shipped bundle (config=default's half=true)
    assert bundle.manifest["weights_dtype"] == "float16"
    assert load_file(str(tmp_path / "model" / "generator.safetensors"))["img_net3.img.0.weight"].dtype == torch.float16


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
    assert not job.half  # fp32 bundles but for config=default's, unless asked
    for hp, half in [({"config": "default"}, True), ({"config": "default", "half": "False"}, False),
                     ({"config": "bird", "half": "true"}, True)]:
        (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
        assert read_job(env).half is half
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"half": "yes"}))
    with pytest.raises(AttnGANError, match="hyperparameter half='yes' must be true or false"):
        read_job(env)


def test_sagemaker_overrides_keep_commas_inside_a_value(birds, tmp_path):
    """Overrides are separated by spaces or commas, but a comma inside a value (per-part weights) stays in it."""
    from trainer.sagemaker import read_job

    hp = {"config": "default", "set": "TRAIN.BATCH_SIZE=8 , WORKERS=0",
          "gan_set": "TRAIN.DETAIL_PART_WEIGHTS=eyering=4,bill_shape=2,TRAIN.HEAD_D_LOSS=2 GAN.R_NUM=1"}
    job = read_job(_opt_ml(tmp_path, birds, hp))
    assert job.gan_set[:5] == ["TRAIN.BATCH_SIZE=8", "WORKERS=0", "TRAIN.DETAIL_PART_WEIGHTS=eyering=4,bill_shape=2",
                               "TRAIN.HEAD_D_LOSS=2", "GAN.R_NUM=1"]
    assert job.damsm_set[:2] == ["TRAIN.BATCH_SIZE=8", "WORKERS=0"]


def test_sagemaker_detail_backbone_follows_the_configs(birds, tmp_path, caplog):
    """The default preset's GAN runs read their birds with a detail backbone, so the job trains one (the recipe's:
    128 px, attention-pooled, seed 51, detail_backbone_epochs), once; a job whose runs do not (DETAIL_LOSS 0), or that
    names its own file, trains none."""
    from trainer.sagemaker import _detail_backbone, _needs_detail_backbone, read_job

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

    caplog.set_level("INFO", logger="trainer")
    job = read_job(_opt_ml(tmp_path / "trained", birds, {"config": "default", "backbone_renders": "64",
                                                         "detail_backbone_epochs": "2"}))
    path = _detail_backbone(job)
    command = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("detail backbone: "))
    assert path == job.checkpoint_dir / "detail_backbone.safetensors" and path.is_file()
    assert all(f in command for f in ("--pool attention", "--size 128", "--seed 51", "--epochs 2", "--renders 64"))
    caplog.clear()
    assert _detail_backbone(job) == path and not caplog.records  # a restarted job finds it in place


def test_sagemaker_default_preset_ends_with_the_head_stages(birds, tmp_path):
    """config=default trains what make train-default does, the two head stages last; gan_detail_config names other
    last stages (separated by commas) or, empty, none."""
    from trainer.sagemaker import read_job

    for i, (hp, expected) in enumerate([({"config": "default"}, ["gan_head.yml", "gan_head_cond.yml"]),
                                        ({"config": "default", "gan_detail_config": ""}, []),
                                        ({"config": "synth"}, []),
                                        ({"config": "synth", "gan_detail_config": "default/gan_detail.yml, "
                                                                                  "default/gan_head.yml"},
                                         ["gan_detail.yml", "gan_head.yml"])]):
        assert [c.name for c in read_job(_opt_ml(tmp_path / str(i), birds, hp)).detail_cfgs] == expected, hp
    with pytest.raises(AttnGANError, match="'default/nope.yml' not found"):
        read_job(_opt_ml(tmp_path / "bad", birds, {"config": "default", "gan_detail_config": "default/nope.yml"}))
