#!/usr/bin/env bash
# The main job on the built-in data: a short training of the vanilla LSTM on JSB Chorales.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/odyssey train dataset=jsb_chorales variant=vanilla hidden_size=100 learning_rate=1e-2 \
    momentum=0.9 input_noise_std=0 max_epochs=5 seed=0 "$@"
