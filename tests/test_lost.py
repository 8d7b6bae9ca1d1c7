"""A trial lost at a stop is redone as itself (harness.study.sweep.release, harness.storage.Liveness.redo):
its redo has its parameters and seed and counts in its place, so that the configurations of a
study do not depend on when it was stopped; on the plain worker loop and on lockstep, with
the redo enqueued by the stopped worker or, where that failed, by the next worker to start."""

import optuna
import pytest
from optuna.trial import TrialState

import harness.study.sweep as sweep_module
from harness.storage import LOST_ATTR, REDO_ATTR, Liveness, counted, lineages, open_storage, uncounted
from harness.study.sweep import run_worker
from test_sweep import tiny_music

STUDY = "tiny.vanilla"


@pytest.fixture
def tiny(tmp_path, compose_config, monkeypatch):
    """tiny(name, *overrides, kind="sqlite") -> (the config of a sweep of the tiny data set
    into storage <name> of that kind, its URL); trials write under tmp_path, not results/."""
    conf = tiny_music(tmp_path)
    monkeypatch.setattr(sweep_module, "project_root", lambda: tmp_path)

    def make(name, *overrides, kind="sqlite"):
        url = f"journal:{tmp_path}/{name}.log" if kind == "journal" else f"sqlite:///{tmp_path}/{name}.db"
        cfg = compose_config([f"hydra.searchpath=[file://{conf}]", "dataset=tiny", "variant=vanilla",
                              f"search.storage={url}", "max_epochs=3", "patience=3",
                              "search.space.hidden_size.high=30", "search.space.learning_rate.low=1e-4",
                              *overrides], command="sweep")
        return cfg, url
    return make


def stop_at(monkeypatch, number, epoch, error=KeyboardInterrupt):
    """Stop the sweep after epoch `epoch` of trial `number` as a stop signal does
    (harness.storage.stop_on_signal raises KeyboardInterrupt in the worker), or crash it."""
    report = sweep_module.reporter

    def reporter(trial, reported):
        on_epoch = report(trial, reported)

        def stopping(at, value):
            on_epoch(at, value)
            if trial.number == number and at == epoch:
                raise error("SIGTERM")
        return stopping

    monkeypatch.setattr(sweep_module, "reporter", reporter)
    return lambda: monkeypatch.setattr(sweep_module, "reporter", report)


def read(url):
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    return study, study.get_trials(deepcopy=False)


def configurations(trials):
    """(params, seed) of the counted trials, in the order of their work (lineage roots)."""
    roots = lineages(trials)
    return [(tuple(sorted(t.params.items())), t.user_attrs["seed"])
            for t in sorted(counted(trials), key=lambda t: roots[t.number])]


