"""Any data set as three NumPy archives: the format for a researcher's own data (no code to write).

Entry point: `read(cfg, path) -> DataSplits`. `path` is a directory holding train.npz,
valid.npz and test.npz (written with `np.savez` or `np.savez_compressed`). In each archive
the frames of all sequences are concatenated, one row a frame:

| array       | dtype, shape            | meaning                                              |
|-------------|-------------------------|------------------------------------------------------|
| `x`         | float32 (sum of T, D)   | inputs; any real dtype is converted to float32       |
| `lengths`   | int64 (n,)              | T of each sequence, in order; all > 0, sum = rows of x|
| `y`         | by task, below          | targets                                              |
| `y_lengths` | int64 (n,)              | ctc only: number of labels of each sequence          |

Targets `y` by `task`:

- framewise: int (sum of T,), the class of each frame, 0 .. n_classes-1. The number of
  classes is `n_classes` from the config if given (a label >= it is an error), otherwise
  the largest label over the three splits + 1. Metric: frame error.
- regression: float (sum of T, K), one target vector a frame (K = 1 is shape (sum of T, 1)).
  Targets are used as given (not normalised), so the metric, mean squared error per
  value, is in their units.
- next_step: predict a frame of K values in [0, 1] from the frames so far, scored as
  Bernoulli NLL (the piano-roll task). Two ways to give it:
    * without `y` (what a researcher usually has: one series per sequence): the target of
      frame t is x[t+1], so each sequence of T frames gives inputs x[0..T-2] and targets
      x[1..T-1]; every sequence needs at least 2 frames and x must lie in [0, 1];
    * with `y` float (sum of T, K): y[t] is already the target of frame t (e.g. the next
      frame of another representation); values in [0, 1].
- ctc: int labels of all sequences concatenated, `y_lengths` saying how many belong to
  each sequence. Labels are 1 .. C; 0 is the blank and must not appear. C is `n_classes`
  from the config if given, otherwise the largest label; the network has C + 1 outputs.
  A label sequence may be empty; one that needs more frames than its input has (a frame a
  label, and a blank between equal neighbours) cannot be aligned and is an error.
  Metric: label error rate (best-path decoding).

Dataset config keys (besides name, format: npz, path, task, bidirectional):

    normalise: true      # z-score each input dimension with the training split's mean and
                         # deviation (a constant dimension is only centred); false keeps x as
                         # given. Default: true for framewise, regression and ctc, false for
                         # next_step (whose inputs are usually the 0/1 frames it predicts).
                         # Without y, next_step targets are always the raw frames.
    n_classes: null      # framewise / ctc: the number of classes (ctc: without the blank)
    class_names: null    # framewise: one name a class; ctc: one a label 1..C (the blank
                         # is added first)

Every archive is opened with `allow_pickle=False`: object arrays (and so pickles) are
refused. Anything wrong in the files (a missing file or array, lengths that do not add up,
targets of the wrong shape or dtype, NaN or infinite values, a class out of range, an empty
split, a sequence of length zero) is a UserError naming the file and the array.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from harness.datasets import SPLITS, TASKS, DataSplits, Sequence, ZScore, config_value
from harness.errors import UserError

# Reader options besides the common keys, with their kinds (harness.validate checks them).
CONFIG_KEYS = {"normalise": "bool", "n_classes": "int", "class_names": "list"}
TARGETS = {"framewise": ["y"], "regression": ["y"], "ctc": ["y", "y_lengths"], "next_step": []}  # y optional
NORMALISED_BY_DEFAULT = {"framewise": True, "regression": True, "ctc": True, "next_step": False}


def _is_real(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def _is_integer(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu"


def load_archive(file: Path, task: str) -> dict[str, np.ndarray]:
    """The arrays of one split's archive, with their dtypes and shapes checked (not their values)."""
    if not file.is_file():
        raise UserError(f"{file} is missing; the npz format needs train.npz, valid.npz and test.npz in "
                        f"{file.parent} (see examples/own_dataset/).")
    if file.stat().st_size == 0:
        raise UserError(f"{file} is empty (0 bytes); write it again with numpy.savez.")
    try:
        archive = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{file} is not a NumPy .npz archive ({error}); write it with numpy.savez.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{file} holds a single array, not an .npz archive; write x, lengths and y with "
                        "numpy.savez(file, x=..., lengths=..., y=...).")
    wanted = ["x", "lengths", *TARGETS[task]]
    optional = ["y"] if task == "next_step" and "y" in archive.files else []
    arrays = {}
    with archive:
        for key in wanted + optional:
            if key not in archive.files:
                raise UserError(f"{file} has no array '{key}' (it has {sorted(archive.files)}); task {task} "
                                f"needs {', '.join(wanted)}.")
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "pickle" not in str(error).lower():
                    raise UserError(f"{file}: array '{key}' cannot be read ({error}); the file is damaged or "
                                    "truncated: write it again with numpy.savez.") from None
                raise UserError(f"{file}: array '{key}' is an object array, which is refused (no pickles); "
                                "save it as a plain numeric array.") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                raise UserError(f"{file}: array '{key}' cannot be read ({error}); the file is damaged or "
                                "truncated: write it again with numpy.savez.") from None

    def wrong(key: str, wanted_form: str):
        array = arrays[key]
        return UserError(f"{file}: array '{key}' is {array.dtype} of shape {array.shape}, but task {task} "
                         f"needs {wanted_form}; convert it before saving.")

    x, lengths = arrays["x"], arrays["lengths"]
    if x.ndim != 2 or not _is_real(x):
        raise wrong("x", "a float array of shape (frames, inputs) (one input: x.reshape(-1, 1))")
    if lengths.ndim != 1 or not _is_integer(lengths):
        raise wrong("lengths", "an integer array of shape (sequences,)")
    if "y" in arrays:
        y = arrays["y"]
        if task == "framewise" and (y.ndim != 1 or not _is_integer(y) or len(y) != len(x)):
            raise wrong("y", f"integer class indices of shape ({len(x)},), one a frame of x")
        if task in ("regression", "next_step") and (y.ndim != 2 or not _is_real(y) or len(y) != len(x)):
            raise wrong("y", f"a float array of shape ({len(x)}, K), one row a frame of x "
                             "(one target: y.reshape(-1, 1))")
        if task == "ctc" and (y.ndim != 1 or not _is_integer(y)):
            raise wrong("y", "integer labels of shape (total labels,)")
    if task == "ctc":
        if arrays["y_lengths"].ndim != 1 or not _is_integer(arrays["y_lengths"]):
            raise wrong("y_lengths", "an integer array of shape (sequences,)")
    return arrays


