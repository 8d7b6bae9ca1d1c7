"""Optuna storages from URLs, shared by the sweep (which writes) and the analysis (which reads).

    sqlite:///results/odyssey.db      one machine; a relative path starts at the project root
    journal:/nfs/odyssey.log       Optuna's JournalStorage on a file (also journal:///abs,
                                      or any path ending .log / .journal / .jsonl)
    postgresql://user:pw@host/db      many machines (any SQLAlchemy URL; psycopg 3 is installed)

Opening is safe when several processes start on a new, empty storage at the same moment:
the race on creating the schema (or the study, see `create_study`) is retried.

Liveness (`Liveness`): a running trial's worker proves it is alive every
`search.heartbeat_seconds`; a trial silent for twice that, or whose worker process on this
host is gone, is failed and retried (Optuna's RetryHeartbeatStaleTrialCallback enqueues it
again with the same parameters and user attributes, up to MAX_RETRY times). On an RDB
storage (SQLite, PostgreSQL) these are Optuna's own heartbeats: RDBStorage(heartbeat_interval,
grace_period, heartbeat_stale_trial_callback) and optuna.storages.fail_stale_trials. Optuna 5's
JournalStorage has no heartbeat, so for a journal file the same is done here with a trial
system attribute (clocks of the machines sharing the file must agree to within seconds).
A trial failed as stale whose worker was in fact alive keeps its result when it finishes
(`Liveness.keep_late_result`).

Secrets (`redact`, `move_password`): a password in a storage URL is never printed or
written. The command line moves the password of a PostgreSQL URL into the environment
variable PGPASSWORD before anything else sees the URL (libpq, under psycopg, reads it; so do
the worker processes and SLURM tasks, which inherit it), and every message that shows a URL
shows it through `redact`. A password file (~/.pgpass, or PGPASSFILE) keeps it off the
command line too (README, "Sweeps").

A lost connection (`reconnecting`): when an RDB storage stops answering (a database
server restarted, a network cut), a worker retries with a bounded back-off (0.5 s doubling
to 16 s, `search.reconnect_seconds` in all) and then ends with one line and exit status 4
(`StorageLost`); a trial it held when the connection broke is failed and enqueued again as
soon as the storage answers (`abandon`), so nothing stays RUNNING and a rerun tops the
study up.

Stopping (`stop_on_signal`): SIGTERM (kill, scancel), SIGUSR2 (SLURM's time-limit warning)
and SIGINT stop a worker like Ctrl-C, which releases its running trial as lost and enqueues
its redo, the same configuration with the same seed (`Liveness.redo`, `Liveness.redo_lost`,
docs/training.md, "The trial rules"); a stop that
Python dropped (raised inside a garbage collector's callback) is raised again at the next
epoch or pass of the worker's loop (`check_stop`). The stop is held back while the worker
holds a journal file's lock: a stop raised between taking the lock file and the `try` that
removes it would leave it behind, and the release (and every other worker) would wait out
Optuna's 30 s grace period for it; a batch system kills first. It is held back too while
the main thread has a database connection checked out (`_hold_stops_while_connected`): a
stop inside a transaction or its close left SQLite's lock held.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from harness import project_root
from harness.errors import UserError

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
MAX_RETRY = 3           # times a trial failed as stale is enqueued again
WORKER_ATTR, BEAT_ATTR = "odyssey_worker", "odyssey_heartbeat"   # trial system attributes
LOST_ATTR, REDO_ATTR = "odyssey_lost", "odyssey_redo_of"  # system attributes: stopped, to be redone; the redo of which
UNSTAMPED_GRACE = 3     # a trial whose worker never beat is stale after 3 x the grace period
RACE_ATTEMPTS = 12      # tries when racing other processes to create a schema or a study
EXIT_STORAGE_LOST = 4   # a worker whose storage stopped answering ends so, as one that died (harness.study.sweep)
# scheme://user:PASSWORD@ in a URL (RFC 3986 userinfo): what `redact` hides and `move_password` moves
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s/]*)(?P<at>@)")


# -- secrets ------------------------------------------------------------------------------

def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _USERINFO.sub(lambda m: m["head"] + "***" + m["at"], str(text))


def move_password(url: str) -> str:
    """A PostgreSQL URL without its password, which goes to PGPASSWORD in this process's
    environment (libpq reads it; child processes and SLURM tasks inherit it); any other
    URL unchanged (every message still shows it through `redact`)."""
    match = _USERINFO.search(url) if isinstance(url, str) else None
    if match is None or not url.startswith(("postgresql", "postgres:")) or match.start() != 0:
        return url
    from urllib.parse import unquote

    os.environ["PGPASSWORD"] = unquote(match["password"])
    return url[:match.end("head") - 1] + url[match.end("at") - 1:]


# -- stopping on a signal, never inside a journal lock ------------------------------------

class _Stop:
    held = 0              # journal locks the main thread holds (Python runs handlers there)
    connections: set = set()  # database connections the main thread has checked out (their pool records)
    pending: int | None = None
    raised = False


def _held() -> bool:
    return bool(_Stop.held or _Stop.connections)


def stop_on_signal(signum, frame) -> None:
    """Signal handler: stop like Ctrl-C (KeyboardInterrupt), once; outside a journal lock
    and a database connection."""
    if _Stop.raised:
        return            # a second signal must not interrupt the release of the trial
    if _held():
        _Stop.pending = signum
        return
    _Stop.raised = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals(*signums: int) -> None:
    for signum in signums:
        signal.signal(signum, stop_on_signal)
    _hold_stops_while_connected()


def _hold_stops_while_connected() -> None:
    """Hold a stop back while the main thread has a database connection checked out from
    its pool (SQLAlchemy's pool events: from checkout to checkin). A stop raised inside a
    transaction or inside the session's close, which hands the connection back, left its
    SQLite lock held: the worker's own release of its trial, and the other workers, then
    waited on that lock (a 120 s busy timeout) until the sweep killed them at the end of its
    grace, their trials unreleased. The held stop is raised at the next `check_stop`."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if event.contains(Pool, "checkout", _checked_out):
        return
    event.listen(Pool, "checkout", _checked_out)
    for name in ("checkin", "invalidate", "soft_invalidate", "detach", "close"):
        event.listen(Pool, name, _handed_back)


def _checked_out(dbapi_connection, record, proxy) -> None:
    if threading.current_thread() is threading.main_thread():
        _Stop.connections.add(id(record))


def _handed_back(dbapi_connection, record, *rest) -> None:  # checked in, or taken out of the pool
    _Stop.connections.discard(id(record))


def check_stop() -> None:
    """Raise the stop again if a stop signal came and work still goes on: Python runs a
    signal handler wherever the main thread is, and when that is a weakref callback or a
    __del__ method (which the garbage collector runs at any allocation), it prints the
    KeyboardInterrupt as "Exception ignored in ..." and drops it; the worker then trained on,
    deaf to the signal, until the sweep killed it with its trial unreleased. Called where a
    stop is safe: every epoch (sweep.reporter) and every pass of the workers' loops. A stop
    held back while a database connection was checked out is raised here too."""
    if _held():
        return
    if _Stop.pending is not None:
        signum, _Stop.pending = _Stop.pending, None
        stop_on_signal(signum, None)
    if _Stop.raised:
        raise KeyboardInterrupt("stop signal")


class SignalSafeLock(optuna.storages.journal.JournalFileSymlinkLock):
    """Optuna's default journal lock (the same lock file, so it works beside plain Optuna
    processes), with stop signals held back while it is held (see the module docstring)."""

    def acquire(self) -> bool:
        main = threading.current_thread() is threading.main_thread()
        _Stop.held += main
        try:
            return super().acquire()
        except BaseException:
            _Stop.held -= main
            raise

    def release(self) -> None:
        try:
            super().release()
        finally:
            if threading.current_thread() is threading.main_thread():
                _Stop.held -= 1
                if not _held() and _Stop.pending is not None:
                    signum, _Stop.pending = _Stop.pending, None
                    stop_on_signal(signum, None)


def _local_path(text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else project_root() / path


def _is_creation_race(error: Exception) -> bool:
    """An error of a process that lost the race to create a schema or a study to another."""
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, DuplicatedStudyError) or any(words in text for words in (
        "already exists", "duplicate key", "uniqueviolation", "unique constraint", "integrityerror",
        "database is locked"))


def retry_race(make, attempts: int = RACE_ATTEMPTS):
    """make() again, after a short random pause, while it fails because another process is
    creating the same schema or study at the same moment."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as error:
            if attempt == attempts - 1 or not _is_creation_race(error):
                raise
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))


def create_study(storage, **kwargs) -> optuna.Study:
    """optuna.create_study(load_if_exists=True) that survives other processes creating the
    same study at the same moment."""
    return retry_race(lambda: optuna.create_study(storage=storage, load_if_exists=True, **kwargs))


class _RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback that also notes each trial it is called for: the trials that
    optuna.storages.fail_stale_trials failed, which Liveness.fail_stale reports without
    reading the study again."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _STALE_FAILED.append((study.study_name, trial.number))
        super().__call__(study, trial)


_STALE_FAILED: list[tuple[str, int]] = []  # (study, trial) failed as stale by Optuna's heartbeat in this process


def retry_callback(noting: bool = False) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a trial failed as stale, MAX_RETRY times; `noting`: one that notes
    the trials it retries (_RetryStale), the one open_storage gives Optuna's heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return (_RetryStale if noting else RetryHeartbeatStaleTrialCallback)(max_retry=MAX_RETRY)


# -- which trials count (docs/training.md, "The trial rules") -----------------------------

def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial, on its own, is a result: COMPLETE, PRUNED, or FAIL with a `failure`
    (it diverged); not a late result recorded beside a retry that ran (`duplicate_of`)."""
    if trial.user_attrs.get("duplicate_of") is not None:
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("failure") is not None)


