"""Variants as switches: cells composed from a mapping of switches against the equations
written out step by step from the switches alone, the weight keys by the rule, the presets,
the impossible combinations, and a variant config with `switches:` through training."""

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import UserError
from harness.models import LSTM_VARIANTS, PRESETS, SWITCHES
from harness.models.cells import make_layer

M, N, T, B = 4, 3, 6, 2

in_float64 = pytest.mark.usefixtures("float64")  # the cell tests run in float64 (conftest.py)

VANILLA = {"input_gate": True, "forget_gate": True, "output_gate": True, "input_activation": "tanh",
           "output_activation": "tanh", "peepholes": True, "gate_recurrence": False}

# combinations the paper did not ablate, and the presets
NEW = {
    "cifg_without_peepholes": {"forget_gate": "coupled", "peepholes": False},
    "no_output_activation_no_peepholes": {"output_activation": "linear", "peepholes": False},
    "no_input_no_output_gate": {"input_gate": False, "output_gate": False},
    "linear_without_forget_gate": {"input_activation": "linear", "output_activation": "linear",
                                   "forget_gate": False},
    "fgr_without_peepholes": {"gate_recurrence": True, "peepholes": False},
    "fgr_linear_input": {"gate_recurrence": True, "input_activation": "linear"},
    "cifg_no_output_gate_linear": {"forget_gate": "coupled", "output_gate": False, "input_activation": "linear"},
    "no_gates_at_all": {"input_gate": False, "forget_gate": False, "output_gate": False},
}
COMBINATIONS = {**NEW, **{f"preset_{name}": switches for name, switches in PRESETS.items()}}


def sigma(a):
    return 1.0 / (1.0 + torch.exp(-a))


def reference(switches: dict, w: dict, x: torch.Tensor) -> torch.Tensor:
    """The vanilla equations with each switch applied, one step at a time, from the weights."""
    s = {**VANILLA, **switches}
    n = w["R_z"].shape[0]
    y, c = x.new_zeros(x.shape[1], n), x.new_zeros(x.shape[1], n)
    previous = {gate: x.new_zeros(x.shape[1], n) for gate in "ifo"}
    g = torch.tanh if s["input_activation"] == "tanh" else (lambda v: v)
    h = torch.tanh if s["output_activation"] == "tanh" else (lambda v: v)

    def gate(name, x_t, cell):
        a = x_t @ w[f"W_{name}"].T + y @ w[f"R_{name}"].T + w[f"b_{name}"]
        if s["peepholes"]:
            a = a + w[f"p_{name}"] * cell
        if s["gate_recurrence"]:
            a = a + sum(previous[b] @ w[f"R_{name}_{b}"].T for b in "ifo")
        return sigma(a)

    outputs = []
    for x_t in x:
        z = g(x_t @ w["W_z"].T + y @ w["R_z"].T + w["b_z"])
        i = gate("i", x_t, c) if s["input_gate"] else torch.ones_like(z)
        if s["forget_gate"] == "coupled":
            f = 1 - i
        else:
            f = gate("f", x_t, c) if s["forget_gate"] else torch.ones_like(z)
        c = z * i + c * f
        o = gate("o", x_t, c) if s["output_gate"] else torch.ones_like(z)
        y = h(c) * o
        previous = {"i": i, "f": f, "o": o}
        outputs.append(y)
    return torch.stack(outputs)


def random_weights(layer, scale=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * scale for k, v in layer.export_weights().items()}


