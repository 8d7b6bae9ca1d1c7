"""odyssey sweep: the search space, storages, counting, liveness after SIGKILL, workers."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.errors import UserError
from harness.storage import counts, open_storage
from harness.study.sweep import EXIT_NO_COMPLETE, search_space

GREFF = {"hidden_size": (20, 200), "learning_rate": (1e-6, 1e-2),
         "one_minus_momentum": (0.01, 1.0), "input_noise_std": (0.0, 1.0)}


def tiny_music(tmp_path: Path) -> Path:
    """A user config dir with a tiny piano-roll data set (fast one-epoch trials)."""
    rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(12)] for k in range(n)]
             for split, n in (("train", 6), ("valid", 3), ("test", 3))}
    (tmp_path / "tiny.json").write_text(json.dumps(rolls))
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "tiny.yaml").write_text(
        f"name: tiny\nformat: pianoroll\npath: {tmp_path / 'tiny.json'}\ntask: next_step\nbidirectional: false\n")
    return tmp_path / "conf"


def odyssey(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def finish(process, timeout=900):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_greff_space_is_the_papers(compose_config):
    space = search_space(compose_config(command="sweep").search.space)
    for name, (low, high) in GREFF.items():
        assert (space[name].low, space[name].high) == (low, high)
    assert space["hidden_size"].log and space["learning_rate"].log and space["one_minus_momentum"].log
    assert not space["input_noise_std"].log


@pytest.mark.parametrize("spec,words", [
    ({"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-6, "log": True}}, "above high"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 0.5}}, "unknown parameter 'dropout'"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "low > 0"),
    ({"hidden_size": {"type": "float", "low": 20, "high": 200}}, "type: int"),
])
def test_bad_search_space_gives_one_clear_message(spec, words):
    with pytest.raises(UserError, match=words):
        search_space(spec)


@pytest.mark.parametrize("url", ["nonsense", "postgresql://nobody@127.0.0.1:9/none", ""])
def test_bad_storage_gives_one_clear_message(url):
    with pytest.raises(UserError, match="storage"):
        open_storage(url)


def test_bad_input_through_the_command_line_names_the_key(tmp_path):
    code, out, err = finish(odyssey("sweep", "search.storage=nonsense", "search.n_trials=1"))
    assert code == 2 and "search.storage" in err and "Traceback" not in err
    code, out, err = finish(odyssey("sweep", "search.space.learning_rate.low=1", "search.n_trials=1",
                                    f"search.storage=sqlite:///{tmp_path}/x.db"))
    assert code == 2 and "search.space.learning_rate" in err and "Traceback" not in err


def kill_mid_trial(process, read, seconds=600):
    """SIGKILL the sweep's process group once one trial is complete and another running, and
    return the trials it leaves. The group is frozen (SIGSTOP) while `read()` looks, so what
    it sees is what the kill leaves: no trial can finish between the look and the kill."""
    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            trials = read()
        except Exception:  # not created yet, or a frozen worker holds the SQLite lock
            trials = []
        if any(t.state == TrialState.COMPLETE for t in trials) and any(t.state == TrialState.RUNNING for t in trials):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return trials
        os.killpg(process.pid, signal.SIGCONT)
    raise AssertionError(f"the sweep ended or ran {seconds} s before it could be killed mid-trial")


def study_trials(url, name):
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return study, study.get_trials(deepcopy=False)


def check_finished(trials, n):
    counted = [t for t in trials if counts(t)]
    assert len(counted) == n
    assert not any(t.state == TrialState.RUNNING for t in trials)
    seen = set()
    for t in counted:
        for name, (low, high) in GREFF.items():
            assert low <= t.params[name] <= high
        assert math.isfinite(t.user_attrs["test_metric"])
        key = tuple(sorted(t.params.items()))
        assert key not in seen
        seen.add(key)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_ends_with_exactly_n_trials(tmp_path):
    """The issue's check, on JSB: 4 one-epoch trials, SIGKILL after the first, rerun."""
    url = f"sqlite:///{tmp_path}/killed.db"
    args = ("sweep", "dataset=jsb_chorales", "variant=cifg", "search.n_trials=4", "max_epochs=1",
            f"search.storage={url}", "search.heartbeat_seconds=5")
    process = odyssey(*args)
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(1)
        try:
            _, trials = study_trials(url, "jsb_chorales.cifg")
        except (KeyError, UserError, Exception):
            continue
        if any(t.state == TrialState.COMPLETE for t in trials):
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    study, trials = study_trials(url, "jsb_chorales.cifg")
    assert sum(counts(t) for t in trials) >= 1
    code, out, err = finish(odyssey(*args))
    assert code == 0, err
    study, trials = study_trials(url, "jsb_chorales.cifg")
    check_finished(trials, 4)
    assert {k: study.user_attrs[k] for k in ("dataset", "variant", "recipe")} == {
        "dataset": "jsb_chorales", "variant": "cifg", "recipe": "greff"}
    assert study.user_attrs["protocol"]["max_epochs"] == 1  # harness.storage.protocol, recorded once


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_worker_processes_share_one_study(tmp_path, storage):
    conf = tiny_music(tmp_path)
    url = f"journal:{tmp_path}/study.log" if storage == "journal" else f"sqlite:///{tmp_path}/study.db"
    code, out, err = finish(odyssey("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=np",
                                    "search.n_trials=6", "search.workers=2", "max_epochs=1",
                                    f"search.storage={url}"))
    assert code == 0, err
    study, trials = study_trials(url, "tiny.np")
    check_finished(trials, 6)
    workers = {t.system_attrs["odyssey_worker"]["pid"] for t in trials if counts(t)}
    assert len(workers) == 2
    assert "6/6 done" in out


def test_rerun_tops_up_and_keeps_finished_trials(tmp_path):
    conf = tiny_music(tmp_path)
    url = f"sqlite:///{tmp_path}/topup.db"
    base = ("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla", "max_epochs=1",
            f"search.storage={url}")
    assert finish(odyssey(*base, "search.n_trials=2"))[0] == 0
    _, first = study_trials(url, "tiny.vanilla")
    assert finish(odyssey(*base, "search.n_trials=3"))[0] == 0
    _, second = study_trials(url, "tiny.vanilla")
    check_finished(second, 3)
    assert [t.params for t in second[:2]] == [t.params for t in first]
    assert finish(odyssey(*base, "search.n_trials=3"))[0] == 0  # nothing left to do
    assert len(study_trials(url, "tiny.vanilla")[1]) == 3


def test_diverging_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    conf = tiny_music(tmp_path)
    url = f"sqlite:///{tmp_path}/nan.db"
    code, out, err = finish(odyssey("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=noaf",
                                    "search.n_trials=2", "max_epochs=2", f"search.storage={url}",
                                    "search.space.learning_rate.low=1e36", "search.space.learning_rate.high=1e37",
                                    "search.space.one_minus_momentum.low=0.99"))
    assert code == EXIT_NO_COMPLETE and "no trial completed in tiny.noaf" in err, err
    _, trials = study_trials(url, "tiny.noaf")
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert all("became" in t.user_attrs["failure"] for t in trials)
    assert all(counts(t) for t in trials)
