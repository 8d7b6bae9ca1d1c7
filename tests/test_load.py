"""A small run of scripts/load_test.py (16 stub workers, a few seconds) on a journal file and on
PostgreSQL; the study is then read back here, independently of the script's own checks."""

import json
import math
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from harness import project_root
from harness.storage import open_storage

WORKERS, TRIALS, ENQUEUED = 16, 32, 8


def run_load_test(url, tmp_path):
    done = subprocess.run([sys.executable, str(project_root() / "scripts" / "load_test.py"), "--workers", str(WORKERS),
                           "--trials", str(TRIALS), "--enqueue", str(ENQUEUED), "--sleep", "0.2", "--url", url,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(next(tmp_path.glob("load_test_*.json")).read_text())["results"]
    trials = optuna.load_study(study_name="jsb_chorales.vanilla", storage=open_storage(url)).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS == result["counted"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    for t in complete:  # the stub's value: log10(lr) + N/1000 + noise, worked out here again
        p = t.params
        assert math.isclose(t.value, math.log10(p["learning_rate"]) + p["hidden_size"] / 1000 + p["input_noise_std"])
    tags = sorted(t.user_attrs["enqueued"] for t in complete if "enqueued" in t.user_attrs)
    assert tags == list(range(ENQUEUED))
    assert len({t.number for t in complete}) == TRIALS and result["trained_twice"] == 0
    assert result["trials_per_s"] > 0
    return result


def test_load_journal(tmp_path):
    run_load_test(f"journal:{tmp_path}/load.log", tmp_path)


def test_load_postgres(tmp_path, postgres):
    run_load_test(postgres(), tmp_path)
