#!/usr/bin/env bash
# Issue 23, item 5: the GPU rows, in one run of at most ~10 minutes on one H200.
# Writes JSON (and the logs) under $OUT (default bench/results/gpu-issue23); NOT YET RUN.
#
#   bash bench/gpu_issue23.sh            # from the repository root, with gradscope importable
#
# 1. recorder: ResNet-50 32x32 batch 128, bf16, compiled kernels -> recorder_resnet50.json
#    (target: step ratio <= 1.03 and "compiled" in the kernels column)
# 2. epoch: gradscope's ResNet-20 CIFAR-10 epoch vs the bare loop (bf16, channels_last,
#    compiled) -> gpu_epoch.json (targets: vs_bare >= 0.97, <= 0.5 s per 50,000 images), and
#    the trainer (RoundTrainer.train, eager) vs a hand loop -> trainer.txt (target >= 0.97)
# 3. Oracle round: one round of 7 max_lr x 3 seeds (--batched 7) vs one plain round, ResNet-20
#    CIFAR-10, 1 epoch each, wall time of the commands -> oracle_round.json (target <= 3x)
# Each step has its own time limit, so one that hangs cannot eat the others' time.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-issue23}
mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1
# the compile cache where gradscope keeps it (see gradscope.data.cache): warm across steps
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/gradscope/inductor}
CIFAR=${CIFAR:-}
for c in shared/data/cifar10-jpeg.tar.xz ../shared/data/cifar10-jpeg.tar.xz /work/shared/data/cifar10-jpeg.tar.xz; do
  [ -z "$CIFAR" ] && [ -e "$c" ] && CIFAR=$c
done
echo "CIFAR-10: ${CIFAR:-not found (random data where a step allows it)}" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/env.txt" 2>&1
$PY -c "import torch, gradscope; print('torch', torch.__version__, 'gradscope', gradscope.__file__)" >> "$OUT/env.txt" 2>&1

step() {  # step NAME LIMIT_S CMD...: run with a limit, log to $OUT/NAME.log, note the exit status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.jsonl"
  tail -n 25 "$OUT/$name.log"
}

# 1. recorder, ResNet-50 batch 128 (about 1-2 min with compilation)
step recorder 150 $PY bench/bench_recorder.py --device cuda --amp bf16 --models resnet50 --batch 128 --res 32 \
  --no-old --out "$OUT/recorder_resnet50.json"

# 2. epoch vs the bare loop (compiled; 3 interleaved repeats), then the eager trainer vs a hand loop
CIF=()
[ -n "$CIFAR" ] && CIF=(--cifar "$CIFAR")
step epoch 200 $PY bench/bench_gpu.py "${CIF[@]}" --skip-masks-only --no-batched --out "$OUT/gpu_epoch.json"
if [ -n "$CIFAR" ]; then
  step trainer 60 $PY bench/bench_trainer.py --device cuda --data-root "$CIFAR" --images 25600 --repeats 3
  cp "$OUT/trainer.log" "$OUT/trainer.txt"
fi

# 3. one Oracle round (7 x 3 candidates, batched 7 at a time) vs one plain round
if [ -n "$CIFAR" ]; then
  step oracle_round 150 $PY - "$CIFAR" "$OUT" <<'EOF'
import json, os, subprocess, sys, tempfile, time
cifar, out = sys.argv[1], sys.argv[2]
common = ["--dataset", "cifar10", "--data-root", cifar, "--model", "resnet20", "--epochs", "1", "--rounds", "1",
          "--device", "cuda", "--no-progress", "--schedule", "lth", "--max-lr", "0.1", "--val-size", "5000"]
work = tempfile.mkdtemp(prefix="oracle23-")
cache = ["--cache-dir", os.path.join(work, "cache")]
def timed(args, name):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gradscope", *args, *common, *cache, "--out", os.path.join(work, name)],
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    print(name, f"{dt:.1f} s rc {r.returncode}", r.stderr[-1500:] if r.returncode else "", flush=True)
    return dt, r.returncode
timed(["prune"], "warm")  # decode CIFAR-10 into the cache once; not timed
plain, rc1 = timed(["prune"], "plain")
grid = "0.0125,0.025,0.05,0.1,0.2,0.4,0.8"
batched, rc2 = timed(["oracle", "--grid", grid, "--seeds", "3", "--max-extend", "0", "--batched", "7"], "oracle_batched")
res = {"plain_round_s": plain, "oracle_round_batched_s": batched, "ratio_batched_vs_plain": batched / plain,
       "candidates": 21, "batched_k": 7, "epochs": 1, "rc": [rc1, rc2], "target_ratio": 3.0}
json.dump(res, open(os.path.join(out, "oracle_round.json"), "w"), indent=1)
print(json.dumps(res))
EOF
fi
echo "done; results in $OUT"; ls -l "$OUT"
