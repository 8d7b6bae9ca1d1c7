"""Piano rolls in Boulanger-Lewandowski's layout (JSB Chorales, Nottingham, MuseData, Piano-midi.de).

The layout: a mapping {"train": [...], "valid": [...], "test": [...]} where each sequence is
a list of frames and each frame a list (or tuple) of the MIDI note numbers sounding in it.
It is read from JSON (`.json`, as shipped in datasets/jsb_chorales/) or from the original
pickle files (`.pickle`, `.pkl`) through `RestrictedUnpickler`, which builds nothing but
lists, tuples, dicts, numbers and strings, so a pickle that would run code is refused.

Config keys: `path` (the file), `lowest_note` (default 21, A0) and `keys` (default 88, the
piano range 21..108). The task is `next_step`: x is frames 0..T-2, y frames 1..T-1, each a
(T-1, keys) float32 array of zeros and ones; a note that is not a whole number 0..127, or
outside the range, is an error. A sequence of fewer than 2 frames has nothing to predict:
it is left out, and a line on stderr says which.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np

from harness.datasets import SPLITS, DataSplits, Sequence, format_task
from harness.errors import UserError


# Reader options besides the common keys, with their kinds (harness.validate checks them).
CONFIG_KEYS = {"lowest_note": "int", "keys": "int"}


class _NumericDType:
    """Stands in for numpy.dtype while unpickling: a numeric type code and a byte order."""

    CODES = {f"{kind}{size}" for kind in "iuf" for size in (1, 2, 4, 8)} - {"f1"}

    def __init__(self, code, align=0, copy=1):
        if code not in self.CODES:
            raise pickle.UnpicklingError(f"refusing numpy dtype {code!r}: only numeric scalars are allowed")
        self.code, self.byteorder = code, "<"

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=")):
            raise pickle.UnpicklingError("refusing a numpy dtype state that is not a plain byte order")
        self.byteorder = "<" if state[1] in ("|", "=") else state[1]


def _numeric_scalar(dtype, data):
    """numpy's scalar(dtype, bytes) rebuilt as a plain Python number."""
    if not isinstance(dtype, _NumericDType):
        raise pickle.UnpicklingError("refusing a numpy scalar of a non-numeric dtype")
    raw = data.encode("latin1") if isinstance(data, str) else bytes(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype.byteorder + dtype.code))[0].item()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles lists, tuples, dicts, numbers and strings, and nothing else.

    Boulanger-Lewandowski's original files store each note as a numpy integer scalar
    (the globals numpy.core.multiarray.scalar and numpy.dtype). Those two names are
    served by our own stand-ins, which accept numeric type codes only and return plain
    Python numbers; any other class or function reference is refused, so a pickle that
    would run code cannot.
    """

    SAFE = {
        ("numpy.core.multiarray", "scalar"): _numeric_scalar,
        ("numpy._core.multiarray", "scalar"): _numeric_scalar,
        ("numpy", "dtype"): _NumericDType,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only lists, tuples, dicts, "
                                     "numbers and strings are allowed in a piano-roll pickle")


def load_pickle(path: Path):
    """The object in a pickle file, through `RestrictedUnpickler` (Python 2 pickles: latin1)."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()


def load_rolls(path: Path) -> dict:
    """The raw {split: [sequence of note lists]} of a JSON or pickle file."""
    try:
        if path.suffix.lower() == ".json":
            with open(path) as handle:
                return json.load(handle)
        return load_pickle(path)
    except pickle.UnpicklingError as error:
        raise UserError(f"{path}: {error}; convert the file to JSON or to plain lists of note numbers.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, pickle.PickleError, ValueError) as error:
        raise UserError(f"{path} is not a readable piano-roll file ({error}); "
                        "expected JSON or a pickle of {{'train', 'valid', 'test'}} note lists.") from None


def to_roll(sequence, lowest_note: int, keys: int, path: Path, where: str) -> np.ndarray:
    """A (T, keys) 0/1 array from a list of frames of MIDI note numbers."""
    roll = np.zeros((len(sequence), keys), dtype=np.float32)
    for t, frame in enumerate(sequence):
        for note in frame:
            whole = isinstance(note, (int, np.integer)) or (isinstance(note, (float, np.floating))
                                                            and float(note).is_integer())
            if isinstance(note, bool) or not whole or not 0 <= note <= 127:
                raise UserError(f"{path}: note {note!r} in {where}, frame {t} is not a MIDI note number; "
                                "notes are whole numbers 0..127 (60 is middle C), so convert names such as 'C4' "
                                "and round or fix fractional values.")
            key = int(note) - lowest_note
            if not 0 <= key < keys:
                raise UserError(f"{path}: note {note} in {where}, frame {t} is outside MIDI "
                                f"{lowest_note}..{lowest_note + keys - 1}; set dataset.lowest_note / dataset.keys.")
            roll[t, key] = 1.0
    return roll


def read(cfg, path: Path) -> DataSplits:
    lowest_note, keys = int(cfg.get("lowest_note", 21)), int(cfg.get("keys", 88))
    format_task(cfg, "pianoroll", "next_step")
    if path.is_dir():
        raise UserError(f"dataset '{cfg.get('name')}': {path} is a directory; point dataset.path at the .json or .pickle file.")
    rolls = load_rolls(path)
    if not isinstance(rolls, dict) or any(split not in rolls for split in SPLITS):
        found = sorted(rolls) if isinstance(rolls, dict) else type(rolls).__name__
        raise UserError(f"{path} must hold the splits {list(SPLITS)}; found {found}.")
    splits, short = {}, {}
    for split in SPLITS:
        sequences = []
        for n, raw in enumerate(rolls[split]):
            if not isinstance(raw, (list, tuple)) or any(not isinstance(f, (list, tuple)) for f in raw):
                raise UserError(f"{path}: {split} sequence {n} is not a list of frames of note numbers.")
            roll = to_roll(raw, lowest_note, keys, path, f"{split} sequence {n}")
            if len(roll) >= 2:  # next-step prediction needs at least one target frame
                sequences.append(Sequence(x=roll[:-1], y=roll[1:], name=f"{split}/{n}"))
            else:
                short.setdefault(split, []).append(n)
        splits[split] = sequences
    if short:  # said, not silent: these sequences have no frame to predict
        listed = "; ".join(f"{split} {', '.join(map(str, numbers[:5]))}{' ...' if len(numbers) > 5 else ''}"
                           for split, numbers in short.items())
        print(f"dataset '{cfg.get('name')}': left out {sum(map(len, short.values()))} sequence(s) of {path} with "
              f"fewer than 2 frames (nothing to predict): {listed}", file=sys.stderr, flush=True)
    info = {"file": str(path)} | ({"left_out_short": {k: len(v) for k, v in short.items()}} if short else {})
    return DataSplits(name=str(cfg.get("name")), task="next_step", input_dim=keys, n_outputs=keys,
                      bidirectional=False, info=info, **splits)
