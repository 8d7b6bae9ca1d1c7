"""Cores, worker processes and torch threads on this machine.

    cores()                         the cores this process may run on (os.sched_getaffinity)
    cap_workers(n)                  n, or the number of cores if n is larger (with a warning)
    torch_threads(setting, workers) threads for one of `workers` processes sharing the cores

`train.threads: auto` (conf/train/greff.yaml) gives each of W worker processes
max(1, cores // W) torch threads; an integer sets it explicitly.
"""

from __future__ import annotations

import os
import sys

from harness.errors import UserError


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def cap_workers(workers: int, key: str = "search.workers") -> int:
    """More worker processes than cores only slow every trial down and multiply the memory
    (each holds torch and the data): run one a core, and say so."""
    available = cores()
    if workers > available:
        print(f"odyssey sweep: warning: {key}={workers} is more than the {available} cores this "
              f"process may use; running {available} workers (start more on other machines "
              "against the same storage).", file=sys.stderr, flush=True)
        return available
    return workers


def torch_threads(setting, workers: int = 1, key: str = "train.threads") -> int:
    """Threads of one of `workers` processes: `auto` (or null) -> max(1, cores // workers)."""
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return max(1, cores() // max(1, int(workers)))
    if isinstance(setting, bool):
        raise UserError(f"{key}={setting} is not a number of threads; use a positive integer or auto.")
    try:
        threads = int(setting)
    except (TypeError, ValueError):
        raise UserError(f"{key}={setting!r} is not a number of threads; use a positive integer or auto.") from None
    if threads != setting and not (isinstance(setting, str) and setting.strip().isdigit()):
        raise UserError(f"{key}={setting!r} is not a whole number; use a positive integer or auto.")
    if threads < 1:
        raise UserError(f"{key}={setting} must be at least 1 (or auto: cores / workers).")
    return threads
