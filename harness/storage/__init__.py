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

from harness.storage.connection import (EXIT_STORAGE_LOST, JOURNAL_SUFFIXES, MAX_RETRY, Reconnects, StorageLost,
                                        connection_lost, create_study, heartbeat_interval, move_password,
                                        open_storage, reconnecting, redact, retry_callback, retry_race)
from harness.storage.liveness import BEAT_ATTR, WORKER_ATTR, Liveness, abandon
from harness.storage.signals import SignalSafeLock, check_stop, stop_on_signal, stop_on_signals
from harness.storage.trials import LOST_ATTR, REDO_ATTR, counted, counts, lineages, redo_of, uncounted, yields_to

__all__ = ["BEAT_ATTR", "EXIT_STORAGE_LOST", "JOURNAL_SUFFIXES", "LOST_ATTR", "MAX_RETRY", "REDO_ATTR", "WORKER_ATTR",
           "Liveness", "Reconnects", "SignalSafeLock", "StorageLost", "abandon", "check_stop", "connection_lost",
           "counted", "counts", "create_study", "heartbeat_interval", "lineages", "move_password", "open_storage",
           "reconnecting", "redact", "redo_of", "retry_callback", "retry_race", "stop_on_signal", "stop_on_signals",
           "uncounted", "yields_to"]
