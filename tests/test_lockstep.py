"""Lockstep (harness.training.lockstep): K trials trained as one batched computation, each slot's
numbers those of its trial trained alone.

The references are independent of the lockstep code: each slot's own SequenceNetwork
(LSTMRecurrence, compiled or Python) with autograd and harness.training.tasks.loss, and
harness.training.train.train on the torch engine (and `odyssey train`, the native engine).
"""

import copy
import json
import math

import numpy as np
import optuna
import pytest
import torch
from omegaconf import open_dict
from optuna.trial import TrialState

from harness.datasets import DataSplits
from harness.errors import UserError
from harness.models import LSTM_VARIANTS
from harness.models.networks import SequenceNetwork
from harness.storage import counts
from harness.training import tasks
from harness.training.lockstep import LockstepTrainer, choose_lockstep, resolve_device, slot_bytes
from harness.training.lockstep.stack import SlotModel, SlotStack
from harness.training.train import train
from test_engine import K as O  # outputs (CTC: O - 1 characters + blank)
from test_engine import M, TASKS, sequences  # random sequences of each task, M inputs
from test_sweep import check_finished, finish, kill_mid_trial, odyssey, study_trials, tiny_music


def splits(task, n_train=6):
    return DataSplits(name="synthetic", task=task, train=sequences(task, [5 + 3 * (k % 4) for k in range(n_train)], 1),
                      valid=sequences(task, [6, 9, 4], 2), test=sequences(task, [7, 5, 8], 3), input_dim=M,
                      n_outputs=O, bidirectional=TASKS[task])


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("variant", LSTM_VARIANTS)
def test_padded_slots_give_each_networks_own_scores_and_gradients(variant, task):
    """Three networks of hidden sizes 3, 5 and 4, each on its own sequence: the stack's
    scores and gradients equal each network's own autograd ones, and every gradient that
    reaches a padded weight is exactly zero."""
    torch.manual_seed(3)
    networks = [SequenceNetwork(variant, M, N, O, bidirectional=TASKS[task], init_std=0.4) for N in (3, 5, 4)]
    data = sequences(task, [6, 9, 4], seed=5)
    model = SlotModel(networks[0])
    stack = SlotStack(model, [(model.weights_of(n), None, n.forward_layer.hidden_size) for n in networks],
                      torch.device("cpu"))
    batch = tasks.make_batch(data, task)  # slot k's sequence in column k
    scores = stack.forward(batch.x.transpose(0, 1).unsqueeze(2), batch.lengths.unsqueeze(1))
    losses = tasks.sequence_losses(task, scores[:, :, 0].transpose(0, 1), batch)
    losses.sum().backward()
    for k, network in enumerate(networks):
        alone = tasks.make_batch([data[k]], task)
        own = network(alone.x, alone.lengths)
        T = len(data[k].x)
        torch.testing.assert_close(scores[k, :T, 0], own[:, 0], rtol=1e-5, atol=1e-5)
        loss = tasks.loss(task, own, alone)
        torch.testing.assert_close(losses[k], loss, rtol=1e-5, atol=1e-4)
        loss.backward()
        grads = copy.deepcopy(network)
        for target, source in zip(grads.parameters(), network.parameters()):
            target.data = source.grad.clone()
        expected = model.weights_of(grads)
        N = network.forward_layer.hidden_size
        for name, leaf in stack.leaves.items():
            template = model.templates[name]
            grad = leaf.grad[k]
            index = tuple(slice(0, N) if d == "N" else slice(None) for d in template)
            torch.testing.assert_close(grad[index], expected[name], rtol=1e-4, atol=1e-5, msg=f"{name} of slot {k}")
            outside = grad.clone()
            outside[index] = 0
            assert torch.count_nonzero(outside) == 0, f"{name}: a padded weight of slot {k} got a gradient"


def trial_cfgs(compose_config, variant, settings, **extra):
    base = compose_config([f"variant={variant}", "train.engine=torch"])
    out = []
    for N, lr, momentum, noise, seed in settings:
        cfg = base.copy()
        with open_dict(cfg):
            cfg.hidden_size, cfg.learning_rate, cfg.momentum = N, lr, momentum
            cfg.input_noise_std, cfg.seed = noise, seed
            for key, value in extra.items():
                cfg[key] = value
        out.append(cfg)
    return out


