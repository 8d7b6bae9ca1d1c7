"""PED-ANOVA beside fANOVA (harness/analysis/ped_anova.py): checked on a function where the
two must disagree, against Optuna's own evaluator on the studies as a user has them, and
the report's sentence on their orders."""

import numpy as np
import optuna
import pandas as pd
import pytest

from harness import analysis
from harness.analysis import report
from harness.analysis.ped_anova import PedAnovaResult
from harness.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = {"n_trees": 16, "grid_points": 6, "min_trials_for_fanova": 10, "seed": 0, "n_bootstrap": 0,
        "figures": False, "crosscheck": False}
OPTIONS = {"ped_anova_target_quantile": 0.1, "ped_anova_region_quantile": 1.0}


def _storage(tmp_path):
    """(the journal file's path, as the analysis takes it; the storage, as Optuna opens it)"""
    path = str(tmp_path / "studies.log")
    return path, optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def _saturating(trial):
    """y spreads the metric widely, but only above 0.7, where no good trial is anyway: the best
    10 % need y <= 0.7 (70 % of the space) and x close to 0.3. The other three do nothing.

    fANOVA (variance over the space): y's term is 0 below 0.7 and rises to 10, variance 7.75;
    x's term 2 |x - 0.3| has variance 0.157, so y explains about 0.98, x 0.02. PED-ANOVA (the
    Pearson divergence of the best 10 %'s density from the uniform): x's best values lie in a
    window about 0.14 wide, divergence about 5.9; y's are uniform on [0, 0.7], 0.43."""
    x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
    trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
    trial.suggest_int("hidden_size", 20, 200, log=True)
    trial.suggest_categorical("c", ["a", "b"])
    return 20 + 10 * max(0.0, y - 0.7) / 0.3 + 2 * abs(x - 0.3)


def _made_by_a_user(storage, variant, seed, n=200, direction="minimize", objective=_saturating):
    study = optuna.create_study(study_name=f"synthetic.{variant}", storage=storage, direction=direction,
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    study.set_user_attr("dataset", "synthetic")
    study.set_user_attr("variant", variant)
    study.optimize(objective, n_trials=n)
    params, distributions = study.trials[0].params, study.trials[0].distributions
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):  # left out by both
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, state=state))
    return study


def _evaluator():
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.1, region_quantile=1.0)


def test_ped_anova_ranks_first_what_the_best_trials_need_and_fanova_what_spreads_the_metric(tmp_path):
    url, storage = _storage(tmp_path)
    studies = {v: _made_by_a_user(storage, v, seed) for v, seed in (("vanilla", 1), ("cifg", 2))}
    first = studies["vanilla"].trials[0]  # a run that diverged but stayed finite: set aside, as for fANOVA
    studies["vanilla"].add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                                           value=1e4))
    text = analysis.run({"dataset": "synthetic", "storage": url, "out": str(tmp_path / "out"),
                         **FAST}).read_text()
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    diverged = set(trials[trials.diverged].number)
    assert len(diverged) == 1 and (trials[trials.diverged].variant == "vanilla").all()
    kept = {v: [t for t in study.trials if v != "vanilla" or t.number not in diverged]
            for v, study in studies.items()}

    importance = pd.read_csv(tmp_path / "out" / "importance.csv")
    names = {"x", "y", "learning_rate", "hidden_size", "c"}
    for group in ("all", "vanilla", "cifg"):
        rows = importance[importance.variant == group]
        ped = rows[rows.ped_anova.notna()].set_index("term").ped_anova
        assert set(ped.index) == names, group  # a PED-ANOVA value beside each parameter's fraction
        assert ped.sum() == pytest.approx(1.0)
        assert rows[rows.term.str.contains(":") | (rows.term == "higher_order")].ped_anova.isna().all()
        assert (rows[rows.ped_anova.notna()].ped_anova_settings
                == "target_quantile=0.1, region_quantile=1, evaluate_on_local=True").all()
        fraction = rows.set_index("term").fraction
        assert ped.idxmax() == "x" and ped["x"] > 0.5, group  # what the best trials need
        assert fraction.drop("higher_order").idxmax() == "y" and fraction["y"] > 0.8, group  # what spreads it

    # the numbers are Optuna's own on the studies as the user (and optuna-dashboard) has them,
    # less the diverged run: the trials were handed over with their distributions, values and direction
    for variant in studies:
        study = optuna.create_study()
        study.add_trials(kept[variant])
        expected = optuna.importance.get_param_importances(study, evaluator=_evaluator())
        ours = importance[importance.variant == variant].dropna(subset=["ped_anova"]).set_index("term").ped_anova
        for name, value in expected.items():
            assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (variant, name)
    pooled = optuna.create_study()
    pooled.add_trials(kept["vanilla"] + kept["cifg"])
    expected = optuna.importance.get_param_importances(pooled, evaluator=_evaluator())
    ours = importance[importance.variant == "all"].dropna(subset=["ped_anova"]).set_index("term").ped_anova
    assert ours.to_dict() == pytest.approx(expected, rel=1e-9, abs=1e-12)

    assert "## PED-ANOVA beside fANOVA" in text
    assert "All variants pooled: fANOVA and PED-ANOVA disagree on which parameter is first and second: " \
           "fANOVA orders `y` > `x` >" in text
    assert ", PED-ANOVA `x` > `y` >" in text
    assert "optuna-dashboard's importances are PED-ANOVA" in text


