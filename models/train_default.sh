#!/usr/bin/env bash
# Reproduce the bundled default model (models/default/) from scratch: synthetic birds -> DAMSM -> AttnGAN
# -> bundle -> evaluation report. `make train-default` runs this. Every step is resumable/idempotent: rerun
# the script after an interruption and it continues where it stopped (finished steps are skipped).
# Measured on a 2-core Xeon shared with other work: about 60 minutes of training in all (models/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ATTNGAN=("$PY" -m attngan.cli)
DATA=${DATA:-data/default}        # git-ignored
RUNS=${RUNS:-output}              # git-ignored
BUNDLE=${BUNDLE:-models/default}
SEED=4                            # synthetic data seed (4000 birds: 3000 train / 1000 test, 160 species)
IMAGES=4000
EVAL_IMAGES=${EVAL_IMAGES:-1000}  # one per test image (reduced: the DM-GAN protocol is 30000)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. data (deterministic for the seed; skipped when already there)
if [ ! -f "$DATA/attributes.json" ]; then
    "${ATTNGAN[@]}" data synth --out "$DATA" --images "$IMAGES" --seed "$SEED"
fi

# 2. DAMSM text + image encoders: (a) from scratch at 64 px, where a step is ~16x cheaper and the matching
#    losses have the hundreds of steps they need to leave chance; (b) adapted to 256 px, the size the GAN's
#    DAMSM loss and the evaluation feed the image encoder. Each resumes from its run's checkpoint.pt.
"${ATTNGAN[@]}" train damsm --cfg trainer/cfg/default/damsm_64.yml --data-dir "$DATA" \
    --output-dir "$RUNS/default_DAMSM64"
"${ATTNGAN[@]}" train damsm --cfg trainer/cfg/default/damsm.yml --data-dir "$DATA" \
    --output-dir "$RUNS/default_DAMSM" --init-from "$RUNS/default_DAMSM64/Model/text_encoder20.pth"

# 3. AttnGAN, 3 stages (resumes from output/default_AttnGAN/checkpoint.pt)
"${ATTNGAN[@]}" train gan --cfg trainer/cfg/default/gan.yml --data-dir "$DATA" \
    --output-dir "$RUNS/default_AttnGAN" --set "TRAIN.NET_E=$RUNS/default_DAMSM/Model/text_encoder0.pth"

# 4. bundle (EMA generator, fp16 weights); redone only when the run's checkpoint is newer than the bundle
if [ ! "$BUNDLE/manifest.json" -nt "$RUNS/default_AttnGAN/checkpoint.pt" ]; then
    "${ATTNGAN[@]}" export --run "$RUNS/default_AttnGAN" --out "$BUNDLE" --half
fi

# 5. evaluation report on the held-out (test-class) captions; redone only for a newer bundle
if [ ! "$BUNDLE/eval/metrics.json" -nt "$BUNDLE/manifest.json" ]; then
    "${ATTNGAN[@]}" evaluate --bundle "$BUNDLE" --data "$DATA" --out "$BUNDLE/eval" --images "$EVAL_IMAGES" \
        --logs "$RUNS/default_AttnGAN"
fi

# 6. README pictures: docs/default_samples.png and docs/challenge_caption.png
"$PY" models/make_pictures.py --bundle "$BUNDLE" --docs docs --shrink "$BUNDLE/eval/samples.png"

# 7. the DAMSM encoders' own R-precision on the real test images (the ceiling quoted in models/README.md)
"$PY" models/real_rprecision.py --bundle "$BUNDLE" --data "$DATA"
