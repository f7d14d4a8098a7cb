#!/usr/bin/env bash
# The headline table's CIFAR-10 ResNet-20 side (issue 21, item 3) on one lent GPU, beside
# Renda et al. 2020's released numbers. Run from the checkout through the device tool:
#   cp ../shared/data/cifar10-jpeg.tar.xz data/     # git-ignored; carried to the machine (carry=["data"])
#   run(command="bash analysis/gpu_headline.sh", carry=["data"], timeout_s=600)
# Defaults fit one 10-minute call (H200: gradscope's ResNet-20 epoch ~37k images/s at batch 512,
# bench/results/h200_bench_gpu.json; at batch 128 expect ~2-3x slower): trajectory 0, EPOCHS=2
# per round, 11 rounds (to 89.3 % pruned), every fixed method, no Oracle. Renda et al.'s scale
# is EPOCHS=182 with 3 trajectories and the Oracle (7 max_lr x 3 seeds per round):
#   EPOCHS=182 TRAJ=0-2 METHODS=silo-preset,silo-cal,lth,lrr,clr,cosine,finetune,allr,oracle \
#     TIMEOUT=0 bash analysis/gpu_headline.sh
# which is about 45k images x 182 epochs x 11 rounds = 90 M images per run: ~1-2 GPU-hours per
# (method, trajectory) and 21x that for the Oracle, i.e. roughly 60-100 GPU-hours in all. Every
# command resumes. Results: $OUT/headline/rounds.csv, to be copied to
# analysis/results/headline/ and analysed with `python analysis/headline_study.py analyse`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" MPLBACKEND=Agg
OUT="${OUT:-/tmp/out}"
RUNS="${RUNS:-/tmp/headline_runs}"
TRAJ="${TRAJ:-0}"
EPOCHS="${EPOCHS:-2}"
METHODS="${METHODS:-lth,lrr,clr,cosine,finetune,allr,silo-preset,silo-cal}"
TIMEOUT="${TIMEOUT:-520}"
nvidia-smi -L || true
run() { if [ "$TIMEOUT" = 0 ]; then "$@"; else timeout "$TIMEOUT" "$@"; fi; }
run python3 analysis/headline_study.py run --configs cifar10-resnet20-renda --trajectories "$TRAJ" \
    --epochs "$EPOCHS" --methods "$METHODS" --threads 8 --runs "$RUNS" \
    --data-root data/cifar10-jpeg.tar.xz 2>&1 | tail -40 || true
python3 analysis/headline_study.py extract --runs "$RUNS" --results "$OUT/headline"
python3 - <<'PY'
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "python": platform.python_version()}))
PY
