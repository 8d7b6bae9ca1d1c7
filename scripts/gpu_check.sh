#!/usr/bin/env bash
# The GPU path, on a machine with an NVIDIA GPU (the project has not run it on one yet: README, Speed).
#
#   bash scripts/gpu_check.sh [OUT]        OUT: results/gpu_check/<date and time>
#
# 1. setup with torch's CUDA build: ODYSSEY_TORCH=cuda bash scripts/setup.sh (PyPI, several GB).
#    Where the package registries cannot be reached, GPU_CHECK_PYTHON=python3 skips setup and runs
#    the steps with that interpreter, which must already hold torch with CUDA and odyssey's packages.
# 2. odyssey train train.device=cuda: a short vanilla JSB run (3 epochs) on the batched torch path.
# 3. odyssey bench bench.sections=[lockstep] bench.lockstep.device=cuda: K trials at once on the GPU
#    against the same configurations one at a time on the CPU's native engine.
#
# OUT gets nvidia-smi.txt, setup.log, torch.log (torch, CUDA and the GPU as torch sees them),
# train.log and train/ (metrics.json), bench.log and bench_lockstep.json / .md. Every step runs
# even when one before it failed; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
STATUS=0

step() {  # step NAME COMMAND...: COMMAND's output to OUT/NAME.log, its tail here
    local name=$1 code
    shift
    echo "[gpu_check] $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    code=$?
    tail -n 15 "$OUT/$name.log"
    if [ "$code" != 0 ]; then
        echo "[gpu_check] $name failed (exit status $code): $OUT/$name.log"
        [ "$STATUS" = 0 ] && STATUS=$code
    fi
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "[gpu_check] nvidia-smi failed: $OUT/nvidia-smi.txt"
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
    echo "[gpu_check] setup skipped (GPU_CHECK_PYTHON=$PY)" | tee "$OUT/setup.log"
else
    step setup env ODYSSEY_TORCH=cuda bash scripts/setup.sh
    PY=.venv/bin/python
fi
step torch "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available',
torch.cuda.is_available()); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
step train "$PY" -m harness.cli train train.device=cuda variant=vanilla max_epochs=3 seed=0 "hydra.run.dir=$OUT/train"
step bench "$PY" -m harness.cli bench "bench.sections=[lockstep]" bench.lockstep.device=cuda "bench.out=$OUT/bench_lockstep.json"
echo "[gpu_check] done (exit status $STATUS): $OUT"
exit "$STATUS"