def test_a_maximised_study_is_handed_over_with_its_direction(tmp_path):
    url, storage = _storage(tmp_path)

    def objective(trial):
        x, u = trial.suggest_float("x", -2, 2), trial.suggest_float("u", 0, 1)
        return -(x ** 2) + 0.3 * u  # the best (largest) values need x near 0

    study = _made_by_a_user(storage, "vanilla", 3, n=80, direction="maximize", objective=objective)
    analysis.run({"dataset": "synthetic", "storage": url, "out": str(tmp_path / "out"), **FAST})
    importance = pd.read_csv(tmp_path / "out" / "importance.csv").query("variant == 'all'")
    ours = importance.dropna(subset=["ped_anova"]).set_index("term").ped_anova
    expected = optuna.importance.get_param_importances(study, evaluator=_evaluator())
    assert ours.to_dict() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ours.idxmax() == "x"


def test_the_report_says_they_disagree_exactly_when_the_first_two_differ():
    same = report.order_sentence({"a": 0.8, "b": 0.1, "c": 0.05, "d": 0.01}, {"a": 0.5, "b": 0.3, "d": 0.15, "c": 0.05})
    assert same == "Both put `a` first and `b` second."  # a different third place is not a disagreement
    second = report.order_sentence({"a": 0.8, "b": 0.1, "c": 0.05}, {"a": 0.5, "c": 0.4, "b": 0.1},
                                   {"b": (0.05, 0.2), "c": (0.01, 0.04)})
    assert second == ("fANOVA and PED-ANOVA disagree on which parameter is second: fANOVA orders `a` > `b` > `c`, "
                      "PED-ANOVA `a` > `c` > `b`.")  # fANOVA's intervals apart: no caveat
    overlapping = report.order_sentence({"a": 0.8, "b": 0.1, "c": 0.05}, {"a": 0.5, "c": 0.4, "b": 0.1},
                                        {"b": (0.05, 0.2), "c": (0.01, 0.06)})
    assert overlapping.endswith("the bootstrap intervals of `b` and `c` overlap.")
    first = report.order_sentence({"a": 0.8, "b": 0.1, "c": 0.05}, {"b": 0.6, "a": 0.3, "c": 0.1})
    assert first.startswith("fANOVA and PED-ANOVA disagree on which parameter is first and second: ")

    def lines(ped_pooled, ped_vanilla):
        importance = pd.DataFrame(
            [{"variant": g, "term": t, "fraction": f, "ci_low": np.nan, "ci_high": np.nan}
             for g in ("all", "vanilla") for t, f in (("a", 0.7), ("b", 0.2), ("c", 0.05), ("a:b", 0.05))]
            + [{"variant": g, "term": "higher_order", "fraction": 0.05, "ci_low": np.nan, "ci_high": np.nan}
               for g in ("all", "vanilla")])
        ped = {g: PedAnovaResult(g, values, 40, settings="target_quantile=0.1, region_quantile=1")
               for g, values in (("all", ped_pooled), ("vanilla", ped_vanilla))}
        return "\n".join(report.ped_anova_lines(importance, ped, "all", OPTIONS, "the test metric"))

    agreeing = lines({"a": 0.6, "b": 0.3, "c": 0.1}, {"a": 0.6, "b": 0.3, "c": 0.1})
    assert "All variants pooled: Both put `a` first and `b` second." in agreeing
    assert "disagree" not in agreeing and "different parameters first or second" not in agreeing
    differing = lines({"a": 0.6, "c": 0.3, "b": 0.1}, {"b": 0.6, "a": 0.3, "c": 0.1})
    assert ("All variants pooled: fANOVA and PED-ANOVA disagree on which parameter is second: "
            "fANOVA orders `a` > `b` > `c`, PED-ANOVA `a` > `c` > `b`.") in differing
    assert "They put different parameters first or second for `vanilla` (1 of 1 variants" in differing
    assert "| all | 40 | 0.70 / 0.60 | 0.20 / 0.10 | 0.05 / 0.30 | a > b > c | a > c > b |" in differing


def test_quantiles_optuna_would_refuse_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ped_anova_target_quantile"):
        analysis.run({"dataset": "synthetic", "storage": "sqlite:///nowhere.db",
                      "ped_anova_target_quantile": 0.5, "ped_anova_region_quantile": 0.3})
