"""TIMIT (LDC93S1) and corpora of its layout, for framewise phone classification.

Entry point: `read(cfg, path) -> DataSplits`. `path` is the corpus root, which holds

    TRAIN/DR1..DR8/<speaker>/<utterance>.WAV   NIST SPHERE (or RIFF WAV), 16 kHz, 16 bit
    TRAIN/DR1..DR8/<speaker>/<utterance>.PHN   "start end phone" a line, in samples, end exclusive
    TEST/...                                   the same

in upper or lower case. Each utterance becomes one Sequence: x float32 (T, 39), the
features of harness.datasets.speech_features normalised with the training set's mean and
deviation, and y int64 (T,), the index in `classes` of the phone that covers most of the
frame.

Dataset config keys (besides name, format: timit, path, task: framewise, bidirectional):

    split: halberstadt     # halberstadt | test_halves
    phones: timit61        # timit61 | from_data
    include_sa: false      # keep the dialect sentences SA1, SA2 (Halberstadt drops them)
    normalise: true        # training-set mean and deviation, per feature
    cache_dir: null        # where feature caches go; null: results/cache (under the project root)
    features: {...}        # FeatureSettings: sample_rate window_ms step_ms preemphasis n_cepstra
                           #   n_filters n_fft lifter delta_window derivatives

split: halberstadt (real TIMIT): training = TRAIN without SA (3696 utterances), validation =
the 50-speaker development set (400 utterances), test = the 24-speaker core test set (192
utterances); the other TEST speakers are not used. split: test_halves (the stand-ins, whose
speakers have other names): training = TRAIN without SA; the TEST speakers, sorted by dialect
folder and name, go alternately to validation (1st, 3rd, ...) and test (2nd, 4th, ...).

phones: timit61 makes the classes the 61 phones of the TIMIT documentation, in its order, so a
subset that lacks a phone still has its output; a phone outside them is an error. phones:
from_data makes them the sorted phones found in the three splits.

Features are cached in `<cache_dir>/<name>/<hash>.npz`, the hash taken over the feature
settings and the list of files read (path, size, modification time); a changed setting or file
recomputes them. Normalisation and the class list are applied after the cache, so changing
`phones` or `normalise` reuses it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from harness import project_root
from harness.datasets import DataSplits, Sequence, ZScore, config_choice, config_value, format_task, resolve_path
from harness.datasets.speech_features import FeatureSettings, features, majority_labels, n_frames
from harness.errors import UserError

# The 61 phones of the TIMIT documentation (timit/doc/phoncode.doc): stops, affricates,
# fricatives, nasals, semivowels and glides, vowels, then closures and the non-speech symbols.
TIMIT_PHONES = [
    "b", "d", "g", "p", "t", "k", "dx", "q",
    "jh", "ch",
    "s", "sh", "z", "zh", "f", "th", "v", "dh",
    "m", "n", "ng", "em", "en", "eng", "nx",
    "l", "r", "w", "y", "hh", "hv", "el",
    "iy", "ih", "eh", "ey", "ae", "aa", "aw", "ay", "ah", "ao", "oy", "ow", "uh", "uw", "ux",
    "er", "ax", "ix", "axr", "ax-h",
    "bcl", "dcl", "gcl", "pcl", "tcl", "kcl",
    "pau", "epi", "h#",
]

# Halberstadt's development set (50 TEST speakers, 400 utterances without SA) and core test
# set (24 TEST speakers: 2 men and 1 woman a dialect region, 192 utterances without SA).
# Source: A. K. Halberstadt, "Heterogeneous acoustic measurements and multiple classifiers for
# speech recognition", PhD thesis, MIT, 1998, Appendix; the same lists are in the Kaldi TIMIT
# recipe (egs/timit/s5: conf/dev_spk.list and the core test speakers of local/timit_data_prep.sh).
DEVELOPMENT_SPEAKERS = [
    "faks0", "fdac1", "fjem0", "mgwt0", "mjar0", "mmdb1", "mmdm2", "mpdf0",
    "fcmh0", "fkms0", "mbdg0", "mbwm0", "mcsh0",
    "fadg0", "fdms0", "fedw0", "mgjf0", "mglb0", "mrtk0", "mtaa0", "mtdt0", "mthc0", "mwjg0",
    "fnmr0", "frew0", "fsem0", "mbns0", "mmjr0", "mdls0", "mdlf0", "mdvc0", "mers0",
    "fmah0", "fdrw0", "mrcs0", "mrjm4",
    "fcal1", "mmwh0", "fjsj0", "majc0", "mjsw0", "mreb0",
    "fgjd0", "fjmg0", "mroa0", "mteb0", "mjfc0", "mrjr0",
    "fmml0", "mrws1",
]
CORE_TEST_SPEAKERS = [
    "mdab0", "mwbt0", "felc0",  # DR1
    "mtas1", "mwew0", "fpas0",  # DR2
    "mjmp0", "mlnt0", "fpkt0",  # DR3
    "mlll0", "mtls0", "fjlm0",  # DR4
    "mbpm0", "mklt0", "fnlp0",  # DR5
    "mcmj0", "mjdh0", "fmgd0",  # DR6
    "mgrt0", "mnjm0", "fdhc0",  # DR7
    "mjln0", "mpam0", "fmld0",  # DR8
]

SPLIT_RULES = ("halberstadt", "test_halves")
PHONE_SETS = ("timit61", "from_data")
CACHE_VERSION = 1  # bump when the cached content changes meaning


@dataclass
class Utterance:
    """One recording of the tree: where its files are and who said it."""

    part: str       # "train" or "test": the TIMIT folder it is in
    dialect: str    # "dr1"
    speaker: str    # "fcjf0"
    name: str       # "si1027"
    wav: Path
    phn: Path

    @property
    def key(self) -> str:
        return f"{self.part}/{self.dialect}/{self.speaker}/{self.name}"

    @property
    def is_dialect_sentence(self) -> bool:
        return self.name.startswith("sa")


def _child_dir(parent: Path, name: str) -> Path | None:
    """The subdirectory of `parent` called `name` in any case, or None."""
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def find_utterances(root: Path) -> list[Utterance]:
    """Every utterance under root/TRAIN and root/TEST, sorted; UserError if root is no TIMIT tree."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; set dataset.path to the TIMIT root (the folder holding TRAIN/ and TEST/).")
    parts = {part: _child_dir(root, part) for part in ("train", "test")}
    if all(folder is None for folder in parts.values()):
        raise UserError(f"{root} is not a TIMIT tree (no TRAIN/ or TEST/ folder in it); set dataset.path to the "
                        "folder that holds TRAIN/ and TEST/ (see datasets/README.md, 'TIMIT').")
    utterances = []
    for part, folder in parts.items():
        if folder is None:
            continue
        for dialect in sorted(p for p in folder.iterdir() if p.is_dir()):
            for speaker in sorted(p for p in dialect.iterdir() if p.is_dir()):
                files = {}
                for file in sorted(speaker.iterdir()):
                    stem, _, suffix = file.name.partition(".")
                    files.setdefault(stem.lower(), {}).setdefault(suffix.lower(), file)
                for name, by_suffix in sorted(files.items()):
                    wav = by_suffix.get("wav") or by_suffix.get("wav.wav")
                    if wav is None:
                        continue
                    if "phn" not in by_suffix:
                        raise UserError(f"{wav} has no .PHN file beside it; restore it from the corpus or remove the recording.")
                    utterances.append(Utterance(part, dialect.name.lower(), speaker.name.lower(), name, wav, by_suffix["phn"]))
    if not utterances:
        raise UserError(f"{root} holds no .WAV files under TRAIN/ or TEST/; set dataset.path to a complete TIMIT tree.")
    return utterances


