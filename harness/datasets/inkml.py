"""Online handwriting in W3C InkML (CROHME, IAMonDo and pen software), for CTC like IAM-OnDB.

Entry point: `read(cfg, path) -> DataSplits`. `path` is a folder holding train/, valid/
and test/ with `.inkml` files (subfolders are fine). A sample is

- `unit: file` (default; CROHME): a whole file: all its traces in document order, and
  the text of the annotation of type `annotation` (default `truth`) that is a child of
  the root `<ink>` element;
- `unit: traceView` (IAMonDo): every `<traceView>` that has an annotation of type `type`
  whose text is `view_type` (default `Textline`): the traces it refers to
  (`traceDataRef`, to a trace or a traceGroup, in its nested traceViews too) and the text
  of its own annotation of type `annotation` (set `annotation: transcription`).

Traces are read as the InkML recommendation (W3C, 2011, section 3.2) writes them: points
separated by commas, a point's values in the order of the `<traceFormat>` channels
(default X Y), values separated by white space or by their signs ("3-5" is 3 and -5),
each either explicit, or prefixed `'` (a first difference: the change from the previous
point) or `"` (a second difference: the change of that change); a prefix holds for the
channel's later values until another comes (`!` returns to explicit values). Channel T,
if there, is the time; without it the time is the point's index in its trace.

Inputs, four a point, exactly as the IAM-OnDB reader makes them (`iam_ondb.FEATURES`:
dx, dy from the previous point across pen lifts, time since the trace began, pen lifted
on a trace's last point), normalised with the training points' mean and deviation.
Targets: the transcription's characters as labels 1..C (C: the characters of the train
split in code-point order; 0 is the CTC blank); a character that train never shows is
dropped from a valid or test line and counted in `info["unseen_characters"]`, as for
IAM-OnDB. CROHME's truth is LaTeX: its characters are the labels.

Dataset config keys (besides name, format: inkml, path, task: ctc, bidirectional):

    unit: file             # file | traceView
    annotation: truth      # the annotation type of the transcription
    view_type: Textline    # unit traceView: the `type` annotation of the samples

Errors, each naming the file: malformed XML, a trace value the grammar does not allow, a
point with another number of values than the trace format has channels, a sample without
traces or transcription, a reference to a trace that is not there.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from harness.datasets import SPLITS, DataSplits, Sequence, ZScore, config_choice, config_value, format_task, split_folders
from harness.datasets.iam_ondb import BLANK, FEATURES, point_features, text_labels
from harness.errors import UserError

UNITS = ("file", "traceView")
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
# A value of a trace: an optional qualifier, then a signed decimal number.
_VALUE = re.compile(r"\s*([!'\"]?)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _local(tag: str) -> str:
    """An element's name without its namespace ({http://www.w3.org/2003/InkML}trace -> trace)."""
    return tag.rsplit("}", 1)[-1]


def decode_trace(text: str, channels: int, where: str) -> np.ndarray:
    """The points of one trace's text as float64 (P, channels), differences resolved."""
    points = []
    mode = ["!"] * channels           # each channel's qualifier in effect
    value = np.zeros(channels)        # the previous point
    velocity = np.zeros(channels)     # its change from the one before
    for number, chunk in enumerate(text.split(",")):
        if not chunk.strip():
            continue
        raw, position = [], 0
        while position < len(chunk):
            if chunk[position:].strip() == "":
                break
            match = _VALUE.match(chunk, position)
            if match is None:
                bad = chunk[position:].strip()[:20]
                raise UserError(f"{where}: point {number + 1} of a trace has '{bad}', which is not an InkML value "
                                "(a number, optionally prefixed ' or \" or !); fix the file or remove it.")
            raw.append((match.group(1), float(match.group(2))))
            position = match.end()
        if len(raw) != channels:
            raise UserError(f"{where}: point {number + 1} of a trace has {len(raw)} values, but the trace format "
                            f"has {channels} channels; fix the file's <traceFormat> or the trace.")
        point = np.empty(channels)
        for c, (qualifier, v) in enumerate(raw):
            if qualifier:
                mode[c] = qualifier
            if not points and mode[c] != "!":
                raise UserError(f"{where}: a trace starts with a difference ('{mode[c]}'), which has nothing to "
                                "refer to; the first point must be explicit.")
            if mode[c] == "!":
                point[c] = v
            elif mode[c] == "'":
                point[c] = value[c] + v
            else:  # second difference: the change of the change
                point[c] = value[c] + velocity[c] + v
        velocity = point - value if points else np.zeros(channels)
        value = point
        points.append(point)
    return np.array(points, dtype=np.float64).reshape(-1, channels)


def _channels(root) -> list[str]:
    """The channel names of the file's trace format (the first one), default X Y."""
    for element in root.iter():
        if _local(element.tag) == "traceFormat":
            names = [c.get("name", "") for c in element if _local(c.tag) == "channel"]
            if names:
                return names
    return ["X", "Y"]


