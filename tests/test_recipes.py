"""Training recipes (conf/train/, harness.training.recipes): the adam and adamw updates against
their equations written out by hand (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter
2019), gradient-norm clipping and the schedules against their formulas, minibatches on
both engines, and the recipe files as the command line composes them."""

import copy
import json
import math

from pathlib import Path

import numpy as np
import pytest
import torch

from harness import kernels
from harness.datasets import Sequence
from harness.models.networks import SequenceNetwork
from harness.training import tasks
from harness.training.engine import NativeStep, TorchStep
from harness.training.recipes import Recipe
from harness.training.train import train

M, N, K = 5, 4, 3


def sequences(lengths, seed):
    rng = np.random.default_rng(seed)
    return [Sequence(x=rng.normal(size=(T, M)).astype(np.float32),
                     y=(rng.random((T, K)) < 0.3).astype(np.float32)) for T in lengths]


def recipe(optimizer="adam", **keys):
    values = {"betas": (0.9, 0.999), "eps": 1e-8, **keys}
    return Recipe(name=optimizer, optimizer=optimizer, learning_rate=keys.pop("learning_rate", 0.01),
                  **{k: v for k, v in values.items() if k != "learning_rate"})


def hand_adam(reference, batches, lr, betas, eps, weight_decay=0.0, max_norm=None):
    """Adam / AdamW step by step from the equations, on autograd's gradients of the
    summed loss (the cells' Python loops: no compiled code)."""
    b1, b2 = betas
    params = list(reference.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, batch in enumerate(batches, start=1):
        loss = tasks.loss("next_step", reference(batch.x, batch.lengths), batch)
        grads = torch.autograd.grad(loss, params)
        if max_norm is not None:
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
            grads = [g * min(1.0, max_norm / (norm + 1e-6)) for g in grads]
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads)):
                p.mul_(1 - lr * weight_decay)  # AdamW's decoupled decay (0 for Adam)
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
                p -= lr * m_hat / (v_hat.sqrt() + eps)


def padded_batches(seed):
    groups = [sequences([6, 9, 4], seed), sequences([7, 3], seed + 1), sequences([8, 8, 5], seed + 2)]
    return [tasks.make_batch(group, "next_step") for group in groups]


ENGINES = ["torch"] + (["native"] if kernels.lstm() is not None else [])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", [
    {"optimizer": "adam"},
    {"optimizer": "adam", "max_grad_norm": 0.5},
    {"optimizer": "adamw", "weight_decay": 0.1},
], ids=["adam", "adam clipped", "adamw"])
def test_update_equals_the_equations_by_hand(engine, case, float64, monkeypatch):
    torch.manual_seed(3)
    network = SequenceNetwork("vanilla", M, N, K, init_std=0.3)
    reference, initial = copy.deepcopy(network), copy.deepcopy(network)
    batches = padded_batches(seed=4)
    the_recipe = recipe(**case, learning_rate=0.02)
    step = (NativeStep if engine == "native" else TorchStep)(network, "next_step", the_recipe)
    for batch in batches:
        step(batch, batch.x)
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1")
    hand_adam(reference, batches, 0.02, (0.9, 0.999), 1e-8, case.get("weight_decay", 0.0),
              case.get("max_grad_norm"))
    for (name, p), q in zip(reference.named_parameters(), network.parameters()):
        assert torch.allclose(p, q, rtol=1e-7, atol=1e-9), name
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(network.parameters(), initial.parameters()))
    assert moved > 0.01  # three steps of about the learning rate each


def test_clipping_rescales_the_whole_gradient_to_the_norm(float64):
    """||g|| > max_grad_norm: every tensor scaled by the same factor, the norm becomes max_grad_norm."""
    torch.manual_seed(0)
    network = SequenceNetwork("vanilla", M, N, K, init_std=0.3)
    batch = padded_batches(seed=1)[0]
    loss = tasks.loss("next_step", network(batch.x, batch.lengths), batch)
    loss.backward()
    before = [p.grad.clone() for p in network.parameters()]
    norm = math.sqrt(sum(float((g * g).sum()) for g in before))
    assert norm > 0.1
    update = recipe(max_grad_norm=0.1, learning_rate=0.0).update(network.parameters())
    update()
    after = [p.grad for p in network.parameters()]
    assert math.sqrt(sum(float((g * g).sum()) for g in after)) == pytest.approx(0.1, rel=1e-5)
    for g0, g1 in zip(before, after):
        assert torch.allclose(g1, g0 * (0.1 / norm), rtol=1e-5)