@pytest.mark.parametrize("variant,task", [("vanilla", "next_step"), ("cifg", "next_step"), ("fgr", "next_step"),
                                          ("nig", "regression"), ("vanilla", "framewise"), ("noaf", "ctc")])
def test_lockstep_trials_are_the_trials_trained_alone(compose_config, variant, task):
    """Four trials of different sizes, rates, noise and seeds, one joining when another
    ends, each stopping by its own patience; a fifth's loss is not finite. Every learning curve, best
    epoch and test metric equals that of train() alone (torch engine)."""
    data = splits(task)
    settings = [(3, 0.05, 0.9, 0.0, 11), (6, 0.02, 0.5, 0.3, 12), (4, 0.1, 0.0, 0.1, 13), (5, 0.03, 0.8, 0.2, 14)]
    if task == "regression":  # squared errors summed: a thirtieth of the rates keeps every trial stable
        settings = [(N, lr / 30, mu, noise, seed) for N, lr, mu, noise, seed in settings]
    cfgs = trial_cfgs(compose_config, variant, settings, max_epochs=7, patience=2)
    diverging = trial_cfgs(compose_config, variant, [(4, 0.05, 0.9, 0.0, 15)], max_epochs=7, patience=2)[0]
    trainer = LockstepTrainer(data, capacity=4, device=torch.device("cpu"), log=lambda m: None)
    reported = {k: [] for k in range(5)}
    for k in (0, 1, 2):
        trainer.add(cfgs[k], k, on_epoch=lambda e, v, k=k: reported[k].append((e, v)))
    trainer.add(diverging, 4)
    trainer.waiting[-1].weights["readout_bias"][0] = math.inf  # its loss is not finite from the first step
    results, pending = {}, [3]
    while len(trainer):
        for key, result in trainer.run_epoch():
            results[key] = result
            if pending:  # a free slot takes the next trial at once
                k = pending.pop()
                trainer.add(cfgs[k], k, on_epoch=lambda e, v, k=k: reported[k].append((e, v)))
    assert results[4].failure is not None and "became" in results[4].failure
    if task == "next_step":  # (random regression targets and tiny frame and character errors stop at once)
        assert len({r.epochs for k, r in results.items() if k != 4}) > 1, "the trials should stop at different epochs"
    for k, cfg in enumerate(cfgs):
        alone = train(cfg, data=data, log=lambda m: None)
        mine = results[k]
        assert mine.best_epoch == alone.best_epoch and mine.epochs == alone.epochs
        assert math.isclose(mine.test_metric, alone.test_metric, rel_tol=1e-4)
        assert np.allclose([c["val_metric"] for c in mine.learning_curve],
                           [c["val_metric"] for c in alone.learning_curve], rtol=1e-4)
        assert np.allclose([c["train_loss_per_frame"] for c in mine.learning_curve],
                           [c["train_loss_per_frame"] for c in alone.learning_curve], rtol=1e-4)
        assert [e for e, _ in reported[k]] == list(range(1, alone.epochs + 1))
    assert results[4].failure == "training loss became inf in epoch 1" or "nan in epoch 1" in results[4].failure


