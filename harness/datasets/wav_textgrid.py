"""Speech as a forced aligner leaves it: WAV files with Praat TextGrids of phone intervals.

Entry point: `read(cfg, path) -> DataSplits`. `path` is a folder holding

    train/NAME.wav        one recording (any rate; resampled to the feature rate, 16 kHz)
    train/NAME.TextGrid   its Praat TextGrid (long or short text format, UTF-8 or UTF-16)
    valid/...  test/...   the same (subfolders are fine: NAME is the path under the split)

which is what the Montreal Forced Aligner and similar tools write. Each recording becomes
one Sequence: x float32 (T, 39), the TIMIT features of harness.datasets.speech_features
(12 MFCCs and log energy with first and second derivatives, 25 ms windows every 10 ms)
normalised with the training split's mean and deviation, and y int64 (T,), the class of
the interval that covers most of each frame. A recording of several channels is mixed
down to one (their mean).

Labels come from the interval tier named `tier`. An interval with empty text (or a part
of the recording no interval covers) is silence and takes `silence_label`. Intervals are
clipped to the recording; a tier that runs past the recording's end by more than one
window (25 ms) means the TextGrid belongs to another recording, which is an error.

Classes: the labels of the train split and silence, sorted, unless the config lists
`classes` (then in that order, and every label must be one of them).

Dataset config keys (besides name, format: wav_textgrid, path, task: framewise,
bidirectional, default true):

    tier: phones           # the interval tier of the labels
    silence_label: sil     # the class of empty intervals and uncovered stretches
    classes: null          # the class list; null: the train split's labels + silence
    normalise: true        # training-set mean and deviation, per feature
    cache_dir: null        # where feature caches go; null: results/cache
    features: {...}        # FeatureSettings (as for format timit): sample_rate window_ms ...

Errors, each naming the file: a WAV without its TextGrid or a TextGrid without its WAV, a
file neither soundfile nor praatio can read, a missing tier (the message lists the tiers
there are), a label in valid or test that the train split lacks (or, with `classes`, a
label not listed), a tier past the recording's end.

Features are cached in `<cache_dir>/<name>/wav_textgrid-<hash>.npz`, the hash over the
feature settings, `tier`, `silence_label` and the files (path, size, modification time);
classes and normalisation are applied after the cache.
"""

from __future__ import annotations

import sys
import time
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from praatio import textgrid
from scipy.signal import resample_poly

from harness.datasets import SPLITS, DataSplits, Sequence, ZScore, config_value, format_task, split_folders
from harness.datasets.cache import cache_file, cached
from harness.datasets.speech_features import FeatureSettings, features, majority_labels, n_frames
from harness.errors import UserError

CACHE_VERSION = 1  # bump when the cached content changes meaning


