"""Optuna storages from URLs, shared by the sweep (which writes) and the analysis (which reads).

    sqlite:///results/odyssey.db      one machine; a relative path starts at the project root
    journal:/shared/odyssey.log       Optuna's JournalStorage on a file (also journal:///abs,
                                      or any path ending .log / .journal / .jsonl)
    postgresql://user:pw@host/db      many machines (any SQLAlchemy URL)
"""

from __future__ import annotations

from pathlib import Path

import optuna

from harness import project_root
from harness.errors import UserError

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def _local_path(text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else project_root() / path


def open_storage(url: str, key: str = "search.storage", create: bool = True) -> optuna.storages.BaseStorage:
    """The storage at `url`; `key` names the config key in messages. With create=False a
    missing SQLite or journal file is an error instead of a new, empty storage."""
    example = "e.g. sqlite:///results/odyssey.db, journal:/shared/odyssey.log or postgresql://user@host/db"
    if not isinstance(url, str) or not url.strip():
        raise UserError(f"{key} is empty; set it to a storage URL, {example}.")
    journal = url.startswith("journal:") or (url.endswith(JOURNAL_SUFFIXES) and "://" not in url)
    if not journal and "://" not in url:
        raise UserError(f"{key}='{url}' is not a storage URL; use one like {example}.")
    if journal or url.startswith("sqlite:///"):
        path = _local_path(url.removeprefix("journal:").removeprefix("//") if journal
                           else url[len("sqlite:///"):])
        if not create and not path.is_file():
            raise UserError(f"{key}: there is no study storage at {path}; run `odyssey sweep` first "
                            f"or set {key} to the URL your sweep used.")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if journal:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            # Several processes write one file: wait for its lock rather than fail.
            return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                              engine_kwargs={"connect_args": {"timeout": 120}})
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as error:  # sqlalchemy and driver errors: unreachable host, bad URL, no driver
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"{key}: cannot open storage '{url}' ({reason}); check the URL and that the "
                        "database server is running and reachable.") from None
