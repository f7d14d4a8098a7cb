#!/usr/bin/env bash
# One lent-GPU session, unattended (device tool: ~560 s): the predictor study's CIFAR-10
# configurations first (what matters most), then the recorder and trainer benchmarks, each
# under its own time limit so one slow part cannot eat the others. Everything comes back in $OUT.
#
#   cp ../shared/data/cifar10-jpeg.tar.xz data/      # git-ignored; carried to the machine
#   (device) bash analysis/gpu_session.sh            # with PYTHONPATH=. and OUT set
set -u
export PYTHONPATH=. TQDM_DISABLE=1 PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
STUDY_S="${STUDY_S:-300}"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/session.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
stamp "study start (deadline ${STUDY_S} s)"
timeout $((STUDY_S + 30)) python3 analysis/gpu_study.py --data data/cifar10-jpeg.tar.xz --runs /tmp/runs \
    --workers 6 --deadline "$STUDY_S" > "$OUT/study.log" 2>&1
stamp "study exit $?"
tar -C /tmp/runs --exclude='*.pt' -czf "$OUT/study_runs.tgz" . 2>>"$OUT/session.log"
stamp "recorder bench"
timeout 80 python3 bench/bench_recorder.py --device cuda --models resnet50 resnet18 --batch 128 --quick \
    --out "$OUT/bench_recorder_cuda.json" > "$OUT/bench_recorder_cuda.log" 2>&1
stamp "recorder bench exit $?"
stamp "trainer bench"
timeout 150 python3 bench/bench_gpu.py --cifar data/cifar10-jpeg.tar.xz --skip-masks-only --images 20000 \
    --repeats 2 --out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.log" 2>&1
stamp "trainer bench exit $?"
