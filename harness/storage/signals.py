"""Stopping on a signal (`stop_on_signal`): SIGTERM, SIGUSR2 and SIGINT stop a worker like
Ctrl-C, once, and never inside a journal lock (`SignalSafeLock`) or while the main thread
has a database connection checked out; a stop held back, or one Python dropped, is raised
again at the next `check_stop` (the package's docstring, harness.storage)."""

from __future__ import annotations

import signal
import threading

import optuna


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


