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
from harness.storage.records import TrialRecords

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


class Liveness(TrialRecords):
    """Heartbeats and stale-trial checks of the trials of one storage (module docstring); what
    is redone or kept then, `TrialRecords`.

    Only public Optuna interfaces: the storage's own methods (record_heartbeat,
    set_trial_state_values, set_trial_system_attr, ...), fail_stale_trials, the retry callback.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, heartbeat_seconds: float):
        super().__init__(storage)
        self.rdb = isinstance(storage, optuna.storages.RDBStorage)
        self.interval = heartbeat_interval(heartbeat_seconds) if self.rdb else max(float(heartbeat_seconds), 0.05)
        self.grace = 2 * self.interval
        self.retry = retry_callback()
        self.host = socket.gethostname()

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
