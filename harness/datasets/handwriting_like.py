"""handwriting_like: a built-in stand-in for IAM-OnDB, drawn from Hershey vector fonts.

IAM-OnDB is licensed, so the project ships a generator of look-alike data that the same
reader (harness.datasets.iam_ondb) reads. Text lines from handwriting_like_text.txt
(written for the project) are drawn as pen trajectories from the single-stroke vector
fonts of the PyPI package Hershey-Fonts. Every writer has a font, a size, a slant, a
letter spacing, a pen speed, a jitter and a wavy, slightly tilted baseline; every letter
gets a little random scale, rotation and spacing of its own; glyph strokes that touch
(joined script) merge into one pen-down stroke. The pen is sampled every `sample_period`
seconds at the writer's speed, and lifts between strokes take travel time plus a pause.

Output, the IAM-OnDB layout under `out`:

    lineStrokes/hWW/hWW-FFF/hWW-FFFx-NN.xml   WhiteboardCaptureSession/StrokeSet/Stroke/Point x y time
    ascii/hWW/hWW-FFF/hWW-FFFx.txt            OCR: and CSR: sections, a text line a line
    trainset.txt testset_v.txt testset_t.txt testset_f.txt   form ids
    writers.csv                               each writer's style and split
    CARD.md sample.png                        the data card and a picture of a few lines

Writers are disjoint between the splits (train, validation = testset_v + testset_t,
test = testset_f), and a fraction of the text lines (`held_out_text_fraction`) is
written only in validation and test, so both the hands and the sentences there are new.
Everything is drawn from numpy's Generator(seed): the same seed gives the same files.
A finished corpus carries a `.complete` stamp of its settings; a rerun with the same
settings does nothing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.errors import UserError

TEXT_FILE = Path(__file__).with_name("handwriting_like_text.txt")
FONTS = ("futural", "rowmans", "scripts", "cursive", "timesi")
STAMP = ".complete"


@dataclass
class Writer:
    """One writer's hand; lengths in whiteboard units (y grows downwards), times in s."""

    number: int
    split: str
    font: str
    scale: float  # whiteboard units per font unit (the font's cap height is 21 units)
    slant_degrees: float  # positive leans right
    spacing: float  # factor on the font's advance widths
    speed: float  # pen speed, units per second
    jitter: float  # deviation of the point noise, in font units
    wave_amplitude: float  # of the baseline, in font units
    wave_length: float  # of the baseline, in font units
    tilt_degrees: float  # of the whole line
    pause: float  # mean pen-up pause between strokes, s


def _draw_writer(rng: np.random.Generator, number: int, split: str, fonts) -> Writer:
    return Writer(
        number=number, split=split, font=str(rng.choice(fonts)),
        scale=float(rng.uniform(4.0, 7.0)),
        slant_degrees=float(np.clip(rng.normal(8.0, 9.0), -15.0, 30.0)),
        spacing=float(rng.uniform(0.75, 1.0)),
        speed=float(rng.uniform(900.0, 1600.0)),
        jitter=float(rng.uniform(0.05, 0.35)),
        wave_amplitude=float(rng.uniform(0.0, 2.5)),
        wave_length=float(rng.uniform(60.0, 200.0)),
        tilt_degrees=float(rng.normal(0.0, 1.2)),
        pause=float(rng.uniform(0.05, 0.2)),
    )


class _Glyphs:
    """Strokes of each character of each font, in font units, cached."""

    def __init__(self):
        from HersheyFonts import HersheyFonts

        self._fonts = {}
        self._class = HersheyFonts

    def strokes(self, font: str, char: str) -> tuple[list[np.ndarray], float]:
        """The polylines of one character drawn at x = 0, and its advance width."""
        if font not in self._fonts:
            renderer = self._class()
            renderer.load_default_font(font)
            self._fonts[font] = (renderer, {})
        renderer, cache = self._fonts[font]
        if char not in cache:
            glyphs = list(renderer.glyphs_for_text(char))
            width = float(glyphs[0].char_width) if glyphs else 16.0
            lines = [np.array(line, dtype=np.float64) for line in renderer.strokes_for_text(char) if len(line)]
            cache[char] = (lines, width)
        return cache[char]


