"""Data sets: every reader turns files on disk into one `DataSplits`.

A data set is chosen by a config in conf/dataset/ (or a user's `--config-dir`) with the
keys below (docs/own_dataset.md has the whole contract):

    name: nottingham
    format: pianoroll      # pianoroll | npz | midi | timit | iam_ondb | wav_textgrid | inkml
    path: /data/Nottingham.pickle
    task: next_step        # next_step | framewise | regression | ctc
    bidirectional: false
    domain: music          # optional: music | speech | handwriting | none (default: by task, task_kind)

`load_dataset(cfg)` dispatches on `format` to the reader module of that name; each reader
has one entry point `read(cfg, path) -> DataSplits`. Built-in stand-ins also carry a
`generate` block (a Hydra `_target_`) that `odyssey data NAME` calls to make the files.

Targets by task (x is always float32 of shape (T, D)):

| task       | y                                   | network output            |
|------------|-------------------------------------|---------------------------|
| next_step  | float32 (T, K) in {0, 1}: frame t+1 | K sigmoid units           |
| framewise  | int64 (T,) class of each frame      | softmax over n_outputs    |
| regression | float32 (T, K)                      | K linear units            |
| ctc        | int64 (L,) labels, 1..C (0 = blank) | softmax over C + 1        |
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import project_root
from harness.datasets.ctc_targets import check_targets
from harness.errors import UserError

FORMATS = ("pianoroll", "npz", "midi", "timit", "iam_ondb", "wav_textgrid", "inkml")
TASKS = ("next_step", "framewise", "regression", "ctc")
SPLITS = ("train", "valid", "test")
# The paper's three tasks, which a data set is compared with (the analysis's task: which
# findings apply, the default margin); the `domain` key names one, or none.
DOMAINS = ("music", "speech", "handwriting")
# The task a data set's own task resembles when its config sets no `domain`, and why. Each
# built-in format serves one task, so this agrees with the format too (midi, pianoroll:
# next_step; timit, wav_textgrid: framewise; iam_ondb, inkml: ctc).
DOMAIN_OF_TASK = {
    "next_step": ("music", "frames of notes in [0, 1] predicted one step ahead, as the paper's piano rolls (JSB Chorales)"),
    "framewise": ("speech", "a class for every frame, as the paper's phones (TIMIT)"),
    "ctc": ("handwriting", "a label sequence transcribed with CTC, as the paper's handwriting (IAM-OnDB)"),
}


@dataclass
class Sequence:
    """One sequence: inputs x, float32 (T, D), and its targets y (see the module table)."""

    x: np.ndarray
    y: np.ndarray
    name: str = ""


@dataclass
class DataSplits:
    """The three splits of a data set and what a network needs to know about them."""

    name: str
    task: str
    train: list[Sequence]
    valid: list[Sequence]
    test: list[Sequence]
    input_dim: int
    n_outputs: int
    bidirectional: bool = False
    classes: list[str] | None = None  # class names (framewise) or characters (ctc, blank first)
    info: dict = field(default_factory=dict)  # reader-specific facts for the data block

    def split(self, name: str) -> list[Sequence]:
        return getattr(self, name)

    def summary(self) -> dict:
        """The `data` block of metrics.json: what was read, split by split."""
        block = {
            "name": self.name,
            "task": self.task,
            "input_dim": self.input_dim,
            "n_outputs": self.n_outputs,
            "bidirectional": self.bidirectional,
        }
        for split in SPLITS:
            sequences = self.split(split)
            block[split] = {
                "sequences": len(sequences),
                "frames": int(sum(len(s.x) for s in sequences)),
            }
        block.update(self.info)
        return block


def resolve_path(path: str | Path) -> Path:
    """A config path: absolute as given, relative from the project root."""
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() else project_root() / path


def split_folders(root: Path, fmt: str, holding: str) -> dict[str, Path]:
    """{split: folder} of a data set kept as train/, valid/ and test/ folders under `root`
    (formats midi, wav_textgrid, inkml); UserError when `root` is a file or lacks a split.
    `holding` says what each folder holds, for the message."""
    if not root.is_dir():
        raise UserError(f"{root} is a file, but format {fmt} needs a folder holding train/, valid/ and test/, "
                        f"each with {holding}; point dataset.path at it.")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ folder; format {fmt} needs train/, valid/ and test/, each "
                            f"with {holding}.")
    return {split: root / split for split in SPLITS}


def config_value(cfg, key: str, default=None):
    """`key` of a config (a DictConfig, a dict or an object with attributes), or `default`
    when the key is absent or null: the one way the readers look up their keys."""
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def format_task(cfg, fmt: str, task: str) -> str:
    """The one task that format `fmt` serves; UserError naming the data set when its config
    asks for another."""
    asked = config_value(cfg, "task", task)
    if asked != task:
        raise UserError(f"dataset '{config_value(cfg, 'name', fmt)}': format {fmt} serves task {task} only, not "
                        f"'{asked}'; set dataset.task={task}.")
    return task


def config_choice(cfg, key: str, choices: tuple, default=None):
    """`key` of a reader's config, one of `choices` (absent or null: `default`, else the
    first choice); UserError naming the key and the choices otherwise."""
    value = config_value(cfg, key, choices[0] if default is None else default)
    if value not in choices:
        raise UserError(f"dataset key {key}: '{value}' is unknown; use one of {', '.join(choices)}.")
    return value


def task_kind_reason(cfg) -> tuple[str | None, str]:
    """(domain, why): which of the paper's tasks (DOMAINS) a data set config is compared
    with, or None, and a one-line reason. The config's `domain` key when set (`none`: no
    task); else by its `task` (DOMAIN_OF_TASK; regression: None). UserError on an unknown
    `domain`."""
    name = config_value(cfg, "name", "<unnamed>")
    given = config_value(cfg, "domain")
    if given is not None:
        if str(given) not in (*DOMAINS, "none"):
            raise UserError(f"dataset '{name}': domain '{given}' is unknown; use one of {', '.join(DOMAINS)} or "
                            "none (or leave it out to have it follow the task).")
        domain = None if str(given) == "none" else str(given)
        return domain, f"set by the data set's config (domain: {given})"
    task = config_value(cfg, "task")
    if task in DOMAIN_OF_TASK:
        domain, like = DOMAIN_OF_TASK[task]
        return domain, f"from the data set's task {task}: {like}"
    return None, (f"the data set's task {task} is none of the paper's tasks (set domain in its config to "
                  "compare it with one)")


def task_kind(cfg) -> str | None:
    """music / speech / handwriting for a data set config, or None (task_kind_reason)."""
    return task_kind_reason(cfg)[0]


@dataclass(frozen=True)
class ZScore:
    """Inputs normalised with the training split's statistics: (x - mean) / std per input.

    `fit` takes the training frames only (valid and test never move the statistics); a
    constant input gets std 1, so it is centred, not blown up. Statistics in float64,
    normalised frames in float32.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train_frames: np.ndarray) -> ZScore:
        mean = train_frames.mean(axis=0, dtype=np.float64)
        std = train_frames.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        return cls(mean, std)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def load_dataset(cfg) -> DataSplits:
    """Read the data set a dataset config names (see the module docstring for the keys)."""
    name = config_value(cfg, "name", "<unnamed>")
    for key in ("format", "path", "task"):
        if config_value(cfg, key) is None:
            raise UserError(f"dataset config '{name}' has no key '{key}'; add it (see README, 'Your own data set').")
    fmt, task = cfg["format"], cfg["task"]
    if fmt not in FORMATS:
        raise UserError(f"dataset '{name}': format '{fmt}' is unknown; use one of {', '.join(FORMATS)}.")
    if task not in TASKS:
        raise UserError(f"dataset '{name}': task '{task}' is unknown; use one of {', '.join(TASKS)}.")
    task_kind(cfg)  # an unknown `domain` fails here, before any work
    path = resolve_path(cfg["path"])
    if not path.exists():
        hint = (f"run `odyssey data {name}` to make it" if config_value(cfg, "generate") is not None
                else "set dataset.path=... to where the data is")
        raise UserError(f"dataset '{name}': {path} does not exist; {hint}.")
    reader = importlib.import_module(f"harness.datasets.{fmt}")
    splits = reader.read(cfg, path)
    for split in SPLITS:
        if not splits.split(split):
            raise UserError(f"dataset '{name}': the {split} split of {path} is empty; every split needs sequences.")
    if splits.task == "ctc":  # labels in range, and enough frames for each to align
        check_targets(splits, path)
    return splits
