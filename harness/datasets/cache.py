"""The on-disk cache of what a reader computed from a data set's files (rolls, features).

A cache entry is one .npz file, `<cache_dir>/<data set name>/<kind>-<hash>.npz`, where
the hash is taken over the reader's settings and every file read (its path under the
data set's folder, size and modification time), so a changed setting or file computes
anew, and a sweep's trials (and its worker processes) read the files only once.
`cache_dir` is the dataset config's key of that name; null: results/cache under the
project root.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness import project_root
from harness.datasets import config_value, resolve_path


def cache_file(cfg, name: str, kind: str, settings: dict, files: list[Path], root: Path) -> Path:
    """Where the entry of these settings and files lives."""
    listing = []
    for file in files:
        stat = file.stat()
        listing.append([str(file.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"settings": settings, "files": listing}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache_dir = config_value(cfg, "cache_dir")
    base = resolve_path(cache_dir) if cache_dir else project_root() / "results" / "cache"
    return base / name / f"{kind}-{digest}.npz"


def cached(path: Path, names: list[str], compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict, bool]:
    """The arrays of the entry at `path` if it holds the sequences `names` (its array
    "names"), else `compute()` stored there; returns (arrays, whether it was a hit)."""
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
            if list(arrays["names"]) == names:
                return arrays, True
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is computed again
    arrays = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")  # workers may write at once
        np.savez(partial, **arrays)
        partial.replace(path)  # a crash mid-write never leaves half an entry under the real name
    except OSError:
        pass  # a read-only cache folder only costs the next run the work
    return arrays, False
