"""Liveness of sweep workers (harness.storage.Liveness, harness.study.sweep): dead and silent workers'
trials are failed and retried, a trial wrongly taken for dead keeps its result, concurrent
starts on an empty storage, workers and cores, SIGTERM, a worker that dies, exit statuses."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import harness.study.sweep as sweep_module
from harness.storage import WORKER_ATTR, Liveness, counted, counts, create_study, open_storage, uncounted
from harness.study.sweep import EXIT_WORKER_DIED, run_worker
from harness.training.resources import cores, torch_threads
from harness.training.train import TrainingResult
from storage_race import race_on_empty_storage
from test_sweep import finish, odyssey, study_trials, tiny_music


def storage_url(tmp_path, kind):
    return f"journal:{tmp_path}/s.log" if kind == "journal" else f"sqlite:///{tmp_path}/s.db"


def stub_result(value):
    return TrainingResult(dataset="jsb_chorales", variant="vanilla", recipe="greff", metric="nll",
                          val_metric=value, test_metric=value + 1.0, best_epoch=1, epochs=1, n_params=10,
                          seconds=0.1, failure=None, hyperparameters={}, train={}, learning_curve=[], data={})


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_dead_or_silent_worker_is_failed_and_its_trial_retried(tmp_path, kind):
    url = storage_url(tmp_path, kind)
    storage = open_storage(url, heartbeat_seconds=1)
    liveness = Liveness(storage, 1)
    study = create_study(storage, study_name="x.vanilla")
    x = FloatDistribution(0.0, 1.0)
    trial = study.ask({"x": x})
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial_id = liveness.trial_id(study, trial.number)
    storage.set_trial_system_attr(trial_id, WORKER_ATTR, {"host": os.uname().nodename, "pid": dead.pid,
                                                         "trial": trial.number})
    assert liveness.fail_stale(study) == [0]
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL and not counts(first)
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    # the retry runs next, with the same parameters; its inherited worker attribute is not its own
    again = study.ask({"x": x})
    assert again.number == 1 and again.params == first.params
    assert liveness.fail_stale(study) == []
    # a live worker that beats is left alone, one silent for more than twice the beat is not
    with liveness.alive(study, again.number):
        time.sleep(2.5 * liveness.interval)
        assert liveness.fail_stale(study) == []
    time.sleep(3.5 * liveness.interval)  # SQLite keeps the heartbeat's time in whole seconds
    assert liveness.fail_stale(study) == [1]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    # a trial whose worker never beat (killed between ask and its first heartbeat): failed
    # after three grace periods from its start
    third = study.ask({"x": x})
    assert third.number == 2 and liveness.fail_stale(study) == []
    time.sleep(3 * liveness.grace + 0.5)
    assert liveness.fail_stale(study) == [2]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_taken_for_dead_keeps_its_result(tmp_path, kind, compose_config, monkeypatch):
    """heartbeat_seconds=1 and a worker that stops beating while it trains (as a stopped or
    overloaded machine would): another worker fails the trial and enqueues a retry; when the
    training ends, its result goes into the retry, which therefore never runs again."""
    url = storage_url(tmp_path, kind)
    cfg = compose_config([f"search.storage={url}", "search.n_trials=2", "search.heartbeat_seconds=1"],
                         command="sweep")
    values = iter([0.25, 0.5, 0.75])
    calls = []

    def silent_beat(self, trial_id, number):  # this worker's heartbeats stop reaching the storage
        if getattr(self, "mute", False):
            return
        original_beat(self, trial_id, number)

    original_beat = Liveness._beat
    monkeypatch.setattr(Liveness, "_beat", silent_beat)

    def stub_train(trial_cfg, data=None, out_dir=None, log=None, on_epoch=None):
        calls.append(trial_cfg.seed)
        value = next(values)
        if len(calls) == 1:  # the first training: go silent, and be judged by another worker
            Liveness.mute = True
            time.sleep(3.5)  # more than the grace period of 2 s (SQLite: whole seconds)
            other = Liveness(open_storage(url, heartbeat_seconds=1), 1)
            other_study = optuna.load_study(study_name="jsb_chorales.vanilla", storage=other.storage)
            assert other.fail_stale(other_study) == [0]
            Liveness.mute = False
        on_epoch(1, value)  # reporting to a trial failed meanwhile must not end the training
        return stub_result(value)

    monkeypatch.setattr(sweep_module, "train", stub_train)
    monkeypatch.setattr(Liveness, "mute", False, raising=False)
    run_worker(cfg, "vanilla", data="stub")
    _, trials = study_trials(url, "jsb_chorales.vanilla")
    assert len(calls) == 2  # the retry was not trained again
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].value == 0.25 and trials[1].user_attrs["late_result_of"] == 0
    assert trials[1].params == trials[0].params and trials[1].user_attrs["test_metric"] == 1.25
    assert trials[2].value == 0.5
    assert sum(counts(t) for t in trials) == 2


def test_a_late_result_whose_retry_runs_elsewhere_is_recorded_as_a_duplicate(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/d.db", heartbeat_seconds=1)
    liveness = Liveness(storage, 1)
    study = create_study(storage, study_name="x.vanilla")
    trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
    storage.set_trial_state_values(liveness.trial_id(study, 0), TrialState.FAIL)
    liveness.retry(study, study.get_trials()[0])
    elsewhere = study.ask()  # another worker took the retry
    assert elsewhere.number == 1
    assert liveness.keep_late_result(study, 0, TrialState.COMPLETE, 0.5, {"test_metric": 0.6}) is None
    first, retry, late = study.get_trials()
    assert retry.state == TrialState.RUNNING
    assert late.state == TrialState.COMPLETE and late.value == 0.5 and late.params == trial.params
    assert late.user_attrs == {"test_metric": 0.6, "late_result_of": 0, "duplicate_of": 1}
    assert not counts(late)


def _taken_for_dead(tmp_path):
    """A study whose trial 0 was failed as stale by another worker, its retry not made yet."""
    storage = open_storage(f"sqlite:///{tmp_path}/r.db", heartbeat_seconds=1)
    liveness = Liveness(storage, 1)
    study = create_study(storage, study_name="x.vanilla")
    study.ask({"x": FloatDistribution(0.0, 1.0)})
    storage.set_trial_state_values(liveness.trial_id(study, 0), TrialState.FAIL)
    return storage, liveness, study


def test_a_retry_made_after_its_late_result_was_kept_is_not_trained(tmp_path, compose_config):
    """The race of a PostgreSQL server restart: a worker fails trial 0 as stale, and before it
    has enqueued the retry, trial 0's own worker (alive after all) finds no retry and keeps its
    result as a trial of its own. The retry, made next, is dropped when a worker claims it."""
    storage, liveness, study = _taken_for_dead(tmp_path)
    assert liveness.keep_late_result(study, 0, TrialState.COMPLETE, 0.5, {}) is None  # no retry yet: trial 1
    liveness.retry(study, study.get_trials()[0])  # the retry, trial 2, enqueued late
    claimed = study.ask()
    assert claimed.number == 2 and claimed.params == study.get_trials()[0].params
    assert sweep_module.start_trial(study, claimed, compose_config([], command="sweep"), target=10) is None
    trials = study.get_trials()
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["duplicate_of"] == 1
    assert [t.number for t in counted(trials)] == [1]
    assert uncounted(trials) == {0: "retried", 2: "duplicate"}


def test_a_retry_keeps_the_place_of_the_trial_it_retries(tmp_path, compose_config):
    """The load test's race (64 workers, some killed): trial 0, enqueued by a user, is taken for
    dead; near the end of the study other workers have asked for trials that will find no place
    and are still running for a moment. The retry, numbered after them, stands where trial 0
    stood: it is trained, and the trials asked after trial 0 began give way to it."""
    storage, liveness, study = _taken_for_dead(tmp_path)
    space = {"x": FloatDistribution(0.0, 1.0)}
    study.tell(study.ask(space), 0.3)  # trial 1: a result
    late = [study.ask(space) for _ in range(2)]  # trials 2, 3: asked at the end, not started yet
    liveness.retry(study, study.get_trials()[0])
    retry = study.ask()
    assert retry.number == 4 and retry.params == study.get_trials()[0].params
    cfg = compose_config([], command="sweep")
    assert sweep_module.start_trial(study, retry, cfg, target=2) is not None  # one place taken (trial 1)
    assert [sweep_module.start_trial(study, t, cfg, target=2) for t in late] == [None, None]
    assert [study.get_trials()[t.number].user_attrs.get("surplus") for t in late] == [True, True]


def test_of_two_results_of_one_configuration_only_the_first_counts(tmp_path, compose_config):
    """The other order of the same race: a worker claimed the retry (trial 1) before the late
    result was kept, so both trained; the late result (trial 2, made with no retry in sight)
    has the same parameters and does not count, and a later count never loses trial 1."""
    storage, liveness, study = _taken_for_dead(tmp_path)
    liveness.retry(study, study.get_trials()[0])
    retry = study.ask()
    assert sweep_module.start_trial(study, retry, compose_config([], command="sweep"), target=10) is not None
    study.tell(retry, 0.7)
    original = study.get_trials()[0]
    study.add_trial(optuna.trial.create_trial(  # what keep_late_result adds when it sees no retry
        state=TrialState.COMPLETE, params=original.params, distributions=original.distributions, value=0.5,
        user_attrs={"late_result_of": 0}))
    trials = study.get_trials()
    assert trials[1].params == trials[2].params and counts(trials[1]) and counts(trials[2])
    assert [t.number for t in counted(trials)] == [1]
    assert uncounted(trials) == {0: "retried", 2: "duplicate"}
    fresh = study.ask({"x": FloatDistribution(0.0, 1.0)})  # a new trial takes the next number
    study.tell(fresh, 0.9)
    assert [t.number for t in counted(study.get_trials())] == [1, 3]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_processes_opening_an_empty_storage_at_the_same_moment_all_succeed(tmp_path, kind):
    race_on_empty_storage(storage_url(tmp_path, kind))


def test_threads_per_worker_share_the_cores(tmp_path, compose_config, monkeypatch):
    n = len(os.sched_getaffinity(0))
    assert cores() == n
    assert torch_threads("auto", 1) == n and torch_threads(None, 2) == max(1, n // 2)
    assert torch_threads("auto", 10 * n) == 1 and torch_threads(3, 2) == 3
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(Exception, match="train.threads"):
            torch_threads(bad, 1)
    seen = []
    monkeypatch.setattr(sweep_module, "train", lambda c, **k: seen.append(c.train.threads) or stub_result(0.1))
    cfg = compose_config([f"search.storage=sqlite:///{tmp_path}/t.db", "search.n_trials=1", "train.threads=auto"],
                         command="sweep")
    run_worker(cfg, "vanilla", data="stub", local_workers=2)
    assert seen == [max(1, n // 2)]


def _sweep_args(conf, url, *extra):
    return ("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla", f"search.storage={url}",
            "search.heartbeat_seconds=2", *extra)


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = predicate()
        except Exception:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_leaves_no_running_trial(tmp_path):
    """More workers than cores are capped with a warning; SIGTERM to the sweep stops them all
    within seconds, each trial released as lost by its worker, which leaves by itself (none
    is killed at the end of the grace)."""
    conf = tiny_music(tmp_path)
    url = f"sqlite:///{tmp_path}/term.db"
    workers = cores() + 2
    process = odyssey(*_sweep_args(conf, url, f"search.workers={workers}", "search.n_trials=50",
                                   "max_epochs=100000", "patience=100000"))

    def held():  # the trials that the workers hold (RUNNING, stamped by their worker), once each holds one
        trials = study_trials(url, "tiny.vanilla")[1]
        running = {t.number: t.system_attrs[WORKER_ATTR]["pid"] for t in trials
                   if t.state == TrialState.RUNNING and t.system_attrs.get(WORKER_ATTR, {}).get("trial") == t.number}
        return running if len(set(running.values())) >= min(2, cores()) else None

    holding = wait_for(held)
    time.sleep(1.0)
    started = time.time()
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process, timeout=60)
    stopped_in = time.time() - started
    _, trials = study_trials(url, "tiny.vanilla")
    seen = [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
    # a worker still there at the end of the grace is killed: say which, and what each worker said
    assert stopped_in < sweep_module.STOP_GRACE, (stopped_in, err, out[-4000:], seen)
    assert code == 130, err
    assert f"search.workers={workers} is more than the {cores()} cores" in err
    assert trials and not any(t.state == TrialState.RUNNING for t in trials), seen
    assert all(t.state in (TrialState.FAIL, TrialState.WAITING) for t in trials), seen
    for number in holding:  # each released by its own worker, with the reason
        assert trials[number].user_attrs.get("lost") == "stopped: KeyboardInterrupt", (seen, out, err)
    assert len({t.system_attrs[WORKER_ATTR]["pid"] for t in trials}) <= cores()


@pytest.mark.slow
def test_a_worker_that_dies_is_reported_and_the_study_still_ends_right(tmp_path):
    conf = tiny_music(tmp_path)
    url = f"sqlite:///{tmp_path}/died.db"
    process = odyssey(*_sweep_args(conf, url, "search.workers=2", "search.n_trials=6", "max_epochs=3"))

    def running_worker():
        trials = study_trials(url, "tiny.vanilla")[1]
        return next((t.system_attrs[WORKER_ATTR]["pid"] for t in trials
                     if t.state == TrialState.RUNNING and WORKER_ATTR in t.system_attrs), None)

    victim = wait_for(running_worker)
    os.kill(victim, signal.SIGKILL)
    code, out, err = finish(process, timeout=600)
    assert code == EXIT_WORKER_DIED, err
    assert f"(pid {victim}) was killed by signal SIGKILL" in err
    _, trials = study_trials(url, "tiny.vanilla")
    assert sum(counts(t) for t in trials) == 6
    assert not any(t.state == TrialState.RUNNING for t in trials)
    killed = [t for t in trials if t.system_attrs.get(WORKER_ATTR, {}).get("pid") == victim
              and t.state == TrialState.FAIL]
    assert killed, "the killed worker's trial is failed"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_sweeps_started_at_the_same_moment_on_an_empty_storage_all_succeed(tmp_path, kind):
    conf = tiny_music(tmp_path)
    url = storage_url(tmp_path, kind)
    args = _sweep_args(conf, url, "search.n_trials=5", "max_epochs=1")
    runs = [odyssey(*args) for _ in range(3)]
    for run in runs:
        code, out, err = finish(run)
        assert code == 0, err
    _, trials = study_trials(url, "tiny.vanilla")
    assert sum(counts(t) for t in trials) == 5
    assert not any(t.state == TrialState.RUNNING for t in trials)


STOP_INSIDE_LOCK = r"""
import os, signal, sys
from harness.storage import SignalSafeLock, stop_on_signals
stop_on_signals(signal.SIGTERM)
lock = SignalSafeLock(sys.argv[1])
lock.acquire()
os.kill(os.getpid(), signal.SIGTERM)   # arrives while the lock file is held
for _ in range(1000):                  # bytecodes run: a handler that raised would raise here
    pass
