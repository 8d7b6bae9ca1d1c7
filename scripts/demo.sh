#!/usr/bin/env bash
# The main job on the built-in data: a small but real JSB Chorales study of four LSTM
# variants (vanilla, NFG, NOAF, CIFG; 50 random-search trials each, up to 20 epochs a
# trial, 2 workers; about 15 minutes on two cores), then its analysis: tables, figures,
# the replication scorecard and a report (results/analysis/demo/report.md) that says
# which of the paper's findings this study reproduces and which it cannot decide.
# A rerun resumes the study where it stopped (delete results/demo.db after changing the
# settings); extra overrides go to every command, e.g. `bash scripts/demo.sh search.n_trials=40`;
# DEMO_VARIANTS="vanilla nfg" picks other variants.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for variant in ${DEMO_VARIANTS:-vanilla nfg noaf cifg}; do
    .venv/bin/odyssey sweep +experiment=demo variant="$variant" "$@"
done
.venv/bin/odyssey analyze +experiment=demo "$@"
