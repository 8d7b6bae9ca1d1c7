"""Sweeps on a real PostgreSQL server (tests/postgres_server.py starts one on loopback): the
README's plain postgresql:// URL, concurrent workers, concurrent starts on an empty database,
SIGKILL and resume to exactly n_trials, and `odyssey analyze` reading the database."""

import csv

import optuna
import pytest
from optuna.trial import TrialState

from harness.storage import counts, open_storage
from storage_race import race_on_empty_storage
from test_sweep import check_finished, finish, kill_mid_trial, odyssey, study_trials, tiny_music


def test_a_plain_postgresql_url_opens(postgres):
    url = postgres()
    assert url.startswith("postgresql://")  # no +driver: SQLAlchemy 2 picks psycopg 3
    storage = open_storage(url)
    assert storage.get_all_studies() == []


def test_processes_opening_an_empty_database_at_the_same_moment_all_succeed(postgres):
    race_on_empty_storage(postgres())


@pytest.mark.slow
def test_sweeps_started_at_once_on_an_empty_database_share_the_study_then_analyze_reads_it(tmp_path, postgres):
    """Two `odyssey sweep` (of two workers and one) started together on an empty database:
    both succeed, the study ends with exactly n_trials; then `odyssey analyze` from it."""
    conf = tiny_music(tmp_path)
    url = postgres()
    args = ("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla", "search.n_trials=8",
            "max_epochs=1", f"search.storage={url}")
    runs = [odyssey(*args, "search.workers=2"), odyssey(*args, "search.workers=1")]
    for run in runs:
        code, out, err = finish(run)
        assert code == 0, err
    _, trials = study_trials(url, "tiny.vanilla")
    check_finished(trials, 8)
    out_dir = tmp_path / "analysis"
    code, out, err = finish(odyssey("analyze", "analysis.dataset=tiny", f"analysis.storage={url}",
                                    f"analysis.out={out_dir}", "analysis.figures=false",
                                    "analysis.n_bootstrap=0", "analysis.crosscheck=false"))
    assert code == 0, err
    with open(out_dir / "trials.csv") as table:
        rows = list(csv.DictReader(table))
    complete = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert sorted(int(r["number"]) for r in rows if r["state"] == "COMPLETE") == sorted(complete)
    assert (out_dir / "report.md").is_file()


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_ends_with_exactly_n_trials(tmp_path, postgres):
    conf = tiny_music(tmp_path)
    url = postgres()
    args = ("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=cifg", "search.n_trials=6",
            "search.workers=2", "max_epochs=150", "patience=1000", f"search.storage={url}",
            "search.heartbeat_seconds=3")  # a trial killed before its first beat: failed after 18 s
    process = odyssey(*args)
    opened = []  # the schema is the sweep's to create: opened once it has

    def read():
        opened[:] = opened or [open_storage(url, create=False)]
        return optuna.load_study(study_name="tiny.cifg", storage=opened[0]).get_trials(deepcopy=False)

    trials = kill_mid_trial(process, read)  # the sweep and its workers, mid-trial
    assert any(t.state == TrialState.RUNNING for t in study_trials(url, "tiny.cifg")[1])  # left behind by the kill
    done_before = sum(counts(t) for t in trials)
    assert 1 <= done_before < 6
    code, out, err = finish(odyssey(*args))  # same host, dead pids: resumes at once
    assert code == 0, err
    _, trials = study_trials(url, "tiny.cifg")
    check_finished(trials, 6)
