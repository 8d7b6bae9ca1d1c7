"""Every bad input a user is likely to give ends with exit status 2 and one line on stderr
that names the key or file and what to do: no traceback, nothing written, nothing lost."""

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness import cli, project_root

ROOT = project_root()


def odyssey(capsys, *arguments):
    """(exit status, stdout, stderr) of `odyssey ARGUMENTS`, run in this process (Hydra's run
    directory in a temporary one unless given, so that nothing lands in results/)."""
    if not any(a.startswith("hydra.run.dir=") for a in arguments):
        arguments = (*arguments, f"hydra.run.dir={tempfile.mkdtemp(prefix='odyssey-test-run-')}",
                     "hydra.output_subdir=null")
    try:
        cli.main(list(arguments))
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *arguments, words=()):
    """Run a command that must be refused; check the one line and return it."""
    code, out, err = odyssey(capsys, *arguments)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_dir(tmp_path):
    """Hydra's run directory for a command, out of the project's results/."""
    return [f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=null"]


# ------------------------------------------------------------ keys that do not exist

def test_an_unknown_key_is_named_with_the_nearest_one_not_with_plus_advice(capsys, run_dir):
    line = refused(capsys, "train", "hiden_size=10", *run_dir, words=("hiden_size", "did you mean hidden_size"))
    assert "append" not in line and "+hiden_size" not in line


def test_adding_an_unknown_key_with_plus_is_refused(capsys, run_dir):
    refused(capsys, "train", "+hiden_size=10", *run_dir, words=("hiden_size", "ignored", "hidden_size"))
    refused(capsys, "train", "+dataset.n_clases=3", *run_dir, words=("dataset.n_clases",))
    refused(capsys, "train", "+hidden_size=10", *run_dir, words=("exists already", "hidden_size=10"))


def test_removing_a_key_with_tilde(capsys, run_dir):
    refused(capsys, "train", "~hidden_size", *run_dir, words=("~hidden_size", "cannot be removed", "hidden_size=..."))
    refused(capsys, "train", "~hiden_size", *run_dir, words=("no key 'hiden_size'",))


def test_an_override_hydra_cannot_parse(capsys, run_dir):
    refused(capsys, "sweep", "search.slurm.sbatch=[--account=lab]", *run_dir,
            words=("search.slurm.sbatch=[--account=lab]", "quote"))


# ------------------------------------------------------------------ values and ranges

@pytest.mark.parametrize("override,words", [
    ("train.batch_size=0", ("train.batch_size=0", "at least 1")),
    ("train.batch_size=-4", ("train.batch_size=-4", "at least 1")),
    ("train.threads=0", ("train.threads=0", "at least 1, or auto")),
    ("train.init_std=-0.1", ("train.init_std=-0.1", "cannot be negative")),
    ("hidden_size=2.5", ("hidden_size=2.5", "whole number")),
    ("max_epochs=0", ("max_epochs=0", "at least 1")),
])
def test_training_values_out_of_range(capsys, run_dir, override, words):
    refused(capsys, "train", override, *run_dir, words=words)


def test_search_space_null_and_low_above_high(capsys, run_dir):
    refused(capsys, "sweep", "search.space.learning_rate=null", *run_dir,
            words=("search.space.learning_rate is null", "~search.space.learning_rate"))
    refused(capsys, "sweep", "search.space.hidden_size.low=300", *run_dir,
            words=("search.space.hidden_size", "above high", "swap"))


def test_min_trials_for_fanova_too_small_for_the_forest(capsys, run_dir):
    # leaves of 3 trials (the default min_samples_leaf): a tree splits only with 6 or more
    refused(capsys, "analyze", "analysis.dataset=x", "analysis.min_trials_for_fanova=5", *run_dir,
            words=("analysis.min_trials_for_fanova=5", "at least 6"))
    refused(capsys, "analyze", "analysis.dataset=x", "analysis.min_trials_for_fanova=1",
            "analysis.min_samples_leaf=1", *run_dir, words=("at least 2",))


@pytest.mark.parametrize("override", ["dataset.bidirectional=maybe", "dataset.bidirectional='false'",
                                      "train.flush_denormal=1", "search.space.learning_rate.log='true'",
                                      "search.slurm.wait=no"])
def test_a_boolean_given_anything_but_true_or_false(capsys, run_dir, override):
    key = override.split("=", 1)[0]
    refused(capsys, "sweep", override, *run_dir, words=(key, "true or false"))


@pytest.mark.parametrize("command,override,words", [
    ("sweep", "search.n_trials=2.5", ("search.n_trials is 2.5 on the command line", "whole number")),
    ("sweep", "search.heartbeat_seconds=soon", ("search.heartbeat_seconds", "a number")),
    ("analyze", "analysis.n_trees=many", ("analysis.n_trees is many", "whole number")),
    ("analyze", "analysis.crosscheck=1", ("analysis.crosscheck", "true or false")),
])
def test_a_value_of_the_wrong_type_for_the_schema(capsys, run_dir, command, override, words):
    """harness/schema.py types the search and analysis keys; Hydra's refusal is one line."""
    extra = ("analysis.dataset=x",) if command == "analyze" else ()
    refused(capsys, command, *extra, override, *run_dir, words=words)


def test_the_schemas_have_the_keys_of_their_yaml_files():
    """Every key of conf/search/greff.yaml and conf/analysis/default.yaml is typed in
    harness/schema.py and every typed key has its value there (defaults live in the YAML)."""
    import yaml

    from harness.schema import kinds

    typed = kinds()
    for group, name in (("search", "greff"), ("analysis", "default")):
        values = yaml.safe_load((ROOT / "conf" / group / f"{name}.yaml").read_text())
        assert values.pop("defaults") == ["schema", "_self_"]
        written = {f"{group}.{key}" for key in values} | {f"{group}.slurm.{key}" for key in values.get("slurm", {})}
        assert written == {key for key in typed if key.startswith(f"{group}.")}, group


def write_config(directory: Path, group: str, name: str, text: str) -> Path:
    (directory / group).mkdir(parents=True, exist_ok=True)
    path = directory / group / f"{name}.yaml"
    path.write_text(text)
    return path


def npz_data(directory: Path, task="framewise", **arrays_of_train):
    """train/valid/test .npz of a tiny data set; arrays_of_train replace train's arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    if task == "ctc":
        good = {"x": np.ones((9, 2), np.float32), "lengths": np.array([4, 5]), "y": np.array([1, 3, 2, 2, 1]),
                "y_lengths": np.array([2, 3])}
    else:
        good = {"x": np.arange(10, dtype=np.float32).reshape(5, 2), "lengths": np.array([3, 2]),
                "y": np.array([0, 1, 2, 0, 1])}
    for split in ("train", "valid", "test"):
        np.savez(directory / f"{split}.npz", **(good | arrays_of_train if split == "train" else good))
    return directory


def user_dataset(tmp_path, data_dir, task="framewise", extra=""):
    conf = tmp_path / "myconf"
    write_config(conf, "dataset", "mine", f"name: mine\nformat: npz\npath: {data_dir}\ntask: {task}\n"
                                          f"bidirectional: false\n{extra}")
    return conf


def test_a_quoted_false_in_a_users_config_file_is_named_with_the_file(capsys, tmp_path, run_dir):
    data = npz_data(tmp_path / "data")
    conf = tmp_path / "myconf"
    path = write_config(conf, "dataset", "mine", f"name: mine\nformat: npz\npath: {data}\ntask: framewise\n"
                                                 "bidirectional: 'false'\n")
    refused(capsys, "train", "--config-dir", str(conf), "dataset=mine", *run_dir,
            words=("dataset.bidirectional", str(path), "true or false"))


def test_malformed_yaml_and_an_unknown_variant(capsys, tmp_path, run_dir):
    conf = tmp_path / "myconf"
    path = write_config(conf, "dataset", "broken", "name: broken\nformat: npz\npath: [oops\ntask: framewise\n")
    refused(capsys, "train", "--config-dir", str(conf), "dataset=broken", *run_dir,
            words=(str(path), "not valid YAML", "line "))
    refused(capsys, "train", "variant=lstmm", *run_dir, words=("unknown variant 'lstmm'", "vanilla"))


def test_a_list_of_models_is_not_a_variant(capsys, tmp_path, run_dir):
    """variant= is one model; the lists are search.variants, and no model may take their names."""
    refused(capsys, "train", "variant=lstm", *run_dir,
            words=("variant=lstm is a list of models", "vanilla, nig, nfg, nog, niaf, noaf, np, cifg, fgr)",
                   "search.variants=lstm"))
    refused(capsys, "sweep", "variant=all", *run_dir, words=("variant=all is a list", "gflstm", "search.variants=all"))
    refused(capsys, "sweep", "variant=vanilla,lstm", *run_dir, words=("variant=lstm is a list",))
    conf = tmp_path / "myconf"
    write_config(conf, "variant", "pooled", "name: all\nswitches: {peepholes: false}\n")
    refused(capsys, "train", "--config-dir", str(conf), "variant=pooled", *run_dir,
            words=("cannot be called 'all'", "pooled group"))
    storage = f"search.storage=sqlite:///{tmp_path}/studies.db"
    refused(capsys, "sweep", "search.variants=[vanilla,nope]", storage, *run_dir,
            words=("search.variants: unknown model 'nope'", "gflstm", "--config-dir"))
    refused(capsys, "sweep", "search.variants=[cifg,lstm]", storage, *run_dir,
            words=("'lstm' is a list", "search.variants=lstm alone"))
    refused(capsys, "sweep", "search.variants=3", storage, *run_dir, words=("search.variants=3", "[vanilla, cifg]"))
    refused(capsys, "sweep", "+experiment=greff", "variant=cifg", storage, *run_dir,  # the preset's list would win
            words=("variant=cifg names one model", "search.variants=lstm", "search.variants=[cifg]"))
    refused(capsys, "train", "variant=gfgru", "+variant.switches={peepholes: false}", *run_dir,
            words=("variant 'gfgru' has no switches",))
    assert not (tmp_path / "studies.db").exists()  # refused before any study was made


# ---------------------------------------------------------------------- data files

def data_refused(capsys, tmp_path, data_dir, task="framewise", words=(), extra=""):
    conf = user_dataset(tmp_path, data_dir, task, extra)
    return refused(capsys, "data", "mine", "--config-dir", str(conf), words=words)


def test_ctc_sequences_that_cannot_align_or_hold_bad_labels(capsys, tmp_path):
    # 4 frames for the labels 1 1 2 2 3: five labels and two repeated pairs need 7 frames
    data = npz_data(tmp_path / "a", task="ctc", y=np.array([1, 1, 2, 2, 3, 2, 2, 1]), y_lengths=np.array([5, 3]))
    data_refused(capsys, tmp_path, data, task="ctc", words=(str(data), "train/0", "5 labels", "at least 7",
                                                            "only 4 frames"))
    data = npz_data(tmp_path / "b", task="ctc")
    data_refused(capsys, tmp_path, data, task="ctc", extra="n_classes: 2\n", words=("train.npz", "label 3",
                                                                                     "n_classes=2"))
    data = npz_data(tmp_path / "c", task="ctc", y_lengths=np.array([2, 2]))
    data_refused(capsys, tmp_path, data, task="ctc", words=("train.npz", "'y_lengths' adds up to 4", "5"))


def test_empty_truncated_and_foreign_npz_files_and_a_missing_split(capsys, tmp_path):
    data = npz_data(tmp_path / "d")
    (data / "valid.npz").write_bytes(b"")
    data_refused(capsys, tmp_path, data, words=(str(data / "valid.npz"), "0 bytes"))

    data = npz_data(tmp_path / "e")
    whole = (data / "test.npz").read_bytes()
    (data / "test.npz").write_bytes(whole[: len(whole) // 2])
    data_refused(capsys, tmp_path, data, words=(str(data / "test.npz"), "savez"))

    data = npz_data(tmp_path / "f")
    (data / "train.npz").write_text("frame,label\n0.1,3\n")
    data_refused(capsys, tmp_path, data, words=(str(data / "train.npz"), "not a NumPy .npz archive"))

    data = npz_data(tmp_path / "g")
    (data / "valid.npz").unlink()
    data_refused(capsys, tmp_path, data, words=(str(data / "valid.npz"), "is missing"))

    data = npz_data(tmp_path / "i", lengths=np.array([3, 3]))  # 6 frames said, 5 rows given
    data_refused(capsys, tmp_path, data, words=(str(data / "train.npz"), "adds up to 6", "5 rows"))


def test_a_piano_roll_file_without_a_split(capsys, tmp_path):
    conf = pianoroll_config(tmp_path, {"train": [[[60], [62]]], "test": [[[60], [62]]]})
    refused(capsys, "data", "songs", "--config-dir", str(conf),
            words=(str(tmp_path / "songs.json"), "'valid'"))


def test_a_truncated_archive_member_is_named(capsys, tmp_path):
    """A zip whose directory is intact but one array's bytes are cut: read fails late."""
    data = npz_data(tmp_path / "h")
    np.savez_compressed(data / "train.npz", x=np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32),
                        lengths=np.array([300, 200]), y=np.zeros(500, dtype=np.int64))
    with zipfile.ZipFile(data / "train.npz") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(data / "train.npz", "w", compression=zipfile.ZIP_STORED) as archive:
        for name, raw in members.items():
            archive.writestr(name, raw[:100] if name == "x.npy" else raw)  # x.npy: header, then too few bytes
    data_refused(capsys, tmp_path, data, words=(str(data / "train.npz"), "'x'", "savez"))


