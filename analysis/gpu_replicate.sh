#!/usr/bin/env bash
# Second lent-GPU call: the CIFAR-10 study again with another seed (an independent pruning
# trajectory and candidate seeds), analysed on the device (the VGG run file holds the
# fixed-population sums: too large to copy back), and the recorder bench on CUDA again.
set -u
export PYTHONPATH=. TQDM_DISABLE=1 PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
SEED="${SEED:-1}"; STUDY_S="${STUDY_S:-240}"; RUNS=/tmp/runs_s$SEED
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/session.log"; }
stamp "study seed $SEED"
timeout $((STUDY_S + 20)) python3 analysis/gpu_study.py --data data/cifar10-jpeg.tar.xz --runs "$RUNS" --workers 6 \
    --deadline "$STUDY_S" --set=--seed=$SEED > "$OUT/study.log" 2>&1
stamp "study exit $?"
timeout 60 python3 analysis/predictor_study.py analyse --runs "$RUNS" --configs cifar10-resnet20,cifar10-vgg11 \
    > "$OUT/analyse.log" 2>&1
stamp "analyse exit $?"
cp analysis/results/*.csv "$OUT/" 2>/dev/null
(cd "$RUNS" && tar --exclude='*.pt' --exclude='run.h5' -czf "$OUT/json.tgz" .)
stamp "recorder bench"
timeout 100 python3 bench/bench_recorder.py --device cuda --models resnet50 resnet18 --batch 128 --quick \
    --out "$OUT/bench_recorder_cuda.json" > "$OUT/bench_recorder_cuda.log" 2>&1
stamp "recorder bench exit $?"