def test_device_and_lockstep_settings_are_checked():
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type == ("cuda" if torch.cuda.is_available()
                                                                                     else "cpu")
    with pytest.raises(UserError, match="train.device=tpu is unknown"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    for bad in (0, -2, "x", 2.5, True):
        with pytest.raises(UserError, match="search.lockstep"):
            choose_lockstep(bad, cpu, 10, 5)
    assert choose_lockstep(3, cpu, 10, 5) == 3 and choose_lockstep("auto", cpu, 10, 5) == 1
    with pytest.raises(UserError, match="GiB.*choose at most"):
        choose_lockstep(1000, cpu, 2**40, 5)  # a terabyte a slot


def test_a_slots_memory_grows_with_its_size_and_length():
    data = splits("next_step")
    small = slot_bytes(SequenceNetwork("vanilla", M, 4, O), data)
    large = slot_bytes(SequenceNetwork("vanilla", M, 40, O), data)
    longer = splits("next_step")
    longer.train.append(sequences("next_step", [60], 9)[0])
    assert large > 5 * small and slot_bytes(SequenceNetwork("vanilla", M, 4, O), longer) > 3 * small
    weights = sum(p.numel() for p in SequenceNetwork("vanilla", M, 40, O).parameters()) * 4
    assert large > 3 * weights  # weights, gradients and momenta, then the saved activations


def test_a_lockstep_sweep_keeps_every_promise(tmp_path):
    """search.lockstep=3 on a tiny data set: exactly n_trials, an enqueued trial run with
    its parameters, every trial's seed recorded, and `odyssey train` with a trial's
    parameters and seed (the native engine, one trial alone) gives its test metric and
    best epoch. SIGKILL mid-sweep then the same command again: still exactly n_trials."""
    conf = tiny_music(tmp_path)
    url = f"sqlite:///{tmp_path}/lockstep.db"
    study = optuna.create_study(study_name="tiny.vanilla", storage=url)
    enqueued = {"hidden_size": 21, "learning_rate": 0.004, "one_minus_momentum": 0.1, "input_noise_std": 0.2}
    study.enqueue_trial(enqueued)
    args = ("sweep", f"--config-dir={conf}", "dataset=tiny", "variant=vanilla", "search.n_trials=6",
            "search.lockstep=3", "max_epochs=12", "patience=3", f"search.storage={url}", "search.heartbeat_seconds=5",
            "search.space.hidden_size.high=40", "search.space.learning_rate.low=1e-4")
    process = odyssey(*args, cwd=tmp_path)
    trials = kill_mid_trial(process, lambda: optuna.load_study(study_name="tiny.vanilla", storage=url).trials)
    assert 1 <= sum(counts(t) for t in trials) < 6 and any(t.state == TrialState.RUNNING for t in trials)
    assert [t.state for t in study_trials(url, "tiny.vanilla")[1]] == [t.state for t in trials]  # as the kill left them
    code, out, err = finish(odyssey(*args, cwd=tmp_path))
    assert code == 0, err
    assert "lockstep: 3 trial(s) at once on cpu" in out
    _, trials = study_trials(url, "tiny.vanilla")
    check_finished(trials, 6)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert any(t.params == enqueued for t in complete)
    assert len({t.params["hidden_size"] for t in complete}) >= 3
    for trial in sorted(complete, key=lambda t: t.number)[:2]:
        p = trial.params
        code, out, err = finish(odyssey(
            "train", f"--config-dir={conf}", "dataset=tiny", "variant=vanilla", "max_epochs=12", "patience=3",
            f"hidden_size={p['hidden_size']}", f"learning_rate={p['learning_rate']!r}",
            f"momentum={1 - p['one_minus_momentum']!r}", f"input_noise_std={p['input_noise_std']!r}",
            f"seed={trial.user_attrs['seed']}", f"hydra.run.dir={tmp_path}/again_{trial.number}", cwd=tmp_path))
        assert code == 0, err
        again = json.loads((tmp_path / f"again_{trial.number}" / "metrics.json").read_text())
        assert again["best_epoch"] == trial.user_attrs["best_epoch"], trial.number
        assert math.isclose(again["test_metric"], trial.user_attrs["test_metric"], rel_tol=1e-3), trial.number


@pytest.mark.parametrize("override,words", [("search.lockstep=0", "search.lockstep=0 must be at least 1"),
                                            ("search.lockstep=many", "search.lockstep='many' is not a number"),
                                            ("search.lockstep=1000000", "search.lockstep=1000000 needs about"),
                                            ("train.device=tpu", "train.device=tpu is unknown")])
def test_bad_lockstep_or_device_is_one_line(tmp_path, override, words):
    code, out, err = finish(odyssey("sweep", "dataset=jsb_chorales", override, f"search.storage=sqlite:///{tmp_path}/x.db",
                                    cwd=tmp_path))
    assert code == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
