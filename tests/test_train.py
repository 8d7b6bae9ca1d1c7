"""Training one configuration: the recipe's pieces, reproducibility, metrics.json, and the
messages of the command line for the mistakes a user can make."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.datasets import DataSplits, Sequence, load_dataset
from harness.models.networks import SequenceNetwork, reverse_within_lengths
from harness.training.tasks import make_batch
from harness.training.train import train


def tiny_jsb(compose_config, n=12):
    """The first sequences of each JSB split: enough to train for a step or two."""
    data = load_dataset(compose_config().dataset)
    return DataSplits(name="jsb_tiny", task="next_step", train=data.train[:n], valid=data.valid[:4],
                      test=data.test[:4], input_dim=88, n_outputs=88)


def test_seeded_runs_are_reproducible(compose_config):
    cfg = compose_config(["max_epochs=2", "hidden_size=20", "input_noise_std=0.3", "seed=3"])
    data = tiny_jsb(compose_config)
    first, second = (train(cfg, data=data, log=lambda _: None) for _ in range(2))
    assert first["learning_curve"] == [dict(c, seconds=s["seconds"]) for c, s in
                                       zip(second["learning_curve"], first["learning_curve"])]
    assert first["test_metric"] == second["test_metric"]
    other = train(compose_config(["max_epochs=2", "hidden_size=20", "input_noise_std=0.3", "seed=4"]),
                  data=data, log=lambda _: None)
    assert other["test_metric"] != first["test_metric"]


@pytest.mark.parametrize("variant", ["vanilla", "cifg", "gru"])
def test_native_and_torch_engines_train_alike(compose_config, variant):
    """Three epochs, with input noise: the same curve and test figure on both engines."""
    base = ["max_epochs=3", "hidden_size=12", "input_noise_std=0.2", "seed=2", f"variant={variant}"]
    data = tiny_jsb(compose_config)
    native = train(compose_config(base + ["train.engine=native"]), data=data, log=lambda _: None)
    reference = train(compose_config(base + ["train.engine=torch"]), data=data, log=lambda _: None)
    for a, b in zip(native["learning_curve"], reference["learning_curve"]):
        assert a["val_metric"] == pytest.approx(b["val_metric"], rel=1e-5)
        assert a["train_loss_per_frame"] == pytest.approx(b["train_loss_per_frame"], rel=1e-5)
    assert native["test_metric"] == pytest.approx(reference["test_metric"], rel=1e-5)


def test_flushing_denormals_changes_no_result(compose_config):
    """train.flush_denormal: on, a denormal float reads as zero; off, it stays; the
    training's figures agree to float tolerance either way."""
    base = ["max_epochs=3", "hidden_size=12", "seed=1", "learning_rate=1e-2"]
    data = tiny_jsb(compose_config)
    def denormal():  # 1e-40 is below float32's smallest normal number, 1.2e-38
        return (torch.tensor([1e-40]) * 1.0).item()

    try:
        flushed = train(compose_config(base + ["train.flush_denormal=true"]), data=data, log=lambda _: None)
        assert denormal() == 0.0
        kept = train(compose_config(base + ["train.flush_denormal=false"]), data=data, log=lambda _: None)
        assert denormal() == pytest.approx(1e-40, rel=1e-3)
    finally:
        torch.set_flush_denormal(True)
    assert flushed["test_metric"] == pytest.approx(kept["test_metric"], rel=1e-5)
    assert [c["val_metric"] for c in flushed["learning_curve"]] == pytest.approx(
        [c["val_metric"] for c in kept["learning_curve"]], rel=1e-5)


def test_one_update_per_sequence_with_nesterov_and_scaled_learning_rate(compose_config):
    """One epoch of the recipe equals hand-written Nesterov SGD, step lr * (1 - momentum),
    one update after each sequence, in the order the run shuffles them."""
    cfg = compose_config(["max_epochs=1", "hidden_size=6", "learning_rate=0.05", "momentum=0.5", "seed=5"])
    data = tiny_jsb(compose_config, n=3)
    torch.manual_seed(5)
    network = SequenceNetwork("vanilla", 88, 6, 88, init_std=0.1)
    velocity = {n: torch.zeros_like(p) for n, p in network.named_parameters()}
    order = np.random.default_rng(5).permutation(3)
    for k in order:
        batch = make_batch([data.train[k]], "next_step")
        scores = network(batch.x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, batch.y, reduction="sum")
        grads = torch.autograd.grad(loss, list(network.parameters()))
        with torch.no_grad():
            for (name, p), g in zip(network.named_parameters(), grads):
                velocity[name] = 0.5 * velocity[name] + g
                p -= 0.05 * (1 - 0.5) * (g + 0.5 * velocity[name])  # Nesterov, as torch.optim.SGD
    total, frames = 0.0, 0
    with torch.no_grad():
        for s in data.valid:
            b = make_batch([s], "next_step")
            total += float(torch.nn.functional.binary_cross_entropy_with_logits(network(b.x), b.y, reduction="sum"))
            frames += b.frames
    result = train(cfg, data=data, log=lambda _: None)
    assert result["val_metric"] == pytest.approx(total / frames, rel=1e-5)


