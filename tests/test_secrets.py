"""A password in a storage URL is never printed or written (harness.storage.redact and
move_password): every command runs with a password-bearing PostgreSQL URL against a server
whose role needs that password (so it must reach the server, by PGPASSWORD), and against a
server that is down; every line printed and every file written is searched for it."""

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness import project_root
from harness.storage import move_password, redact
from postgres_server import PostgresServer, _free_port

SECRET = "s3cr3t-" + uuid.uuid4().hex[:10]


def test_redact_and_move_password(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    line = "cannot open 'postgresql+psycopg2://ann:p%40ss@db:5432/x' or mysql://b:pw@h/y; sqlite:///a:b@c.db"
    assert redact(line) == "cannot open 'postgresql+psycopg2://ann:***@db:5432/x' or mysql://b:***@h/y; sqlite:///a:b@c.db"
    assert move_password("postgresql://ann:p%40ss@db:5432/x?sslmode=require") == "postgresql://ann@db:5432/x?sslmode=require"
    assert os.environ["PGPASSWORD"] == "p@ss"  # decoded, as libpq wants it
    assert move_password("postgresql://ann@db/x") == "postgresql://ann@db/x"
    assert move_password("journal:/nfs/a:b@c.log") == "journal:/nfs/a:b@c.log"


@pytest.fixture(scope="module")
def server():
    try:
        one = PostgresServer(password=SECRET)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"NO POSTGRESQL SERVER, test not run: {error}")
    yield one
    one.stop()


def tiny_conf(directory: Path) -> Path:
    rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(6)] for k in range(n)]
             for split, n in (("train", 2), ("valid", 1), ("test", 1))}
    (directory / "tiny.json").write_text(json.dumps(rolls))
    (directory / "conf" / "dataset").mkdir(parents=True, exist_ok=True)
    (directory / "conf" / "dataset" / "tiny.yaml").write_text(
        f"name: tiny\nformat: pianoroll\npath: {directory / 'tiny.json'}\ntask: next_step\nbidirectional: false\n")
    return directory / "conf"


def odyssey(tmp_path, command, *arguments, env=None):
    run = subprocess.run([sys.executable, "-m", "harness.cli", command, "--config-dir", str(tiny_conf(tmp_path)),
                          f"hydra.run.dir={tmp_path}/runs/{command}-{uuid.uuid4().hex[:6]}", *arguments],
                         cwd=project_root(), capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in (env or os.environ).items() if k != "PGPASSWORD"})
    return run


def assert_nowhere(runs, *folders):
    """No output of `runs` and no file under `folders` holds the password (as text or bytes)."""
    for run in runs:
        assert SECRET not in run.stdout + run.stderr, run.stdout + run.stderr
    searched = 0
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                searched += 1
                assert SECRET.encode() not in path.read_bytes(), path
    return searched


def test_no_command_prints_or_writes_the_password(server, tmp_path):
    url = server.database()
    assert SECRET in url
    sweep_args = ["dataset=tiny", "search.n_trials=2", "search.workers=2", "max_epochs=1", f"search.storage={url}"]
    sweep = odyssey(tmp_path, "sweep", *sweep_args)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr  # the password reached the server (scram)
    assert "storage postgresql://odyssey@127.0.0.1" in sweep.stdout
    refused = odyssey(tmp_path, "sweep", *sweep_args, "patience=3")  # an error line that names the study
    assert refused.returncode == 2 and "patience=15" in refused.stderr, refused.stderr
    analyze = odyssey(tmp_path, "analyze", "analysis.dataset=tiny", f"analysis.storage={url}",
                      f"analysis.out={tmp_path}/analysis", "analysis.n_bootstrap=0", "analysis.figures=false")
    assert analyze.returncode == 0, analyze.stdout + analyze.stderr
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert re.search(r"Storage: `postgresql://odyssey@127\.0\.0\.1:\d+/t_\w+`", report), report[:400]
    train = odyssey(tmp_path, "train", "dataset=tiny", "max_epochs=1", f"search.storage={url}")
    assert train.returncode == 0, train.stdout + train.stderr

    dead = f"postgresql://odyssey:{SECRET}@127.0.0.1:{_free_port()}/nothing"  # no server listens there
    down = [odyssey(tmp_path, "sweep", "dataset=tiny", "search.n_trials=1", f"search.storage={dead}"),
            odyssey(tmp_path, "analyze", "analysis.dataset=tiny", f"analysis.storage={dead}")]
    for run in down:
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stdout + run.stderr
        assert "postgresql://odyssey@127.0.0.1" in run.stderr and "Traceback" not in run.stderr

    trials = project_root() / "results" / "sweeps" / url.rsplit("/", 1)[1]  # the trials' metrics.json
    try:
        searched = assert_nowhere([sweep, refused, analyze, train, *down], tmp_path, trials)
    finally:
        shutil.rmtree(trials, ignore_errors=True)
    assert searched >= 10  # .hydra records of 7 runs, metrics.json files, report.md, the CSV files


@pytest.mark.slow
def test_the_slurm_launcher_keeps_the_password_out_of_its_scripts_and_logs(server, tmp_path):
    from test_slurm import Cluster, DAEMONS

    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"SLURM TEST NOT RUN: {', '.join(missing) or 'not root'}")
    cluster = Cluster()
    try:
        reason = cluster.start()
        if reason is not None:
            pytest.skip(f"SLURM TEST NOT RUN: {reason}")
        url = server.database()
        env = {k: v for k, v in cluster.env.items() if k != "PGPASSWORD"}
        common = ["dataset=tiny", "search.launcher=slurm", f"search.slurm.folder={tmp_path}/slurm",
                  "search.slurm.poll_seconds=0.5", "search.slurm.time_min=10", "search.slurm.mem_gb=0.5",
                  "max_epochs=1"]
        up = odyssey(tmp_path, "sweep", *common, "search.workers=2", "search.n_trials=2", f"search.storage={url}",
                     env=env)
        assert up.returncode == 0, up.stdout + up.stderr  # the tasks reached the server: PGPASSWORD was theirs
        assert "submitted array job" in up.stdout
        dead = f"postgresql://odyssey:{SECRET}@127.0.0.1:{_free_port()}/nothing"
        down = odyssey(tmp_path, "sweep", *common, "search.n_trials=1", f"search.storage={dead}", env=env)
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stdout + down.stderr
        scripts = list((tmp_path / "slurm").rglob("*_submission.sh"))
        assert scripts and list((tmp_path / "slurm").rglob("*_log.out"))
        trials = project_root() / "results" / "sweeps" / url.rsplit("/", 1)[1]
        try:
            assert_nowhere([up, down], tmp_path, trials)
        finally:
            shutil.rmtree(trials, ignore_errors=True)
    finally:
        cluster.stop()