def test_schedules_follow_their_formulas():
    param = [torch.nn.Parameter(torch.zeros(1))]
    cosine = recipe(schedule="cosine", cosine_min_fraction=0.1, max_epochs=10, learning_rate=0.02).update(param)
    rates = []
    for epoch in range(1, 11):
        cosine.optimizer.step()  # (no gradient: nothing moves) before the schedule, as in training
        cosine.end_epoch(1.0)
        rates.append(cosine.step_size)
    low = 0.002  # eta_t = low + (lr - low) (1 + cos(pi t / T)) / 2
    assert rates == pytest.approx([low + (0.02 - low) * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(1, 11)])
    plateau = recipe(schedule="plateau", plateau_factor=0.5, plateau_patience=2, learning_rate=0.02).update(param)
    seen = []
    for value in [5.0, 4.0, 4.5, 4.2, 4.1, 4.3, 3.0]:  # no better than 4.0 for 3 epochs: halved once
        plateau.end_epoch(value)
        seen.append(plateau.step_size)
    assert seen == pytest.approx([0.02, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01])


def test_greff_recipe_is_greffs(compose_config):
    cfg = compose_config(["learning_rate=0.05", "momentum=0.5"])
    greff = Recipe.from_config(cfg)
    assert (greff.name, greff.optimizer, greff.max_grad_norm, greff.schedule) == ("greff", "sgd_nesterov", None, "none")
    assert (greff.learning_rate, greff.momentum, cfg.train.batch_size) == (0.05, 0.5, 1)
    assert cfg.train.get("space") is None  # its sweep searches search.space, Greff's


def test_adam_recipes_compose_with_their_keys(compose_config):
    adam, adamw = compose_config(["train=adam"]), compose_config(["train=adamw"])
    assert Recipe.from_config(adam).optimizer == "adam" and "weight_decay" not in adam.train
    assert adamw.train.engine == adam.train.engine == compose_config().train.engine  # from greff's file
    assert Recipe.from_config(adamw).weight_decay == adamw.train.weight_decay > 0
    assert set(adam.train.space) == {"hidden_size", "learning_rate", "batch_size", "input_noise_std"}
    assert set(adamw.train.space) == set(adam.train.space) | {"weight_decay"}


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_minibatch_training_is_the_same_on_both_engines(compose_config, name):
    """Three epochs of minibatches (a padded batch a step) with input noise and a schedule."""
    if kernels.lstm() is None:
        pytest.skip("the compiled loops could not be built")
    from test_train import tiny_jsb

    data = tiny_jsb(compose_config)
    base = [f"train={name}", "max_epochs=3", "hidden_size=12", "input_noise_std=0.2", "seed=2",
            "train.batch_size=4", "train.schedule=cosine", "train.max_grad_norm=50.0"]
    native = train(compose_config(base + ["train.engine=native"]), data=data, log=lambda _: None)
    reference = train(compose_config(base + ["train.engine=torch"]), data=data, log=lambda _: None)
    assert native["recipe"] == name and native["train"]["batch_size"] == 4
    for a, b in zip(native["learning_curve"], reference["learning_curve"]):
        assert a["val_metric"] == pytest.approx(b["val_metric"], rel=1e-4)
    assert native["test_metric"] == pytest.approx(reference["test_metric"], rel=1e-4)
    first, last = native["learning_curve"][0], native["learning_curve"][-1]
    assert last["train_loss_per_frame"] < first["train_loss_per_frame"]


# -- the sweep of a recipe, pruning, and bad input -----------------------------------------

def tiny_music(tmp_path):
    from test_sweep import tiny_music as make

    return make(tmp_path)


def sweep_command(conf, url, *overrides, n_trials):
    return ("sweep", "--config-dir", str(conf), "dataset=tiny", "variant=vanilla", f"search.storage={url}",
            f"search.n_trials={n_trials}", *overrides)


