"""Reproducible studies: a trial's parameters and training seed follow from the sweep's
seed, the study's name and the trial's number only (not the host, not the worker)."""

import json
import math
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from harness.study import sweep
from test_sweep import finish, odyssey, study_trials, tiny_music

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"hidden_size": IntDistribution(20, 200, log=True),
         "learning_rate": FloatDistribution(1e-6, 1e-2, log=True),
         "input_noise_std": FloatDistribution(0.0, 1.0),
         "depth": IntDistribution(1, 7, step=2),
         "optimizer": CategoricalDistribution(["sgd", "adam"])}


def inside(distribution, value) -> bool:
    """Whether `value` is a value of `distribution`, from its public fields."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if not distribution.low <= value <= distribution.high:
        return False
    if isinstance(distribution, IntDistribution):
        return isinstance(value, int) and (value - distribution.low) % distribution.step == 0
    return isinstance(value, float)


def _draw(study_name, n, seed=0, enqueue=None):
    study = optuna.create_study(study_name=study_name, sampler=sweep.TrialNumberSampler(seed))
    if enqueue:
        study.enqueue_trial(enqueue)
    trials = [study.ask(SPACE) for _ in range(n)]
    return [t.params for t in trials]


def test_draws_depend_on_seed_study_and_number_only():
    first = _draw("jsb.vanilla", 30)
    assert _draw("jsb.vanilla", 30) == first  # another process or host: the same
    assert _draw("jsb.cifg", 30) != first and _draw("jsb.vanilla", 30, seed=1) != first
    # the same trial number gives the same draw, whichever trial came before it
    study = optuna.create_study(study_name="jsb.vanilla", sampler=sweep.TrialNumberSampler(0))
    for _ in range(5):
        study.tell(study.ask(), state=TrialState.FAIL)  # five numbers used up without params
    assert study.ask(SPACE).params == first[5]
    for params in first:  # inside the distributions, integers on their grid
        for name, distribution in SPACE.items():
            assert inside(distribution, params[name]), (name, params[name])
    assert not inside(SPACE["depth"], 2) and not inside(SPACE["learning_rate"], 0.1)  # the check can fail
    # log-uniform: about half of 200 learning rates below the geometric middle 1e-4
    rates = [p["learning_rate"] for p in _draw("x.y", 200)]
    assert 70 < sum(r < 1e-4 for r in rates) < 130
    depths = {p["depth"] for p in _draw("x.y", 200)}
    assert depths == {1, 3, 5, 7}


def test_enqueued_trials_keep_their_parameters():
    given = {"hidden_size": 33, "learning_rate": 1e-3, "input_noise_std": 0.5, "depth": 3,
             "optimizer": "adam"}
    params = _draw("jsb.vanilla", 3, enqueue=given)
    assert params[0] == given and params[1:] == _draw("jsb.vanilla", 3)[1:]


def test_trial_seed_is_independent_of_the_host(monkeypatch):
    seed = sweep.trial_seed(0, "jsb.vanilla", 7)
    monkeypatch.setattr("socket.gethostname", lambda: "another-machine")
    assert sweep.trial_seed(0, "jsb.vanilla", 7) == seed
    assert sweep.trial_seed(0, "jsb.vanilla", 8) != seed and 0 <= seed < 2**31


@pytest.mark.slow
def test_one_and_two_workers_give_the_same_study_and_train_reproduces_a_trial(tmp_path):
    conf = tiny_music(tmp_path)
    studies = {}
    for workers in (1, 2):
        url = f"sqlite:///{tmp_path}/w{workers}.db"
        code, out, err = finish(odyssey("sweep", "--config-dir", str(conf), "dataset=tiny",
                                        "variant=vanilla", "search.n_trials=6", "max_epochs=3",
                                        "patience=3", f"search.workers={workers}",
                                        f"search.storage={url}"))
        assert code == 0, err
        _, trials = study_trials(url, "tiny.vanilla")
        studies[workers] = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    one, two = studies[1], studies[2]
    common = sorted(set(one) & set(two))
    assert len(one) == 6 and len(common) >= 5  # a racing worker may burn one number
    for number in common:
        a, b = one[number], two[number]
        assert a.params == b.params
        assert a.user_attrs["seed"] == b.user_attrs["seed"]
        assert a.value == pytest.approx(b.value, rel=1e-9)
        assert a.user_attrs["test_metric"] == pytest.approx(b.user_attrs["test_metric"], rel=1e-9)
        # one report a validated epoch: the learning curve optuna-dashboard draws
        assert sorted(a.intermediate_values) == list(range(1, a.user_attrs["epochs"] + 1))
        assert min(a.intermediate_values.values()) == pytest.approx(a.value)

    # `odyssey train` with the trial's parameters and seed trains it again
    trial = one[common[-1]]
    params = trial.params
    code, out, err = finish(odyssey(
        "train", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla", "max_epochs=3",
        "patience=3", f"hidden_size={params['hidden_size']}",
        f"learning_rate={params['learning_rate']!r}", f"momentum={trial.user_attrs['momentum']!r}",
        f"input_noise_std={params['input_noise_std']!r}", f"seed={trial.user_attrs['seed']}",
        f"hydra.run.dir={tmp_path / 'again'}"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert math.isclose(metrics["test_metric"], trial.user_attrs["test_metric"], rel_tol=1e-3)
    assert metrics["best_epoch"] == trial.user_attrs["best_epoch"]
    assert re.search(r"metrics: .*metrics.json", out)