@in_float64
@pytest.mark.parametrize("name", COMBINATIONS)
def test_a_composed_cell_computes_the_equations_of_its_switches(name):
    layer = make_layer(COMBINATIONS[name], M, N)
    weights = random_weights(layer)
    layer.import_weights(weights)
    x = torch.randn(T, B, M, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(layer(x), reference(COMBINATIONS[name], weights, x), atol=1e-10, rtol=0)


@in_float64
@pytest.mark.parametrize("name,keys", [
    ("cifg_without_peepholes", "W_z W_i W_o R_z R_i R_o b_z b_i b_o"),
    ("no_input_no_output_gate", "W_z W_f R_z R_f b_z b_f p_f"),
    ("no_gates_at_all", "W_z R_z b_z"),
    ("cifg_no_output_gate_linear", "W_z W_i R_z R_i b_z b_i p_i"),
    ("fgr_without_peepholes", "W_z W_i W_f W_o R_z R_i R_f R_o b_z b_i b_f b_o "
                              "R_i_i R_i_f R_i_o R_f_i R_f_f R_f_o R_o_i R_o_f R_o_o"),
])
def test_the_weight_keys_follow_the_rule(name, keys):
    """W, R, b for z and each gate with weights of its own; p for each such gate with peepholes on."""
    layer = make_layer(COMBINATIONS[name], M, N)
    assert set(layer.export_weights()) == set(keys.split())
    shapes = {k: tuple(v.shape) for k, v in layer.export_weights().items()}
    assert all(shapes[k] == ((N, M) if k.startswith("W_") else (N, N) if k.startswith("R_") else (N,)) for k in shapes)


@in_float64
@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_is_its_named_variant(name):
    by_name, by_switches = make_layer(name, M, N), make_layer(PRESETS[name], M, N)
    weights = random_weights(by_name)
    by_name.import_weights(weights)
    by_switches.import_weights(weights)  # the same keys, or this refuses
    x = torch.randn(T, B, M)
    assert torch.equal(by_name(x), by_switches(x))


def test_the_preset_table():
    assert set(PRESETS) == {"vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"}
    assert all(len(switches) == 1 for name, switches in PRESETS.items() if name != "vanilla")
    assert set(SWITCHES) == set(VANILLA)
    assert LSTM_VARIANTS["cifg"].as_switches() == {**VANILLA, "forget_gate": "coupled"}
    assert LSTM_VARIANTS["niaf"].as_switches() == {**VANILLA, "input_activation": "linear"}


@in_float64
@pytest.mark.parametrize("name", ["cifg_without_peepholes", "fgr_linear_input", "no_input_no_output_gate"])
def test_gradcheck_of_composed_cells(name):
    layer = make_layer(COMBINATIONS[name], 3, 2)
    layer.import_weights(random_weights(layer, scale=0.8, seed=3))
    names, params = zip(*layer.named_parameters())
    x = torch.randn(4, 2, 3, requires_grad=True)

    def function(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(function, (x, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("switches,fragments", [
    ({"forget_gate": "coupled", "input_gate": False}, ["coupled", "input gate"]),
    ({"gate_recurrence": True, "output_gate": False}, ["gate_recurrence", "output_gate"]),
    ({"gate_recurrence": True, "forget_gate": "coupled"}, ["gate_recurrence", "forget_gate"]),
    ({"peephole": False}, ["peephole", "not a switch", "peepholes"]),
    ({"input_activation": "sigmoid"}, ["input_activation", "sigmoid", "tanh, linear"]),
    ({"forget_gate": "yes"}, ["forget_gate", "true, false, coupled"]),
    ({"peepholes": 0}, ["peepholes", "true, false"]),
])
def test_impossible_or_misspelt_switches_are_refused(switches, fragments):
    with pytest.raises(UserError) as caught:
        make_layer(switches, M, N)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


@in_float64
def test_a_name_with_switches():
    layer = make_layer("my_cifg", M, N, switches=OmegaConf.create({"forget_gate": "coupled", "peepholes": False}))
    assert set(layer.export_weights()) == set("W_z W_i W_o R_z R_i R_o b_z b_i b_o".split())
    assert make_layer("cifg", M, N, switches={"forget_gate": "coupled"}).export_weights().keys() == \
        make_layer("cifg", M, N).export_weights().keys()  # a preset's own switches are fine
    with pytest.raises(UserError, match="give a variant of other switches a name of its own"):
        make_layer("cifg", M, N, switches={"peepholes": False})
    with pytest.raises(UserError, match="has no switches"):
        make_layer("gru", M, N, switches={"peepholes": False})
    with pytest.raises(ValueError, match="switches"):
        make_layer("mine", M, N)  # neither a variant nor switches
    with pytest.raises(UserError, match="unknown variant 'mine'"):  # one line on the command line
        make_layer("mine", M, N)
    with pytest.raises(UserError, match="variant 'odd': switches forget_gate: coupled"):
        make_layer("odd", M, N, switches={"forget_gate": "coupled", "input_gate": False})


def test_a_variant_config_with_switches_trains(compose_config, tmp_path):
    """train.py hands the variant config's keys to make_layer: the network is the composed cell."""
    from harness.datasets import load_dataset
    from harness.training.train import train

    cfg = compose_config(["hidden_size=5", "max_epochs=1"])
    cfg.variant = OmegaConf.create({"name": "cifg_np", "switches": {"forget_gate": "coupled", "peepholes": False}})
    rolls = {split: [[(60 + t % 3,) for t in range(6)]] for split in ("train", "valid", "test")}
    (tmp_path / "songs.json").write_text(json.dumps(rolls))
    data = load_dataset({"name": "songs", "format": "pianoroll", "path": str(tmp_path / "songs.json"),
                         "task": "next_step"})
    result = train(cfg, data=data, log=lambda line: None)
    m, n = 88, 5
    cell = 3 * (n * m + n * n + n)  # z, i, o: W, R, b; no forget gate of its own, no peepholes
    assert result["variant"] == "cifg_np" and result["n_params"] == cell + (n * 88 + 88)
    assert math.isfinite(result["val_metric"])


@pytest.mark.parametrize("name", ["cifg_without_peepholes", "fgr_linear_input", "no_gates_at_all"])
def test_composed_cells_train_alike_on_both_engines(name):
    """The native engine reads a cell's flags itself: after a few updates its weights are
    the torch path's (autograd through the cell, torch's SGD)."""
    from harness.datasets import Sequence
    from harness.models.networks import SequenceNetwork
    from harness.training import tasks
    from harness.training.engine import make_step
    from harness.training.recipes import Recipe

    rng = np.random.default_rng(0)
    sequences = [Sequence(x=(rng.random((9, 6)) > 0.5).astype(np.float32),
                          y=(rng.random((9, 6)) > 0.5).astype(np.float32)) for _ in range(3)]
    networks = []
    for engine in ("native", "torch"):
        torch.manual_seed(0)
        network = SequenceNetwork(name, 6, 5, 6, switches=COMBINATIONS[name], init_std=0.3)
        initial = network.forward_layer.weight_input.detach().clone()
        step = make_step(engine, network, "next_step", Recipe.nesterov(0.05, 0.9), log=lambda line: None)
        for sequence in sequences * 2:
            batch = tasks.make_batch([sequence], "next_step")
            step(batch, batch.x)
        networks.append(dict(network.named_parameters()))
    native, reference = networks
    assert native.keys() == reference.keys()
    for key in native:
        assert torch.allclose(native[key], reference[key], atol=1e-6), key
    assert (native["forward_layer.weight_input"] - initial).abs().max() > 1e-3  # the cell's weights moved


def lstm_parameters(hidden: int, inputs: int, outputs: int, blocks: int, peepholes: int) -> int:
    """Parameters of a one-layer LSTM model by the weight rule: W, R, b of each block with
    weights of its own, p of each gate with peepholes, and the read-out."""
    return blocks * (hidden * inputs + hidden * hidden + hidden) + peepholes * hidden + hidden * outputs + outputs


def test_a_model_of_a_user_config_dir_goes_through_train_sweep_and_analyze(tmp_path):
    """DIR/variant/cifg_np.yaml (two lines, no code) is trained, swept in a list beside a
    built-in model (search.variants), and analysed: every trial has the parameter count
    of its own cell (z, i, o without peepholes for cifg_np), not of `variant`'s."""
    import optuna
    from test_own_dataset import odyssey, user_config_dir

    _, conf = user_config_dir(tmp_path)  # `mine`: framewise npz, 2 inputs, 3 classes
    (conf / "variant").mkdir()
    (conf / "variant" / "cifg_np.yaml").write_text("name: cifg_np\nswitches: {forget_gate: coupled, peepholes: false}\n")
    inputs, classes = 2, 3

    run = odyssey("train", "--config-dir", str(conf), "dataset=mine", "variant=cifg_np", "hidden_size=3",
                  "max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["variant"] == "cifg_np" and metrics["n_params"] == lstm_parameters(3, inputs, classes, 3, 0)

    storage = f"sqlite:///{tmp_path}/studies.db"
    run = odyssey("sweep", "--config-dir", str(conf), "dataset=mine", "search.variants=[vanilla,cifg_np]",
                  "search.n_trials=2", "max_epochs=1", f"search.storage={storage}")
    assert run.returncode == 0, run.stderr
    shape = {"vanilla": (4, 3), "cifg_np": (3, 0)}  # blocks with weights, gates with peepholes
    for variant, (blocks, peepholes) in shape.items():
        study = optuna.load_study(study_name=f"mine.{variant}", storage=storage)
        assert study.user_attrs["dataset"] == "mine" and study.user_attrs["variant"] == variant
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 2
        for trial in trials:
            hidden = trial.params["hidden_size"]
            assert trial.user_attrs["n_params"] == lstm_parameters(hidden, inputs, classes, blocks, peepholes)

    out = tmp_path / "analysis"
    run = odyssey("analyze", "analysis.dataset=mine", f"analysis.storage={storage}", f"analysis.out={out}")
    assert run.returncode == 0, run.stderr
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and sum(row.startswith("cifg_np,") for row in rows) == 2, rows
    assert "cifg_np" in (out / "variants.csv").read_text()


def test_the_registry_of_models_and_its_lists():
    """One table of names: every model has its config file and every config file is a
    model (or an alias of one); the lists of search.variants are named apart from both."""
    from harness import project_root
    from harness.models import ALIASES, LISTS, MODELS, canonical, names_of

    greff = ["vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"]
    assert list(MODELS) == [*greff, "gru", "gflstm", "gfgru", "mingru", "minlstm", "rglru"]
    assert list(LISTS["lstm"]) == greff and list(LISTS["all"]) == list(MODELS)
    assert ALIASES == {"gfrnn": "gflstm"} and not set(LISTS) & (set(MODELS) | set(ALIASES))
    files = {path.stem for path in (project_root() / "conf" / "variant").glob("*.yaml")}
    assert files == set(MODELS) | set(ALIASES)
    assert [m for m in MODELS if MODELS[m].gated_feedback] == ["gflstm", "gfgru"]
    assert [m for m in MODELS if MODELS[m].cell == "class"] == ["mingru", "minlstm", "rglru"]
    assert all(MODELS[m].switches == LSTM_VARIANTS[m] for m in greff)
    assert names_of(None, "gfrnn") == ["gflstm"] and canonical("cifg") == "cifg"
    assert names_of("lstm", "vanilla") == greff and names_of("all", "vanilla") == list(MODELS)
    assert names_of(["gfrnn", "gflstm", "cifg"], "vanilla") == ["gflstm", "cifg"]
    assert names_of("cifg", "vanilla") == ["cifg"]


def test_each_variant_config_composes_to_its_model(compose_config):
    from harness.models import MODELS, canonical, resolve

    for name in [*MODELS, "gfrnn"]:
        variant = compose_config([f"variant={name}"]).variant
        assert variant.name == canonical(name) and resolve(variant.name, variant.get("switches"), variant.get("cell")) is MODELS[canonical(name)]
