#!/usr/bin/env bash
# The reference study (issue 14, item 6): the full protocol of Greff et al. on JSB
# Chorales for every built-in model (search.variants=all: nine LSTM variants, GRU, GF-LSTM,
# GF-GRU, minGRU, minLSTM, RG-LRU; the last three are not in the shipped study yet, and a
# rerun adds them on the torch path), at least 50 trials each (REFERENCE_TRIALS, default 50; the paper used 200), up
# to 150 epochs, patience 15.
# Its report, scorecard and tables land in results/reference/jsb_chorales/ together with
# TIME.txt (wall time and the machine), so a reader can compare with the paper without
# running anything. A rerun resumes the study; the study itself is results/reference.db.
#
#   bash scripts/reference_study.sh                 # every core of this machine
#   REFERENCE_TRIALS=200 REFERENCE_WORKERS=32 bash scripts/reference_study.sh
#
# Shipped so far: 50 trials each of eleven models (551 trials, 7.7 trial-hours on the
# native engine, 2 workers on 2 cores; GF-LSTM trials take about 3 minutes, the others
# 12-75 s); GF-GRU is begun. TIME.txt says how long its trials took in all (the sum of
# their own seconds, from the study), and how long this run's sweep took.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
trials=${REFERENCE_TRIALS:-50}
workers=${REFERENCE_WORKERS:-$(nproc)}
out=results/reference/jsb_chorales
storage=sqlite:///results/reference.db
mkdir -p "$out"
started=$(date +%s)
.venv/bin/odyssey sweep +experiment=greff dataset=jsb_chorales search.variants=all \
    search.n_trials="$trials" search.workers="$workers" search.storage="$storage" "$@"
swept=$(date +%s)
.venv/bin/odyssey analyze analysis.dataset=jsb_chorales analysis.task=music \
    analysis.storage="$storage" analysis.out="$out" analysis.n_bootstrap=200 "$@"
ended=$(date +%s)
{
    echo "reference study: JSB Chorales, all models, $trials trials each, $workers workers"
    echo "this run's sweep: $(( (swept - started) / 60 )) min; analysis: $(( ended - swept )) s"
    .venv/bin/python -c "import optuna, sys; t = [t for s in optuna.get_all_study_names(sys.argv[1]) for t in optuna.load_study(study_name=s, storage=sys.argv[1]).trials if t.state.name == 'COMPLETE']; print(f'the study in all: {len(t)} complete trials, {sum(x.user_attrs.get(\"seconds\", 0) for x in t) / 3600:.1f} trial-hours')" "$storage"
    echo "machine: $(uname -srm), $(nproc) cores; finished $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$out/TIME.txt"
cat "$out/TIME.txt"
echo "report: $out/report.md (commit it with: git add -f $out)"
