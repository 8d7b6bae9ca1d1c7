#!/usr/bin/env bash
# Set up (if needed) and run every test, the slow end-to-end ones included.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs "$@"   # -rs: every skip says why (a missing SLURM or PostgreSQL)
