"""Which trials of a study count toward its n_trials (`counts`, `counted`), the piece of work
each trial does (`lineages`: a retry or a redo does the work of the trial it retries), and
why the others do not count (`uncounted`): the rules the sweep and the analysis share."""

from __future__ import annotations

import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

LOST_ATTR, REDO_ATTR = "odyssey_lost", "odyssey_redo_of"  # system attributes: stopped, to be redone; the redo of which


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial, on its own, is a result: COMPLETE, PRUNED, or FAIL with a `failure`
    (it diverged); not a late result recorded beside a retry that ran (`duplicate_of`)."""
    if trial.user_attrs.get("duplicate_of") is not None:
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("failure") is not None)


def histories(trials) -> dict[int, list[int]]:
    """{trial number: its retry history}: the trials it retries, the first one first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return {t.number: RetryHeartbeatStaleTrialCallback.retry_history(t) for t in trials}


def lineages(trials) -> dict[int, int]:
    """{trial number: the number of the trial whose work it does}: a retry, or the redo of a
    lost trial (`Liveness.redo`), that of the first trial of its retry history (Optuna's
    RetryHeartbeatStaleTrialCallback); a late result (`late_result_of`), that of the trial it
    was taken from; any other trial, its own. Sorted by these numbers, the counted trials of a
    study stand in the order of its configurations, however often it was stopped."""
    by_number, history = {t.number: t for t in trials}, histories(trials)
    roots: dict[int, int] = {}

    def root(number: int) -> int:
        if number not in roots:
            trial = by_number[number]
            late = trial.user_attrs.get("late_result_of")
            if late is not None and late in by_number and late < number:
                roots[number] = root(late)
            else:
                roots[number] = history[number][0] if history[number] else number
        return roots[number]

    for t in trials:
        root(t.number)
    return roots


def counted(trials) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward n_trials, by number: those that are results (`counts`),
    at most one for each piece of work (`lineages`), the first. A trial failed as stale while
    its worker lived on can leave two results of one configuration (its late result, and a
    retry that a worker claimed before the late result was recorded); the later one does not
    count. A new trial has a higher number than every trial before it, so a result that counts
    goes on counting."""
    roots, first = lineages(trials), {}
    for trial in sorted(trials, key=lambda t: t.number):
        if counts(trial):
            first.setdefault(roots[trial.number], trial)
    return sorted(first.values(), key=lambda t: t.number)


def yields_to(trials, number: int) -> int | None:
    """The trial that trial `number`, enqueued to redo a trial, gives way to: an earlier trial
    enqueued to redo the same one and not closed as `surplus` (two workers that started at
    once can each enqueue a redo of one lost trial: `Liveness.redo_lost`); None if there is
    none. A trial that is no redo or retry gives way to none."""
    history = histories(trials)
    if not history.get(number):
        return None
    redone = history[number][-1]
    return next((t.number for t in sorted(trials, key=lambda t: t.number) if t.number < number
                 and history[t.number] and history[t.number][-1] == redone and not t.user_attrs.get("surplus")),
                None)


def redo_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the lost trial that `trial` redoes (`Liveness.redo`), or None (a retry of
    a redo taken for dead inherits REDO_ATTR but is a retry, not a redo)."""
    lost, history = trial.system_attrs.get(REDO_ATTR), histories([trial])[trial.number]
    return lost if history and history[-1] == lost else None


def uncounted(trials) -> dict[int, str]:
    """{number: why} of the finished trials that a sweep left out of its count and redid:
    "lost" (stopped: Ctrl-C, SIGTERM, a batch system's time limit; its redo counts in its
    place), "duplicate" (a second
    result of one piece of work, see `counted`), "surplus" (started past the target, or a
    retry closed once the study had its count), "retried" (taken for dead; a retry redid
    it). A failed trial without one of these marks (a study of another tool) is not listed."""
    chosen = {t.number for t in counted(trials)}
    retried = {number for history in histories(trials).values() for number in history}
    why = {}
    for trial in trials:
        if trial.number in chosen or not trial.state.is_finished():
            continue
        attrs = trial.user_attrs
        if attrs.get("lost"):
            why[trial.number] = "lost"
        elif attrs.get("duplicate_of") is not None or counts(trial):
            why[trial.number] = "duplicate"
        elif attrs.get("surplus"):
            why[trial.number] = "surplus"
        elif trial.number in retried:
            why[trial.number] = "retried"
    return why
