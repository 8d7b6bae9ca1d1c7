#!/usr/bin/env bash
# The main job on the built-in data: a small but real study of Greff et al.'s nine LSTM
# variants on JSB Chorales (16 random-search trials each, 3 epochs a trial, 2 workers;
# about ten minutes on two cores), then its analysis: tables, figures and a report.
# A rerun resumes the study where it stopped; extra overrides go to both commands,
# e.g. `bash scripts/demo.sh search.n_trials=20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/odyssey sweep +experiment=demo "$@"
.venv/bin/odyssey analyze +experiment=demo "$@"