def check_values(file: Path, task: str, arrays: dict[str, np.ndarray]) -> None:
    """Lengths that add up, no empty split or sequence, finite numbers, next_step targets in [0, 1]."""
    x, lengths = arrays["x"], arrays["lengths"]
    if len(lengths) == 0:
        raise UserError(f"{file}: 'lengths' is empty, so the split has no sequences; every split needs at least one.")
    if (lengths <= 0).any():
        n = int(np.flatnonzero(lengths <= 0)[0])
        raise UserError(f"{file}: 'lengths'[{n}] is {lengths[n]}; every sequence needs at least one frame, "
                        "so drop the empty ones.")
    if int(lengths.sum()) != len(x):
        raise UserError(f"{file}: 'lengths' adds up to {int(lengths.sum())} frames but 'x' has {len(x)} rows; "
                        "they must match (x is all sequences' frames, concatenated in order).")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise UserError(f"{file}: 'x' has a NaN or infinite value (first in row {row}); "
                        "fill or drop those frames before saving.")
    if task in ("regression", "next_step") and "y" in arrays and not np.isfinite(arrays["y"]).all():
        row = int(np.flatnonzero(~np.isfinite(arrays["y"]).all(axis=1))[0])
        raise UserError(f"{file}: 'y' has a NaN or infinite value (first in row {row}); "
                        "fill or drop those frames before saving.")
    if task == "next_step":
        key = "y" if "y" in arrays else "x"
        values = arrays[key]
        if values.size and (values.min() < 0 or values.max() > 1):
            raise UserError(f"{file}: next_step targets ('{key}') must lie in [0, 1] (they are scored as Bernoulli "
                            f"probabilities) but range over [{values.min()}, {values.max()}]; "
                            "rescale them, or use task: regression.")
        if "y" not in arrays and (lengths < 2).any():
            n = int(np.flatnonzero(lengths < 2)[0])
            raise UserError(f"{file}: sequence {n} has 1 frame, but next_step without 'y' predicts x[t+1] from "
                            "x[0..t] and needs at least 2; drop it or give 'y'.")
    if task == "ctc":
        y_lengths = arrays["y_lengths"]
        if len(y_lengths) != len(lengths):
            raise UserError(f"{file}: 'y_lengths' has {len(y_lengths)} entries but 'lengths' has {len(lengths)}; "
                            "give one label count a sequence.")
        if (y_lengths < 0).any() or int(y_lengths.sum()) != len(arrays["y"]):
            raise UserError(f"{file}: 'y_lengths' adds up to {int(y_lengths.sum())} labels but 'y' has "
                            f"{len(arrays['y'])}; they must match, none negative.")


