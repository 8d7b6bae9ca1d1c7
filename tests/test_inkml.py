"""format: inkml on files written here as the W3C recommendation writes them: CROHME-style
files of absolute points, the recommendation's own difference-encoded example decoded by
hand, IAMonDo-style documents of text-line traceViews; features worked out here from the
points, CTC labels from the transcriptions; errors name their file."""

import numpy as np
import pytest

from harness.datasets import SPLITS, load_dataset
from harness.datasets.inkml import decode_trace
from harness.errors import UserError

CROHME = """<?xml version="1.0" encoding="UTF-8"?>
<ink xmlns="http://www.w3.org/2003/InkML">
<traceFormat><channel name="X" type="decimal"/><channel name="Y" type="decimal"/>{time_channel}</traceFormat>
<annotation type="writer">w1</annotation>
<annotation type="truth">{truth}</annotation>
{traces}
<traceGroup xml:id="g"><annotation type="truth">Segmentation</annotation></traceGroup>
</ink>
"""


def crohme_file(path, strokes, truth, with_time=True):
    """strokes: arrays (P, 3) of x, y, t; written as absolute points 'x y t, x y t, ...'."""
    columns = 3 if with_time else 2
    traces = "\n".join(f'<trace id="{n}">' + ", ".join(" ".join(f"{v:g}" for v in point[:columns]) for point in s)
                       + "</trace>" for n, s in enumerate(strokes))
    time_channel = '<channel name="T" type="decimal"/>' if with_time else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CROHME.format(time_channel=time_channel, truth=truth, traces=traces))


def random_strokes(rng, n):
    strokes, t = [], 0.0
    for _ in range(n):
        points = int(rng.integers(2, 6))
        xy = np.cumsum(rng.integers(-5, 6, size=(points, 2)), axis=0) + rng.integers(0, 100, size=2)
        times = t + np.arange(points) * 10.0
        t = times[-1] + 50.0
        strokes.append(np.column_stack([xy, times]).astype(np.float64))
    return strokes


def hand_features(strokes):
    """dx, dy from the previous point (across lifts), time since the stroke began, pen lifted."""
    rows, previous = [], None
    for stroke in strokes:
        for k, (x, y, t) in enumerate(stroke):
            dx, dy = (0.0, 0.0) if previous is None else (x - previous[0], y - previous[1])
            rows.append([dx, dy, t - stroke[0][2], 1.0 if k == len(stroke) - 1 else 0.0])
            previous = (x, y)
    return np.array(rows)


def test_the_recommendations_difference_example_decoded_by_hand():
    # W3C InkML (2011), section 3.2.1: explicit, then first differences, then second
    # differences, which hold for the points after them ("3-5" is 3 and -5).
    points = decode_trace("1125 18432,'23'43,\"7\"-8,3-5,+4+2", 2, "example")
    # p1 = p0 + (23, 43); the change becomes (30, 35), then (33, 30), then (37, 32)
    assert points.tolist() == [[1125, 18432], [1148, 18475], [1178, 18510], [1211, 18540], [1248, 18572]]
    # a qualifier holds for its own channel: "!5 7" is 5 explicit, and 7 still a first difference
    assert decode_trace("1 2, '1 '1, !5 7", 2, "x").tolist() == [[1, 2], [2, 3], [5, 10]]
    with pytest.raises(UserError, match="example: point 2 of a trace has 3 values, but the trace format has 2"):
        decode_trace("1 2, 3 4 5", 2, "example")
    with pytest.raises(UserError, match="'T', which is not an InkML value"):
        decode_trace("1 2, 3 T", 2, "example")


def test_crohme_style_files(tmp_path):
    rng = np.random.default_rng(0)
    texts = {"train": ["x^2", "a+b"], "valid": ["b+x"], "test": ["2a=b\\pi"]}
    strokes = {}
    for split in SPLITS:
        for n, text in enumerate(texts[split]):
            strokes[f"{split}/f{n}"] = random_strokes(rng, 2 + n)
            crohme_file(tmp_path / "ink" / split / f"f{n}.inkml", strokes[f"{split}/f{n}"], text)
    data = load_dataset({"name": "maths", "format": "inkml", "path": str(tmp_path / "ink"), "task": "ctc"})
    assert data.classes == ["<blank>", "+", "2", "^", "a", "b", "x"] and data.n_outputs == 7
    assert data.input_dim == 4 and data.bidirectional
    assert data.train[0].y.tolist() == [6, 3, 2]  # x ^ 2
    assert data.test[0].y.tolist() == [2, 4, 5]  # 2 a b: '=', '\\', 'p', 'i' are not in train
    assert data.info["unseen_characters"] == {"dropped": 4, "characters": "=\\ip"}
    train = np.concatenate([hand_features(strokes["train/f0"]), hand_features(strokes["train/f1"])])
    mean, std = train.mean(0), train.std(0)
    assert np.allclose(data.valid[0].x, (hand_features(strokes["valid/f0"]) - mean) / std, atol=1e-5)
    assert data.valid[0].name == "valid/f0"


