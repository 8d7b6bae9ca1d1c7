#!/usr/bin/env bash
# Set up odyssey on a fresh machine; safe to run again (it only adds what is missing).
#   - a virtualenv in .venv with the exact versions of constraints.txt (optuna-dashboard among them)
#   - torch's CPU build, or its CUDA build (constraints-cuda.txt) when ODYSSEY_TORCH=cuda or, with
#     ODYSSEY_TORCH unset (auto), when `nvidia-smi -L` lists a GPU; ODYSSEY_TORCH=cpu forces the CPU build
#   - fanova, whose pyrfr dependency builds from source with SWIG (about 80 s of C++)
#   - Debian's flite, for the timit_like stand-in (apt-get where we may; otherwise a hint)
# `bash scripts/setup.sh --dry-run` (or ODYSSEY_SETUP_DRY_RUN=1) says which torch it would install and
# with which constraints, and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY_RUN=${ODYSSEY_SETUP_DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1

# Which torch: the exact version of constraints.txt (CPU) or constraints-cuda.txt (CUDA).
TORCH=${ODYSSEY_TORCH:-auto}
case "$TORCH" in
    cpu|cuda) WHY="ODYSSEY_TORCH=$TORCH" ;;
    auto)
        GPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -m1 '^GPU ' || true)
        if [ -n "$GPU" ]; then TORCH=cuda; WHY="nvidia-smi lists ${GPU%% (UUID*}"
        else TORCH=cpu; WHY="nvidia-smi lists no GPU"; fi ;;
    *) echo "[setup] ODYSSEY_TORCH=$TORCH is unknown; use cpu, cuda or auto (the default: cuda where nvidia-smi lists a GPU)." >&2
       exit 2 ;;
esac
if [ "$TORCH" = cuda ]; then
    TORCH_SPEC=$(grep -m1 '^torch==' constraints-cuda.txt)
    CONSTRAINTS=.venv/.constraints-cuda.txt  # constraints.txt with its torch line replaced by constraints-cuda.txt
    echo "[setup] torch: the CUDA build, $TORCH_SPEC, PyPI's Linux wheel with its CUDA libraries (several GB) ($WHY)"
else
    TORCH_SPEC=$(grep -m1 '^torch==' constraints.txt)
    CONSTRAINTS=constraints.txt
    echo "[setup] torch: the CPU build, $TORCH_SPEC ($WHY)"
fi
if [ "$DRY_RUN" = 1 ]; then
    source="constraints.txt"; [ "$TORCH" = cuda ] && source="constraints.txt, its torch line replaced by constraints-cuda.txt"
    echo "[setup] dry run, nothing installed; would install into .venv with the constraints of $source:"
    echo "[setup]   $TORCH_SPEC; then -e .[test] (odyssey and its pins); pyrfr and fanova"
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi
# pyrfr's build calls `swig` from PATH: the venv's bin must come first.
export PATH="$PWD/.venv/bin:$PATH"
PIP="python -m pip --disable-pip-version-check"

if [ "$TORCH" = cuda ]; then
    { grep -v '^torch==' constraints.txt; cat constraints-cuda.txt; } > "$CONSTRAINTS"
fi
if ! python -c "import harness, torch, optuna, hydra, optuna_dashboard" 2>/dev/null \
   || ! cmp -s "$CONSTRAINTS" .venv/.constraints-installed; then
    echo "[setup] installing pinned packages ($CONSTRAINTS)"
    $PIP install -q -c "$CONSTRAINTS" setuptools wheel swig numpy
    if ! $PIP install -q -c "$CONSTRAINTS" "$TORCH_SPEC"; then
        if [ "$TORCH" = cuda ]; then
            echo "[setup] could not install $TORCH_SPEC from PyPI (several GB): check the connection and the disk,"
            echo "        or take the CPU build: ODYSSEY_TORCH=cpu bash scripts/setup.sh"
        else
            echo "[setup] could not find $TORCH_SPEC: add PyTorch's CPU wheel index, e.g."
            echo "        PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh"
        fi
        exit 1
    fi
    $PIP install -q -c "$CONSTRAINTS" -e ".[test]"
    cp "$CONSTRAINTS" .venv/.constraints-installed
fi
if [ "$TORCH" = cuda ] && ! python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
    echo "[setup] pip installed torch $(python -c 'import torch; print(torch.__version__)'), which has no CUDA; see pip config list"
    exit 1
fi

if ! python -c "import pyrfr, fanova" 2>/dev/null; then
    echo "[setup] building pyrfr and fanova (C++ with SWIG, about 80 s)"
    $PIP install -q -c "$CONSTRAINTS" --no-build-isolation pyrfr fanova
fi

# The compiled cell loops (harness/kernels): built once and cached; about a minute.
python -m harness.kernels

if ! command -v flite >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing flite (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null) \
            || echo "[setup] apt-get could not install flite; timit_like needs it: sudo apt-get install flite"
    else
        echo "[setup] flite is missing; timit_like needs it: sudo apt-get install flite"
    fi
fi

# Debian's PostgreSQL server: tests/test_postgres.py and scripts/load_test.py start servers of
# their own with its initdb and pg_ctl (in temporary directories, on loopback). Nothing runs here.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing postgresql (apt-get, for tests/test_postgres.py)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
            || echo "[setup] apt-get could not install postgresql; tests/test_postgres.py will skip (sudo apt-get install postgresql)"
    else
        echo "[setup] PostgreSQL is missing; tests/test_postgres.py will skip (sudo apt-get install postgresql)"
    fi
fi

# Debian's Slurm and munge: tests/test_slurm.py starts a one-node cluster of its own with them
# (search.launcher=slurm); about 15 s. Nothing is started or configured here.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
   || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing slurmctld slurmd slurm-client munge (apt-get, for tests/test_slurm.py)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            slurmctld slurmd slurm-client munge >/dev/null) \
            || echo "[setup] apt-get could not install Slurm; tests/test_slurm.py will skip (sudo apt-get install slurmctld slurmd slurm-client munge)"
    else
        echo "[setup] Slurm is missing; tests/test_slurm.py will skip (sudo apt-get install slurmctld slurmd slurm-client munge)"
    fi
fi
echo "[setup] ready: $(python -c 'import torch, optuna, optuna_dashboard, hydra
gpu = "a GPU found" if torch.cuda.is_available() else "no GPU found"
build = f"CUDA {torch.version.cuda}, {gpu}" if torch.version.cuda else "CPU build"
print(f"torch {torch.__version__} ({build}), optuna {optuna.__version__}, "
      f"optuna-dashboard {optuna_dashboard.__version__}, hydra {hydra.__version__}")')"