def assign_splits(utterances: list[Utterance], rule: str, include_sa: bool = False) -> dict[str, list[Utterance]]:
    """The utterances of each split under a split rule (see the module docstring)."""
    if rule not in SPLIT_RULES:  # callers other than read(), which checks the config's choice
        raise UserError(f"dataset key split: '{rule}' is unknown; use one of {', '.join(SPLIT_RULES)}.")
    kept = [u for u in utterances if include_sa or not u.is_dialect_sentence]
    splits = {"train": [u for u in kept if u.part == "train"], "valid": [], "test": []}
    test_part = [u for u in kept if u.part == "test"]
    if rule == "halberstadt":
        development, core = set(DEVELOPMENT_SPEAKERS), set(CORE_TEST_SPEAKERS)
        splits["valid"] = [u for u in test_part if u.speaker in development]
        splits["test"] = [u for u in test_part if u.speaker in core]
    else:
        speakers = sorted({(u.dialect, u.speaker) for u in test_part})
        validation = set(speakers[0::2])
        splits["valid"] = [u for u in test_part if (u.dialect, u.speaker) in validation]
        splits["test"] = [u for u in test_part if (u.dialect, u.speaker) not in validation]
    return splits


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The waveform of a SPHERE or RIFF file as float64 in [-1, 1]; UserError if unreadable."""
    try:
        signal, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except Exception as error:  # libsndfile reports every bad file its own way
        raise UserError(f"{path} is not a readable SPHERE or WAV file ({error}); restore it from the corpus or remove "
                        "the recording and its .PHN.") from None
    if rate != sample_rate:
        raise UserError(f"{path} is sampled at {rate} Hz, the features expect {sample_rate} Hz; resample the corpus "
                        "or set dataset.features.sample_rate.")
    return signal[:, 0]  # TIMIT is mono; a stereo file contributes its first channel


def read_phones(path: Path, n_samples: int) -> list[tuple[int, int, str]]:
    """The (start, end, phone) lines of a .PHN file; UserError if malformed or past the audio."""
    segments = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            start, end, phone = int(fields[0]), int(fields[1]), fields[2]
        except (IndexError, ValueError):
            raise UserError(f"{path}, line {number}: expected 'start end phone' (samples), got {line.strip()!r}; "
                            "fix the line.") from None
        if not 0 <= start < end:
            raise UserError(f"{path}, line {number}: segment {start}..{end} is empty or negative; fix the line.")
        if end > n_samples:
            raise UserError(f"{path}, line {number}: phone '{phone}' ends at sample {end}, past the end of its audio "
                            f"({n_samples} samples); fix the .PHN or the .WAV.")
        segments.append((start, end, phone.lower()))
    if not segments:
        raise UserError(f"{path} holds no phones; restore it from the corpus or remove the recording.")
    return segments


def _cache_file(cfg, name: str, settings: FeatureSettings, utterances: list[Utterance], root: Path) -> Path:
    listing = []
    for u in utterances:
        for file in (u.wav, u.phn):
            stat = file.stat()
            listing.append([str(file.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"version": CACHE_VERSION, "settings": settings.as_dict(), "files": listing}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache_dir = config_value(cfg, "cache_dir")
    base = resolve_path(cache_dir) if cache_dir else project_root() / "results" / "cache"
    return base / name / f"{digest}.npz"


def compute_features(utterances: list[Utterance], settings: FeatureSettings, label: str = "timit") -> dict:
    """Unnormalised features and phone labels of the utterances, as the arrays the cache holds.

    Returns x float32 (sum T, D), lengths int64 (n,), phones (P,) str, y int64 (sum T,) indices
    into phones, keys (n,) str.
    """
    blocks, labels, lengths = [], [], []
    phone_index: dict[str, int] = {}
    started = time.time()
    report_every = max(1, len(utterances) // 10)
    for count, u in enumerate(utterances, start=1):
        signal = read_audio(u.wav, settings.sample_rate)
        segments = read_phones(u.phn, len(signal))
        x = features(signal, settings)  # (T, D)
        indexed = [(s, e, phone_index.setdefault(p, len(phone_index))) for s, e, p in segments]
        y = majority_labels(indexed, len(signal), settings)
        assert len(x) == len(y) == n_frames(len(signal), settings)
        blocks.append(x)
        labels.append(y)
        lengths.append(len(x))
        if count % report_every == 0 or count == len(utterances):
            print(f"{label}: features of {count}/{len(utterances)} utterances ({time.time() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    return {
        "x": np.concatenate(blocks).astype(np.float32),
        "y": np.concatenate(labels).astype(np.int64),
        "lengths": np.array(lengths, dtype=np.int64),
        "phones": np.array(list(phone_index), dtype=str),
        "keys": np.array([u.key for u in utterances], dtype=str),
    }


def cached_features(cfg, name: str, settings: FeatureSettings, utterances: list[Utterance], root: Path) -> tuple[dict, Path, bool]:
    """compute_features through the on-disk cache; returns (arrays, cache file, whether it was a hit)."""
    path = _cache_file(cfg, name, settings, utterances, root)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
            if list(arrays["keys"]) == [u.key for u in utterances]:
                return arrays, path, True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed
    arrays = compute_features(utterances, settings, label=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)  # a crash mid-write never leaves a half cache under the real name
    return arrays, path, False


def read(cfg, path) -> DataSplits:
    """Read a TIMIT-layout corpus at `path` as configured by `cfg` (keys in the module docstring)."""
    name = config_value(cfg, "name", "timit")
    format_task(cfg, "timit", "framewise")
    rule = config_choice(cfg, "split", SPLIT_RULES)
    phone_set = config_choice(cfg, "phones", PHONE_SETS)
    settings = FeatureSettings.from_config(config_value(cfg, "features"))
    root = Path(path)

    splits = assign_splits(find_utterances(root), rule, bool(config_value(cfg, "include_sa", False)))
    for split, members in splits.items():
        if not members:
            raise UserError(f"dataset '{name}': split rule '{rule}' leaves the {split} split of {root} empty; "
                            "use split: test_halves for a corpus whose speakers are not TIMIT's.")
    ordered = splits["train"] + splits["valid"] + splits["test"]
    started = time.time()
    arrays, cache_path, hit = cached_features(cfg, name, settings, ordered, root)
    feature_seconds = time.time() - started

    phones = [str(p) for p in arrays["phones"]]
    if phone_set == "timit61":
        unknown = sorted(set(phones) - set(TIMIT_PHONES))
        if unknown:
            where = _first_file_with(ordered, unknown[0])
            raise UserError(f"{where} has phone '{unknown[0]}', which is not one of the 61 TIMIT phones; fix the file "
                            "or set dataset.phones=from_data.")
        classes = list(TIMIT_PHONES)
    else:
        classes = sorted(phones)
    to_class = np.array([classes.index(p) for p in phones], dtype=np.int64)

    x, y = arrays["x"], to_class[arrays["y"]]
    n_train_frames = int(arrays["lengths"][: len(splits["train"])].sum())
    if config_value(cfg, "normalise", True):
        x = ZScore.fit(x[:n_train_frames])(x)

    sequences = []
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    for i, u in enumerate(ordered):
        sequences.append(Sequence(x=x[offsets[i]:offsets[i + 1]], y=y[offsets[i]:offsets[i + 1]], name=u.key))
    n_train, n_valid = len(splits["train"]), len(splits["valid"])

    info = {
        "split_rule": rule,
        "phones": phone_set,
        "speakers": {split: len({(u.dialect, u.speaker) for u in members}) for split, members in splits.items()},
        "utterances": {split: len(members) for split, members in splits.items()},
        "feature_cache": str(cache_path),
        "feature_cache_hit": hit,
        "feature_seconds": round(feature_seconds, 2),
        "features": settings.as_dict(),
    }
    return DataSplits(
        name=name, task="framewise",
        train=sequences[:n_train], valid=sequences[n_train:n_train + n_valid], test=sequences[n_train + n_valid:],
        input_dim=settings.dim, n_outputs=len(classes), bidirectional=bool(config_value(cfg, "bidirectional", True)),
        classes=classes, info=info,
    )


def _first_file_with(utterances: list[Utterance], phone: str) -> Path:
    for u in utterances:
        if any(line.split()[2:3] == [phone] for line in u.phn.read_text(errors="replace").lower().splitlines()):
            return u.phn
    return utterances[0].phn
