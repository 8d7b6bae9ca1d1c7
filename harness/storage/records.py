"""The records of trials whose work is redone or kept (`TrialRecords`): a trial lost at a stop
marked and redone as itself, the retries left waiting once a study has its count closed, a
result that comes late, after its trial was taken for dead, kept (the package's docstring,
harness.storage)."""

from __future__ import annotations

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from harness.storage.trials import LOST_ATTR, REDO_ATTR, counted, histories, lineages


class TrialRecords:
    """Writes on the trials of one storage through its own methods (set_trial_state_values,
    set_trial_user_attr, create_new_trial, ...): what `Liveness` does once a trial's work
    is to be redone or kept."""

    def __init__(self, storage: optuna.storages.BaseStorage):
        self.storage = storage
        self._ids: dict = {}  # study name -> study id, (study name, number) -> trial id: they never change

    def trial_id(self, study: optuna.Study, number: int) -> int:
        """The storage's id of trial `number`, asked once (two round trips to a database server)."""
        key = (study.study_name, number)
        if key not in self._ids:
            if study.study_name not in self._ids:
                self._ids[study.study_name] = self.storage.get_study_id_from_name(study.study_name)
            self._ids[key] = self.storage.get_trial_id_from_study_id_trial_number(self._ids[study.study_name],
                                                                                  number)
        return self._ids[key]

    def state(self, study: optuna.Study, number: int) -> TrialState:
        return self.storage.get_trial(self.trial_id(study, number)).state

    def close_retries(self, study: optuna.Study) -> None:
        """Once the study has its count: the retries still waiting (enqueued for a trial failed as
        stale while other workers filled its place) are not needed; each is claimed and told
        FAIL with user attribute `surplus`, so that nothing is left WAITING. Trials a user
        enqueued are left alone."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if "failed_trial" not in trial.system_attrs:
                continue
            trial_id = self.trial_id(study, trial.number)
            try:
                if self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):  # claimed here only
                    self.storage.set_trial_user_attr(trial_id, "surplus", True)
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass  # another worker took it

    def mark_lost(self, study: optuna.Study, number: int, reason: str, redo: bool) -> None:
        """Mark RUNNING trial `number`, which will not finish, as lost (user attribute `lost`,
        why) and, if `redo`, to be redone (LOST_ATTR); UpdateFinishedTrialError if it has
        finished meanwhile."""
        trial_id = self.trial_id(study, number)
        self.storage.set_trial_user_attr(trial_id, "lost", reason)
        if redo:
            self.storage.set_trial_system_attr(trial_id, LOST_ATTR, True)

    def redo(self, study: optuna.Study, lost: optuna.trial.FrozenTrial) -> int:
        """Enqueue the redo of trial `lost`, which a stop ended: a WAITING trial with its
        parameters, user attributes (its `seed` among them; not `lost`) and system attributes
        (not LOST_ATTR), as Optuna's RetryHeartbeatStaleTrialCallback enqueues a retry
        (`failed_trial` and `retry_history`, so that `lineages` gives it the lost trial's work),
        and REDO_ATTR, the lost trial's number. No MAX_RETRY: a stop is no fault of the
        configuration (but Optuna's callback counts the whole history, stops too, against it
        when a redo is taken for dead). Returns the redo's number."""
        history = histories([lost])[lost.number]
        template = optuna.trial.create_trial(
            state=TrialState.WAITING, params=lost.params, distributions=lost.distributions,
            user_attrs={key: value for key, value in lost.user_attrs.items() if key != "lost"},
            system_attrs={**{key: value for key, value in lost.system_attrs.items() if key != LOST_ATTR},
                          "failed_trial": history[0] if history else lost.number,
                          "retry_history": [*history, lost.number], REDO_ATTR: lost.number})
        trial_id = self.storage.create_new_trial(self.storage.get_study_id_from_name(study.study_name), template)
        return self.storage.get_trial_number_from_id(trial_id)

    def redo_lost(self, study: optuna.Study, target: int) -> list[int]:
        """Enqueue the redo of each lost trial that has none, as many as the study has places
        left (`target` counted trials, less those counted, running or waiting), the first ones
        first; the numbers of the redos. A worker calls it when it starts.

        A stopped worker enqueues its trial's redo itself, right after failing it (sweep.release):
        so a redo is made at once, for the workers that go on elsewhere (another machine's, a
        SLURM task whose neighbour reached its time limit), and by one worker only, the one whose
        FAIL ended the trial. This is for the trials whose redo was not made then: the worker was
        killed between the two writes, or the storage stopped answering. Only trials marked to be
        redone (LOST_ATTR) are: a trial lost before odyssey redid them was replaced by a new
        configuration then. Two workers that start at once may both enqueue a redo of one trial;
        the second gives way to the first when a worker claims it (`yields_to`), untrained."""
        trials = study.get_trials(deepcopy=False)
        redone = {history[-1] for history in histories(trials).values() if history}
        results, roots = counted(trials), lineages(trials)
        done = {roots[t.number] for t in results}
        places = target - len(results) - sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        lost = [t for t in sorted(trials, key=lambda t: t.number)
                if t.state == TrialState.FAIL and t.user_attrs.get("lost") and t.system_attrs.get(LOST_ATTR)
                and t.number not in redone and roots[t.number] not in done]
        return [self.redo(study, trial) for trial in lost[:max(0, places)]]

    def keep_late_result(self, study: optuna.Study, number: int, state: TrialState,
                         value: float | None, user_attrs: dict) -> int | None:
        """Record the result of trial `number`, which was failed as stale while its worker
        was in fact alive: in its retry if that is still waiting (the retry is claimed, so it
        never runs), else as a trial of its own (`late_result_of`; `duplicate_of` when its
        retry runs or ran elsewhere: then it does not count). Returns the retry's number, or
        None for a trial of its own. (A trial of its own without a retry, past MAX_RETRY, or a
        retry claimed here while another worker was starting a fresh trial, can leave the
        study one trial beyond n_trials: finished work is never dropped to keep the count.)"""
        trials = study.get_trials(deepcopy=False)
        original = next(t for t in trials if t.number == number)
        history = histories(trials)
        retries = [t for t in trials if (history[t.number] or [None])[-1] == number]
        attrs = {**user_attrs, "late_result_of": number}
        values = None if value is None else [value]
        for retry in retries:
            if retry.state != TrialState.WAITING:
                continue
            retry_id = self.trial_id(study, retry.number)
            try:
                claimed = self.storage.set_trial_state_values(retry_id, TrialState.RUNNING)
            except UpdateFinishedTrialError:
                claimed = False
            if claimed:
                for key, item in attrs.items():
                    self.storage.set_trial_user_attr(retry_id, key, item)
                self.storage.set_trial_state_values(retry_id, state, values)
                return retry.number
        if retries:
            attrs["duplicate_of"] = retries[0].number
        study.add_trial(optuna.trial.create_trial(
            state=state, params=original.params, distributions=original.distributions,
            value=value, user_attrs=attrs))
        return None
