"""Handwriting: the IAM-OnDB reader, its stand-in generator, CTC decoding and the CER."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from harness.datasets import load_dataset
from harness.datasets.iam_ondb import point_features, read, read_strokes
from harness.errors import UserError
from harness.training.ctc import best_path, character_error_rate, edit_distance, labels_to_text

# ---------------------------------------------------------------- a tiny corpus by hand

# two strokes: (x, y, time) points
TWO_STROKES = [[(10, 20, 1.0), (13, 24, 1.1), (13, 30, 1.2)], [(20, 25, 1.5), (22, 25, 1.6)]]
# dx, dy from the previous point of the line; time since the stroke began; pen lifted
TWO_STROKES_FEATURES = [
    [0, 0, 0.0, 0],
    [3, 4, 0.1, 0],
    [0, 6, 0.2, 1],
    [7, -5, 0.0, 0],
    [2, 0, 0.1, 1],
]


def line_xml(strokes) -> str:
    body = []
    for stroke in strokes:
        body.append('<Stroke colour="black">')
        body += [f'<Point x="{x}" y="{y}" time="{t}"/>' for x, y, t in stroke]
        body.append("</Stroke>")
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<WhiteboardCaptureSession><StrokeSet>'
            + "\n".join(body) + "</StrokeSet></WhiteboardCaptureSession>\n")


def write_form(root, form, texts, strokes_per_line):
    """One form: ascii/<a>/<form[:7]>/<form>.txt and a lineStrokes file a line."""
    folder = f"{form.split('-')[0]}/{form[:7]}"
    (root / "ascii" / folder).mkdir(parents=True, exist_ok=True)
    body = "\n".join(texts)
    (root / "ascii" / folder / f"{form}.txt").write_text(f"OCR:\n\n{body}\n\nCSR:\n\n{body}\n")
    (root / "lineStrokes" / folder).mkdir(parents=True, exist_ok=True)
    for number, strokes in enumerate(strokes_per_line, start=1):
        (root / "lineStrokes" / folder / f"{form}-{number:02d}.xml").write_text(line_xml(strokes))


def line(shift: float):
    return [[(x + shift, y, t + shift) for x, y, t in stroke] for stroke in TWO_STROKES]


@pytest.fixture
def corpus(tmp_path):
    """Train a01-000u (2 lines), valid b01-000v + c01-000t, test d01-000f (with an unseen 'Z')."""
    root = tmp_path / "iam"
    write_form(root, "a01-000u", ["ab ba", "cab"], [line(0), line(5)])
    write_form(root, "b01-000v", ["abc"], [line(1)])
    write_form(root, "c01-000t", ["ca"], [[[(0, 0, 0.0), (4, 0, 0.5)]]])
    write_form(root, "d01-000f", ["aZb"], [line(2)])
    for name, forms in {"trainset": ["a01-000u"], "testset_v": ["b01-000v"],
                        "testset_t": ["c01-000t"], "testset_f": ["d01-000f"]}.items():
        (root / f"{name}.txt").write_text("\n".join(forms) + "\n")
    return root


def config(path, **extra):
    return {"name": "tiny", "format": "iam_ondb", "path": str(path), "task": "ctc", "bidirectional": True,
            "skip_bad": False, **extra}


def test_features_of_a_hand_worked_two_stroke_line(corpus):
    file = corpus / "lineStrokes/a01/a01-000/a01-000u-01.xml"
    strokes = read_strokes(file)
    assert [len(s) for s in strokes] == [3, 2]
    np.testing.assert_allclose(point_features(strokes), TWO_STROKES_FEATURES, atol=1e-12)


def test_reader_splits_characters_and_labels(corpus):
    data = load_dataset(config(corpus))
    assert (data.task, data.input_dim, data.bidirectional) == ("ctc", 4, True)
    assert [s.name for s in data.train] == ["a01-000u-01", "a01-000u-02"]
    assert [s.name for s in data.valid] == ["b01-000v-01", "c01-000t-01"]  # testset_v + testset_t
    assert [s.name for s in data.test] == ["d01-000f-01"]
    assert data.classes == ["<blank>", " ", "a", "b", "c"]  # training characters, blank first
    assert data.n_outputs == 5
    assert data.train[0].y.tolist() == [2, 3, 1, 3, 2]  # "ab ba"
    assert data.train[1].y.tolist() == [4, 2, 3]  # "cab"
    assert data.valid[1].y.tolist() == [4, 2]
    assert data.test[0].y.tolist() == [2, 3]  # "aZb": Z never seen in training, dropped
    assert data.info["unseen_characters"] == {"dropped": 1, "characters": "Z"}
    assert labels_to_text(data.train[0].y, data.classes) == "ab ba"
    for sequence in data.train + data.valid + data.test:
        assert sequence.x.dtype == np.float32 and sequence.y.dtype == np.int64
    summary = data.summary()
    assert summary["train"] == {"sequences": 2, "frames": 10} and summary["characters"] == 4


def test_normalised_with_training_statistics(corpus):
    data = read(config(corpus), corpus)
    raw_train = np.concatenate([TWO_STROKES_FEATURES, TWO_STROKES_FEATURES])  # shifts cancel in dx, dy, time
    mean, std = raw_train.mean(axis=0), raw_train.std(axis=0)
    train = np.concatenate([s.x for s in data.train])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-5)
    # validation uses the training mean and deviation, not its own
    raw_valid = np.array([[0, 0, 0.0, 0], [4, 0, 0.5, 1]])
    np.testing.assert_allclose(data.valid[1].x, (raw_valid - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.info["feature_mean"], mean, atol=1e-6)


@pytest.mark.parametrize("damage, expected", [
    ("malformed", "malformed XML"),
    ("empty_stroke", "stroke 2 has no points"),
    ("no_transcription", "no transcription"),
    ("missing_attribute", "no attribute 'time'"),
])
def test_bad_files_raise_or_are_skipped(corpus, damage, expected):
    folder = corpus / "lineStrokes/a01/a01-000"
    if damage == "malformed":
        bad = folder / "a01-000u-02.xml"
        bad.write_text("<WhiteboardCaptureSession><StrokeSet><Stroke>")
    elif damage == "empty_stroke":
        bad = folder / "a01-000u-02.xml"
        bad.write_text(line_xml([TWO_STROKES[0], []]))
    elif damage == "no_transcription":  # a third line, but the form's text has two
        bad = folder / "a01-000u-03.xml"
        bad.write_text(line_xml(TWO_STROKES))
    else:
        bad = folder / "a01-000u-02.xml"
        bad.write_text(line_xml(TWO_STROKES).replace('time="1.6"', ""))
    with pytest.raises(UserError) as error:
        read(config(corpus), corpus)
    message = str(error.value)
    assert bad.name in message and expected in message and "dataset.skip_bad=true" in message

    with pytest.warns(UserWarning, match=bad.name):
        data = read(config(corpus, skip_bad=True), corpus)
    assert [s.name for s in data.train] == ["a01-000u-01"] + (["a01-000u-02"] if damage == "no_transcription" else [])
    assert len(data.valid) == 2 and len(data.test) == 1
    assert len(data.info["skipped_files"]) == 1 and bad.name in data.info["skipped_files"][0]


def test_missing_transcription_file_and_split_list(corpus):
    (corpus / "ascii/b01/b01-000/b01-000v.txt").unlink()
    with pytest.raises(UserError, match="b01-000v.txt"):
        read(config(corpus), corpus)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        data = read(config(corpus, skip_bad=True), corpus)
    assert [s.name for s in data.valid] == ["c01-000t-01"]
    (corpus / "testset_f.txt").unlink()
    with pytest.raises(UserError, match="testset_f.txt"):
        read(config(corpus), corpus)


# ---------------------------------------------------------------- CTC decoding and CER


def scores_for(path, n_outputs=4):
    """Log-probabilities whose arg-max at step t is path[t]."""
    scores = np.full((len(path), n_outputs), -5.0)
    scores[np.arange(len(path)), path] = -0.1
    return scores


@pytest.mark.parametrize("path, expected", [
    ([0, 1, 1, 0, 2, 2, 2, 0], [1, 2]),
    ([1, 1, 0, 1], [1, 1]),  # a blank separates a repeated character
    ([1, 1, 1, 1], [1]),
    ([0, 0, 0], []),
    ([3, 2, 1], [3, 2, 1]),
    ([], []),
])
def test_best_path(path, expected):
    scores = scores_for(path).reshape(len(path), 4)
    assert best_path(scores) == expected
    assert best_path(torch.tensor(scores, requires_grad=True)) == expected


def test_best_path_rejects_a_batch():
    with pytest.raises(ValueError, match="shape"):
        best_path(np.zeros((5, 1, 4)))


def dynamic_programming_edit_distance(a, b) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def test_edit_distance_against_dynamic_programming():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(1, 4, size=rng.integers(0, 8)).tolist()
        b = rng.integers(1, 4, size=rng.integers(0, 8)).tolist()
        assert edit_distance(a, b) == dynamic_programming_edit_distance(a, b)
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [5, 5]) == 2


def test_character_error_rate_is_total_edits_over_total_reference_length():
    hypotheses = [[1, 2, 3], [1], []]
    references = [[1, 2, 4], [2, 2, 2], [3]]  # 1 substitution; 1 sub + 2 deletions; 1 deletion
    assert character_error_rate(hypotheses, references) == pytest.approx(5 / 7)
    assert character_error_rate([[1, 2]], [[1, 2]]) == 0.0
    assert character_error_rate([[1, 2, 3, 4]], [[1]]) == 3.0  # insertions can exceed 1
    with pytest.raises(ValueError):
        character_error_rate([[1]], [[1], [2]])
    with pytest.raises(ValueError):
        character_error_rate([[1]], [[]])


def test_decoder_and_cer_together():
    references = [[1, 2, 2, 3], [3, 1]]
    paths = [[0, 1, 0, 2, 0, 2, 3, 3], [3, 3, 0, 2]]
    hypotheses = [best_path(scores_for(p)) for p in paths]
    assert hypotheses == [[1, 2, 2, 3], [3, 2]]
    assert character_error_rate(hypotheses, references) == pytest.approx(1 / 6)


# ---------------------------------------------------------------- the generated stand-in


def test_handwriting_like_generates_a_corpus_the_reader_reads(tmp_path, capsys):
    from harness.datasets.handwriting_like import generate

    settings = dict(seed=3, train_writers=3, valid_writers=2, test_writers=1,
                    forms_per_writer=1, lines_per_form=2, sample_picture=False)
    out = generate(str(tmp_path / "hw"), **settings)
    assert "6 writers" in capsys.readouterr().out
    data = load_dataset(config(out))
    assert (len(data.train), len(data.valid), len(data.test)) == (6, 4, 2)
    assert (out / "testset_v.txt").read_text().split() == ["h03-000d"]
    assert (out / "testset_t.txt").read_text().split() == ["h04-000e"]
    assert (out / "CARD.md").exists()
    for sequence in data.train:
        text = labels_to_text(sequence.y, data.classes)
        assert 20 <= len(text) <= 60
        assert len(sequence.x) > 5 * len(sequence.y)  # enough points for CTC
        assert sequence.x[:, 3].max() > 0  # pen lifts are there

    xml = (out / "lineStrokes/h00/h00-000/h00-000a-01.xml").read_text()
    generate(str(tmp_path / "hw"), **settings)  # a rerun does nothing
    assert "nothing to do" in capsys.readouterr().out
    again = generate(str(tmp_path / "hw2"), **settings)
    assert (again / "lineStrokes/h00/h00-000/h00-000a-01.xml").read_text() == xml  # deterministic
    with pytest.raises(UserError, match="other settings"):
        generate(str(tmp_path / "hw"), **{**settings, "seed": 4})


def test_handwriting_like_config_composes():
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parent.parent / "conf" / "dataset"
    for name in ("iam_ondb", "handwriting_like"):
        cfg = OmegaConf.load(conf / f"{name}.yaml")
        assert (cfg.format, cfg.task, cfg.bidirectional, cfg.skip_bad) == ("iam_ondb", "ctc", True, False)
    cfg = OmegaConf.load(conf / "handwriting_like.yaml")
    assert cfg.generate._target_ == "harness.datasets.handwriting_like.generate"
    assert cfg.generate.out == cfg.path
    lines = cfg.generate.train_writers * cfg.generate.forms_per_writer * cfg.generate.lines_per_form
    assert lines >= 600