def find_recordings(root: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """(name, wav, TextGrid) of every recording of each split, sorted by name.

    UserError for a missing split folder, an empty one, or a file without its partner.
    """
    found = {}
    for split, folder in split_folders(root, "wav_textgrid", "NAME.wav and NAME.TextGrid files").items():
        wavs, grids = {}, {}
        for file in folder.rglob("*"):
            if not file.is_file():
                continue
            stem = str(file.relative_to(folder).with_suffix(""))
            if file.suffix.lower() == ".wav":
                wavs[stem] = file
            elif file.suffix.lower() == ".textgrid":
                grids[stem] = file
        for stem in sorted(set(wavs) - set(grids)):
            raise UserError(f"{wavs[stem]} has no TextGrid beside it ({stem}.TextGrid); add its alignment or "
                            "remove the recording.")
        for stem in sorted(set(grids) - set(wavs)):
            raise UserError(f"{grids[stem]} has no WAV file beside it ({stem}.wav); add the recording or remove "
                            "the TextGrid.")
        if not wavs:
            raise UserError(f"{folder} holds no .wav files; every split needs at least one recording with its "
                            "TextGrid.")
        found[split] = [(f"{split}/{stem}", wavs[stem], grids[stem]) for stem in sorted(wavs)]
    return found


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """The recording as float64 in [-1, 1] at `sample_rate`, channels mixed down to one."""
    try:
        signal, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except Exception as error:  # libsndfile reports every bad file its own way
        raise UserError(f"{path} is not a readable audio file ({error}); export it again as WAV or remove the "
                        "recording and its TextGrid.") from None
    signal = signal.mean(axis=1)
    if len(signal) == 0:
        raise UserError(f"{path} holds no samples; remove the recording and its TextGrid.")
    if rate != sample_rate:
        common = gcd(sample_rate, rate)
        signal = resample_poly(signal, sample_rate // common, rate // common)
    return signal


def read_intervals(path: Path, tier: str, silence: str) -> list[tuple[float, float, str]]:
    """(start, end, label) in seconds of the interval tier `tier`; empty text is `silence`."""
    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
    except Exception as error:  # praatio raises its own and Python's errors for a bad file
        raise UserError(f"{path} is not a readable Praat TextGrid ({type(error).__name__}: {error}); save it "
                        "again from Praat or the aligner as a text TextGrid (long or short format).") from None
    if tier not in grid.tierNames:
        raise UserError(f"{path} has no tier '{tier}' (its tiers: {', '.join(grid.tierNames) or 'none'}); set "
                        "dataset.tier to the tier of the phone intervals.")
    found = grid.getTier(tier)
    if not isinstance(found, textgrid.IntervalTier):
        raise UserError(f"{path}: tier '{tier}' is a point tier, but the labels must be intervals; set "
                        "dataset.tier to an interval tier.")
    return [(float(start), float(end), label.strip() or silence) for start, end, label in found.entries]


def segments_in_samples(intervals, n_samples: int, sample_rate: int, silence: str, path: Path,
                        tolerance: int) -> list[tuple[int, int, str]]:
    """(start, end, label) in samples covering [0, n_samples): the intervals, clipped, with
    silence filling the stretches no interval covers."""
    segments, now = [], 0
    for start, end, label in sorted(intervals):
        first, last = round(start * sample_rate), round(end * sample_rate)
        if first > n_samples + tolerance:
            raise UserError(f"{path}: interval '{label}' starts at {start:.3f} s, after the end of its recording "
                            f"({n_samples / sample_rate:.3f} s); the TextGrid belongs to another recording.")
        first, last = max(first, now), min(last, n_samples)
        if first > now:
            segments.append((now, first, silence))
        if last > first:
            segments.append((first, last, label))
            now = last
    if intervals and round(max(end for _, end, _ in intervals) * sample_rate) > n_samples + tolerance:
        raise UserError(f"{path} runs to {max(end for _, end, _ in intervals):.3f} s, past the end of its recording "
                        f"({n_samples / sample_rate:.3f} s); the TextGrid belongs to another recording.")
    if now < n_samples:
        segments.append((now, n_samples, silence))
    return segments


def compute_features(recordings, settings: FeatureSettings, tier: str, silence: str, label: str) -> dict:
    """Unnormalised features and frame labels of the recordings, as the arrays the cache holds:
    x float32 (sum T, D), lengths (n,), labels (L,) str, y (sum T,) indices into labels, and
    used (n, L), which labels each recording's tier has (a label may win no frame)."""
    blocks, frames, lengths, label_index, present = [], [], [], {}, []
    started = time.time()
    report_every = max(1, len(recordings) // 10)
    for count, (_, wav, grid) in enumerate(recordings, start=1):
        signal = read_wav(wav, settings.sample_rate)
        intervals = read_intervals(grid, tier, silence)
        segments = segments_in_samples(intervals, len(signal), settings.sample_rate, silence, grid, settings.window)
        indexed = [(s, e, label_index.setdefault(text, len(label_index))) for s, e, text in segments]
        present.append({c for _, _, c in indexed})
        x = features(signal, settings)
        y = majority_labels(indexed, len(signal), settings)
        assert len(x) == len(y) == n_frames(len(signal), settings)
        blocks.append(x)
        frames.append(y)
        lengths.append(len(x))
        if count % report_every == 0 or count == len(recordings):
            print(f"{label}: features of {count}/{len(recordings)} recordings ({time.time() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    used = np.zeros((len(recordings), len(label_index)), dtype=np.uint8)
    for n, indices in enumerate(present):
        used[n, sorted(indices)] = 1
    return {"x": np.concatenate(blocks).astype(np.float32), "y": np.concatenate(frames).astype(np.int64),
            "lengths": np.array(lengths, dtype=np.int64), "labels": np.array(list(label_index), dtype=str),
            "used": used,  # (n, L): which labels each recording's tier has
            "names": np.array([name for name, _, _ in recordings], dtype=str)}


def read(cfg, path) -> DataSplits:
    """Read the WAV + TextGrid folder at `path` as configured by `cfg` (keys in the module docstring)."""
    name = str(config_value(cfg, "name", "wav_textgrid"))
    format_task(cfg, "wav_textgrid", "framewise")
    tier, silence = str(config_value(cfg, "tier", "phones")), str(config_value(cfg, "silence_label", "sil"))
    settings = FeatureSettings.from_config(config_value(cfg, "features"))
    root = Path(path)
    by_split = find_recordings(root)
    recordings = [r for split in SPLITS for r in by_split[split]]
    started = time.time()
    key = {"version": CACHE_VERSION, "features": settings.as_dict(), "tier": tier, "silence": silence}
    files = [file for _, wav, grid in recordings for file in (wav, grid)]
    cache_path = cache_file(cfg, name, "wav_textgrid", key, files, root)
    arrays, hit = cached(cache_path, [n for n, _, _ in recordings],
                         lambda: compute_features(recordings, settings, tier, silence, label=name))
    feature_seconds = time.time() - started

    labels = [str(label) for label in arrays["labels"]]
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    n_train = len(by_split["train"])
    listed = config_value(cfg, "classes")
    if listed is not None:
        classes = [str(c) for c in listed]
        if len(set(classes)) != len(classes):
            raise UserError(f"dataset '{name}': dataset.classes lists a class twice; give each once.")
        allowed, remedy = set(classes), "add it to dataset.classes"
    else:
        in_train = arrays["used"][:n_train].any(axis=0)
        classes = sorted({label for label, kept in zip(labels, in_train) if kept} | {silence})
        allowed, remedy = set(classes), "list dataset.classes to give it an output, or relabel it"
    for n, (_, _, grid) in enumerate(recordings):
        unknown = sorted({label for label, has in zip(labels, arrays["used"][n]) if has} - allowed)
        if unknown:
            where = "is not in dataset.classes" if listed is not None else "the train split lacks"
            raise UserError(f"{grid} has label '{unknown[0]}', which {where}; {remedy}.")
    to_class = np.array([classes.index(label) if label in allowed else -1 for label in labels], dtype=np.int64)

    x, y = arrays["x"], to_class[arrays["y"]]
    normalise = bool(config_value(cfg, "normalise", True))
    if normalise:
        x = ZScore.fit(x[: offsets[n_train]])(x)

    splits, n = {}, 0
    for split in SPLITS:
        splits[split] = []
        for record_name, _, _ in by_split[split]:
            splits[split].append(Sequence(x=x[offsets[n]:offsets[n + 1]], y=y[offsets[n]:offsets[n + 1]],
                                          name=record_name))
            n += 1
    info = {
        "directory": str(root),
        "recordings": {split: len(by_split[split]) for split in SPLITS},
        "tier": tier,
        "silence_label": silence,
        "normalised": normalise,
        "feature_cache": str(cache_path),
        "feature_cache_hit": hit,
        "feature_seconds": round(feature_seconds, 2),
        "features": settings.as_dict(),
    }
    return DataSplits(name=name, task="framewise", input_dim=settings.dim, n_outputs=len(classes),
                      bidirectional=bool(config_value(cfg, "bidirectional", True)), classes=classes, info=info,
                      **splits)
