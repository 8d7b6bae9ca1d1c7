"""odyssey bench: its sections run and its ratios are what its own rows say (no timing is
asserted: benchmarks are measurements, not tests)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from harness.bench import markdown
from harness.bench.epochs import time_epochs
from harness.bench.study import configurations


def test_epochs_section_measures_against_torch_in_the_same_run(compose_config):
    options = OmegaConf.create({"hidden_size": 10,
                                "tasks": {"jsb_chorales": {"models": ["vanilla"], "warm": 1, "timed": 1}}})
    rows = time_epochs(compose_config(command="bench"), options)
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"torch.nn.LSTM", "vanilla", "vanilla (denormals not flushed)"}
    reference = by_model["torch.nn.LSTM"]
    for row in rows:
        assert row["epochs_run"] == 2 and row["failure"] is None
        assert math.isfinite(row["fresh_s"]) and math.isfinite(row["trained_s"])
        assert row["ratio_trained"] == pytest.approx(row["trained_s"] / reference["trained_s"])
    table = markdown({"epochs": rows})
    assert "| jsb_chorales | vanilla |" in table and f"{by_model['vanilla']['ratio_trained']:.2f}" in table


def test_study_configurations_are_fixed_draws_inside_the_search_space(compose_config):
    space = compose_config(command="bench").search.space
    first, again = configurations(space, 8), configurations(space, 8)
    assert first == again
    for point in first:
        for name, spec in space.items():
            assert spec.low <= point[name] <= spec.high
        assert isinstance(point["hidden_size"], int)
    assert len({p["learning_rate"] for p in first}) == 8


def test_scan_section_times_both_forms_against_torch_in_the_same_run():
    from harness.bench.scan import time_scan

    options = OmegaConf.create({"repeats": 1, "shapes": [{"hidden_size": 4, "batch": 1, "steps": 5},
                                                         {"hidden_size": 600, "batch": 1, "steps": 2}]})
    rows = time_scan(options)
    assert [(r["model"], r["hidden_size"]) for r in rows] == [("mingru", 4), ("minlstm", 4), ("mingru", 600),
                                                              ("minlstm", 600)]
    assert [r["auto"] for r in rows] == ["scan", "scan", "loop", "loop"]  # harness.models.minimal.SCAN_WIDTH = 512
    for row in rows:
        assert row["scan_vs_loop"] == pytest.approx(row["scan_ms"] / row["loop_ms"])
        assert row["reference"] == {"mingru": "torch.nn.GRU", "minlstm": "torch.nn.LSTM"}[row["model"]]
    assert "| N=4 B=1 T=5 | mingru |" in markdown({"scan": rows})


def test_turns_section_times_each_model_in_turn_against_the_first(compose_config):
    from harness.bench.turns import time_in_turn

    options = OmegaConf.create({"models": ["vanilla", "mingru"], "hidden_size": 5, "rounds": 1})
    rows = time_in_turn(compose_config(command="bench"), options)
    assert [(r["model"], r["engine"]) for r in rows] == [("vanilla", "native"), ("mingru", "torch")]
    assert rows[0]["vs_first"] == 1.0 and rows[1]["vs_first"] == pytest.approx(rows[1]["epoch_s"] / rows[0]["epoch_s"])
    assert "| mingru | torch |" in markdown({"turns": rows})


@pytest.mark.parametrize("task", ["framewise", "ctc"])
def test_split_section_times_every_phase_against_torch(task):
    """The phases of the timed epoch are measured, they make up the epoch, and the ratio
    is the epoch's against the torch.nn.LSTM epoch of the same row."""
    import numpy as np

    from harness.bench.split import TRAINING_PHASES, VALIDATION_PHASES, split_row, split_table
    from harness.datasets import DataSplits, Sequence

    rng = np.random.default_rng(0)

    def sequence(T):
        y = rng.integers(0, 4, size=T) if task == "framewise" else rng.integers(1, 4, size=2)
        return Sequence(x=rng.normal(size=(T, 3)).astype(np.float32), y=y)

    splits = [[sequence(T) for T in rng.integers(6, 12, size=n)] for n in (5, 3, 3)]
    data = DataSplits("tiny", task, *splits, input_dim=3, n_outputs=4, bidirectional=True)
    row = split_row(data, hidden_size=5, warm=1, learning_rate=1e-3)
    assert row["training"]["non_finite_steps"] == 0
    assert all(row["training"][p] >= 0 for p in TRAINING_PHASES)
    assert all(row["validation"][p] >= 0 for p in VALIDATION_PHASES)
    for part, phases in (("training", TRAINING_PHASES), ("validation", VALIDATION_PHASES)):
        assert sum(row[part][p] for p in phases) == pytest.approx(row[part]["total"])
    assert row["epoch_s"] == pytest.approx(row["training"]["total"] + row["validation"]["total"])
    assert row["ratio"] == pytest.approx(row["epoch_s"] / row["torch_epoch_s"])
    assert f"| tiny | 5 | {row['epoch_s']:.2f} |" in "\n".join(split_table([row]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floor_products_are_the_recurrent_products_of_a_step(dtype):
    """The floor times the products a step needs, not something cheaper: each form's
    result is R u forward and R^T da backward, against torch.mv (sizes with remainders)."""
    from harness import kernels
    from harness.bench.floor import FORMS, products

    for N in (3, 7, 100):
        R, Rt, u, da = (t.to(dtype) for t in products(N, seed=N))
        for form in range(len(FORMS)):
            forward = kernels.floor().products(R, Rt, u, True, form, 3)
            backward = kernels.floor().products(R, Rt, da, False, form, 3)
            assert torch.allclose(forward, torch.mv(R, u), atol=1e-5, rtol=1e-5)
            assert torch.allclose(backward, torch.mv(R.t(), da), atol=1e-5, rtol=1e-5)


def test_floor_section_gives_each_trained_step_as_a_multiple_of_the_floor(compose_config):
    from harness.bench.floor import FORMS, floor_table, time_floor

    options = OmegaConf.create({"repeats": 10, "trials": 2, "tasks": {
        "jsb_chorales": {"models": ["vanilla"], "hidden_sizes": [6], "warm": 1, "timed": 1}}})
    result = time_floor(compose_config(command="bench"), options)
    (products,) = result["products"]
    for direction in ("forward", "backward"):
        assert products[f"{direction}_us"] == min(products[f"{direction}_{form}_us"] for form in FORMS) > 0
    assert products["floor_us"] == pytest.approx(products["forward_us"] + products["backward_us"])
    rows = {r["model"]: r for r in result["steps"]}
    assert list(rows) == ["torch.nn.LSTM", "vanilla"]
    assert rows["vanilla"]["engine"] == "native" and rows["torch.nn.LSTM"]["engine"] == "torch"
    for row in rows.values():
        assert row["failure"] is None and row["directions"] == 1 and row["frames"] > 0
        assert row["floor_us"] == pytest.approx(products["floor_us"])
        assert row["step_multiple"] == pytest.approx(row["step_us"] / row["floor_us"])
        assert row["epoch_us"] > row["step_us"] > 0  # the epoch adds validation to the training part
    assert rows["vanilla"]["step_vs_reference"] == pytest.approx(rows["vanilla"]["step_us"]
                                                                 / rows["torch.nn.LSTM"]["step_us"])
    table = "\n".join(floor_table(result))
    assert f"| jsb_chorales | 6 | vanilla | native | {rows['vanilla']['step_us']:.2f} |" in table
    assert "floor" in markdown({"floor": result})