def _histories(trials) -> dict[int, list[int]]:
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
    by_number, history = {t.number: t for t in trials}, _histories(trials)
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
    history = _histories(trials)
    if not history.get(number):
        return None
    redone = history[number][-1]
    return next((t.number for t in sorted(trials, key=lambda t: t.number) if t.number < number
                 and history[t.number] and history[t.number][-1] == redone and not t.user_attrs.get("surplus")),
                None)


def redo_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the lost trial that `trial` redoes (`Liveness.redo`), or None (a retry of
    a redo taken for dead inherits REDO_ATTR but is a retry, not a redo)."""
    lost, history = trial.system_attrs.get(REDO_ATTR), _histories([trial])[trial.number]
    return lost if history and history[-1] == lost else None


def uncounted(trials) -> dict[int, str]:
    """{number: why} of the finished trials that a sweep left out of its count and redid:
    "lost" (stopped: Ctrl-C, SIGTERM, a batch system's time limit; its redo counts in its
    place), "duplicate" (a second
    result of one piece of work, see `counted`), "surplus" (started past the target, or a
    retry closed once the study had its count), "retried" (taken for dead; a retry redid
    it). A failed trial without one of these marks (a study of another tool) is not listed."""
    chosen = {t.number for t in counted(trials)}
    retried = {number for history in _histories(trials).values() for number in history}
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


def heartbeat_interval(seconds: float) -> int:
    """Optuna's RDB heartbeat takes whole seconds."""
    return max(1, int(round(float(seconds))))