def _resample(polyline: np.ndarray, step: float) -> np.ndarray:
    """Points every `step` units along a polyline, its two ends included."""
    lengths = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    if along[-1] == 0.0:
        return polyline[:1]
    n = max(2, int(np.ceil(along[-1] / step)) + 1)
    at = np.linspace(0.0, along[-1], n)
    return np.stack([np.interp(at, along, polyline[:, 0]), np.interp(at, along, polyline[:, 1])], axis=1)


def draw_line(text: str, writer: Writer, rng: np.random.Generator, glyphs: _Glyphs,
              origin=(500.0, 1000.0), start_time: float = 0.0, sample_period: float = 0.0125):
    """Pen trajectory of one text line: a list of strokes, each (P, 3) of x, y, time."""
    # 1. polylines in font units, letter by letter, with a little per-letter variation
    polylines, cursor = [], 0.0
    for char in text:
        lines, width = glyphs.strokes(writer.font, char)
        size = rng.normal(1.0, 0.04)
        angle = np.radians(rng.normal(0.0, 2.0))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lift = rng.normal(0.0, 0.4)
        for line in lines:
            centred = (line - [width / 2, 0.0]) @ rotation.T * size
            polylines.append(centred + [cursor + width / 2, lift])
        cursor += width * writer.spacing * rng.normal(1.0, 0.04)
    # 2. joined script: a stroke that starts where the last ended continues it
    merged: list[np.ndarray] = []
    for line in polylines:
        if merged and np.linalg.norm(merged[-1][-1] - line[0]) < 1.5:
            merged[-1] = np.concatenate([merged[-1], line[1:]])
        else:
            merged.append(line)
    # 3. the hand: slant about the baseline (y = 9), tilt and wave of the line, scale
    slant = np.tan(np.radians(writer.slant_degrees))
    tilt = np.tan(np.radians(writer.tilt_degrees))
    phase = rng.uniform(0.0, 2 * np.pi)
    strokes, time = [], start_time
    previous_end = None
    for line in merged:
        speed = writer.speed * rng.normal(1.0, 0.08)
        step = speed * sample_period / writer.scale  # font units between samples
        points = _resample(line, step)
        x = points[:, 0] + slant * (9.0 - points[:, 1])
        y = points[:, 1] + writer.wave_amplitude * np.sin(2 * np.pi * x / writer.wave_length + phase) - tilt * x
        noise = rng.normal(0.0, writer.jitter, size=(len(points), 2))
        xy = np.stack([x, y], axis=1) + noise
        xy = np.asarray(origin) + writer.scale * xy
        if previous_end is not None:  # pen lifted: travel to the new stroke and pause
            travel = np.linalg.norm(xy[0] - previous_end) / (2.0 * speed)
            time += travel + rng.exponential(writer.pause)
        times = time + sample_period * np.arange(len(xy))
        strokes.append(np.column_stack([np.round(xy), times]))
        time = times[-1]
        previous_end = xy[-1]
    return strokes


def write_line_xml(file: Path, strokes) -> None:
    """One lineStrokes file in the IAM-OnDB XML layout."""
    x_max = int(max(s[:, 0].max() for s in strokes)) + 100
    y_max = int(max(s[:, 1].max() for s in strokes)) + 100
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<WhiteboardCaptureSession>",
           "  <WhiteboardDescription>", '    <SensorLocation corner="top_left"/>',
           f'    <DiagonallyOppositeCoords x="{x_max}" y="{y_max}"/>', "  </WhiteboardDescription>",
           "  <StrokeSet>"]
    for stroke in strokes:
        out.append(f'    <Stroke colour="black" start_time="{stroke[0, 2]:.3f}" end_time="{stroke[-1, 2]:.3f}">')
        out += [f'      <Point x="{int(x)}" y="{int(y)}" time="{t:.3f}"/>' for x, y, t in stroke]
        out.append("    </Stroke>")
    out += ["  </StrokeSet>", "</WhiteboardCaptureSession>", ""]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join(out))


