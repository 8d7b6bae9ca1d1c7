"""Liveness of running trials (`Liveness`): heartbeats, stale trials failed and retried,
trials lost at a stop redone as themselves, a result that comes late kept (the package's
docstring, harness.storage)."""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import TrialState

from harness.storage.connection import (STALE_FAILED, NotingRetry, connection_lost, heartbeat_interval,
                                        retry_callback)
from harness.storage.trials import LOST_ATTR, REDO_ATTR, counted, histories, lineages

WORKER_ATTR, BEAT_ATTR = "odyssey_worker", "odyssey_heartbeat"   # trial system attributes
UNSTAMPED_GRACE = 3     # a trial whose worker never beat is stale after 3 x the grace period

_ABANDONED: set[tuple[str, int]] = set()  # (study, trial) this process held when its connection broke
_CUT_ASKS: list[tuple[str, float, float]] = []  # (study, from, to): a study.ask of this process the break cut off


def abandon(study_name: str, number: int) -> None:
    """Trial `number`, which this process held when the storage stopped answering, is to be
    failed and enqueued again (Liveness.fail_stale) once the storage answers."""
    _ABANDONED.add((study_name, number))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Liveness:
    """Heartbeats and stale-trial checks of the trials of one storage (module docstring).

    Only public Optuna interfaces: the storage's own methods (record_heartbeat,
    set_trial_state_values, set_trial_system_attr, ...), fail_stale_trials, the retry callback.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, heartbeat_seconds: float):
        self.storage = storage
        self.rdb = isinstance(storage, optuna.storages.RDBStorage)
        self.interval = heartbeat_interval(heartbeat_seconds) if self.rdb else max(float(heartbeat_seconds), 0.05)
        self.grace = 2 * self.interval
        self.retry = retry_callback()
        self.host = socket.gethostname()
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

    def ask(self, study: optuna.Study, space: dict) -> optuna.Trial:
        """study.ask(space). When the connection breaks meanwhile, the trial it may have made
        (RUNNING, never stamped by its worker) is failed and retried once the storage answers
        (fail_stale), rather than waiting out the grace of a trial that never beat."""
        began = time.time()
        try:
            with warnings.catch_warnings():  # Optuna would have heartbeats in study.optimize only
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                return study.ask(space)
        except Exception as error:
            if connection_lost(error):  # a window wide enough for the clocks of the trial's start
                _CUT_ASKS.append((study.study_name, began - 2.0, time.time() + 2.0))
            raise

    def _cut_off(self, study_name: str, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether `trial` may be the one a study.ask of this process made when the break cut it off."""
        stamped = (trial.system_attrs.get(WORKER_ATTR) or {}).get("trial") == trial.number
        start = trial.datetime_start.timestamp() if trial.datetime_start is not None else None
        return not stamped and start is not None and any(
            name == study_name and low <= start <= high for name, low, high in _CUT_ASKS)

    def _beat(self, trial_id: int, number: int) -> None:
        if self.rdb:
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, BEAT_ATTR, {"trial": number, "time": time.time()})

    @contextmanager
    def alive(self, study: optuna.Study, number: int):
        """While the block runs, trial `number` is stamped as alive every interval."""
        trial_id = self.trial_id(study, number)
        self.storage.set_trial_system_attr(trial_id, WORKER_ATTR,
                                           {"host": self.host, "pid": os.getpid(), "trial": number})
        self._beat(trial_id, number)
        if self.rdb:  # "Optuna holds a heartbeat of this trial" (else _dead judges it from its start)
            self.storage.set_trial_system_attr(trial_id, BEAT_ATTR, {"trial": number, "time": time.time()})
        stop = threading.Event()

        def beat():
            while not stop.wait(self.interval):
                try:
                    self._beat(trial_id, number)
                except Exception:  # a passing storage hiccup: the next beat tries again
                    pass

        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{number}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _dead(self, trial: optuna.trial.FrozenTrial, now: float) -> bool:
        # Attributes a retry inherited from the trial it retries are not its own: check "trial".
        worker = trial.system_attrs.get(WORKER_ATTR) or {}
        if worker.get("trial") == trial.number and worker.get("host") == self.host \
                and not _process_alive(int(worker.get("pid", -1))):
            return True
        stamp = trial.system_attrs.get(BEAT_ATTR) or {}
        if stamp.get("trial") == trial.number:
            # RDB: Optuna's heartbeat judges it (fail_stale_trials); journal: the stamp here
            return not self.rdb and now - stamp["time"] > self.grace
        # Never beat: its worker died between study.ask and its first heartbeat, or is still
        # inside study.ask (which waits for a journal's lock under load): judged from the
        # trial's start, after a longer grace.
        return trial.datetime_start is not None and now - trial.datetime_start.timestamp() > UNSTAMPED_GRACE * self.grace

    def fail_stale(self, study: optuna.Study, trials: list | None = None) -> list[int]:
        """Fail (and enqueue again) every RUNNING trial whose worker is gone or silent; the
        numbers failed by this call. `trials`: the study's trials as the caller has just read
        them (the worker's loop reads them once a pass), judged instead of reading them again;
        where this returns a number, they have changed."""
        failed, now = [], time.time()
        if trials is None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        else:
            running = [t for t in trials if t.state == TrialState.RUNNING]
        for trial in running:
            if ((study.study_name, trial.number) not in _ABANDONED and not self._cut_off(study.study_name, trial)
                    and not self._dead(trial, now)):
                continue
            trial_id = self.trial_id(study, trial.number)
            try:
                if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    failed.append(trial.number)
                    self.retry(study, self.storage.get_trial(trial_id))
            except UpdateFinishedTrialError:
                pass  # it finished, or another worker failed it first
            _ABANDONED.discard((study.study_name, trial.number))
        _CUT_ASKS[:] = [cut for cut in _CUT_ASKS if cut[0] != study.study_name]  # each judged once
        if self.rdb:
            noted = isinstance(self.storage.get_heartbeat_stale_trial_callback(), NotingRetry)
            STALE_FAILED[:] = [entry for entry in STALE_FAILED if entry[0] != study.study_name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if noted:  # its callback (open_storage's) noted what it failed: no second read of the study
                failed += [number for name, number in STALE_FAILED if name == study.study_name
                           and number not in failed]
            else:
                still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                failed += [t.number for t in running if t.number not in failed and t.number not in still
                           and self.state(study, t.number) == TrialState.FAIL]
        return failed

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
