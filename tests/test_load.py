"""Faults at scale, small: scripts/load_test.py's run() with 16 stub workers on a journal file
and on PostgreSQL, two of them killed with SIGKILL mid-run (and replaced), the PostgreSQL
server restarted once; the study is then read back here, independently of the script's own
checks. And one sweep whose database goes away for good: it retries, ends with one line and
exit status 4, and a rerun tops the study up."""

import importlib.util
import json
import math
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from harness import project_root
from harness.storage import counted, open_storage
from postgres_server import PostgresServer

WORKERS, TRIALS, ENQUEUED, KILL = 16, 32, 8, 2 / 16

spec = importlib.util.spec_from_file_location("load_test", project_root() / "scripts" / "load_test.py")
load_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load_test)


def run_load_test(url, kind, server=None):
    result = load_test.run(url, kind, WORKERS, TRIALS, ENQUEUED, sleep=0.2, heartbeat=60.0, kill=KILL, server=server)
    assert result["ok"], json.dumps(result)
    assert result["workers_killed"] == 2 and result["workers_lost"] == 0
    trials = optuna.load_study(study_name="jsb_chorales.vanilla", storage=open_storage(url)).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    results = counted(trials)
    assert len(results) == TRIALS == result["counted"]
    assert len(complete) == TRIALS + result["repeats"]  # a repeat: a late result beside the retry that ran
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)  # nothing RUNNING or WAITING
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # Optuna's retries record it
    for t in trials:  # a failed trial was surplus (past the target) or taken for dead and retried
        assert t.state != TrialState.FAIL or t.user_attrs.get("surplus") or t.number in retried, t
    assert len(retried) >= 1  # the trials of killed workers (killed while training, where one was)
    for t in complete:  # the stub's value: log10(lr) + N/1000 + noise, worked out here again
        p = t.params
        assert math.isclose(t.value, math.log10(p["learning_rate"]) + p["hidden_size"] / 1000 + p["input_noise_std"])
    same = {}
    for t in results:
        same.setdefault(tuple(sorted(t.params.items())), []).append(t)
    twice = [[(t.number, t.user_attrs, t.system_attrs) for t in group] for group in same.values() if len(group) > 1]
    assert not twice, (twice, json.dumps(result))  # no configuration counted twice
    tags = sorted(t.user_attrs["enqueued"] for t in results if "enqueued" in t.user_attrs)
    assert tags == list(range(ENQUEUED))  # every enqueued trial ran exactly once
    return result


def test_load_journal_with_workers_killed(tmp_path):
    run_load_test(f"journal:{tmp_path}/load.log", "journal")


def test_load_postgres_with_workers_killed_and_a_server_restart(postgres_server):
    result = run_load_test(postgres_server.database(), "postgresql", server=postgres_server)
    assert result["server_restarts"] == 1 and result["reconnect_retries"] >= 1


@pytest.mark.slow
def test_a_worker_whose_database_is_gone_exits_4_in_one_line_and_a_rerun_tops_up(tmp_path):
    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"NO POSTGRESQL SERVER, test not run: {error}")
    try:
        url = server.database()
        rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(12)] for k in range(n)]
                 for split, n in (("train", 4), ("valid", 2), ("test", 2))}
        (tmp_path / "tiny.json").write_text(json.dumps(rolls))
        (tmp_path / "conf" / "dataset").mkdir(parents=True)
        (tmp_path / "conf" / "dataset" / "tiny.yaml").write_text(
            f"name: tiny\nformat: pianoroll\npath: {tmp_path / 'tiny.json'}\ntask: next_step\nbidirectional: false\n")
        command = [sys.executable, "-m", "harness.cli", "sweep", "--config-dir", str(tmp_path / "conf"), "dataset=tiny",
                   "search.n_trials=6", "max_epochs=30", "patience=30", f"search.storage={url}",
                   "search.reconnect_seconds=4", "search.heartbeat_seconds=2",  # a trial cut off unstamped: 12 s
                   f"hydra.run.dir={tmp_path}/run"]
        sweep = subprocess.Popen(command, cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and sweep.poll() is None:
            try:
                trials = optuna.load_study(study_name="tiny.vanilla", storage=url).get_trials()
            except KeyError:
                trials = []
            if any(t.state == TrialState.COMPLETE for t in trials):
                break
            time.sleep(0.2)
        server.pause()
        out, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 4, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "stopped answering (connection failed" in lines[0] and "run the same command again" in lines[0]
        server.resume()
        again = subprocess.run(command, cwd=project_root(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        trials = optuna.load_study(study_name="tiny.vanilla", storage=url).get_trials()
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finally:
        server.stop()
