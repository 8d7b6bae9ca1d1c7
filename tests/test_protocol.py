"""A study is one protocol (harness.storage.protocol): a sweep with another search space, recipe,
max_epochs, patience or data set is refused in one line, or recorded when allowed; an old
study without the record is topped up; the analysis names a mixed study."""

import json
import subprocess
import sys

import optuna
import pytest
from omegaconf import open_dict
from optuna.distributions import FloatDistribution, IntDistribution

from harness import project_root
from harness.analysis import read
from harness.errors import UserError
from harness.storage import protocol
from harness.study.sweep import open_study, space_of


@pytest.fixture
def tiny(tmp_path):
    """A data file of known size for the data set's identity."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]]}))
    return path


def config(compose_config, tiny, *overrides):
    cfg = compose_config(list(overrides), command="sweep")
    with open_dict(cfg):
        cfg.dataset.path = str(tiny)
    return cfg


def keep(study, cfg):
    protocol.keep(study, cfg, space_of(cfg))


def new_study():
    return open_study(optuna.storages.InMemoryStorage(), "jsb_chorales", "vanilla", seed=0)


# (override of the second sweep, the config key the message must name, recorded value, new value)
CHANGES = [
    ("search.space.hidden_size.high=400", "search.space.hidden_size.high", "200", "400"),
    ("search.space.learning_rate.log=false", "search.space.learning_rate.log", "True", "False"),
    ("train.batch_size=4", "train.batch_size", "1", "4"),
    ("max_epochs=20", "max_epochs", "150", "20"),
    ("patience=3", "patience", "15", "3"),
]


@pytest.mark.parametrize("override,key,was,now", CHANGES)
def test_a_changed_key_is_refused_naming_it_then_recorded_when_allowed(compose_config, tiny, override, key, was, now):
    study = new_study()
    keep(study, config(compose_config, tiny))
    recorded = study.user_attrs[protocol.PROTOCOL]
    assert study.user_attrs[protocol.FROM_TRIAL] == 0
    changed = config(compose_config, tiny, override)
    with pytest.raises(UserError) as refused:
        keep(study, changed)
    message = str(refused.value)
    assert f"{key}={was}, this sweep has {now}" in message, message
    assert "search.protocol_change=allow" in message and "search.storage" in message and "\n" not in message
    assert study.user_attrs[protocol.PROTOCOL] == recorded and protocol.CHANGES not in study.user_attrs

    study.enqueue_trial({"hidden_size": 50})  # one trial before the change: it starts at trial 1
    keep(study, config(compose_config, tiny, override, "search.protocol_change=allow"))
    (change,) = study.user_attrs[protocol.CHANGES]
    assert change["key"] == key and str(change["was"]) == was and str(change["now"]) == now
    assert change["from_trial"] == 1
    assert study.user_attrs[protocol.PROTOCOL] != recorded
    assert protocol.mixed_reason(study.user_attrs, study.get_trials()) is not None
    keep(study, changed)  # the new protocol is now the study's: no second change
    assert len(study.user_attrs[protocol.CHANGES]) == 1


def test_the_data_sets_files_are_part_of_its_identity(compose_config, tiny):
    study = new_study()
    keep(study, config(compose_config, tiny))
    before = study.user_attrs[protocol.PROTOCOL]["dataset"]["files"]
    assert before.startswith(f"1 files, {tiny.stat().st_size} bytes, ")
    tiny.write_text(tiny.read_text() + " ")  # one byte more
    with pytest.raises(UserError, match=r"the files of dataset.path=1 files, \d+ bytes"):
        keep(study, config(compose_config, tiny))
    with pytest.raises(UserError, match=r"dataset.lowest_note=21, this sweep has 20"):
        tiny.write_text(tiny.read_text()[:-1])
        keep(study, config(compose_config, tiny, "dataset.lowest_note=20"))


def test_what_does_not_change_a_result_is_not_compared(compose_config, tiny):
    study = new_study()
    keep(study, config(compose_config, tiny))
    keep(study, config(compose_config, tiny, "train.threads=1", "train.engine=torch", "train.eval_batch_size=8",
                       "seed=3", "search.n_trials=7", "search.workers=2"))
    assert protocol.CHANGES not in study.user_attrs


def test_a_key_added_to_odyssey_later_is_not_compared_but_a_removed_parameter_is(compose_config, tiny):
    study = new_study()
    cfg = config(compose_config, tiny)
    old = protocol.describe(cfg, space_of(cfg))
    del old["recipe"]["forget_bias"]  # as an odyssey before that key recorded it
    study.set_user_attr(protocol.PROTOCOL, old)
    keep(study, cfg)
    with pytest.raises(UserError, match="search.space.input_noise_std.type=float, this sweep has \\(not set\\)"):
        keep(study, config(compose_config, tiny, "~search.space.input_noise_std"))


def test_an_old_study_without_the_record_is_topped_up_and_checked_against_its_trials(compose_config, tiny):
    cfg = config(compose_config, tiny)
    space = space_of(cfg)
    study = new_study()
    for k in range(3):  # trials of an odyssey that did not record the protocol, drawn from Greff's space
        study.add_trial(optuna.trial.create_trial(
            params={"hidden_size": 20 + k, "learning_rate": 1e-3, "one_minus_momentum": 0.1, "input_noise_std": 0.5},
            distributions=space, value=1.0))
    keep(study, cfg)
    assert study.user_attrs[protocol.FROM_TRIAL] == 3 and study.user_attrs[protocol.PROTOCOL]
    assert protocol.mixed_reason(study.user_attrs, study.get_trials()) is None

    other = new_study()
    other.add_trial(optuna.trial.create_trial(
        params={"hidden_size": 300, "learning_rate": 1e-3, "one_minus_momentum": 0.1, "input_noise_std": 0.5},
        distributions={**space, "hidden_size": IntDistribution(20, 400, log=True)}, value=1.0))
    with pytest.raises(UserError, match="has trials drawn with search.space.hidden_size.high=400, this sweep has 200"):
        keep(other, cfg)
    assert protocol.PROTOCOL not in other.user_attrs


def test_the_objective_is_named_and_the_protocol_summed_up_in_one_line_for_the_dashboard(compose_config, tiny):
    study = new_study()
    study.set_user_attr(protocol.PROTOCOL, protocol.describe(config(compose_config, tiny), space_of(config(
        compose_config, tiny))))  # recorded by an odyssey before the summary and the metric name
    assert study.metric_names is None and protocol.SUMMARY not in study.user_attrs
    keep(study, config(compose_config, tiny))  # the next sweep adds them
    assert study.metric_names == ["val_nll"]  # JSB's task, next_step: the validation NLL
    size = tiny.stat().st_size
    assert study.user_attrs[protocol.SUMMARY] == (
        f"jsb_chorales (1 files, {size} bytes); recipe greff; hidden_size 20..200 log, input_noise_std 0..1, "
        "learning_rate 1e-06..0.01 log, one_minus_momentum 0.01..1 log; max_epochs 150, patience 15")
    keep(study, config(compose_config, tiny, "max_epochs=20", "search.space.hidden_size.high=400",
                       "~search.space.input_noise_std", "input_noise_std=0.1", "search.protocol_change=allow"))
    assert study.user_attrs[protocol.SUMMARY] == (
        f"jsb_chorales (1 files, {size} bytes); recipe greff; hidden_size 20..400 log, learning_rate 1e-06..0.01 "
        "log, one_minus_momentum 0.01..1 log; input_noise_std=0.1; max_epochs 20, patience 15; changed 1 time(s): "
        "mixed (protocol_changes)")
    assert [protocol.objective_name(task) for task in ("next_step", "framewise", "regression", "ctc")] == [
        "val_nll", "val_frame_error", "val_mse", "val_cer"]


def test_the_analysis_names_a_mixed_study(compose_config, tiny):
    storage = optuna.storages.InMemoryStorage()
    cfg = config(compose_config, tiny)
    space = space_of(cfg)
    made_elsewhere = optuna.create_study(storage=storage, study_name="jsb_chorales.vanilla")  # no protocol record
    for high in (1e-2, 1e-1):  # two ranges of the learning rate in one study
        made_elsewhere.add_trial(optuna.trial.create_trial(
            params={**{"hidden_size": 50, "one_minus_momentum": 0.1, "input_noise_std": 0.5}, "learning_rate": 1e-3},
            distributions={**space, "learning_rate": FloatDistribution(1e-6, high, log=True)}, value=1.0))
    allowed = open_study(storage, "jsb_chorales", "cifg", seed=0)
    keep(allowed, config(compose_config, tiny, "variant=cifg"))
    keep(allowed, config(compose_config, tiny, "variant=cifg", "max_epochs=3", "search.protocol_change=allow"))
    clean = open_study(storage, "jsb_chorales", "nig", seed=0)
    keep(clean, config(compose_config, tiny, "variant=nig"))
    mixed = read.load(storage, "jsb_chorales").mixed
    assert set(mixed) == {"jsb_chorales.vanilla", "jsb_chorales.cifg"}
    assert "learning_rate" in mixed["jsb_chorales.vanilla"] and "max_epochs 150 -> 3" in mixed["jsb_chorales.cifg"]


def test_a_refused_sweep_ends_in_one_line_and_touches_nothing(tmp_path):
    """The command line: exit 2, one line, no traceback; the study keeps its trials and record."""
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    rolls = {split: [[[60 + (t + k) % 5, 67] for t in range(6)] for k in range(n)]
             for split, n in (("train", 2), ("valid", 1), ("test", 1))}
    (tmp_path / "tiny.json").write_text(json.dumps(rolls))
    (conf / "tiny.yaml").write_text(f"name: tiny\nformat: pianoroll\npath: {tmp_path / 'tiny.json'}\n"
                                    "task: next_step\nbidirectional: false\n")
    url = f"sqlite:///{tmp_path}/s.db"

    def sweep(*more):
        return subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--config-dir", str(tmp_path / "conf"),
                               "dataset=tiny", "search.n_trials=1", "max_epochs=1", f"search.storage={url}", *more],
                              cwd=project_root(), capture_output=True, text=True, timeout=300)

    first = sweep()
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="tiny.vanilla", storage=url)
    before = (study.user_attrs, [(t.number, t.state, t.params) for t in study.get_trials()])
    refused = sweep("search.n_trials=2", "patience=2")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "patience=15, this sweep has 2" in lines[0] and "search.protocol_change=allow" in lines[0]
    study = optuna.load_study(study_name="tiny.vanilla", storage=url)
    assert (study.user_attrs, [(t.number, t.state, t.params) for t in study.get_trials()]) == before