def pianoroll_config(tmp_path, rolls):
    (tmp_path / "songs.json").write_text(json.dumps(rolls))
    conf = tmp_path / "myconf"
    write_config(conf, "dataset", "songs", f"name: songs\nformat: pianoroll\npath: {tmp_path / 'songs.json'}\n"
                                           "task: next_step\nbidirectional: false\n")
    return conf


@pytest.mark.parametrize("note", ["C4", 60.5, -1, 128, True])
def test_piano_roll_notes_that_are_not_midi_numbers(capsys, tmp_path, note):
    rolls = {split: [[[60, 64], [62], [64, 67]]] for split in ("train", "valid", "test")}
    rolls["valid"][0][1] = [62, note]
    conf = pianoroll_config(tmp_path, rolls)
    refused(capsys, "data", "songs", "--config-dir", str(conf),
            words=(str(tmp_path / "songs.json"), repr(note), "valid sequence 0, frame 1", "0..127"))


def test_empty_piano_roll_sequences_are_left_out_and_said(capsys, tmp_path):
    rolls = {split: [[[60, 64], [62], [64, 67]], [], [[60]]] for split in ("train", "valid", "test")}
    conf = pianoroll_config(tmp_path, rolls)
    code, out, err = odyssey(capsys, "data", "songs", "--config-dir", str(conf))
    assert code == 0, err
    assert "left out 6 sequence(s)" in err and "train 1, 2; valid 1, 2; test 1, 2" in err
    assert "songs: ready (1 training sequences" in out


