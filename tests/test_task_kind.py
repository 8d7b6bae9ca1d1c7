"""The paper's task a data set is compared with (music, speech, handwriting or none): read
from its config (harness.datasets.task_kind), recorded with each study a sweep makes
(study user attribute `task`), and read back by the analysis, which falls back on a guess
from the data set's name only for studies that recorded none."""

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf, open_dict

from harness import analysis, project_root
from harness.analysis import read, scorecard
from harness.datasets import task_kind, task_kind_reason
from harness.errors import UserError
from harness.storage import protocol
from harness.study.sweep import open_study, space_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = {"n_trees": 4, "grid_points": 4, "n_bootstrap": 0, "figures": False, "crosscheck": False}


def shipped(name):
    return OmegaConf.load(project_root() / "conf" / "dataset" / f"{name}.yaml")


@pytest.mark.parametrize("name,kind", [("jsb_chorales", "music"), ("timit", "speech"), ("timit_like", "speech"),
                                       ("iam_ondb", "handwriting"), ("handwriting_like", "handwriting")])
def test_the_built_in_data_sets(name, kind):
    assert task_kind(shipped(name)) == kind


@pytest.mark.parametrize("cfg,kind", [
    ({"name": "motets", "format": "midi", "task": "next_step"}, "music"),
    ({"name": "songs", "format": "npz", "task": "next_step"}, "music"),
    ({"name": "marker", "format": "npz", "task": "framewise"}, "speech"),
    ({"name": "aligned", "format": "wav_textgrid", "task": "framewise"}, "speech"),
    ({"name": "formulas", "format": "inkml", "task": "ctc"}, "handwriting"),
    ({"name": "sensors", "format": "npz", "task": "regression"}, None),
])
def test_a_users_own_data_set_by_its_task(cfg, kind):
    found, why = task_kind_reason(cfg)
    assert found == kind and cfg["task"] in why


def test_the_domain_key_overrides_the_task_and_an_unknown_one_is_named():
    assert task_kind({"name": "sensors", "format": "npz", "task": "regression", "domain": "speech"}) == "speech"
    jsb = shipped("jsb_chorales")
    with open_dict(jsb):
        jsb.domain = "none"
    assert task_kind_reason(jsb) == (None, "set by the data set's config (domain: none)")
    with pytest.raises(UserError, match="dataset 'x': domain 'piano' is unknown; use one of music, speech, "):
        task_kind({"name": "x", "format": "npz", "task": "next_step", "domain": "piano"})


def test_a_sweep_records_the_task_and_a_changed_domain_is_no_protocol_change(compose_config, tmp_path):
    (tmp_path / "a.json").write_text('{"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]]}')
    cfg = compose_config(["dataset=jsb_chorales"], command="sweep")
    with open_dict(cfg):
        cfg.dataset.path = str(tmp_path / "a.json")
    study = open_study(optuna.storages.InMemoryStorage(), "jsb_chorales", "vanilla", seed=0)
    assert protocol.TASK not in study.user_attrs  # an old study: no task yet
    protocol.keep(study, cfg, space_of(cfg))
    assert study.user_attrs[protocol.TASK] == "music"
    with open_dict(cfg):
        cfg.dataset.domain = "none"
    protocol.keep(study, cfg, space_of(cfg))  # not refused: the domain says how trials are judged, not what they are
    assert study.user_attrs[protocol.TASK] is None and protocol.CHANGES not in study.user_attrs


def summary(name, **attrs):
    """What recorded_task reads of an Optuna StudySummary."""
    return SimpleNamespace(study_name=name, user_attrs=attrs)


def test_the_analysis_takes_analysis_task_then_the_recorded_task_then_the_name():
    agreed = read.recorded_task([summary("m.vanilla", task="music"), summary("m.cifg", task="music")])
    assert agreed == ("music", "recorded with the studies, from the data set's config")
    partly = read.recorded_task([summary("m.vanilla", task="music"), summary("m.cifg")])
    assert partly[0] == "music" and "1 of 2 studies" in partly[1]
    assert read.recorded_task([summary("m.vanilla"), summary("m.cifg")]) is None
    differ = read.recorded_task([summary("m.vanilla", task="music"), summary("m.cifg", task="speech")])
    assert differ[0] is None and "m.cifg: speech" in differ[1] and "m.vanilla: music" in differ[1]
    none = read.recorded_task([summary("sensors.vanilla", task=None)])
    assert none[0] is None and "names none of the paper's tasks" in none[1]

    assert scorecard.task_of("motets", "speech", agreed) == ("speech", "set by analysis.task")
    assert scorecard.task_of("motets", None, agreed) == agreed
    assert scorecard.task_of("jsb_chorales", None, none) == none  # a recorded none is not second-guessed by the name
    assert scorecard.task_of("jsb_chorales", None, None)[0] == "music"
    assert "guessed from the data set's name" in scorecard.task_of("jsb_chorales", None, None)[1]
    assert scorecard.task_of("motets", None, None)[0] is None


def test_an_old_study_without_the_attribute_is_guessed_from_its_name_and_the_report_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    for variant, value in (("vanilla", 1.0), ("nig", 2.0)):
        study = optuna.create_study(study_name=f"timit.{variant}", storage=url)
        for n in range(3):
            study.add_trial(optuna.trial.create_trial(
                params={"learning_rate": 10 ** -(n + 2)}, value=value + n / 10, user_attrs={"test_metric": value + n / 10},
                distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True)}))
    report = analysis.run({"dataset": "timit", "storage": url, "out": str(tmp_path / "out"), **FAST})
    assert "Task: speech (guessed from the data set's name: the studies recorded no task)" in report.read_text()


def test_a_midi_folder_named_motets_is_swept_and_analysed_as_music(compose_config, tmp_path):
    """A MIDI data set whose name says nothing: its sweep (2 one-epoch trials of two
    variants, a few seconds) records task=music, and the analysis applies the music findings
    and the music margin."""
    import numpy as np

    from harness.study import sweep
    from test_midi import write_folder, write_type0

    rolls = {split: [np.eye(88, dtype=np.float32)[[40 + (t + k) % 5 for t in range(10)]] for k in range(3)]
             for split in ("train", "valid", "test")}
    folder = write_folder(tmp_path / "motets", rolls, write_type0)
    url = f"sqlite:///{tmp_path / 'motets.db'}"
    cfg = compose_config(["search.variants=[vanilla,nig]", "search.n_trials=2", "max_epochs=1",
                          "search.space.hidden_size.high=24", f"search.storage={url}"], command="sweep")
    with open_dict(cfg):
        cfg.dataset = {"name": "motets", "format": "midi", "path": str(folder), "task": "next_step",
                       "bidirectional": False, "cache_dir": str(tmp_path / "cache")}
    sweep.sweep(cfg)
    studies = optuna.get_all_study_summaries(url)
    assert sorted(s.study_name for s in studies) == ["motets.nig", "motets.vanilla"]
    assert all(s.user_attrs["task"] == "music" for s in studies)

    report = analysis.run({"dataset": "motets", "storage": url, "out": str(tmp_path / "out"), **FAST}).read_text()
    assert "Task: music (recorded with the studies, from the data set's config)" in report
    assert "Margin: 0.3 (the music default" in report
    card = (tmp_path / "out" / "scorecard.csv").read_text()
    assert "task is unknown" not in card and "the paper states it for speech, handwriting, not music" in card