def check_classes(files: dict[str, Path], task: str, labels: dict[str, np.ndarray], n_classes) -> int:
    """The number of classes (ctc: of labels without the blank), checked against every label."""
    lowest = 1 if task == "ctc" else 0
    for split, y in labels.items():
        if y.size and y.min() < lowest:
            what = "0 is the blank, so labels are 1..C" if task == "ctc" else "classes are 0..n_classes-1"
            raise UserError(f"{files[split]}: 'y' has label {y.min()}, but {what}; renumber the labels.")
    largest = max((int(y.max()) for y in labels.values() if y.size), default=lowest - 1)
    counted = largest if task == "ctc" else largest + 1
    if n_classes is None:
        if counted < 1:
            raise UserError(f"{files['train']}: 'y' holds no labels at all; there is nothing to learn.")
        return counted
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise UserError(f"dataset.n_classes={n_classes} must be a positive integer (or null to count from the data).")
    if counted > n_classes:
        split = next(s for s, y in labels.items() if y.size and int(y.max()) == largest)
        raise UserError(f"{files[split]}: 'y' has label {largest}, which is out of range for dataset.n_classes="
                        f"{n_classes}; raise n_classes or fix the labels.")
    return n_classes


def class_names(cfg, task: str, n_classes: int) -> list[str] | None:
    names = config_value(cfg, "class_names")
    if names is None:
        return None
    names = [str(name) for name in names]
    if len(names) != n_classes:
        what = "labels 1..C (without the blank)" if task == "ctc" else "classes"
        raise UserError(f"dataset.class_names has {len(names)} names but the data has {n_classes} {what}; "
                        "give one name each (or set dataset.n_classes).")
    return ["<blank>"] + names if task == "ctc" else names


def read(cfg, path: Path) -> DataSplits:
    name, task = str(config_value(cfg, "name", "<unnamed>")), config_value(cfg, "task")
    if task not in TASKS:
        raise UserError(f"dataset '{name}': task '{task}' is unknown; use one of {', '.join(TASKS)}.")
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"dataset '{name}': {path} is a file, but the npz format needs a directory holding "
                        "train.npz, valid.npz and test.npz; point dataset.path at it.")
    files = {split: path / f"{split}.npz" for split in SPLITS}
    arrays = {}
    for split, file in files.items():
        arrays[split] = load_archive(file, task)
        check_values(file, task, arrays[split])

    # the same dimensions in every split
    for key in ("x", "y"):
        if key == "y" and (task in ("framewise", "ctc") or "y" not in arrays["train"]):
            continue
        widths = {split: a[key].shape[1] for split, a in arrays.items() if key in a}
        for split, width in widths.items():
            if width != widths["train"]:
                raise UserError(f"{files[split]}: '{key}' has {width} columns but train.npz has {widths['train']}; "
                                "every split needs the same number.")
    if task == "next_step" and len({"y" in a for a in arrays.values()}) > 1:
        raise UserError(f"dataset '{name}': some of {path}'s archives have 'y' and some do not; "
                        "give it in all three or in none.")

    input_dim = arrays["train"]["x"].shape[1]
    classes = None
    if task in ("framewise", "ctc"):
        n_classes = check_classes(files, task, {s: a["y"] for s, a in arrays.items()}, config_value(cfg, "n_classes"))
        classes = class_names(cfg, task, n_classes)
        n_outputs = n_classes + 1 if task == "ctc" else n_classes
    else:
        n_outputs = arrays["train"]["y"].shape[1] if "y" in arrays["train"] else input_dim

    normalise = bool(config_value(cfg, "normalise", NORMALISED_BY_DEFAULT[task]))
    zscore = ZScore.fit(arrays["train"]["x"])

    splits = {}
    for split, a in arrays.items():
        raw_x = a["x"].astype(np.float32)
        x = zscore(raw_x) if normalise else raw_x
        starts = np.concatenate([[0], np.cumsum(a["lengths"])])
        if task == "ctc":
            label_starts = np.concatenate([[0], np.cumsum(a["y_lengths"])])
        sequences = []
        for n in range(len(a["lengths"])):
            frames = slice(starts[n], starts[n + 1])
            if task == "ctc":
                inputs, targets = x[frames], a["y"][label_starts[n]:label_starts[n + 1]].astype(np.int64)
            elif task == "framewise":
                inputs, targets = x[frames], a["y"][frames].astype(np.int64)
            elif "y" in a:  # regression, or next_step with its targets given
                inputs, targets = x[frames], a["y"][frames].astype(np.float32)
            else:  # next_step from x itself: x[t+1] is the target of frame t
                inputs, targets = x[frames][:-1], raw_x[frames][1:]
            sequences.append(Sequence(x=inputs, y=targets, name=f"{split}/{n}"))
        splits[split] = sequences

    info = {"directory": str(path), "normalised": normalise,
            "next_step_targets": ("y" if "y" in arrays["train"] else "next frame of x") if task == "next_step" else None}
    if normalise:
        info.update(mean=zscore.mean.tolist(), std=zscore.std.tolist())
    info = {key: value for key, value in info.items() if value is not None}
    return DataSplits(name=name, task=task, input_dim=input_dim, n_outputs=n_outputs,
                      bidirectional=bool(config_value(cfg, "bidirectional", False)), classes=classes, info=info,
                      **splits)
