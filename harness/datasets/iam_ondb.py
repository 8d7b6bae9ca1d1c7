"""Reader of the IAM On-Line Handwriting Database (IAM-OnDB) and of its stand-in.

The corpus as distributed (Liwicki & Bunke 2005), under `dataset.path`:

    lineStrokes/a01/a01-000/a01-000u-01.xml   one text line of pen points
    ascii/a01/a01-000/a01-000u.txt            the form's text; after "CSR:" one line a line
    trainset.txt testset_v.txt testset_t.txt testset_f.txt   split lists, a form id a line

A line file is XML: WhiteboardCaptureSession/StrokeSet/Stroke/Point, each Point with
attributes x, y (integers, y growing downwards) and time (seconds). Line NN of a form
(the `-NN` of its file name) is the NN-th line after "CSR:". Files are found by name
anywhere under lineStrokes/ and ascii/, and the split lists anywhere under the path, so
the sub-directory layout may differ; a split-list entry may also name a single line
(a01-000u-01) instead of a form.

Splits (Graves et al. 2009, Greff et al. 2017): trainset trains, testset_v and
testset_t merged validate, testset_f tests.

Inputs, four a point, in this order (`FEATURES`):

    dx, dy      the pen's move from the previous point of the line (0, 0 at the first),
                across pen lifts, so the network sees where the next stroke starts
    time        seconds since the first point of the current stroke
    pen_lifted  1 on the last point of a stroke, else 0

each normalised to zero mean and unit deviation with the mean and deviation of the
training points (a constant feature keeps deviation 1).

Targets: int64 labels 1..C, the characters of the training transcriptions in code-point
order; `classes` = ["<blank>", chars...], so the network has C + 1 outputs. A character
of a validation or test line that training never shows has no output: it is dropped
from that line's labels, and `info["unseen_characters"]` counts it (it still costs the
model its deletion, since the reference lacks it, the CER is slightly optimistic there).

Bad input (malformed XML, a missing attribute, a stroke without points, a line without a
transcription, a listed form without line files) raises UserError naming the file; with
`dataset.skip_bad: true` such lines are skipped with one warning listing them, and
`info["skipped_files"]` lists them too.

Config keys: name, format (iam_ondb), path, task (ctc), bidirectional, skip_bad.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from harness.datasets import DataSplits, Sequence, ZScore, config_value, format_task
from harness.errors import UserError

FEATURES = ("dx", "dy", "time", "pen_lifted")
BLANK = "<blank>"
SPLIT_LISTS = {"train": ("trainset.txt",), "valid": ("testset_v.txt", "testset_t.txt"), "test": ("testset_f.txt",)}
_LINE_ID = re.compile(r"^(?P<form>.+)-(?P<number>\d+)$")


class BadFile(Exception):
    """A file of the corpus that cannot be used; str() says why."""

    def __init__(self, file: Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


# ---------------------------------------------------------------- files -> raw lines


def read_strokes(file: Path) -> list[np.ndarray]:
    """The strokes of one lineStrokes XML file, each float64 (P, 3): x, y, time."""
    try:
        root = ElementTree.parse(file).getroot()
    except ElementTree.ParseError as error:
        raise BadFile(file, f"malformed XML ({error})") from None
    except OSError as error:
        raise BadFile(file, f"cannot be read ({error.strerror})") from None
    strokes = []
    for number, stroke in enumerate(root.iter("Stroke"), start=1):
        try:
            points = [(float(p.attrib["x"]), float(p.attrib["y"]), float(p.attrib["time"]))
                      for p in stroke.iter("Point")]
        except KeyError as error:
            raise BadFile(file, f"a Point of stroke {number} has no attribute {error}") from None
        except ValueError as error:
            raise BadFile(file, f"a Point of stroke {number} has a non-numeric attribute ({error})") from None
        if not points:
            raise BadFile(file, f"stroke {number} has no points")
        strokes.append(np.array(points, dtype=np.float64))
    if not strokes:
        raise BadFile(file, "no StrokeSet/Stroke elements")
    return strokes


def point_features(strokes: list[np.ndarray]) -> np.ndarray:
    """The four raw (unnormalised) inputs of every point of a line: float64 (T, 4)."""
    points = np.concatenate(strokes)  # (T, 3)
    features = np.zeros((len(points), 4))
    features[1:, 0:2] = np.diff(points[:, 0:2], axis=0)
    start = 0
    for stroke in strokes:
        end = start + len(stroke)
        features[start:end, 2] = stroke[:, 2] - stroke[0, 2]
        features[end - 1, 3] = 1.0
        start = end
    return features


def text_labels(text: str, label_of: dict[str, int], unseen: dict[str, int]) -> np.ndarray:
    """CTC labels of a line: its characters that the training split has (`label_of`); each
    other character is left out and counted in `unseen`."""
    labels = []
    for char in text:
        if char in label_of:
            labels.append(label_of[char])
        else:
            unseen[char] = unseen.get(char, 0) + 1
    return np.array(labels, dtype=np.int64)


def read_transcription(file: Path) -> list[str]:
    """The text lines after "CSR:" in an ascii/ file (blank lines right after it skipped)."""
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise BadFile(file, f"cannot be read ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the distribution's files predate UTF-8
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "CSR:"]
    if not starts:
        raise BadFile(file, 'no "CSR:" section')
    body = lines[starts[0] + 1:]
    while body and not body[0].strip():
        body.pop(0)
    transcription = []
    for line in body:
        if not line.strip():
            break
        transcription.append(line.strip())
    if not transcription:
        raise BadFile(file, 'nothing after "CSR:"')
    return transcription


def _index(directory: Path, suffix: str) -> dict[str, Path]:
    """File stem -> path of every `*suffix` file under directory (recursively)."""
    return {file.stem: file for file in sorted(directory.rglob(f"*{suffix}"))} if directory.is_dir() else {}


def _find_list(path: Path, filename: str) -> Path | None:
    if (path / filename).is_file():
        return path / filename
    found = sorted(path.rglob(filename))
    return found[0] if found else None


def _split_entries(path: Path) -> dict[str, list[str]]:
    entries = {}
    for split, filenames in SPLIT_LISTS.items():
        names = []
        for filename in filenames:
            found = _find_list(path, filename)
            if found is None:
                raise UserError(
                    f"IAM-OnDB: no {filename} under {path}; put the split lists of the distribution "
                    "(trainset.txt, testset_v.txt, testset_t.txt, testset_f.txt) there (see datasets/README.md).")
            names += [line.strip() for line in found.read_text(errors="replace").splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        entries[split] = names
    return entries


def _lines_of(entry: str, strokes_index: dict[str, Path]) -> list[tuple[str, int, Path]]:
    """(form, line number, file) of every line an entry of a split list names."""
    if entry in strokes_index:  # the entry is a single line
        match = _LINE_ID.match(entry)
        if match:
            return [(match["form"], int(match["number"]), strokes_index[entry])]
    lines = []
    prefix = entry + "-"
    for stem, file in strokes_index.items():
        if stem.startswith(prefix) and stem[len(prefix):].isdigit():
            lines.append((entry, int(stem[len(prefix):]), file))
    return sorted(lines, key=lambda line: line[1])


def _read_raw(path: Path, skip_bad: bool):
    """Per split, (line id, raw features (T, 4), text); and the bad files met."""
    strokes_index = _index(path / "lineStrokes", ".xml")
    ascii_index = _index(path / "ascii", ".txt")
    if not strokes_index:
        raise UserError(f"IAM-OnDB: no lineStrokes/**/*.xml under {path}; set dataset.path to the corpus "
                        "(see datasets/README.md).")
    transcriptions: dict[str, list[str] | BadFile] = {}
    bad: list[BadFile] = []

    def give_up_or_skip(problem: BadFile):
        if not skip_bad:
            raise UserError(f"IAM-OnDB: {problem}; fix or remove it, or set dataset.skip_bad=true to skip it.")
        bad.append(problem)

    raw = {}
    for split, entries in _split_entries(path).items():
        raw[split] = []
        for entry in entries:
            lines = _lines_of(entry, strokes_index)
            if not lines:
                give_up_or_skip(BadFile(path / "lineStrokes", f"form {entry} of the {split} list has no line files"))
                continue
            for form, number, file in lines:
                try:
                    if form not in transcriptions:
                        try:
                            if form not in ascii_index:
                                raise BadFile(path / "ascii" / f"{form}.txt",
                                              f"missing, so line {file.name} has no transcription")
                            transcriptions[form] = read_transcription(ascii_index[form])
                        except BadFile as problem:
                            transcriptions[form] = problem  # report once, skip the form's other lines
                            raise
                    text = transcriptions[form]
                    if isinstance(text, BadFile):
                        continue  # already reported with the form's first line
                    if number < 1 or number > len(text):
                        raise BadFile(file, f"line {number} has no transcription ({ascii_index[form].name} "
                                            f"has {len(text)} lines after CSR:)")
                    raw[split].append((file.stem, point_features(read_strokes(file)), text[number - 1]))
                except BadFile as problem:
                    give_up_or_skip(problem)
    return raw, bad


# ---------------------------------------------------------------- raw lines -> DataSplits


def read(cfg, path) -> DataSplits:
    """Read IAM-OnDB (or a corpus in its layout) at `path` into train/valid/test splits."""
    path = Path(path)
    name = config_value(cfg, "name", "iam_ondb")
    format_task(cfg, "iam_ondb", "ctc")
    skip_bad = bool(config_value(cfg, "skip_bad", False))
    raw, bad = _read_raw(path, skip_bad)
    if bad:
        shown = "; ".join(str(problem) for problem in bad[:20])
        more = f"; and {len(bad) - 20} more (info.skipped_files lists all)" if len(bad) > 20 else ""
        warnings.warn(f"IAM-OnDB: skipped {len(bad)} bad file(s) of {path}: {shown}{more}", stacklevel=2)
    if not raw["train"]:
        raise UserError(f"dataset '{name}': no training line could be read from {path}.")

    characters = sorted({char for _, _, text in raw["train"] for char in text})
    label_of = {char: label for label, char in enumerate(characters, start=1)}
    zscore = ZScore.fit(np.concatenate([features for _, features, _ in raw["train"]]))

    unseen: dict[str, int] = {}
    too_short = 0
    splits = {}
    for split, lines in raw.items():
        sequences = []
        for line_id, features, text in lines:
            y = text_labels(text, label_of, unseen)
            # CTC needs a step per label plus a blank between equal neighbours
            if len(features) < len(y) + int(np.sum(y[1:] == y[:-1])):
                too_short += 1
            x = zscore(features)  # (T, 4)
            sequences.append(Sequence(x=x, y=y, name=line_id))
        splits[split] = sequences

    info = {
        "features": list(FEATURES),
        "feature_mean": [round(float(v), 6) for v in zscore.mean],
        "feature_std": [round(float(v), 6) for v in zscore.std],
        "characters": len(characters),
        "unseen_characters": {"dropped": sum(unseen.values()), "characters": "".join(sorted(unseen))},
        "lines_shorter_than_labels": too_short,
        "skipped_files": [str(problem) for problem in bad],
    }
    return DataSplits(
        name=name, task="ctc",
        train=splits["train"], valid=splits["valid"], test=splits["test"],
        input_dim=len(FEATURES), n_outputs=len(characters) + 1,
        bidirectional=bool(config_value(cfg, "bidirectional", True)),
        classes=[BLANK, *characters], info=info,
    )