def write_transcription(file: Path, lines: list[str]) -> None:
    """One ascii file: the OCR: and CSR: sections of IAM-OnDB, identical here."""
    file.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(lines)
    file.write_text(f"OCR:\n\n{body}\n\nCSR:\n\n{body}\n")


def read_text_lines(path: Path = TEXT_FILE) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def generate(out: str = "datasets/handwriting_like", seed: int = 0, train_writers: int = 24,
             valid_writers: int = 6, test_writers: int = 6, forms_per_writer: int = 4,
             lines_per_form: int = 7, held_out_text_fraction: float = 0.2,
             sample_period: float = 0.0125, fonts=FONTS, text_file: str | None = None,
             sample_picture: bool = True) -> Path:
    """Write the handwriting_like corpus under `out` (relative: from the project root).

    Lines per split = writers x forms_per_writer x lines_per_form (defaults: 672 train,
    168 validation, 168 test). Validation writers alternate between testset_v and
    testset_t. Returns the directory. Does nothing if `out` already holds a corpus made
    with the same settings; raises UserError if it holds one made with other settings.
    """
    from harness.datasets import resolve_path

    out = resolve_path(out)
    fonts = tuple(str(font) for font in fonts)
    settings = dict(seed=seed, train_writers=train_writers, valid_writers=valid_writers,
                    test_writers=test_writers, forms_per_writer=forms_per_writer,
                    lines_per_form=lines_per_form, held_out_text_fraction=held_out_text_fraction,
                    sample_period=sample_period, fonts=list(fonts),
                    text_file=str(text_file) if text_file else None)
    stamp = out / STAMP
    if stamp.exists():
        if json.loads(stamp.read_text()) == settings:
            print(f"handwriting_like: {out} is already complete; nothing to do.")
            return out
        raise UserError(f"handwriting_like: {out} holds a corpus made with other settings "
                        f"({stamp}); delete the directory or choose another dataset.path.")
    if min(train_writers, valid_writers, test_writers, forms_per_writer, lines_per_form) < 1:
        raise UserError("handwriting_like: every writer count, forms_per_writer and lines_per_form must be >= 1.")

    texts = read_text_lines(Path(text_file) if text_file else TEXT_FILE)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_held_out = int(round(held_out_text_fraction * len(texts)))
    pools = {"train": [texts[i] for i in order[n_held_out:]] or texts,
             "eval": [texts[i] for i in order[:n_held_out]] or texts}
    glyphs = _Glyphs()

    plan = ([("train", "trainset")] * train_writers
            + [("valid", "testset_v" if k % 2 == 0 else "testset_t") for k in range(valid_writers)]
            + [("test", "testset_f")] * test_writers)
    total = len(plan) * forms_per_writer * lines_per_form
    split_lists = {name: [] for name in ("trainset", "testset_v", "testset_t", "testset_f")}
    writers, done = [], 0
    draws = {"train": 0, "eval": 0}
    for number, (split, split_list) in enumerate(plan):
        writer = _draw_writer(rng, number, split, fonts)
        writers.append((split_list, writer))
        pool = pools["train" if split == "train" else "eval"]
        for form_number in range(forms_per_writer):
            form = f"h{number:02d}-{form_number:03d}{chr(ord('a') + number % 26)}"
            folder = f"h{number:02d}/{form[:7]}"
            lines = []
            for _ in range(lines_per_form):
                key = "train" if split == "train" else "eval"
                lines.append(pool[draws[key] % len(pool)])
                draws[key] += 1
            time = float(rng.uniform(100.0, 5000.0))
            for line_number, text in enumerate(lines, start=1):
                strokes = draw_line(text, writer, rng, glyphs, start_time=time, sample_period=sample_period)
                write_line_xml(out / "lineStrokes" / folder / f"{form}-{line_number:02d}.xml", strokes)
                time = strokes[-1][-1, 2] + rng.uniform(1.0, 3.0)
                done += 1
                if done % 100 == 0 or done == total:
                    print(f"handwriting_like: {done}/{total} lines drawn", flush=True)
            write_transcription(out / "ascii" / folder / f"{form}.txt", lines)
            split_lists[split_list].append(form)
    for name, forms in split_lists.items():
        (out / f"{name}.txt").write_text("".join(f"{form}\n" for form in forms))
    with open(out / "writers.csv", "w", newline="") as file:
        table = csv.writer(file)
        fields = list(asdict(writers[0][1]))
        table.writerow(["split_list", *fields])
        for split_list, writer in writers:
            table.writerow([split_list, *(round(v, 4) if isinstance(v, float) else v for v in asdict(writer).values())])
    write_card(out, settings, sample_picture=sample_picture)
    stamp.write_text(json.dumps(settings))
    print(f"handwriting_like: wrote {total} lines of {len(plan)} writers to {out}")
    return out