def open_storage(url: str, key: str = "search.storage", create: bool = True,
                 heartbeat_seconds: float | None = None) -> optuna.storages.BaseStorage:
    """The storage at `url`; `key` names the config key in messages. With create=False a
    missing SQLite or journal file is an error instead of a new, empty storage. With
    heartbeat_seconds an RDB storage has Optuna's heartbeat on (see the module docstring)."""
    example = "e.g. sqlite:///results/odyssey.db, journal:/nfs/odyssey.log or postgresql://user@host/db"
    if not isinstance(url, str) or not url.strip():
        raise UserError(f"{key} is empty; set it to a storage URL, {example}.")
    journal = url.startswith("journal:") or (url.endswith(JOURNAL_SUFFIXES) and "://" not in url)
    if not journal and "://" not in url:
        raise UserError(f"{key}='{redact(url)}' is not a storage URL; use one like {example}.")
    if journal or url.startswith("sqlite:///"):
        path = _local_path(url.removeprefix("journal:").removeprefix("//") if journal
                           else url[len("sqlite:///"):])
        if not create and not path.is_file():
            raise UserError(f"{key}: there is no study storage at {path}; run `odyssey sweep` first "
                            f"or set {key} to the URL your sweep used.")
        path.parent.mkdir(parents=True, exist_ok=True)
    beat = {}
    if heartbeat_seconds is not None:
        beat = {"heartbeat_interval": heartbeat_interval(heartbeat_seconds),
                "heartbeat_stale_trial_callback": retry_callback(noting=True)}
    try:
        if journal:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=SignalSafeLock(str(path))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if url.startswith("sqlite:///"):
                # Several processes write one file: wait for its lock rather than fail.
                return retry_race(lambda: optuna.storages.RDBStorage(
                    f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 120}}, **beat))
            return retry_race(lambda: optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, **beat))
    except Exception as error:  # sqlalchemy and driver errors: unreachable host, bad URL, no driver
        reason = redact((str(error).strip().splitlines() or [type(error).__name__])[0][:200])
        raise UserError(f"{key}: cannot open storage '{redact(url)}' ({reason}); check the URL and that the "
                        "database server is running and reachable.") from None