@pytest.mark.parametrize("lockstep,kind", [(1, "sqlite"), (2, "sqlite"), (1, "journal")])
def test_a_stopped_sweep_ends_with_the_configurations_of_one_never_stopped(tiny, monkeypatch, capsys, lockstep, kind):
    """Five trials of three epochs; the stop comes after the second epoch of trial 2 (with
    lockstep=2, trials 2 and 3 run together and both are lost). The rerun redoes each lost
    trial first, with its parameters and seed, and then draws the configurations a sweep
    never stopped draws next: the counted trials are the same (params, seed), in the same order."""
    n = 5
    cfg, url = tiny("whole", "search.n_trials=5", f"search.lockstep={lockstep}", kind=kind)
    run_worker(cfg, "vanilla")
    _, whole = read(url)
    assert len(whole) == n and configurations(whole) == [
        (tuple(sorted(t.params.items())), t.user_attrs["seed"]) for t in whole]

    cfg, url = tiny("stopped", "search.n_trials=5", f"search.lockstep={lockstep}", kind=kind)
    go_on = stop_at(monkeypatch, 2, 2)
    with pytest.raises(KeyboardInterrupt):
        run_worker(cfg, "vanilla")
    go_on()
    _, trials = read(url)
    lost = [t for t in trials if t.user_attrs.get("lost")]
    assert [t.number for t in lost] == ([2] if lockstep == 1 else [2, 3])
    redos = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs[REDO_ATTR] for t in redos] == [t.number for t in lost]
    for trial, redo in zip(lost, redos):
        assert trial.state == TrialState.FAIL and trial.user_attrs["lost"] == "stopped: KeyboardInterrupt"
        assert redo.params == trial.params and redo.user_attrs == {"seed": trial.user_attrs["seed"]}
    assert not any(t.state == TrialState.RUNNING for t in trials)

    capsys.readouterr()
    run_worker(cfg, "vanilla")
    out = capsys.readouterr().out
    _, trials = read(url)
    assert configurations(trials) == configurations(whole)
    roots = lineages(trials)
    for trial, redo in zip(lost, redos):
        assert f"trial {trial.number} was lost at the stop; redoing it as trial {redo.number} with its own " \
               "parameters and seed" in out
        done = trials[redo.number]
        assert done.state == TrialState.COMPLETE and roots[redo.number] == trial.number
        assert done.params == trial.params and done.user_attrs["seed"] == trial.user_attrs["seed"]
    assert sorted(sweep_module.trial_draw(trials, t.number) for t in counted(trials)) == list(range(n))
    assert uncounted(trials) == {t.number: "lost" for t in lost}
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def test_a_redo_that_the_stop_could_not_enqueue_is_enqueued_at_the_next_start_once(tiny, monkeypatch):
    """The storage goes away between failing the lost trial and enqueuing its redo: the next
    worker to start enqueues it (Liveness.redo_lost), once. Two workers that started at once
    and both enqueued it: the second redo gives way to the first untrained; the study still
    ends with the configurations of a sweep never stopped."""
    cfg, url = tiny("whole", "search.n_trials=4")
    run_worker(cfg, "vanilla")
    _, whole = read(url)

    cfg, url = tiny("stopped", "search.n_trials=4")
    go_on = stop_at(monkeypatch, 1, 2)
    real_redo = Liveness.redo

    def storage_gone(self, study, lost):
        raise optuna.exceptions.StorageInternalError("the database stopped answering")

    monkeypatch.setattr(Liveness, "redo", storage_gone)
    with pytest.raises(KeyboardInterrupt):  # the stop, not the storage's error
        run_worker(cfg, "vanilla")
    go_on()
    monkeypatch.setattr(Liveness, "redo", real_redo)
    study, trials = read(url)
    assert trials[1].user_attrs["lost"] and trials[1].system_attrs[LOST_ATTR]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]  # no redo

    liveness = Liveness(open_storage(url), 60)
    assert liveness.redo_lost(study, 4) == [2]
    assert liveness.redo_lost(study, 4) == []  # it has its redo now
    assert liveness.redo(study, study.get_trials()[1]) == 3  # what a second worker starting at once adds

    trained = []
    train = sweep_module.train
    monkeypatch.setattr(sweep_module, "train", lambda trial_cfg, **kwargs: trained.append(trial_cfg.seed)
                        or train(trial_cfg, **kwargs))
    run_worker(cfg, "vanilla")
    _, trials = read(url)
    assert configurations(trials) == configurations(whole)
    assert trained.count(trials[1].user_attrs["seed"]) == 1  # the second redo was not trained
    assert trials[3].state == TrialState.FAIL and trials[3].user_attrs["duplicate_of"] == 2
    assert uncounted(trials) == {1: "lost", 3: "duplicate"}
    assert liveness.redo_lost(study, 4) == []


def test_a_trial_that_crashed_is_not_redone(tiny, monkeypatch):
    """A crash (any error but a stop) could crash every rerun: the trial is lost, not redone,
    and the rerun goes on with new configurations."""
    cfg, url = tiny("crashed", "search.n_trials=3")
    go_on = stop_at(monkeypatch, 1, 1, error=RuntimeError)
    with pytest.raises(RuntimeError):
        run_worker(cfg, "vanilla")
    go_on()
    study, trials = read(url)
    assert trials[1].user_attrs["lost"] == "stopped: RuntimeError" and LOST_ATTR not in trials[1].system_attrs
    assert len(trials) == 2 and Liveness(open_storage(url), 60).redo_lost(study, 3) == []
    run_worker(cfg, "vanilla")
    _, trials = read(url)
    assert [t.number for t in counted(trials)] == [0, 2, 3] and uncounted(trials) == {1: "lost"}