def test_bidirectional_padded_batch_equals_one_sequence_at_a_time():
    torch.manual_seed(0)
    network = SequenceNetwork("cifg", 3, 5, 4, bidirectional=True)
    sequences = [Sequence(x=np.random.default_rng(k).normal(size=(n, 3)).astype(np.float32),
                          y=np.zeros(n, dtype=np.int64)) for k, n in enumerate((7, 3, 5))]
    batch = make_batch(sequences, "framewise")
    together = network(batch.x, batch.lengths)
    for b, s in enumerate(sequences):
        alone = network(torch.from_numpy(s.x).unsqueeze(1))
        assert torch.allclose(together[: len(s.x), b], alone[:, 0], atol=1e-6)


def test_reverse_within_lengths():
    x = torch.arange(8.0).view(4, 2, 1)  # (T=4, B=2): column 0 = 0 2 4 6, column 1 = 1 3 5 7
    reversed_ = reverse_within_lengths(x, torch.tensor([4, 2]))
    assert reversed_[:, 0, 0].tolist() == [6, 4, 2, 0]
    assert reversed_[:, 1, 0].tolist() == [3, 1, 5, 7]


def test_diverging_run_stops_with_its_reason(compose_config):
    cfg = compose_config(["variant=noaf", "max_epochs=3", "hidden_size=20", "learning_rate=1e30", "momentum=0"])
    result = train(cfg, data=tiny_jsb(compose_config), log=lambda _: None)
    assert result["failure"] is not None and "epoch 1" in result["failure"]


def run_odyssey(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_train_command_writes_metrics_json(tmp_path):
    out = tmp_path / "run"
    done = run_odyssey("train", "dataset=jsb_chorales", "variant=np", "hidden_size=20", "max_epochs=1",
                       "learning_rate=1e-2", "momentum=0.9", "input_noise_std=0.1", "seed=0",
                       f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_metric", "test_metric", "best_epoch", "epochs", "n_params", "seconds", "learning_curve"):
        assert key in metrics
    assert math.isfinite(metrics["test_metric"]) and metrics["epochs"] == 1
    assert metrics["data"]["train"]["sequences"] == 229
    assert metrics["data"]["input_dim"] == 88 and metrics["data"]["n_outputs"] == 88
    assert "epoch   1/1" in done.stdout


@pytest.mark.parametrize("override,words", [
    ("hidden_size=0", "hidden_size"),
    ("hidden_size=-5", "hidden_size"),
    ("learning_rate=0", "learning_rate"),
    ("learning_rate=-1e-3", "learning_rate"),
    ("momentum=1.5", "momentum"),
])
def test_bad_values_give_one_clear_message(override, words):
    done = run_odyssey("train", override, "max_epochs=1")
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_variant_and_dataset_list_the_valid_ones():
    done = run_odyssey("train", "variant=lstm9")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "lstm9" in done.stderr and "cifg" in done.stderr and "vanilla" in done.stderr
    done = run_odyssey("train", "dataset=nowhere")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "nowhere" in done.stderr and "jsb_chorales" in done.stderr


def test_missing_data_file_is_named(tmp_path):
    done = run_odyssey("train", f"dataset.path={tmp_path}/gone.json", "max_epochs=1")
    assert done.returncode == 2 and "gone.json" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_vanilla_reaches_greff_quality_on_jsb(tmp_path):
    """The issue's check: 20 epochs of vanilla, N=100, lr 1e-2, momentum 0.9: test NLL <= 8.8."""
    done = run_odyssey("train", "dataset=jsb_chorales", "variant=vanilla", "hidden_size=100",
                       "learning_rate=1e-2", "momentum=0.9", "input_noise_std=0", "max_epochs=20", "seed=0",
                       f"hydra.run.dir={tmp_path}", timeout=1800)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_metric"] <= 8.8