# -- a lost connection ---------------------------------------------------------------------

class StorageLost(Exception):
    """The storage did not answer for search.reconnect_seconds (exit status EXIT_STORAGE_LOST)."""


def connection_lost(error: BaseException) -> bool:
    """Whether `error` (or what caused it: Optuna wraps SQLAlchemy's errors) says the
    connection to a database server broke; SQLite's own errors (a locked, read-only or full
    file) are not that."""
    import sqlalchemy.exc

    seen = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            if type(seen.orig).__module__.startswith("sqlite3"):
                return False
            if seen.connection_invalidated or isinstance(seen, (sqlalchemy.exc.OperationalError,
                                                                 sqlalchemy.exc.InterfaceError)):
                return True
        if isinstance(seen, sqlalchemy.exc.DisconnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _database_reason(error: BaseException) -> str:
    """The first line of the database driver's own message in `error`'s chain."""
    import sqlalchemy.exc

    seen = error
    while seen is not None and not isinstance(seen, sqlalchemy.exc.DBAPIError):
        seen = seen.__cause__ or seen.__context__
    text = str(seen.orig if seen is not None else error).strip()
    return (text.splitlines() or ["no answer"])[0][:200]


_ABANDONED: set[tuple[str, int]] = set()  # (study, trial) this process held when its connection broke
_CUT_ASKS: list[tuple[str, float, float]] = []  # (study, from, to): a study.ask of this process the break cut off


def abandon(study_name: str, number: int) -> None:
    """Trial `number`, which this process held when the storage stopped answering, is to be
    failed and enqueued again (Liveness.fail_stale) once the storage answers."""
    _ABANDONED.add((study_name, number))


class Reconnects:
    count = 0  # retries of this process after a lost connection (scripts/load_test.py reports them)


def reconnecting(work, what: str, budget: float):
    """work() until it returns; again, after a pause, when it fails because the storage's
    connection broke: 0.5 s, doubling to 16 s, for `budget` seconds in all; then StorageLost."""
    waited, delay = 0.0, 0.5
    while True:
        try:
            return work()
        except Exception as error:
            if not connection_lost(error):
                raise
            if waited >= budget:
                reason = redact(_database_reason(error))
                raise StorageLost(f"{what}: the storage stopped answering ({reason}) and still did not after "
                                  f"{waited:.0f} s of retries; finished trials are kept: run the same command "
                                  "again to top the study up.") from None
            pause = min(delay, budget - waited) * random.uniform(0.75, 1.25)  # workers do not retry in step
            check_stop()  # a stop held back during the call that failed
            time.sleep(pause)
            waited, delay = waited + pause, min(2 * delay, 16.0)
            Reconnects.count += 1


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
            noted = isinstance(self.storage.get_heartbeat_stale_trial_callback(), _RetryStale)
            _STALE_FAILED[:] = [entry for entry in _STALE_FAILED if entry[0] != study.study_name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if noted:  # its callback (open_storage's) noted what it failed: no second read of the study
                failed += [number for name, number in _STALE_FAILED if name == study.study_name
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
        history = _histories([lost])[lost.number]
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
        redone = {history[-1] for history in _histories(trials).values() if history}
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
        history = _histories(trials)
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
