#!/usr/bin/env bash
# The calibration study's CIFAR-10 configurations on one lent GPU (issue 19, item 6): <= 10 min
# on one H100/H200-class GPU. Run from the checkout through the device tool:
#   cp ../shared/data/cifar10-jpeg.tar.xz data/     # git-ignored; carried to the machine (carry=["data"])
#   run(command="bash analysis/gpu_calibration.sh", carry=["data"], timeout_s=600)
# It runs ResNet-20 (5,000-image subset, 7 rounds x 4 epochs; Oracle 7 max_lr x 3 seeds) for
# trajectories 0-2, then extracts the per-candidate correctness and profile spreads under
# $OUT/calibration/data/, which `python analysis/calibration_study.py analyse` reads beside the
# CPU configurations once copied to analysis/results/calibration/data/. Each command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" MPLBACKEND=Agg
OUT="${OUT:-/tmp/out}"
RUNS="${RUNS:-/tmp/calibration_runs}"
TRAJ="${TRAJ:-0-2}"
CONFIGS="${CONFIGS:-cifar10-resnet20}"
nvidia-smi -L || true
timeout 500 python3 analysis/calibration_study.py run --configs "$CONFIGS" --trajectories "$TRAJ" \
    --runs "$RUNS" --workers "${WORKERS:-6}" --data-root data/cifar10-jpeg.tar.xz 2>&1 | grep -v "oracle round .*: max_lr .* seed" | tail -60 || true
python3 analysis/calibration_study.py extract --runs "$RUNS" --data "$OUT/calibration/data"
python3 - <<'PY'
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "python": platform.python_version()}))
PY