def _strokes(root, file: Path) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Every trace as (P, 3) x, y, time: by id (a traceGroup's id gives all its traces), and all in order."""
    names = _channels(root)
    if "X" not in names or "Y" not in names:
        raise UserError(f"{file}: the trace format has channels {names}, without X and Y; only pen positions "
                        "X, Y (and T) are read.")
    x, y = names.index("X"), names.index("Y")
    t = names.index("T") if "T" in names else None
    by_id, ordered = {}, []
    for element in root.iter():
        if _local(element.tag) != "trace":
            continue
        points = decode_trace(element.text or "", len(names), str(file))
        if len(points) == 0:
            continue  # an empty trace draws nothing
        time = points[:, t] if t is not None else np.arange(len(points), dtype=np.float64)
        stroke = np.stack([points[:, x], points[:, y], time], axis=1)
        ordered.append(stroke)
        trace_id = element.get(XML_ID) or element.get("id")
        if trace_id is not None:
            by_id[trace_id] = [stroke]
    for group in root.iter():  # a reference to a traceGroup means all its traces
        if _local(group.tag) == "traceGroup":
            group_id = group.get(XML_ID) or group.get("id")
            if group_id is not None:
                members = [e.get(XML_ID) or e.get("id") for e in group.iter() if _local(e.tag) == "trace"]
                by_id[group_id] = [s for m in members if m in by_id for s in by_id[m]]
    return by_id, ordered


def _annotation(element, kind: str) -> str | None:
    for child in element:
        if _local(child.tag) == "annotation" and child.get("type") == kind:
            return (child.text or "").strip()
    return None


def read_file(file: Path, unit: str, annotation: str, view_type: str) -> list[tuple[str, list[np.ndarray], str]]:
    """(sample name, strokes, transcription) of every sample of one InkML file."""
    try:
        root = ElementTree.parse(file).getroot()
    except ElementTree.ParseError as error:
        raise UserError(f"{file} is not well-formed XML ({error}); fix or remove it.") from None
    by_id, ordered = _strokes(root, file)
    if unit == "file":
        text = _annotation(root, annotation)
        if not text:
            raise UserError(f"{file} has no <annotation type=\"{annotation}\"> under <ink> with the transcription; "
                            "add it, or set dataset.annotation to the type the file uses.")
        if not ordered:
            raise UserError(f"{file} has no traces with points; remove it from the data set.")
        return [(file.stem, ordered, text)]
    samples = []
    views = [v for v in root.iter() if _local(v.tag) == "traceView" and _annotation(v, "type") == view_type]
    for number, view in enumerate(views):
        text = _annotation(view, annotation)
        if not text:
            raise UserError(f"{file}: {view_type} traceView {number + 1} has no <annotation type=\"{annotation}\">; "
                            "add it, or set dataset.annotation to the type the file uses.")
        strokes = []
        for reference in view.iter():
            target = reference.get("traceDataRef")
            if _local(reference.tag) != "traceView" or target is None:
                continue
            if target.lstrip("#") not in by_id:
                raise UserError(f"{file}: traceView {number + 1} refers to '{target}', which is no trace or "
                                "traceGroup of the file; fix the reference.")
            strokes += by_id[target.lstrip("#")]
        if not strokes:
            raise UserError(f"{file}: {view_type} traceView {number + 1} ('{text[:30]}') refers to no traces; "
                            "fix the file or remove the view.")
        samples.append((f"{file.stem}#{number + 1}", strokes, text))
    if not samples:
        raise UserError(f"{file} has no traceView annotated type '{view_type}'; set dataset.view_type to the "
                        "type of the samples, or dataset.unit=file.")
    return samples


def read(cfg, path) -> DataSplits:
    """Read the InkML folder at `path` as configured by `cfg` (keys in the module docstring)."""
    name = str(config_value(cfg, "name", "inkml"))
    format_task(cfg, "inkml", "ctc")
    unit = config_choice(cfg, "unit", UNITS)
    annotation = str(config_value(cfg, "annotation", "truth"))
    view_type = str(config_value(cfg, "view_type", "Textline"))
    root = Path(path)
    raw = {}
    for split, folder in split_folders(root, "inkml", ".inkml files").items():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".inkml")
        if not files:
            raise UserError(f"{folder} holds no .inkml files; every split needs at least one.")
        raw[split] = [(f"{split}/{sample}", point_features(strokes), text)
                      for file in files for sample, strokes, text in read_file(file, unit, annotation, view_type)]

    characters = sorted({char for _, _, text in raw["train"] for char in text})
    label_of = {char: label for label, char in enumerate(characters, start=1)}
    zscore = ZScore.fit(np.concatenate([features for _, features, _ in raw["train"]]))
    unseen: dict[str, int] = {}
    splits = {}
    for split, samples in raw.items():
        splits[split] = []
        for sample, features, text in samples:
            x = zscore(features)
            splits[split].append(Sequence(x=x, y=text_labels(text, label_of, unseen), name=sample))
    info = {
        "directory": str(root),
        "unit": unit,
        "samples": {split: len(raw[split]) for split in SPLITS},
        "features": list(FEATURES),
        "feature_mean": [round(float(v), 6) for v in zscore.mean],
        "feature_std": [round(float(v), 6) for v in zscore.std],
        "characters": len(characters),
        "unseen_characters": {"dropped": sum(unseen.values()), "characters": "".join(sorted(unseen))},
    }
    return DataSplits(name=name, task="ctc", input_dim=len(FEATURES), n_outputs=len(characters) + 1,
                      bidirectional=bool(config_value(cfg, "bidirectional", True)), classes=[BLANK, *characters],
                      info=info, **splits)
