"""Opening a study's storage from a URL (`open_storage`: SQLite, a journal file,
PostgreSQL), its secrets (`redact`, `move_password`), racing other processes to create a
schema or a study (`retry_race`, `create_study`), Optuna's retry of a stale trial
(`retry_callback`) and a lost connection (`reconnecting`, `StorageLost`); the package's
docstring (harness.storage) tells the whole story."""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback

from harness import project_root
from harness.errors import UserError
from harness.storage.signals import SignalSafeLock, check_stop

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
MAX_RETRY = 3           # times a trial failed as stale is enqueued again
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


class NotingRetry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback that also notes each trial it is called for: the trials that
    optuna.storages.fail_stale_trials failed, which Liveness.fail_stale reports without
    reading the study again."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        STALE_FAILED.append((study.study_name, trial.number))
        super().__call__(study, trial)


STALE_FAILED: list[tuple[str, int]] = []  # (study, trial) failed as stale by Optuna's heartbeat in this process


def retry_callback(noting: bool = False) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a trial failed as stale, MAX_RETRY times; `noting`: one that notes
    the trials it retries (NotingRetry), the one open_storage gives Optuna's heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return (NotingRetry if noting else RetryHeartbeatStaleTrialCallback)(max_retry=MAX_RETRY)


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