def test_a_recipe_sweep_samples_its_own_space_into_its_own_study(tmp_path):
    import optuna
    from test_sweep import finish, odyssey

    conf, url = tiny_music(tmp_path), f"sqlite:///{tmp_path}/recipes.db"
    adam = ("train=adam", "max_epochs=2", "train.space.batch_size.choices=[2,3]")
    assert finish(odyssey(*sweep_command(conf, url, *adam, n_trials=3)))[0] == 0
    assert finish(odyssey(*sweep_command(conf, url, "max_epochs=1", n_trials=2)))[0] == 0
    studies = {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(url)}
    identity = {name: {key: attrs[key] for key in ("dataset", "variant", "recipe")} for name, attrs in studies.items()}
    assert identity == {"tiny.adam.vanilla": {"dataset": "tiny", "variant": "vanilla", "recipe": "adam"},
                        "tiny.vanilla": {"dataset": "tiny", "variant": "vanilla", "recipe": "greff"}}
    # each study recorded the protocol of its own recipe (harness.storage.protocol)
    assert studies["tiny.adam.vanilla"]["protocol"]["space"]["batch_size"]["choices"] == [2, 3]
    assert "batch_size" not in studies["tiny.vanilla"]["protocol"]["space"]
    trials = optuna.load_study(study_name="tiny.adam.vanilla", storage=url).trials
    assert all(set(t.params) == {"hidden_size", "learning_rate", "batch_size", "input_noise_std"} for t in trials)
    assert all(t.params["batch_size"] in (2, 3) and 1e-4 <= t.params["learning_rate"] <= 1e-1 for t in trials)
    assert all("momentum" not in t.user_attrs for t in trials)
    metrics = json.loads(Path(trials[0].user_attrs["metrics"]).read_text())
    assert metrics["recipe"] == "adam" and metrics["train"]["batch_size"] == trials[0].params["batch_size"]
    assert "momentum" not in metrics["hyperparameters"]
    greff = optuna.load_study(study_name="tiny.vanilla", storage=url).trials
    assert all("one_minus_momentum" in t.params for t in greff)


def test_pruned_trials_count_and_a_stopped_sweep_tops_up(tmp_path):
    """search.pruner=median: pruned trials are PRUNED, count toward n_trials, record the
    epochs and seconds they ran; a sweep killed (SIGKILL) and run again ends with exactly n."""
    import os
    import signal
    import time

    import optuna
    from optuna.trial import TrialState
    from test_sweep import finish, odyssey

    from harness.storage import counts

    conf, url = tiny_music(tmp_path), f"sqlite:///{tmp_path}/pruned.db"
    pruned = ("max_epochs=6", "search.pruner=median", "search.pruner_startup_trials=2",
              "search.pruner_warmup_epochs=1")
    process = odyssey(*sweep_command(conf, url, *pruned, n_trials=10))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="tiny.vanilla", storage=url).trials
        except KeyError:
            continue
        if sum(counts(t) for t in trials) >= 4:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait()
    code, out, err = finish(odyssey(*sweep_command(conf, url, *pruned, n_trials=10)))
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny.vanilla", storage=url).trials
    counted = [t for t in trials if counts(t)]
    assert len(counted) == 10
    states = [t.state for t in counted]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in counted:
        if t.state == TrialState.PRUNED:
            assert 1 <= t.user_attrs["epochs"] == t.user_attrs["pruned_at_epoch"] < 6
            assert t.user_attrs["seconds"] > 0 and "test_metric" not in t.user_attrs
    assert "pruned" in out


@pytest.mark.slow
def test_hyperband_prunes_at_its_rungs_and_the_study_ends_with_n_trials(tmp_path):
    """search.pruner=hyperband (min resource 1 epoch, reduction factor 3, at most 9 epochs):
    a trial is stopped only at the end of a rung, after 1 or 3 epochs (1 * 3^k below 9),
    and pruned and complete trials together make exactly n_trials."""
    import optuna
    from optuna.trial import TrialState
    from test_sweep import finish, odyssey

    from harness.storage import counts

    conf, url = tiny_music(tmp_path), f"sqlite:///{tmp_path}/hyperband.db"
    code, out, err = finish(odyssey(*sweep_command(
        conf, url, "max_epochs=9", "patience=9", "search.pruner=hyperband", "search.pruner_warmup_epochs=1",
        "search.pruner_reduction_factor=3", n_trials=16)))
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny.vanilla", storage=url).trials
    counted = [t for t in trials if counts(t)]
    assert len(counted) == 16
    pruned = [t for t in counted if t.state == TrialState.PRUNED]
    assert pruned and any(t.state == TrialState.COMPLETE for t in counted)
    assert {t.user_attrs["pruned_at_epoch"] for t in pruned} <= {1, 3}