print("held", os.path.lexists(sys.argv[1] + ".lock"), flush=True)
try:
    lock.release()
except KeyboardInterrupt as stop:
    print("stopped", stop, os.path.lexists(sys.argv[1] + ".lock"), flush=True)
os.kill(os.getpid(), signal.SIGTERM)   # a second stop signal does not interrupt the release that follows
print("ignored", flush=True)
"""


def test_a_stop_signal_waits_until_the_journal_lock_is_released(tmp_path):
    """SIGTERM inside the journal's lock would leave the lock file behind (every process then
    waits out Optuna's grace period); it is raised as soon as the lock is released, once."""
    run = subprocess.run([sys.executable, "-c", STOP_INSIDE_LOCK, str(tmp_path / "studies.log")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["held True", "stopped SIGTERM False", "ignored"], run.stdout


STOP_INSIDE_DEL = r"""
import gc, os, signal
from harness.storage import check_stop, stop_on_signals
stop_on_signals(signal.SIGTERM)

class Garbage:
    def __del__(self):                     # as a weakref callback the garbage collector runs
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):              # the handler raises here, and Python drops it
            pass

Garbage()
gc.collect()
print("dropped", flush=True)
try:
    check_stop()                           # the next epoch of the worker
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


STOP_INSIDE_A_TRANSACTION = r"""
import os, signal, sqlite3, sys
import sqlalchemy
from harness.storage import check_stop, stop_on_signals
stop_on_signals(signal.SIGTERM)
path = sys.argv[1]
engine = sqlalchemy.create_engine(f"sqlite:///{path}")
with engine.begin() as connection:           # a write transaction, its connection checked out
    connection.exec_driver_sql("create table t (x int)")
    os.kill(os.getpid(), signal.SIGTERM)     # the stop comes inside it
    for _ in range(1000):                    # the handler has run by now
        pass
    connection.exec_driver_sql("insert into t values (1)")
    print("held", flush=True)
print("committed", flush=True)               # and the connection handed back to the pool
try:
    check_stop()                             # the next epoch of the worker
except KeyboardInterrupt:
    print("stopped", flush=True)
other = sqlite3.connect(path, timeout=0.5)  # no lock left behind: another connection writes at once
other.execute("insert into t values (2)")
other.commit()
print(*[x for (x,) in other.execute("select x from t order by x")], flush=True)
"""


def test_a_stop_inside_a_database_transaction_waits_for_its_end(tmp_path):
    """A stop raised inside a transaction, or inside the close that hands its connection
    back, left the SQLite lock held, and every worker's release of its trial then waited on
    it until the sweep killed them: the stop is held while the connection is checked out,
    and raised at the next check."""
    run = subprocess.run([sys.executable, "-c", STOP_INSIDE_A_TRANSACTION, str(tmp_path / "t.db")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["held", "committed", "stopped", "1", "2"], (run.stdout, run.stderr)


def test_a_stop_that_python_dropped_is_raised_at_the_next_check(tmp_path):
    """A stop signal handled inside a __del__ or weakref callback is printed as "Exception
    ignored" and lost; check_stop, called every epoch, raises it again."""
    run = subprocess.run([sys.executable, "-c", STOP_INSIDE_DEL], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Exception ignored" in run.stderr and "KeyboardInterrupt" in run.stderr, run.stderr
    assert run.stdout.split() == ["dropped", "stopped"], run.stdout


def test_a_worker_reads_the_whole_study_three_times_a_trial(tmp_path, compose_config, monkeypatch):
    """Each read of the whole study fetches every unfinished trial from a database server, and
    those reads were what held PostgreSQL at 64 workers back (README, "Faults at scale"). A
    pass of the worker's loop judges stale trials and counts from one read, which the progress
    line of the trial before it shares; the sampler (the trial's draw) and start_trial (its
    place) read once each. (Optuna's own read of the waiting trials in study.ask is not a
    Study.get_trials.)"""
    url = f"sqlite:///{tmp_path}/reads.db"
    n_trials = 6
    cfg = compose_config([f"search.storage={url}", f"search.n_trials={n_trials}", "search.heartbeat_seconds=1"],
                         command="sweep")
    monkeypatch.setattr(sweep_module, "train", lambda c, **k: k["on_epoch"](1, 0.5) or stub_result(0.5))
    readers = []  # the function that read the study, each time
    get_trials = optuna.Study.get_trials

    def counted_read(self, *args, **kwargs):
        readers.append(sys._getframe(1).f_code.co_name)
        return get_trials(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "get_trials", counted_read)
    run_worker(cfg, "vanilla", data="stub")
    assert len(counted(optuna.load_study(study_name="jsb_chorales.vanilla", storage=url).get_trials())) == n_trials
    loop = [name for name in readers if name in ("work", "draw", "start_trial", "trial_line", "fail_stale")]
    # the trials left, at the start; the first pass; then three a trial (the last one's for the pass that ends)
    assert len(loop) == 2 + 3 * n_trials, readers


def test_stale_trials_that_optunas_heartbeat_failed_are_reported_without_open_storage(tmp_path):
    """fail_stale names the trials Optuna's heartbeat failed: noted by open_storage's retry
    callback, or, on a storage made by hand, read back from the study."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=2)
    liveness = Liveness(storage, 1)
    study = create_study(storage, study_name="x.vanilla")
    trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
    with liveness.alive(study, trial.number):
        assert liveness.fail_stale(study, study.get_trials()) == []
    time.sleep(3.5)  # SQLite keeps the heartbeat's time in whole seconds
    assert liveness.fail_stale(study, study.get_trials()) == [0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]  # no retry callback given: none
