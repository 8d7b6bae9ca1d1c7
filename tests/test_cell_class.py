"""A cell of one's own, given as a class and a YAML (harness.models.cell_class): through train,
sweep and analyze with nothing else changed; initialised, reversed and masked as odyssey's
own cells; bad classes refused in one line naming the YAML file before anything trains."""

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from harness import cli, project_root
from harness.datasets import load_dataset
from harness.errors import UserError
from harness.models import resolve
from harness.models.cell_class import CellClass
from harness.models.cells import make_layer
from harness.models.networks import SequenceNetwork
from harness.training.engine import make_step
from harness.training.lockstep import covers
from harness.training.recipes import Recipe
from harness.training.train import make_network, train

ROOT = project_root()

# A user's package: an Elman RNN h^t = tanh(W x^t + R h^{t-1} + b), with an argument, and
# classes that break each rule of the interface.
CELLS = textwrap.dedent('''
    import torch
    from torch import nn


    class Elman(nn.Module):
        def __init__(self, input_size, hidden_size, squash="tanh"):
            super().__init__()
            self.W = nn.Linear(input_size, hidden_size)
            self.R = nn.Linear(hidden_size, hidden_size, bias=False)
            self.squash = getattr(torch, squash)
            with torch.no_grad():
                for p in self.parameters():
                    p.fill_(5.0)  # odyssey must replace this

        def forward(self, x):
            h, out = x.new_zeros(x.shape[1], self.R.in_features), []
            for x_t in self.W(x).unbind(0):
                h = self.squash(x_t + self.R(h))
                out.append(h)
            return torch.stack(out)


    class NoSizes(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(width))


    class WrongShape(nn.Module):
        def __init__(self, input_size, hidden_size):
            super().__init__()
            self.w = nn.Linear(input_size, hidden_size + 1)

        def forward(self, x):
            return self.w(x)


    class Double(nn.Module):
        def __init__(self, input_size, hidden_size):
            super().__init__()
            self.w = nn.Linear(input_size, hidden_size)

        def forward(self, x):
            return self.w(x).double()


    class NoParameters(nn.Module):
        def __init__(self, input_size, hidden_size):
            super().__init__()
            self.hidden_size = hidden_size

        def forward(self, x):
            return x.new_zeros(*x.shape[:2], self.hidden_size)


    class Exploding(nn.Module):
        def __init__(self, input_size, hidden_size):
            super().__init__()
            self.w = nn.Linear(input_size, hidden_size)

        def forward(self, x):
            return self.w(x) * float("nan")
''')