def test_without_a_time_channel_time_is_the_point_index(tmp_path):
    strokes = [np.array([[0, 0, 0], [3, 4, 0], [6, 8, 0]], dtype=float), np.array([[10, 0, 0], [10, 5, 0]], float)]
    for split in SPLITS:
        crohme_file(tmp_path / "ink" / split / "a.inkml", strokes, "ab", with_time=False)
    data = load_dataset({"name": "ink", "format": "inkml", "path": str(tmp_path / "ink"), "task": "ctc"})
    raw = data.train[0].x * np.array(data.info["feature_std"]) + np.array(data.info["feature_mean"])
    assert np.allclose(raw, [[0, 0, 0, 0], [3, 4, 1, 0], [3, 4, 2, 1], [4, -8, 0, 0], [0, 5, 1, 1]], atol=1e-5)


IAMONDO = """<?xml version="1.0"?>
<ink xmlns="http://www.w3.org/2003/InkML">
<traceFormat><channel name="X"/><channel name="Y"/><channel name="T"/><channel name="F"/></traceFormat>
<trace xml:id="t1">10 10 0 5, '2 '0 '1 '0, 2 0 1 0</trace>
<trace xml:id="t2">20 10 9 5, '0 '3 '1 '0</trace>
<traceGroup xml:id="g3"><trace xml:id="t3">30 40 20 5, 31 41 21 5</trace></traceGroup>
<traceView>
  <annotation type="type">Document</annotation>
  <traceView>
    <annotation type="type">Textline</annotation>
    <annotation type="transcription">hi</annotation>
    <traceView traceDataRef="#t1"/><traceView traceDataRef="#t2"/>
  </traceView>
  <traceView>
    <annotation type="type">Drawing</annotation>
    <traceView traceDataRef="#t2"/>
  </traceView>
  <traceView>
    <annotation type="type">Textline</annotation>
    <annotation type="transcription">ih</annotation>
    <traceView traceDataRef="#g3"/>
  </traceView>
</traceView>
</ink>
"""


def test_iamondo_style_text_lines(tmp_path):
    for split in SPLITS:
        (tmp_path / "ink" / split).mkdir(parents=True)
        (tmp_path / "ink" / split / "page.inkml").write_text(IAMONDO)
    cfg = {"name": "pages", "format": "inkml", "path": str(tmp_path / "ink"), "task": "ctc", "unit": "traceView",
           "annotation": "transcription"}
    data = load_dataset(cfg)
    assert [s.name for s in data.train] == ["train/page#1", "train/page#2"]  # the Drawing view is no sample
    assert data.classes == ["<blank>", "h", "i"] and data.train[0].y.tolist() == [1, 2]
    assert data.train[1].y.tolist() == [2, 1]
    # line 1: t1 = (10,10,0) (12,10,1) (14,10,2), t2 = (20,10,9) (20,13,10); line 2: t3
    line1 = [[0, 0, 0, 0], [2, 0, 1, 0], [2, 0, 2, 1], [6, 0, 0, 0], [0, 3, 1, 1]]
    line2 = [[0, 0, 0, 0], [1, 1, 1, 1]]
    train = np.array(line1 + line2, dtype=float)
    mean, std = train.mean(0), train.std(0)
    assert np.allclose(data.train[0].x, (np.array(line1) - mean) / std, atol=1e-5)
    with pytest.raises(UserError, match=r"page\.inkml has no traceView annotated type 'Paragraph'"):
        load_dataset({**cfg, "view_type": "Paragraph"})


def test_errors_name_the_file(tmp_path):
    strokes = [np.array([[0, 0, 0], [1, 1, 1]], dtype=float)]
    for split in SPLITS:
        crohme_file(tmp_path / "ink" / split / "a.inkml", strokes, "a")
    cfg = {"name": "ink", "format": "inkml", "path": str(tmp_path / "ink"), "task": "ctc"}
    with pytest.raises(UserError, match=r"a\.inkml has no <annotation type=\"label\">"):
        load_dataset({**cfg, "annotation": "label"})
    (tmp_path / "ink" / "valid" / "a.inkml").write_text("<ink><trace>1 2</ink>")
    with pytest.raises(UserError, match=r"valid/a\.inkml is not well-formed XML"):
        load_dataset(cfg)
    (tmp_path / "ink" / "valid" / "a.inkml").unlink()
    with pytest.raises(UserError, match=r"valid holds no \.inkml files"):
        load_dataset(cfg)