def test_pruned_trials_stay_out_of_the_fanova_and_the_report_says_so(tmp_path):
    import optuna

    from harness import analysis
    from harness.study.sweep import open_study

    url = f"sqlite:///{tmp_path}/a.db"
    study = open_study(optuna.storages.RDBStorage(url), "tiny", "vanilla", seed=0)
    for k in range(30):
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        value = 3 + abs(math.log10(trial.params["learning_rate"]) + 2.5) + 0.01 * k
        if k % 3 == 0:
            trial.set_user_attr("epochs", 2)
            trial.set_user_attr("seconds", 1.5)
            trial.report(value, 2)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            for key, item in {"test_metric": value, "epochs": 10, "seconds": 7.0}.items():
                trial.set_user_attr(key, item)
            study.tell(trial, value)
    cfg = {"dataset": "tiny", "storage": url, "out": str(tmp_path / "out"), "n_bootstrap": 0,
           "figures": False, "crosscheck": False, "min_trials_for_fanova": 10}
    analysis.run(cfg)
    trials = pd_read(tmp_path / "out" / "trials.csv")
    assert (trials.excluded.fillna("") == "pruned").sum() == 10
    report = (tmp_path / "out" / "report.md").read_text()
    assert "10 of 30 trials were pruned" in report
    assert "trained 20 epochs in 15 s" in report and "20 complete trials ran a mean of 10.0 epochs in 7.0 s" in report


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path)


@pytest.mark.parametrize("arguments,words", [
    (("train", "train=sgd"), ["unknown recipe", "adam, adamw, greff"]),
    (("train", "train=adam", "train.weight_decay=0.1"), ["train.weight_decay", "adamw", "not of train=adam"]),
    (("train", "train.betas=[0.9,0.99]"), ["train.betas", "adam and adamw", "not of train=greff"]),
    (("train", "train=adamw", "momentum=0.5"), ["momentum=0.5", "reads no momentum", "train=greff"]),
    (("train", "train=adam", "train.schedule=step"), ["train.schedule=step", "none, plateau, cosine"]),
    (("train", "train=adam", "train.max_grad_norm=-1"), ["train.max_grad_norm", "positive"]),
    (("train", "train.batch_size=500"), ["train.batch_size=500", "229 sequences", "at most 229"]),
    (("sweep", "search.pruner=asha"), ["search.pruner=asha", "none, median, hyperband"]),
    (("sweep", "train=adam", "search.space.learning_rate.low=1e-3"), ["train.space.learning_rate.low", "own space"]),
    (("sweep", "search.space.batch_size={type: categorical, choices: [1, 2]}"), ["search.space.batch_size", "+"]),
    (("sweep", "train=adam", "+train.space.one_minus_momentum={type: float, low: 0.1, high: 1.0}"),
     ["train.space.one_minus_momentum", "no momentum"]),
    (("sweep", "train=adam", "train.space.batch_size.choices=[4,400]"), ["batch_size", "400", "229 sequences"]),
])
def test_bad_recipe_input_is_one_line_naming_the_key(capsys, tmp_path, arguments, words):
    from test_user_errors import refused

    storage = (f"search.storage=sqlite:///{tmp_path}/x.db",) if arguments[0] == "sweep" else ()
    line = refused(capsys, *arguments, *storage, "max_epochs=1")
    for word in words:
        assert word in line, line


def test_a_recipe_of_ones_own_from_a_config_dir(tmp_path, capsys):
    from test_user_errors import odyssey, refused

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.yaml").write_text("defaults:\n  - adam\n  - _self_\nname: mine\nbatch_size: 4\n"
                                                  "schedule: plateau\n")
    (tmp_path / "train" / "unnamed.yaml").write_text("defaults:\n  - adam\n  - _self_\n")
    code, out, err = odyssey(capsys, "train", "--config-dir", str(tmp_path), "train=mine", "max_epochs=1",
                             "hidden_size=10")
    assert code == 0, err
    assert "mine (adam)" in out and "plateau schedule" in out and "batch 4" in out
    line = refused(capsys, "train", "--config-dir", str(tmp_path), "train=unnamed", "max_epochs=1")
    assert "name: adam" in line and "name: unnamed" in line


def test_bench_has_a_row_for_each_recipe():
    from omegaconf import OmegaConf

    from harness.bench import markdown
    from harness.bench.recipes import time_recipes

    rows = time_recipes(OmegaConf.create({"names": ["greff", "adam"], "hidden_size": 8, "warm": 1, "timed": 1}))
    assert [(r["recipe"], r["optimizer"], r["batch_size"]) for r in rows] == [("greff", "sgd_nesterov", 1),
                                                                             ("adam", "adam", 8)]
    expected_engine = "native" if kernels.lstm() is not None else "torch"
    assert all(r["engine"] == expected_engine and r["trained_s"] > 0 and r["torch_trained_s"] > 0 for r in rows)
    table = markdown({"recipes": rows})
    assert "| greff (sgd_nesterov) | 1 |" in table and "| adam (adam) | 8 |" in table