def write_card(out: Path, settings: dict, sample_picture: bool = True) -> None:
    """CARD.md with the corpus's figures, and sample.png with a few lines drawn from the XML."""
    from harness.datasets.iam_ondb import read

    data = read({"name": "handwriting_like", "task": "ctc", "skip_bad": False}, out)
    rows = []
    for split in ("train", "valid", "test"):
        sequences = data.split(split)
        forms = {s.name.rsplit("-", 1)[0] for s in sequences}
        n_writers = len({form.split("-")[0] for form in forms})
        points = [len(s.x) for s in sequences]
        rows.append(f"| {split} | {len(sequences)} | {n_writers} | {sum(points)} | "
                    f"{np.mean(points):.0f} | {np.mean([len(s.y) for s in sequences]):.1f} |")
    characters = "".join(data.classes[1:])
    card = f"""# handwriting_like: a stand-in for IAM-OnDB

Made by `odyssey data handwriting_like` (harness/datasets/handwriting_like.py), read by the
IAM-OnDB reader (harness/datasets/iam_ondb.py) exactly as the real corpus would be.

Text lines of harness/datasets/handwriting_like_text.txt (written for this project) drawn as
pen trajectories from the Hershey vector fonts (PyPI package Hershey-Fonts; fonts
{", ".join(settings["fonts"])}), each writer with a font, size, slant, letter spacing,
pen speed, jitter and a wavy, tilted baseline of its own (writers.csv lists them). The
pen is sampled every {settings["sample_period"] * 1000:g} ms. Writers are disjoint across
the splits, and {settings["held_out_text_fraction"]:.0%} of the sentences are written only in
validation and test.

Settings: `{json.dumps(settings)}`

| split | lines | writers | points | points a line | characters a line |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{len(characters)} characters (+ the CTC blank = {data.n_outputs} outputs): `{characters}`
Validation/test characters never seen in training (dropped from the labels):
{data.info["unseen_characters"]["dropped"]} (`{data.info["unseen_characters"]["characters"]}`).

What it is not: real handwriting. The letter shapes come from a handful of fonts, so
a writer's style varies far less than a person's, there are no corrections, ligatures
beyond the script fonts' joins, or pressure; and the texts are short sentences. Use it
to check that the pipeline works and to compare variants cheaply, not as a substitute
for IAM-OnDB figures.

![a few lines](sample.png)
"""
    (out / "CARD.md").write_text(card)
    if sample_picture:
        _draw_sample(out, data)


def _draw_sample(out: Path, data, n_lines: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.datasets.iam_ondb import read_strokes

    sequences = data.train + data.valid + data.test
    # one line of each of the first writers, so several fonts and hands show
    picked, writers = [], set()
    for sequence in sequences:
        writer = sequence.name.split("-")[0]
        if writer not in writers:
            writers.add(writer)
            picked.append(sequence.name)
        if len(picked) == n_lines:
            break
    files = {file.stem: file for file in (out / "lineStrokes").rglob("*.xml")}
    texts = {s.name: "".join(data.classes[label] for label in s.y) for s in sequences}
    figure, axes = plt.subplots(len(picked), 1, figsize=(10, 1.3 * len(picked)))
    for axis, name in zip(np.atleast_1d(axes), picked):
        for stroke in read_strokes(files[name]):
            axis.plot(stroke[:, 0], -stroke[:, 1], color="black", linewidth=1.0)
        axis.set_title(f"{name}: {texts[name]}", fontsize=8, loc="left")
        axis.set_aspect("equal")
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out / "sample.png", dpi=90, metadata={"Software": None})
    plt.close(figure)
