"""search.until=decided (harness.rounds): a sweep in rounds stops a variant once its comparison
with vanilla is decided, and a rerun goes on from the last look. The training is a stand-in
of known outcome (the rounds, the study and the storage are the real ones): a trial's test
metric is 10 + N(0, 1) from its seed, plus 50 for NFG (far worse)."""

import numpy as np
import optuna
import pandas as pd
import pytest

from harness import analysis
from harness import sweep as sweep_module
from harness.storage import counted as counted_trials
from harness.train import TrainingResult


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


def test_a_decided_variant_gets_no_more_trials_and_a_rerun_goes_on(tmp_path, compose_config, monkeypatch):
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
    # a raised cap: the undecided variant and vanilla go on from 30; NFG stays decided at 10
    sweep_module.sweep(compose_config([*overrides[:3], "search.n_trials=40", *overrides[4:]], command="sweep"))
    assert counted(url, "jsb_chorales.nfg")[0] == 10
    assert counted(url, "jsb_chorales.cifg")[0] == 40 and counted(url, "jsb_chorales.vanilla")[0] == 40
    # the report says how many trials each variant got, and where and by what it was decided
    report = analysis.run({"dataset": "jsb_chorales", "storage": url, "out": str(tmp_path / "out"),
                           "n_bootstrap": 0, "figures": True, "crosscheck": False,
                           "min_trials_for_fanova": 1000}).read_text()
    section = report[report.index("## Sequential study"):report.index("## Trials")]
    assert "| nfg | 10 | worse | 10 | rank test |Z|" in section.replace("\\|", "|")
    assert "| cifg | 40 | undecided | 40 |" in section
    # every look of each comparison, up to the one the sweep decided or last judged
    assert "![The sequential study](sequential.png)" in section and (tmp_path / "out" / "sequential.png").stat().st_size
    looks = pd.read_csv(tmp_path / "out" / "sequential.csv")
    nfg = looks[looks.variant == "nfg"]
    assert nfg.look.tolist() == [10] and nfg.verdict.tolist() == ["worse"]
    cifg = looks[looks.variant == "cifg"]
    assert cifg.look.tolist() == [10, 20, 30, 40] and set(cifg.verdict) == {"undecided"}
    # the scorecard judges each variant by the verdict its sweep stopped on
    card = pd.read_csv(tmp_path / "out" / "scorecard.csv").set_index("finding")
    nfg_row = card.loc["NFG (no forget gate) significantly worse"]
    assert nfg_row.verdict == "agrees" and "worse at look 10 of the sequential rank test" in nfg_row.evidence
    assert f"|Z| = {abs(decided['z']):.2f}" in nfg_row.evidence
    assert "each comparison at its own alpha" in report
    stored = counted(url, "jsb_chorales.cifg")[1]  # what the sweep judged at its last look, from the same trials
    assert cifg.iloc[-1][["z", "shift", "shift_low", "shift_high"]].tolist() == pytest.approx(
        [stored["z"], stored["shift"], stored["shift_low"], stored["shift_high"]])


def test_looks_up_to_the_cap():
    from harness.analysis.sequential import looks_up_to

    assert looks_up_to(35, 10, 200) == [10, 20, 30]
    assert looks_up_to(200, 30, 200) == [30, 60, 90, 120, 150, 180, 200]
    assert looks_up_to(5, 10, 200) == []