def synthetic_studies(url, recipes_and_sizes):
    """Studies of tiny.vanilla / tiny.nfg under each recipe, trials whose test metric
    follows the learning rate (the recipe shifts it), as a sweep records them."""
    import optuna

    from harness.study.sweep import open_study

    storage = optuna.storages.RDBStorage(url)
    for recipe, n, shift in recipes_and_sizes:
        for variant in ("vanilla", "nfg"):
            study = open_study(storage, "tiny", variant, seed=0, recipe=recipe)
            for k in range(n):
                trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                                   "hidden_size": optuna.distributions.IntDistribution(10, 100, log=True)})
                value = shift + abs(math.log10(trial.params["learning_rate"]) + 2.5) + 0.001 * k
                for key, item in {"test_metric": value, "epochs": 5, "seconds": 1.0}.items():
                    trial.set_user_attr(key, item)
                study.tell(trial, value)


def test_two_recipes_never_pool_and_compare_side_by_side(tmp_path):
    from omegaconf import OmegaConf

    from harness.analysis import compare as comparison
    from harness.analysis import read
    from harness.errors import UserError

    url = f"sqlite:///{tmp_path}/two.db"
    synthetic_studies(url, [("greff", 12, 3.0), ("adam", 10, 100.0)])
    with pytest.raises(UserError, match=r"several recipes \(adam, greff\).*analysis.recipe"):
        read.load(url, "tiny")
    adam = read.load(url, "tiny", recipe="adam")
    assert adam.recipe == "adam" and len(adam.trials) == 20 and (adam.trials.test_metric > 99).all()
    assert len(read.load(url, "tiny", recipe="greff").trials) == 24
    with pytest.raises(UserError, match="recipe 'adamw'.*adam, greff"):
        read.load(url, "tiny", recipe="adamw")
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "analysis" / "default.yaml")
    cfg = OmegaConf.merge({k: v for k, v in cfg.items() if k != "defaults"},
                          {"dataset": "tiny", "storage": url, "recipe": ["greff", "adam"], "out": str(tmp_path / "cmp"),
                           "n_bootstrap": 0, "figures": False, "crosscheck": False, "min_trials_for_fanova": 10})
    assert comparison.is_comparison(cfg)
    page = comparison.compare(cfg)
    cards = pd_read(tmp_path / "cmp" / "scorecards.csv")
    assert list(cards.columns) == ["finding", "tasks", "greff", "adam"] and len(cards) == 10
    for recipe, n in (("greff", 24), ("adam", 20)):
        assert len(pd_read(tmp_path / "cmp" / recipe / "trials.csv")) == n  # each recipe's own trials only
        assert f"recipe `{recipe}`" in (tmp_path / "cmp" / recipe / "report.md").read_text() or recipe == "greff"
    text = page.read_text()
    lowest = [read.load(url, "tiny", recipe=r).trials.test_metric.min() for r in ("greff", "adam")]
    assert "| trials | 24 | 20 |" in text and f"| lowest test metric | {lowest[0]:.3f} | {lowest[1]:.3f} |" in text


@pytest.mark.slow
def test_adam_reaches_the_issue_quality_on_jsb(tmp_path):
    """`odyssey train train=adam learning_rate=1e-2 train.batch_size=8 max_epochs=20` on JSB:
    test NLL <= 9.0 (measured 8.77)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "harness.cli", "train", "train=adam", "learning_rate=1e-2",
                           "train.batch_size=8", "max_epochs=20", "train.threads=1", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == "adam" and metrics["epochs"] == 20
    assert metrics["test_metric"] <= 9.0


def test_the_checks_take_a_recipe_number_in_search_space_as_the_sweep_does(compose_config, tmp_path):
    """Greff's recipe may search one of its numbers (train.batch_size) through search.space:
    the checks before any work accept what the sweep samples, and refuse a bad range."""
    from harness.errors import UserError
    from harness.study.sweep import space_of
    from harness.validate import check_config

    searched = ["+search.space.batch_size={type: categorical, choices: [1, 2]}",
                f"search.storage=sqlite:///{tmp_path}/s.db"]
    cfg = compose_config(searched, command="sweep")
    check_config(cfg, searched)
    assert space_of(cfg)["batch_size"].choices == (1, 2)
    bad = [*searched, "search.space.learning_rate.low=0"]
    with pytest.raises(UserError, match="log-uniform range needs low > 0"):
        check_config(compose_config(bad, command="sweep"), bad)
