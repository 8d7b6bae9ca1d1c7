"""optuna-dashboard, the live view of a sweep (README, "Watching a sweep"): `odyssey dashboard`
serves the storage that a real `odyssey sweep` wrote, and its HTTP API gives the studies
(the objective named, the protocol in one line), every trial's per-epoch values (the
learning curves) and the importances.

optuna-dashboard is pinned in constraints.txt and installed by scripts/setup.sh: without it
these tests fail (the import below), they are never skipped."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import optuna
import optuna_dashboard  # noqa: F401 (not installed: run bash scripts/setup.sh)
import pytest

from harness import project_root
from harness.storage import open_storage
from postgres_server import PostgresServer
from test_sweep import finish, odyssey, tiny_music

PARAMETERS = {"hidden_size", "learning_rate", "one_minus_momentum", "input_noise_std"}


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return json.load(answer)


def dashboard(tmp_path, url: str, env=None):
    """`odyssey dashboard` on `url` on a free loopback port (dashboard.port=0), once it answers:
    (process, port)."""
    process = odyssey("dashboard", f"search.storage={url}", "dashboard.port=0",
                      f"hydra.run.dir={tmp_path}/runs/dashboard", cwd=project_root(), env=env)
    line = process.stdout.readline()  # "dashboard of URL: http://127.0.0.1:PORT/ (Ctrl-C stops it)"
    if "http://127.0.0.1:" not in line:
        process.kill()
        raise AssertionError(f"the dashboard did not start: {line} {process.communicate()}")
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    assert get(port, "/api/meta")["allow_unsafe"] is False
    return process, port


def stop(process):
    process.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err.strip() == "odyssey dashboard: stopped.", (out, err)
    return out


def test_the_dashboard_shows_a_real_sweeps_studies_learning_curves_and_importances(tmp_path):
    conf = tiny_music(tmp_path)
    url = f"journal:{tmp_path}/study.log"  # Optuna's own journal file (optuna-dashboard's CLI takes only a path)
    code, out, err = finish(odyssey("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla",
                                    "search.n_trials=3", "max_epochs=2", "patience=5", f"search.storage={url}",
                                    f"hydra.run.dir={tmp_path}/runs/sweep"))
    assert code == 0, err
    study = optuna.load_study(study_name="tiny.vanilla", storage=open_storage(url))
    process, port = dashboard(tmp_path, url)
    try:
        (listed,) = get(port, "/api/studies")["study_summaries"]
        assert listed["study_name"] == "tiny.vanilla" and listed["directions"] == ["minimize"]
        attrs = {a["key"]: a["value"] for a in listed["user_attrs"]}
        assert json.loads(attrs["protocol"])["max_epochs"] == 2  # the full record, as one JSON string
        assert "\n" not in attrs["protocol_summary"] and len(attrs["protocol_summary"]) < 300
        assert attrs["protocol_summary"].startswith("tiny (1 files, ")
        assert "recipe greff" in attrs["protocol_summary"] and "max_epochs 2, patience 5" in attrs["protocol_summary"]

        detail = get(port, f"/api/studies/{listed['study_id']}?after=0")
        assert detail["objective_names"] == ["val_nll"]  # the task's validation metric, not "Objective 0"
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == [t.number for t in study.trials] == [0, 1, 2]
        for trial in study.trials:  # the learning curves: every epoch's validation NLL, as the sweep reported it
            shown = trials[trial.number]
            assert trial.state.name == shown["state"].upper() == "COMPLETE"
            assert {v["step"]: v["value"] for v in shown["intermediate_values"]} == pytest.approx(
                trial.intermediate_values, rel=1e-12)
            assert len(trial.intermediate_values) == trial.user_attrs["epochs"] >= 1
            assert shown["values"] == pytest.approx([trial.value], rel=1e-12)
            assert {p["name"] for p in shown["params"]} == PARAMETERS

        (importances,) = get(port, f"/api/studies/{listed['study_id']}/param_importances")["param_importances"]
        assert {i["name"] for i in importances} == PARAMETERS  # PED-ANOVA, Optuna's default evaluator
        assert sum(i["importance"] for i in importances) == pytest.approx(1.0, abs=1e-6)
    finally:
        stop(process)


def test_a_postgresql_dashboard_takes_its_password_from_the_environment_not_the_command_line(tmp_path):
    """As for a sweep: the URL names no password; libpq reads PGPASSWORD (or ~/.pgpass)."""
    try:
        server = PostgresServer(password="dash-" + os.urandom(4).hex())
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"NO POSTGRESQL SERVER, test not run: {error}")
    try:
        url = server.database().replace(f":{server.password}@", "@")
        assert server.password not in url
        env = {**os.environ, "PGPASSWORD": server.password}
        code, out, err = finish(odyssey("sweep", "--config-dir", str(tiny_music(tmp_path)), "dataset=tiny",
                                        "variant=cifg", "search.n_trials=1", "max_epochs=1", f"search.storage={url}",
                                        f"hydra.run.dir={tmp_path}/runs/sweep", env=env))
        assert code == 0, err
        process, port = dashboard(tmp_path, url, env=env)
        try:
            (listed,) = get(port, "/api/studies")["study_summaries"]
            assert listed["study_name"] == "tiny.cifg"
            assert server.password not in " ".join(process.args)
        finally:
            out = stop(process)
        assert server.password not in out
    finally:
        server.stop()


def test_without_optuna_dashboard_the_command_says_how_to_install_it(tmp_path):
    """One line and exit status 2 (as every user error), not a traceback."""
    run = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['optuna_dashboard'] = None\n"  # as if not installed
         "from harness.cli import main; main(sys.argv[1:])", "dashboard",
         f"search.storage=sqlite:///{tmp_path}/none.db", f"hydra.run.dir={tmp_path}/runs"],
        cwd=project_root(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == ("odyssey dashboard: error: optuna-dashboard is not installed; run `bash "
                                  "scripts/setup.sh` (or pip install -c constraints.txt optuna-dashboard).")


def test_a_storage_that_does_not_exist_is_named_not_made(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness.cli", "dashboard", f"search.storage=journal:{tmp_path}/no.log",
                          f"hydra.run.dir={tmp_path}/runs"], cwd=project_root(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "there is no study storage at" in run.stderr and len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "no.log").exists()
