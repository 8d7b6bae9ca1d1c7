"""How long the trials of a storage took, from the storage itself: TIME.txt of
scripts/reference_study.sh.

    python scripts/study_time.py sqlite:///results/reference.db

Prints, for each study, its complete trials, the mean of their own seconds (the trial's
user attribute `seconds`: training and evaluation, as the worker measured it) and the span
from its first trial's start to its last trial's end; then the totals.
"""

from __future__ import annotations

import sys

import optuna
from optuna.trial import TrialState


def main(storage: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total_trials, total_seconds, starts, ends = 0, 0.0, [], []
    for name in sorted(optuna.get_all_study_names(storage)):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))
        if not trials:
            continue
        seconds = [t.user_attrs.get("seconds", 0.0) for t in trials]
        start = min(t.datetime_start for t in trials)
        end = max(t.datetime_complete for t in trials)
        print(f"  {name}: {len(trials)} complete trial{'' if len(trials) == 1 else 's'}, mean {sum(seconds) / len(trials):.0f} s a trial, "
              f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}")
        total_trials += len(trials)
        total_seconds += sum(seconds)
        starts.append(start)
        ends.append(end)
    if not total_trials:
        print("no complete trials")
        return
    print(f"the study in all: {total_trials} complete trials, {total_seconds / 3600:.1f} trial-hours "
          f"(the sum of the trials' own seconds), {min(starts):%Y-%m-%d %H:%M} to {max(ends):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/study_time.py STORAGE_URL")
    main(sys.argv[1])
