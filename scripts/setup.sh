#!/usr/bin/env bash
# Set up odyssey on a fresh machine; safe to run again (it only adds what is missing).
#   - a virtualenv in .venv with the exact versions of constraints.txt (torch: the CPU build)
#   - fanova, whose pyrfr dependency builds from source with SWIG (about 80 s of C++)
#   - Debian's flite, for the timit_like stand-in (apt-get where we may; otherwise a hint)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi
# pyrfr's build calls `swig` from PATH: the venv's bin must come first.
export PATH="$PWD/.venv/bin:$PATH"
PIP="python -m pip --disable-pip-version-check"

if ! python -c "import harness, torch, optuna, hydra" 2>/dev/null \
   || ! cmp -s constraints.txt .venv/.constraints-installed; then
    echo "[setup] installing pinned packages (constraints.txt)"
    $PIP install -q -c constraints.txt setuptools wheel swig numpy
    if ! $PIP install -q -c constraints.txt "torch==2.13.0+cpu"; then
        echo "[setup] could not find torch 2.13.0+cpu: add PyTorch's CPU wheel index, e.g."
        echo "        PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh"
        exit 1
    fi
    $PIP install -q -c constraints.txt -e ".[test]"
    cp constraints.txt .venv/.constraints-installed
fi

if ! python -c "import pyrfr, fanova" 2>/dev/null; then
    echo "[setup] building pyrfr and fanova (C++ with SWIG, about 80 s)"
    $PIP install -q -c constraints.txt --no-build-isolation pyrfr fanova
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
echo "[setup] ready: $(python -c 'import torch, optuna, hydra; print(f"torch {torch.__version__}, optuna {optuna.__version__}, hydra {hydra.__version__}")')"
