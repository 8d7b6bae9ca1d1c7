"""A researcher's own data set, with nothing but a config: the npz reader (every task, every
check), a piano-roll pickle of one's own, a user `--config-dir` through the command line, and
the worked example of examples/own_dataset/ learnt end to end."""

import json
import pickle
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

from harness import project_root
from harness.datasets import load_dataset
from harness.errors import UserError

ROOT = project_root()
EXAMPLE = ROOT / "examples" / "own_dataset"


def config(path, task="framewise", **keys):
    return {"name": "mine", "format": "npz", "path": str(path), "task": task, "bidirectional": False, **keys}


def save_splits(directory, splits):
    """splits: {split: {array name: array}}; a split given as None is not written."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, arrays in splits.items():
        if arrays is not None:
            np.savez(directory / f"{split}.npz", **arrays)
    return directory


def framewise_arrays(lengths=(3, 2), labels=None, dim=2, offset=0.0):
    lengths = np.array(lengths, dtype=np.int64)
    frames = int(lengths.sum())
    x = (np.arange(frames * dim, dtype=np.float32).reshape(frames, dim) + offset)
    y = np.array(labels if labels is not None else np.arange(frames) % 3, dtype=np.int64)
    return {"x": x, "lengths": lengths, "y": y}


def three(arrays_of_split):
    return {split: arrays_of_split(split) for split in ("train", "valid", "test")}


# ---------------------------------------------------------------- every task read correctly

def test_framewise_splits_classes_and_normalisation(tmp_path):
    train = framewise_arrays(lengths=(3, 2), labels=[0, 1, 2, 0, 1])
    train["x"][:, 1] = 7.0  # a constant input: centred, not divided by zero
    valid = framewise_arrays(lengths=(2,), labels=[4, 0], offset=100.0)
    test = framewise_arrays(lengths=(1, 1, 2), labels=[1, 1, 2, 3])
    directory = save_splits(tmp_path / "d", {"train": train, "valid": valid, "test": test})
    data = load_dataset(config(directory))

    assert [len(s.x) for s in data.train] == [3, 2] and [len(s.x) for s in data.test] == [1, 1, 2]
    assert data.input_dim == 2 and data.n_outputs == 5  # largest label over all splits (4, in valid) + 1
    assert data.classes is None and data.task == "framewise" and not data.bidirectional
    assert data.train[1].y.tolist() == [0, 1] and data.train[1].y.dtype == np.int64

    # by hand: first column of train x is 0, 2, 4, 6, 8 -> mean 4, population deviation sqrt(8)
    expected = (np.array([100.0, 102.0]) - 4.0) / np.sqrt(8.0)
    assert np.allclose(data.valid[0].x[:, 0], expected, atol=1e-6)
    assert np.allclose(data.train[0].x[:, 1], 0.0)  # the constant column, centred
    assert data.train[0].x.dtype == np.float32
    assert data.info["mean"] == pytest.approx([4.0, 7.0]) and data.info["std"][1] == 1.0

    kept = load_dataset(config(directory, normalise=False))
    assert np.array_equal(kept.valid[0].x, valid["x"][:2])


def test_framewise_n_classes_and_class_names_from_the_config(tmp_path):
    directory = save_splits(tmp_path / "d", three(lambda s: framewise_arrays()))
    data = load_dataset(config(directory, n_classes=6, class_names=list("abcdef")))
    assert data.n_outputs == 6 and data.classes == list("abcdef")
    with pytest.raises(UserError, match="class_names has 2 names"):
        load_dataset(config(directory, class_names=["a", "b"]))


def test_regression(tmp_path):
    def arrays(split):
        a = framewise_arrays(lengths=(2, 3), dim=3)
        a["y"] = np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2)
        return a

    data = load_dataset(config(save_splits(tmp_path / "d", three(arrays)), task="regression"))
    assert data.input_dim == 3 and data.n_outputs == 2
    assert data.train[1].y.shape == (3, 2) and data.train[1].y.dtype == np.float32
    assert np.array_equal(data.train[1].y, arrays("train")["y"][2:])  # targets are not normalised
    inputs = np.concatenate([s.x for s in data.train])  # inputs are: training mean 0, deviation 1
    assert np.allclose(inputs.mean(0), 0, atol=1e-6) and np.allclose(inputs.std(0), 1, atol=1e-5)
    assert data.info["normalised"] is True


def test_next_step_from_x_alone(tmp_path):
    rolls = (np.arange(10 * 4).reshape(10, 4) % 3 == 0).astype(np.float32)
    directory = save_splits(tmp_path / "d", three(lambda s: {"x": rolls, "lengths": np.array([4, 6])}))
    data = load_dataset(config(directory, task="next_step"))
    assert data.input_dim == data.n_outputs == 4 and data.info["normalised"] is False
    first, second = data.train
    assert np.array_equal(first.x, rolls[0:3]) and np.array_equal(first.y, rolls[1:4])
    assert np.array_equal(second.x, rolls[4:9]) and np.array_equal(second.y, rolls[5:10])

    # normalised inputs, raw 0/1 targets
    normalised = load_dataset(config(directory, task="next_step", normalise=True))
    assert np.array_equal(normalised.train[0].y, rolls[1:4])
    mean, deviation = rolls.mean(0), rolls.std(0)
    assert np.allclose(normalised.train[0].x, (rolls[0:3] - mean) / deviation, atol=1e-6)


def test_next_step_with_y_given(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1]]
    directory = save_splits(tmp_path / "d", three(lambda s: {"x": x, "lengths": np.array([2, 3]), "y": y}))
    data = load_dataset(config(directory, task="next_step"))
    assert data.input_dim == 3 and data.n_outputs == 2
    assert [len(s.x) for s in data.train] == [2, 3]  # y given: no frame is dropped
    assert np.array_equal(data.train[1].y, y[2:]) and np.array_equal(data.train[1].x, x[2:])
    y_out_of_range = save_splits(tmp_path / "e", three(lambda s: {"x": x, "lengths": np.array([2, 3]),
                                                                    "y": 2 * y}))
    with pytest.raises(UserError, match=r"train.npz.*\[0, 1\]"):
        load_dataset(config(y_out_of_range, task="next_step"))


def test_ctc(tmp_path):
    def arrays(split):
        return {"x": np.ones((9, 2), dtype=np.float32), "lengths": np.array([4, 5]),
                "y": np.array([1, 3, 2, 2, 1]), "y_lengths": np.array([2, 3])}

    directory = save_splits(tmp_path / "d", three(arrays))
    data = load_dataset(config(directory, task="ctc"))
    assert data.n_outputs == 4  # labels 1..3 and the blank
    assert data.train[0].y.tolist() == [1, 3] and data.train[1].y.tolist() == [2, 2, 1]
    assert [len(s.x) for s in data.train] == [4, 5]
    named = load_dataset(config(directory, task="ctc", class_names=["a", "b", "c"]))
    assert named.classes == ["<blank>", "a", "b", "c"]
    with pytest.raises(UserError, match="0 is the blank"):
        bad = arrays("train")
        bad["y"][0] = 0
        load_dataset(config(save_splits(tmp_path / "e", three(lambda s: bad)), task="ctc"))
    with pytest.raises(UserError, match="y_lengths"):
        bad = arrays("train")
        bad["y_lengths"] = np.array([2, 2])
        load_dataset(config(save_splits(tmp_path / "f", three(lambda s: bad)), task="ctc"))


def test_a_network_trains_on_npz_data(tmp_path, compose_config):
    from harness.training.train import train

    directory = save_splits(tmp_path / "d", three(lambda s: framewise_arrays(lengths=(3, 4, 2))))
    cfg = compose_config(["hidden_size=4", "max_epochs=1"])
    result = train(cfg, data=load_dataset(config(directory)), log=lambda line: None)
    assert result["metric"] == "frame_error" and result["data"]["n_outputs"] == 3
    assert result["data"]["train"] == {"sequences": 3, "frames": 9}


# ------------------------------------------------------------- the checks, one a mistake

def broken(tmp_path, change, task="framewise"):
    """A data set whose train.npz is changed by change(arrays) (returning None: not written)."""
    good = framewise_arrays()
    if task == "regression":
        good["y"] = np.zeros((5, 2), dtype=np.float32)
    train = change({key: value.copy() for key, value in good.items()})
    directory = save_splits(tmp_path / "d", {"train": train, "valid": good, "test": good})
    return config(directory, task=task)


def assert_user_error(cfg, *fragments):
    with pytest.raises(UserError) as caught:
        load_dataset(cfg)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def without(key):
    def change(arrays):
        del arrays[key]
        return arrays
    return change


def replace(key, value):
    def change(arrays):
        arrays[key] = value
        return arrays
    return change


def test_a_missing_split_file(tmp_path):
    assert_user_error(broken(tmp_path, lambda arrays: None), "train.npz is missing")


def test_a_missing_array(tmp_path):
    assert_user_error(broken(tmp_path, without("lengths")), "train.npz", "'lengths'")
    assert_user_error(broken(tmp_path, without("y")), "train.npz", "no array 'y'")


def test_lengths_that_do_not_add_up(tmp_path):
    assert_user_error(broken(tmp_path, replace("lengths", np.array([3, 3]))), "train.npz", "'lengths' adds up to 6",
                      "5 rows")


def test_targets_of_the_wrong_shape_or_dtype(tmp_path):
    assert_user_error(broken(tmp_path, replace("y", np.zeros(4, dtype=np.int64))), "train.npz", "'y'", "(4,)")
    assert_user_error(broken(tmp_path, replace("y", np.zeros(5, dtype=np.float32))), "train.npz", "'y'",
                      "float32")
    assert_user_error(broken(tmp_path, replace("y", np.zeros(5, dtype=np.float32)), task="regression"),
                      "train.npz", "'y'", "reshape(-1, 1)")
    assert_user_error(broken(tmp_path, replace("x", np.zeros(5, dtype=np.float32))), "train.npz", "'x'")
    assert_user_error(broken(tmp_path, replace("lengths", np.array([3.0, 2.0]))), "train.npz", "'lengths'")


def test_nan_or_infinite_values(tmp_path):
    def nan_input(arrays):
        arrays["x"][2, 1] = np.nan
        return arrays

    def infinite_target(arrays):
        arrays["y"][4, 0] = np.inf
        return arrays

    assert_user_error(broken(tmp_path, nan_input), "train.npz", "'x'", "row 2")
    assert_user_error(broken(tmp_path, infinite_target, task="regression"), "train.npz", "'y'", "row 4")


def test_a_class_out_of_range(tmp_path):
    assert_user_error(broken(tmp_path, replace("y", np.array([0, 1, -1, 0, 1]))), "train.npz", "label -1")
    cfg = broken(tmp_path, replace("y", np.array([0, 1, 2, 0, 9])))
    assert load_dataset(cfg).n_outputs == 10  # counted from the data
    assert_user_error({**cfg, "n_classes": 3}, "train.npz", "label 9", "n_classes=3")


def test_an_empty_split(tmp_path):
    empty = {"x": np.zeros((0, 2), dtype=np.float32), "lengths": np.zeros(0, dtype=np.int64),
             "y": np.zeros(0, dtype=np.int64)}
    assert_user_error(broken(tmp_path, lambda arrays: empty), "train.npz", "no sequences")


def test_a_zero_length_sequence(tmp_path):
    assert_user_error(broken(tmp_path, replace("lengths", np.array([5, 0]))), "train.npz", "'lengths'[1] is 0")


def test_object_arrays_are_refused(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros(3), np.zeros(2)
    message = assert_user_error(broken(tmp_path, replace("y", ragged)), "train.npz", "'y'", "object array")
    assert "pickle" in message


def test_not_an_archive_and_not_a_directory(tmp_path):
    cfg = broken(tmp_path, lambda arrays: arrays)
    (tmp_path / "d" / "valid.npz").write_text("not numpy")
    assert_user_error(cfg, "valid.npz", "numpy.savez")
    assert_user_error(config(tmp_path / "d" / "train.npz"), "needs a directory")


def test_splits_must_agree_on_the_inputs(tmp_path):
    cfg = broken(tmp_path, lambda arrays: framewise_arrays(dim=3))
    assert_user_error(cfg, "valid.npz", "'x' has 2 columns but train.npz has 3")


# ------------------------------------------------------------ through the command line

def odyssey(*arguments, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_a_pianoroll_pickle_of_ones_own_through_a_user_config_dir(tmp_path):
    rng = np.random.default_rng(0)

    def song(frames):
        return [tuple(int(n) for n in rng.choice(np.arange(55, 80), size=rng.integers(1, 4), replace=False))
                for _ in range(frames)]

    rolls = {"train": [song(8), song(6), [(60, 64), (62,)]], "valid": [song(5)], "test": [song(7), song(4)]}
    pickle_file = tmp_path / "Nottingham-like.pickle"
    pickle_file.write_bytes(pickle.dumps(rolls, protocol=2))
    config_dir = tmp_path / "myconf"
    (config_dir / "dataset").mkdir(parents=True)
    (config_dir / "dataset" / "nottingham_like.yaml").write_text(
        f"name: nottingham_like\nformat: pianoroll\npath: {pickle_file}\ntask: next_step\n"
        "bidirectional: false\nlowest_note: 21\nkeys: 88\n")

    run = odyssey("train", "--config-dir", str(config_dir), "dataset=nottingham_like", "variant=vanilla",
                  "hidden_size=5", "max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "nottingham_like" and metrics["metric"] == "nll"
    assert metrics["data"]["train"] == {"sequences": 3, "frames": 7 + 5 + 1}
    assert metrics["data"]["input_dim"] == metrics["data"]["n_outputs"] == 88


def user_config_dir(tmp_path):
    """(data directory, config directory) of a small framewise npz data set `mine`."""
    directory = save_splits(tmp_path / "data", three(lambda s: framewise_arrays()))
    config_dir = tmp_path / "myconf"
    (config_dir / "dataset").mkdir(parents=True)
    (config_dir / "dataset" / "mine.yaml").write_text(
        f"name: mine\nformat: npz\npath: {directory}\ntask: framewise\nbidirectional: false\n")
    return directory, config_dir


def test_odyssey_data_checks_an_npz_data_set_of_a_user_config_dir(tmp_path):
    directory, config_dir = user_config_dir(tmp_path)
    # `hydra.searchpath` is Hydra's other way to add a config directory: an override
    run = odyssey("data", "mine", f"hydra.searchpath=[file://{config_dir}]")
    assert run.returncode == 0, run.stderr
    assert "mine: ready (2 training sequences, 2 inputs, 3 outputs)" in run.stdout

    (directory / "test.npz").unlink()
    run = odyssey("data", "mine", f"hydra.searchpath=[file://{config_dir}]")
    assert run.returncode == 2 and "test.npz is missing" in run.stderr and "Traceback" not in run.stderr


def test_config_dir_anywhere_among_the_overrides(tmp_path):
    _, config_dir = user_config_dir(tmp_path)
    run = odyssey("data", "mine", "--config-dir", str(config_dir))
    assert run.returncode == 0, run.stderr
    assert "mine: ready" in run.stdout
    run = odyssey("data", "--config-dir", str(config_dir), "mine")
    assert run.returncode == 0, run.stderr
    assert "mine: ready" in run.stdout


# ----------------------------------------------------- the worked example, end to end

def memoryless_frame_error(train, test) -> float:
    """The best a model that sees only the current frame can do: for each distinct input
    frame, the most frequent target among training frames equal to it (the Bayes rule for
    these discrete inputs), scored on the test split."""
    counts = defaultdict(Counter)
    for frame, label in zip(map(bytes, train["x"]), train["y"]):
        counts[frame][int(label)] += 1
    overall = Counter(train["y"].tolist()).most_common(1)[0][0]
    guess = {frame: c.most_common(1)[0][0] for frame, c in counts.items()}
    predicted = np.array([guess.get(frame, overall) for frame in map(bytes, test["x"])])
    return float((predicted != test["y"]).mean())


@pytest.mark.slow
def test_the_worked_example_is_learnt_by_an_lstm_and_not_without_memory(tmp_path):
    made = subprocess.run([sys.executable, str(EXAMPLE / "make_data.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    data = EXAMPLE / "data"
    train, test = (dict(np.load(data / f"{split}.npz")) for split in ("train", "test"))
    baseline = memoryless_frame_error(train, test)
    assert baseline > 0.4

    run = odyssey("train", "--config-dir", str(EXAMPLE), "dataset=marker", "variant=vanilla", "hidden_size=10",
                  "max_epochs=3", "patience=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["n_outputs"] == 4 and metrics["data"]["input_dim"] == 8
    assert metrics["test_metric"] < 0.1 and metrics["test_metric"] < baseline / 4, (metrics["test_metric"], baseline)


@pytest.mark.slow
def test_two_new_data_sets_go_through_sweep_and_analyze(tmp_path):
    """One data set per format, given only as configs in a user directory: each is swept
    (2 trials of two variants) and analysed into a report."""
    rng = np.random.default_rng(0)
    npz_dir = save_splits(tmp_path / "npz", three(lambda split: {
        "x": rng.normal(size=(40, 3)).astype(np.float32), "lengths": np.array([10, 10, 20]),
        "y": rng.integers(0, 4, size=40)}))
    rolls = {split: [[(60 + t % 4, 64) for t in range(9)] for _ in range(3)] for split in ("train", "valid", "test")}
    pickled = tmp_path / "songs.pickle"
    pickled.write_bytes(pickle.dumps(rolls, protocol=2))
    config_dir = tmp_path / "myconf" / "dataset"
    config_dir.mkdir(parents=True)
    (config_dir / "frames.yaml").write_text(
        f"name: frames\nformat: npz\npath: {npz_dir}\ntask: framewise\nbidirectional: true\n")
    (config_dir / "songs.yaml").write_text(
        f"name: songs\nformat: pianoroll\npath: {pickled}\ntask: next_step\nbidirectional: false\n")
    storage = f"sqlite:///{tmp_path}/studies.db"
    for name in ("frames", "songs"):
        run = odyssey("sweep", "--config-dir", str(tmp_path / "myconf"), f"dataset={name}", "variant=vanilla,cifg",
                      "search.n_trials=2", "max_epochs=2", f"search.storage={storage}")
        assert run.returncode == 0, run.stderr
        out = tmp_path / f"analysis_{name}"
        run = odyssey("analyze", f"analysis.dataset={name}", f"analysis.storage={storage}", f"analysis.out={out}")
        assert run.returncode == 0, run.stderr
        trials = (out / "trials.csv").read_text().splitlines()
        assert len(trials) == 1 + 4  # two variants x two trials
        assert (out / "report.md").exists() and (out / "boxplots.png").exists()
