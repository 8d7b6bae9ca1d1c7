#!/usr/bin/env bash
# The reference study: the full protocol of Greff et al. on JSB Chorales (up to 150
# epochs, patience 15), shipped as results/reference.db with its report in
# results/reference/jsb_chorales/ (report.md, scorecard.csv, tables, figures, TIME.txt), so
# a reader can compare with the paper without running anything. A rerun resumes it.
#
# Two sweeps into the one storage:
#  1. the nine LSTM variants of Greff et al. with search.until=decided: rounds of 10
#     trials a variant, each variant judged against vanilla after every round by the
#     group-sequential rank test (docs/analysis.md, "Sequential studies"), the next round
#     only for the undecided, up to REFERENCE_TRIALS a variant (default 200, the paper's);
#  2. the GRU, the GF-LSTM (study jsb_chorales.gfrnn, its former name) and the GF-GRU,
#     REFERENCE_OTHERS trials each (default 50), a fixed number: they are compared with
#     vanilla in the report, not run to a decision.
# minGRU, minLSTM and the RG-LRU (in search.variants=all) are not part of it.
#
#   bash scripts/reference_study.sh                 # every core of this machine
#   REFERENCE_TRIALS=200 REFERENCE_WORKERS=32 bash scripts/reference_study.sh
#
# TIME.txt says how long the study's trials took in all (the sum of their own seconds,
# from the storage) and how long this run took.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
trials=${REFERENCE_TRIALS:-200}
others=${REFERENCE_OTHERS:-50}
workers=${REFERENCE_WORKERS:-$(nproc)}
out=results/reference/jsb_chorales
storage=sqlite:///results/reference.db
mkdir -p "$out"
started=$(date +%s)
.venv/bin/odyssey sweep +experiment=greff dataset=jsb_chorales search.variants=lstm \
    search.until=decided search.n_trials="$trials" \
    search.workers="$workers" search.storage="$storage" "$@"
.venv/bin/odyssey sweep +experiment=greff dataset=jsb_chorales "search.variants=[gru,gflstm,gfgru]" \
    search.n_trials="$others" search.workers="$workers" search.storage="$storage" "$@"
swept=$(date +%s)
.venv/bin/odyssey analyze analysis.dataset=jsb_chorales analysis.task=music \
    analysis.storage="$storage" analysis.out="$out" analysis.n_bootstrap=200
ended=$(date +%s)
{
    echo "reference study: JSB Chorales, full protocol (Greff et al.: up to 150 epochs, patience 15), $storage"
    echo "nine LSTM variants: search.until=decided, looks every 10 trials, cap $trials a variant;"
    echo "GRU, GF-LSTM (study jsb_chorales.gfrnn), GF-GRU: $others trials each; $workers workers"
    echo "this run's sweeps: $(( (swept - started) / 60 )) min; analysis: $(( ended - swept )) s"
    .venv/bin/python scripts/study_time.py "$storage"
    echo "machine: $(uname -srm), $(nproc) cores; finished $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$out/TIME.txt"
cat "$out/TIME.txt"
echo "report: $out/report.md (commit it with: git add -f $out results/reference.db)"
