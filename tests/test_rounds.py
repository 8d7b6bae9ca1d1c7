"""search.until=decided (harness.study.rounds): a sweep in rounds stops a variant once its comparison
with vanilla is decided, and a rerun goes on from the last look. The training is a stand-in
of known outcome (the rounds, the study and the storage are the real ones): a trial's test
metric is 10 + N(0, 1) from its seed, plus 50 for NFG (far worse)."""

import numpy as np
import optuna
import pandas as pd
import pytest

from harness import analysis
from harness.errors import UserError
from harness.storage import counted as counted_trials
from harness.study import sweep as sweep_module
from harness.training.train import TrainingResult


def known_training(cfg, data=None, out_dir=None, log=None, on_epoch=None):
    value = 10 + np.random.default_rng(int(cfg.seed)).normal() + (50.0 if cfg.variant.name == "nfg" else 0.0)
    if on_epoch is not None:
        on_epoch(1, value)
    return TrainingResult(dataset=cfg.dataset.name, variant=cfg.variant.name, recipe="greff", metric="nll",
                          val_metric=value, test_metric=value, best_epoch=1, epochs=1, n_params=1, seconds=0.0,
                          failure=None, hyperparameters={}, train={}, learning_curve=[], data={})


def counted(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return len(counted_trials(study.get_trials(deepcopy=False))), study.user_attrs.get("sequential")


def test_a_decided_variant_gets_no_more_trials_and_a_rerun_goes_on(tmp_path, compose_config, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "train", known_training)
    url = f"sqlite:///{tmp_path / 'rounds.db'}"
    # margin 0.01: CIFG (same distribution as vanilla) cannot be shown equivalent with
    # 40 trials, so it runs to the cap; NFG is 50 worse, which every look can see
    overrides = ["search.variants=[vanilla,nfg,cifg]", "search.until=decided", "search.look_every=10",
                 "search.n_trials=30", f"search.storage={url}", "analysis.margin=0.01"]
    sweep_module.sweep(compose_config(overrides, command="sweep"))
    nfg, decided = counted(url, "jsb_chorales.nfg")
    assert decided["verdict"] == "worse" and decided["look"] == 10 and "rank test" in decided["by"]
    assert nfg == 10  # no trial after the look that decided it
    assert counted(url, "jsb_chorales.cifg")[0] == 30 and counted(url, "jsb_chorales.vanilla")[0] == 30
    assert counted(url, "jsb_chorales.cifg")[1]["verdict"] == "undecided"
    assert counted(url, "jsb_chorales.cifg")[1]["looks"] == [[10, 30], [20, 30], [30, 30]]  # recorded with the study
    # a raised cap: the look at 30 was at the cap and spent all of alpha, so nothing can be decided
    # past it at the same level: no trial is added, and NFG stays decided at 10
    capsys.readouterr()
    sweep_module.sweep(compose_config([*overrides[:3], "search.n_trials=40", *overrides[4:]], command="sweep"))
    said = capsys.readouterr().out
    assert "nfg: decided worse at 10 trials a variant; it gets no more trials" in said
    assert "spent all of alpha" in said
    assert counted(url, "jsb_chorales.nfg")[0] == 10
    assert counted(url, "jsb_chorales.cifg")[0] == 30 and counted(url, "jsb_chorales.vanilla")[0] == 30
    # a cap below the looks judged is refused in one line naming the key
    with pytest.raises(UserError, match="search.n_trials=20"):
        sweep_module.sweep(compose_config([*overrides[:3], "search.n_trials=20", *overrides[4:]], command="sweep"))
    with pytest.raises(UserError, match="analysis.alpha"):
        sweep_module.sweep(compose_config([*overrides, "analysis.alpha=0.1"], command="sweep"))
    # the report says how many trials each variant got, and where and by what it was decided
    report = analysis.run({"dataset": "jsb_chorales", "storage": url, "out": str(tmp_path / "out"),
                           "n_bootstrap": 0, "figures": True, "crosscheck": False,
                           "min_trials_for_fanova": 1000}).read_text()
    section = report[report.index("## Sequential study"):report.index("## Trials")]
    assert "| nfg | 10 | worse | 10 | 0.025 | worse at 10 |" in section
    assert "| cifg | 30 | undecided | 30 | 0.05 | undecided at 30 |" in section  # NFG's level passed on
    assert "![The sequential study](sequential.png)" in section and (tmp_path / "out" / "sequential.png").stat().st_size
    looks = pd.read_csv(tmp_path / "out" / "sequential.csv")
    nfg = looks[looks.variant == "nfg"]
    assert nfg.look.tolist() == [10] and nfg.verdict.tolist() == ["worse"]
    cifg = looks[looks.variant == "cifg"]
    assert cifg.look.tolist() == [10, 20, 30] and set(cifg.verdict) == {"undecided"}
    # the scorecard judges each variant by the same rank test at the recorded looks
    card = pd.read_csv(tmp_path / "out" / "scorecard.csv").set_index("finding")
    nfg_row = card.loc["NFG (no forget gate) significantly worse"]
    assert nfg_row.verdict == "agrees" and "worse at look 10 of its rounds" in nfg_row.evidence
    assert f"|Z| = {abs(decided['z']):.2f}" in nfg_row.evidence
    assert "family-wise level of 0.05" in report
    stored = counted(url, "jsb_chorales.cifg")[1]  # what the sweep judged at its last look, from the same trials
    assert cifg.iloc[-1][["z", "shift", "shift_low", "shift_high"]].tolist() == pytest.approx(
        [stored["z"], stored["shift"], stored["shift_low"], stored["shift_high"]])


def test_a_raised_cap_keeps_the_looks_judged_and_spends_only_what_is_left():
    from harness.analysis.boundaries import boundaries, crossings
    from harness.study.rounds import looks_now

    past = [[10, 100], [20, 100], [30, 100]]
    looks = looks_now(past, 60, 10, 200)
    assert looks[:3] == past and looks[3:] == [[40, 200], [50, 200], [60, 200]]
    before = boundaries([10, 20, 30], 0.05, cap=100)
    after = boundaries([n for n, _ in looks], 0.05, cap=[c for _, c in looks])
    assert after[:3] == pytest.approx(before)  # the decisions made at the first looks stand
    full = boundaries(list(range(10, 201, 10)), 0.05, cap=[100] * 3 + [200] * 17)
    spent = sum(map(sum, crossings(full, list(range(10, 201, 10)))))
    assert spent == pytest.approx(0.05, abs=1e-5)  # never more than alpha in all
    assert looks_now([[10, 20], [20, 20]], 40, 10, 40) == [[10, 20], [20, 20]]  # its cap reached: nothing left


def test_looks_up_to_the_cap():
    from harness.analysis.sequential import looks_up_to

    assert looks_up_to(35, 10, 200) == [10, 20, 30]
    assert looks_up_to(200, 30, 200) == [30, 60, 90, 120, 150, 180, 200]
    assert looks_up_to(5, 10, 200) == []


def test_a_data_set_without_a_task_default_gets_a_margin_from_vanillas_first_look(tmp_path, compose_config,
                                                                                  monkeypatch, capsys):
    # task none: no default margin, so the rounds derive one from vanilla's first 10 trials
    # (0.15 x their interquartile range, computed here with numpy) and record it with the study
    monkeypatch.setattr(sweep_module, "train", known_training)
    url = f"sqlite:///{tmp_path / 'derived.db'}"
    overrides = ["search.variants=[vanilla,cifg]", "search.until=decided", "search.look_every=10",
                 "search.n_trials=20", f"search.storage={url}", "analysis.task=none"]
    sweep_module.sweep(compose_config(overrides, command="sweep"))
    vanilla = optuna.load_study(study_name="jsb_chorales.vanilla", storage=url)
    first = [t.user_attrs["test_metric"] for t in sorted(counted_trials(vanilla.get_trials()), key=lambda t: t.number)]
    q1, q3 = np.percentile(first[:10], [25, 75])
    recorded = counted(url, "jsb_chorales.cifg")[1]
    assert recorded["margin"] == pytest.approx(0.15 * (q3 - q1))
    assert "derived: 0.15 x the interquartile range of vanilla's first 10 trials" in capsys.readouterr().out
    sweep_module.sweep(compose_config(overrides, command="sweep"))  # a rerun judges with the recorded margin
    assert "the margin recorded with the study" in capsys.readouterr().out
    with pytest.raises(UserError, match="analysis.margin=0.5"):
        sweep_module.sweep(compose_config([*overrides, "analysis.margin=0.5"], command="sweep"))