# -------------------------------------------------------------------------- storages

@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a tmpfs of that many bytes (root only), unmounted afterwards."""
    mounted = []

    def mount(size: int, name="disk") -> Path:
        point = tmp_path / name
        point.mkdir()
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            pytest.skip(f"STORAGE TEST NOT RUN: cannot mount a small tmpfs here ({run.stderr.strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)  # busy: detach it anyway


def test_a_read_only_sqlite_storage(capsys, tmp_path, run_dir, small_disk):
    disk = small_disk(4 << 20)
    made = subprocess.run([sys.executable, "-c", "import optuna; optuna.create_study(study_name='kept', "
                           f"storage='sqlite:///{disk}/studies.db')"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr  # made in another process: no open file keeps the mount busy
    before = (disk / "studies.db").read_bytes()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"STORAGE TEST NOT RUN: cannot remount read-only ({remount.stderr.strip()})")
    refused(capsys, "sweep", f"search.storage=sqlite:///{disk}/studies.db", "search.n_trials=1", *run_dir,
            words=("search.storage", str(disk), "cannot be written", "Read-only file system"))
    assert (disk / "studies.db").read_bytes() == before  # nothing lost


def test_a_full_disk(capsys, tmp_path, run_dir, small_disk):
    disk = small_disk(256 << 10)
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=4096"], capture_output=True)  # until full
    refused(capsys, "sweep", f"search.storage=sqlite:///{disk}/studies.db", "search.n_trials=1", *run_dir,
            words=("search.storage", "cannot be written", "No space left on device"))
    refused(capsys, "sweep", f"search.storage=journal:{disk}/studies.log", "search.n_trials=1", *run_dir,
            words=("search.storage", "No space left on device"))


def test_a_disk_that_fills_while_the_command_runs(capsys, tmp_path, small_disk):
    """The run directory on a full disk: training runs, writing metrics.json fails: one line."""
    rolls = {split: [[[60 + t % 3, 67] for t in range(6)]] * 2 for split in ("train", "valid", "test")}
    conf = pianoroll_config(tmp_path, rolls)
    disk = small_disk(128 << 10)
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=4096"], capture_output=True)  # until full
    refused(capsys, "train", "--config-dir", str(conf), "dataset=songs", "max_epochs=1", "hidden_size=4",
            f"hydra.run.dir={disk}/run", "hydra.output_subdir=null",
            words=("cannot write", "No space left on device", "hydra.run.dir"))


def test_a_storage_directory_that_does_not_exist_is_created_and_said(capsys, tmp_path, run_dir):
    rolls = {split: [[[60 + t % 3, 67] for t in range(6)]] * 2 for split in ("train", "valid", "test")}
    conf = pianoroll_config(tmp_path, rolls)
    storage = tmp_path / "new" / "dir" / "studies.db"
    code, out, err = odyssey(capsys, "sweep", "--config-dir", str(conf), "dataset=songs",
                             f"search.storage=sqlite:///{storage}", "search.n_trials=1", "max_epochs=1",
                             "hidden_size=4", *run_dir)
    assert code in (0, None), err
    assert f"created the storage directory {storage.parent}" in err and storage.is_file()


# ----------------------------------------------------------------- odyssey data X

def test_odyssey_data_never_writes_among_a_users_files(capsys, tmp_path):
    theirs = tmp_path / "my_corpus"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    refused(capsys, "data", "timit_like", f"dataset.path={theirs}",
            words=(str(theirs), "thesis.tex", "another dataset.path"))
    assert sorted(p.name for p in theirs.iterdir()) == ["thesis.tex"]


def test_the_command_line_shows_no_traceback_in_a_fresh_process(tmp_path):
    """The same path as a user's shell: a subprocess, exit status 2, one line."""
    run = subprocess.run([sys.executable, "-m", "harness.cli", "train", "+hiden_size=10",
                          f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "hiden_size" in run.stderr and "Traceback" not in run.stderr


def test_sequential_settings_out_of_range_name_their_key(capsys, run_dir, tmp_path):
    """analysis.margin, search.look_every, search.until, and until=decided without vanilla or
    with a single variant (harness.study.rounds)."""
    storage = f"search.storage=sqlite:///{tmp_path}/studies.db"
    refused(capsys, "sweep", "analysis.margin=-0.5", storage, *run_dir, words=("analysis.margin=-0.5", "positive"))
    refused(capsys, "analyze", "analysis.dataset=x", "analysis.margin=0", *run_dir, words=("analysis.margin=0", "positive"))
    refused(capsys, "sweep", "search.look_every=0", storage, *run_dir, words=("search.look_every=0", "at least 1"))
    refused(capsys, "sweep", "analysis.multiplicity=bonferroni", storage, *run_dir,
            words=("analysis.multiplicity=bonferroni", "holm", "none"))
    refused(capsys, "analyze", "analysis.dataset=x", "analysis.multiplicity=bonferroni", *run_dir,
            words=("analysis.multiplicity=bonferroni", "holm", "none"))
    refused(capsys, "sweep", "search.until=sometimes", storage, *run_dir,
            words=("search.until=sometimes", "n_trials", "decided"))
    refused(capsys, "sweep", "search.until=decided", storage, *run_dir,
            words=("search.until=decided", "vanilla and at least one other", "search.variants"))
    refused(capsys, "sweep", "search.until=decided", "search.variants=[nfg,cifg]", storage, *run_dir,
            words=("search.until=decided", "list vanilla"))
    assert not (tmp_path / "studies.db").exists()  # refused before any study was made
