"""JSB Chorales: the readers of both layouts, the restricted unpickler, and the NLL metric
checked against the unigram model computed independently here (11.09 on the test split)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from harness.datasets import load_dataset, resolve_path
from harness.datasets.pianoroll import load_pickle
from harness.errors import UserError
from harness.training import tasks

from conftest import SHIPPED_PICKLE

JSON_FILE = resolve_path("datasets/jsb_chorales/jsb-chorales-quarter.json")


def jsb_config(**overrides):
    cfg = {"name": "jsb_chorales", "format": "pianoroll", "path": str(JSON_FILE),
           "task": "next_step", "bidirectional": False}
    cfg.update(overrides)
    return cfg


def test_reads_the_split_of_boulanger_lewandowski():
    data = load_dataset(jsb_config())
    assert (len(data.train), len(data.valid), len(data.test)) == (229, 76, 77)
    assert data.input_dim == data.n_outputs == 88
    first = json.loads(JSON_FILE.read_text())["train"][0]
    # x is frames 0..T-2, y frames 1..T-1, key k = MIDI note 21 + k
    assert data.train[0].x.shape == (len(first) - 1, 88)
    assert sorted(np.flatnonzero(data.train[0].y[0]) + 21) == sorted(first[1])
    assert sorted(np.flatnonzero(data.train[0].x[0]) + 21) == sorted(first[0])


def test_original_pickle_holds_the_same_rolls():
    from_pickle = load_dataset(jsb_config(path=str(SHIPPED_PICKLE)))
    from_json = load_dataset(jsb_config())
    for split in ("train", "valid", "test"):
        for a, b in zip(from_pickle.split(split), from_json.split(split)):
            assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/odyssey-pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"train": [RunsCode()], "valid": [], "test": []}))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load_pickle(path)
    with pytest.raises(UserError, match="evil.pickle"):
        load_dataset(jsb_config(path=str(path)))
    assert not os.path.exists("/tmp/odyssey-pwned")


def test_unigram_model_nll_is_11_09():
    """Per-key marginals fitted on the training frames; the metric code must give the
    NLL that the plain formula gives (computed here in numpy), and that is 11.09."""
    rolls = json.loads(JSON_FILE.read_text())

    def roll(sequence):
        r = np.zeros((len(sequence), 88))
        for t, frame in enumerate(sequence):
            r[t, np.array(frame, dtype=int) - 21] = 1
        return r

    train_frames = np.concatenate([roll(s) for s in rolls["train"]])
    p = train_frames.mean(0).clip(1e-6, 1 - 1e-6)  # keys never played get a tiny probability
    targets = np.concatenate([roll(s)[1:] for s in rolls["test"]])  # predicted frames 1..T-1
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(1).mean()
    assert expected == pytest.approx(11.09, abs=0.01)

    data = load_dataset(jsb_config())
    logit = torch.logit(torch.tensor(p, dtype=torch.float32))
    total, count = 0.0, 0.0
    for start in range(0, len(data.test), 10):
        batch = tasks.make_batch(data.test[start:start + 10], "next_step")
        scores = logit.expand(batch.x.shape[0], batch.x.shape[1], 88)
        errors, n = tasks.errors("next_step", scores, batch)
        total, count = total + errors, count + n
    assert count == len(targets)
    assert total / count == pytest.approx(expected, rel=1e-5)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match="nowhere.json"):
        load_dataset(jsb_config(path=str(tmp_path / "nowhere.json")))


def test_malformed_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": [[[60, 64]], ')
    with pytest.raises(UserError, match="broken.json"):
        load_dataset(jsb_config(path=str(path)))


def test_note_out_of_range_is_named(tmp_path):
    path = tmp_path / "low.json"
    path.write_text(json.dumps({"train": [[[10], [60]]], "valid": [[[60], [62]]], "test": [[[60], [61]]]}))
    with pytest.raises(UserError, match="note 10"):
        load_dataset(jsb_config(path=str(path)))


def test_missing_split_is_named(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": [[[60], [62]]], "valid": [[[60], [62]]]}))
    with pytest.raises(UserError, match="test"):
        load_dataset(jsb_config(path=str(path)))