@pytest.fixture
def user(tmp_path, monkeypatch):
    """(package directory, config directory) of a user's cells and a tiny piano-roll data
    set `tiny`; the package is importable in this process too."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "usercells.py").write_text(CELLS)
    monkeypatch.syspath_prepend(str(package))
    conf = tmp_path / "conf"
    (conf / "variant").mkdir(parents=True)
    (conf / "dataset").mkdir()
    rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(10)] for k in range(n)]
             for split, n in (("train", 5), ("valid", 3), ("test", 3))}
    (tmp_path / "tiny.json").write_text(json.dumps(rolls))
    (conf / "dataset" / "tiny.yaml").write_text(
        f"name: tiny\nformat: pianoroll\npath: {tmp_path / 'tiny.json'}\ntask: next_step\nbidirectional: false\n")
    (conf / "variant" / "elman.yaml").write_text("name: elman\ncell: {_target_: usercells.Elman, squash: tanh}\n")
    for name in ("NoSizes", "WrongShape", "Double", "NoParameters", "Exploding"):
        (conf / "variant" / f"{name.lower()}.yaml").write_text(
            f"name: {name.lower()}\ncell: {{_target_: usercells.{name}}}\n")
    (conf / "variant" / "missing.yaml").write_text("name: missing\ncell: {_target_: nowhere_to_be_found.Cell}\n")
    return package, conf


def odyssey(package, *arguments):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(package)])}
    return subprocess.run([sys.executable, "-m", "harness.cli", *arguments], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=600)


def test_a_user_cell_goes_through_train_sweep_and_analyze(user, tmp_path):
    package, conf = user
    common = ("--config-dir", str(conf), "dataset=tiny")
    run = odyssey(package, "train", *common, "variant=elman", "hidden_size=4", "max_epochs=2",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("the native engine does not cover the model elman") == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["variant"] == "elman" and metrics["epochs"] == 2 and metrics["failure"] is None
    assert metrics["n_params"] == (4 * 88 + 4) + 4 * 4 + (4 + 1) * 88  # W, b; R; the read-out

    url = f"sqlite:///{tmp_path / 'study.db'}"
    run = odyssey(package, "sweep", *common, "search.variants=[vanilla,elman]", "search.n_trials=3", "max_epochs=1",
                  "search.space.hidden_size.high=24", f"search.storage={url}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("the native engine does not cover the model elman") == 1
    study = optuna.load_study(study_name="tiny.elman", storage=url)
    assert study.user_attrs["variant"] == "elman"
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3

    run = odyssey(package, "analyze", "analysis.dataset=tiny", f"analysis.storage={url}",
                  f"analysis.out={tmp_path / 'analysis'}")
    assert run.returncode == 0, run.stderr
    variants = (tmp_path / "analysis" / "variants.csv").read_text().splitlines()
    assert any(line.startswith("elman,3,3,") for line in variants), variants
    assert "elman" in (tmp_path / "analysis" / "report.md").read_text()


def test_every_parameter_is_initialised_as_odysseys_own_cells(user):
    cell = {"_target_": "usercells.Elman"}
    torch.manual_seed(0)
    layer = make_layer("elman", 60, 80, cell=cell, init_std=0.3)
    values = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert values.numel() == 60 * 80 + 80 + 80 * 80 and not (values == 5.0).any()
    assert abs(values.mean().item()) < 0.02 and abs(values.std().item() - 0.3) < 0.01
    zero = make_layer("elman", 6, 8, cell=cell, init_std=0.0)
    assert all((p == 0).all() for p in zero.parameters())
    assert set(layer.export_weights()) == {"W.weight", "W.bias", "R.weight"}


def test_the_backward_direction_and_padding_as_for_odysseys_cells(user):
    """A bidirectional network of padded sequences gives each sequence what it gives alone."""
    torch.manual_seed(0)
    network = SequenceNetwork("elman", 3, 4, 2, bidirectional=True, cell={"_target_": "usercells.Elman"})
    lengths = torch.tensor([7, 4])
    x = torch.randn(7, 2, 3)
    x[4:, 1] = 99.0  # padding that must not leak into the second sequence
    together = network(x, lengths)
    for b, T in enumerate(lengths.tolist()):
        alone = network(x[:T, b : b + 1], None)
        assert torch.allclose(together[:T, b], alone[:, 0], atol=1e-6)
        # the backward direction by hand: the cell on the reversed sequence, reversed back
        backward = network.backward_layer(x[:T, b : b + 1].flip(0)).flip(0)
        forward = network.forward_layer(x[:T, b : b + 1])
        by_hand = network.readout(torch.cat((forward, backward), dim=2))
        assert torch.allclose(alone, by_hand, atol=1e-6)


def test_native_engine_and_lockstep_do_not_cover_it(user, compose_config):
    cfg = compose_config(["variant=vanilla"])
    with open_dict(cfg):
        cfg.variant = {"name": "elman", "cell": {"_target_": "usercells.Elman"}}
    network = SequenceNetwork("elman", 3, 4, 2, cell={"_target_": "usercells.Elman"})
    said = []
    step = make_step("native", network, "next_step", Recipe.from_config(cfg), log=said.append)
    assert type(step).__name__ == "TorchStep"
    assert len(said) == 1 and "does not cover the model elman" in said[0]
    assert "elman" in covers(cfg, network)


def test_a_cell_whose_loss_becomes_nan_is_a_diverged_run(user, compose_config):
    _, conf = user
    cfg = compose_config(["variant=vanilla", "max_epochs=2", "hidden_size=3"])
    with open_dict(cfg):
        cfg.variant = {"name": "exploding", "cell": {"_target_": "usercells.Exploding"}}
        cfg.dataset = OmegaConf.load(conf / "dataset" / "tiny.yaml")
    result = train(cfg, log=lambda message: None)
    assert result.failure == "training loss became nan in epoch 1" and result.test_metric is None


@pytest.mark.parametrize("variant, words", [
    ("missing", ("missing.yaml", "nowhere_to_be_found.Cell", "PYTHONPATH")),
    ("nosizes", ("nosizes.yaml", "input_size", "hidden_size")),
    ("wrongshape", ("wrongshape.yaml", "(3, 2, 5)", "(T, B, hidden_size)")),
    ("double", ("double.yaml", "float64", "float32", "dtype")),
    ("noparameters", ("noparameters.yaml", "no trainable parameters")),
])
def test_bad_cells_are_refused_in_one_line_naming_the_file(user, tmp_path, capsys, variant, words):
    _, conf = user
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    line, out = one_line_refusal(capsys, ["sweep", "--config-dir", str(conf), "dataset=tiny", f"variant={variant}",
                                          "search.n_trials=1", "max_epochs=1", "search.space.hidden_size.low=4",
                                          "search.space.hidden_size.high=5", f"search.storage={url}",
                                          f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=null"])
    assert all(word in line for word in (str(conf / "variant"), *words)), line
    assert "trial" not in out  # refused before any trial started


def one_line_refusal(capsys, arguments):
    """Run `odyssey ARGUMENTS`, which must end in exit 2 with one line and no traceback:
    (that line, what went to stdout)."""
    try:
        cli.main(arguments)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0], out


def test_resolve_refuses_what_cannot_be_a_class_model(user):
    with pytest.raises(UserError, match="both switches"):
        resolve("mine", {"peepholes": False}, {"_target_": "usercells.Elman"})
    with pytest.raises(UserError, match="_target_"):
        resolve("mine", None, {"squash": "tanh"})
    with pytest.raises(UserError, match="name of a list"):
        resolve("all", None, {"_target_": "usercells.Elman"})
    with pytest.raises(UserError, match="vanilla"):
        resolve("vanilla", None, {"_target_": "usercells.Elman"})
    assert resolve("mine", None, {"_target_": "usercells.Elman"}).target == "usercells.Elman"
    assert isinstance(make_network_of("usercells.Elman"), CellClass)


def make_network_of(target):
    cfg = OmegaConf.create({"variant": {"name": "mine", "cell": {"_target_": target}}, "train": {"init_std": 0.1},
                            "hidden_size": 3})
    data = type("Data", (), {"input_dim": 2, "n_outputs": 2, "bidirectional": False})()
    return make_network(cfg, data).forward_layer


def test_keyword_arguments_from_the_command_line_reach_the_class(user, tmp_path, capsys):
    """`+variant.cell.KEY=VALUE` adds a keyword argument; the class's own refusal of it is
    one line naming the YAML file (here odyssey's own minGRU)."""
    _, conf = user
    for given, words in (("+variant.cell.chunk=0", ("chunk=0", "give at least 1 frame")),
                         ("+variant.cell.width=3", ("width=3", "unexpected keyword argument"))):
        line, _ = one_line_refusal(capsys, ["train", "--config-dir", str(conf), "dataset=tiny", "variant=mingru", given,
                                            "max_epochs=1", "hidden_size=3", f"hydra.run.dir={tmp_path / 'run'}",
                                            "hydra.output_subdir=null"])
        assert all(word in line for word in (str(ROOT / "conf" / "variant" / "mingru.yaml"), *words)), line
