"""The analysis stage on studies built by hand, checked against independent numbers:
variance fractions computed from formulas, and scipy's Welch test."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from harness import analysis
from harness.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)
D = optuna.distributions
FAST = {"n_trees": 16, "grid_points": 6, "min_trials_for_fanova": 10, "seed": 0, "n_bootstrap": 20}


def _storage(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _journal(tmp_path):
    """A journal file: much faster than sqlite to fill with hundreds of trials."""
    return str(tmp_path / "studies.log")


def _open(url):
    if url.endswith(".log"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return url


def _study(url, dataset, variant, rows, distributions):
    """rows: (params, validation, test, state, user_attrs extra)."""
    study = optuna.create_study(study_name=f"{dataset}.{variant}", storage=_open(url))
    study.set_user_attr("dataset", dataset)
    study.set_user_attr("variant", variant)
    for params, validation, test, state, extra in rows:
        attrs = {"test_metric": test, "n_params": 1000, "seconds": 1.0, "epochs": 3, **extra}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, user_attrs=attrs, state=state,
            value=validation if state == optuna.trial.TrialState.COMPLETE else None))
    return study


def _complete(params, test, validation=None):
    return (params, test if validation is None else validation, test,
            optuna.trial.TrialState.COMPLETE, {})


def _run(url, out, dataset, **options):
    return analysis.run({"dataset": dataset, "storage": url, "out": str(out), **FAST, **options})


def test_fractions_match_a_known_variance_decomposition(tmp_path):
    # f = 3 x1 + 2 x2 + x3 + 4 (x1 - 1/2)(x2 - 1/2), x_i ~ U(0, 1) independent.
    # Var(a U) = a^2 / 12; the product term has mean zero given x1 or x2 alone, so it is
    # pure interaction with variance 16 (1/12)^2.
    main = {"x1": 9 / 12, "x2": 4 / 12, "x3": 1 / 12}
    pair = 16 / 144
    total = sum(main.values()) + pair
    rng = np.random.default_rng(1)
    distributions = {name: D.FloatDistribution(0, 1) for name in main}
    rows = []
    for x1, x2, x3 in rng.uniform(size=(300, 3)):
        f = 3 * x1 + 2 * x2 + x3 + 4 * (x1 - 0.5) * (x2 - 0.5)
        rows.append(_complete({"x1": x1, "x2": x2, "x3": x3}, f))
    url = _journal(tmp_path)
    _study(url, "synthetic", "vanilla", rows, distributions)
    report = _run(url, tmp_path / "out", "synthetic", n_trees=8, n_bootstrap=0)

    importance = pd.read_csv(tmp_path / "out" / "importance.csv")
    pooled = importance[importance.variant == "all"].set_index("term")
    for name, variance in main.items():
        assert pooled.loc[name, "fraction"] == pytest.approx(variance / total, abs=0.08), name
    assert pooled.loc["x1:x2", "fraction"] == pytest.approx(pair / total, abs=0.08)
    assert pooled.loc["higher_order", "fraction"] == pytest.approx(pair / total, abs=0.08)
    assert pooled.loc["x1:x3", "fraction"] < 0.03
    assert (pooled["std"] >= 0).all()
    # Optuna's evaluator (if scikit-learn is there) agrees on the main effects
    if pooled["optuna_fraction"].notna().any():
        for name, variance in main.items():
            assert pooled.loc[name, "optuna_fraction"] == pytest.approx(variance / total, abs=0.1)
    assert (tmp_path / "out" / "fanova_pie.png").stat().st_size > 1000
    assert (tmp_path / "out" / "fanova_pie.pdf").exists()
    assert report.name == "report.md" and "x1" in report.read_text()


def test_log_sampled_parameter_is_analysed_in_log10(tmp_path):
    # metric = log10(lr) + u, lr log-uniform on [1e-4, 1e-1], u ~ U(0, 3): in log10 units
    # both terms are uniform over a width of 3, so each explains half of the variance.
    # Analysed on a linear lr axis the forest would give lr about 0.2 instead.
    rng = np.random.default_rng(2)
    distributions = {"learning_rate": D.FloatDistribution(1e-4, 1e-1, log=True),
                     "u": D.FloatDistribution(0, 3)}
    rows = []
    for _ in range(250):
        lr, u = 10 ** rng.uniform(-4, -1), rng.uniform(0, 3)
        rows.append(_complete({"learning_rate": lr, "u": u}, math.log10(lr) + u))
    url = _journal(tmp_path)
    _study(url, "logtest", "vanilla", rows, distributions)
    _run(url, tmp_path / "out", "logtest", crosscheck=False, figures=False)
    pooled = pd.read_csv(tmp_path / "out" / "importance.csv").query("variant == 'all'")
    fraction = pooled.set_index("term")["fraction"]
    assert fraction["learning_rate"] == pytest.approx(0.5, abs=0.08)
    assert fraction["u"] == pytest.approx(0.5, abs=0.08)


def test_welch_column_matches_scipy_and_failed_trials_are_counted(tmp_path):
    rng = np.random.default_rng(3)
    distributions = {"hidden_size": D.IntDistribution(20, 200, log=True)}
    url = _journal(tmp_path)
    samples = {"vanilla": rng.normal(5.0, 0.3, 20), "cifg": rng.normal(5.1, 0.6, 20),
               "noaf": rng.normal(7.0, 0.5, 20)}
    for variant, tests in samples.items():
        rows = [_complete({"hidden_size": int(h)}, t, validation=t)
                for h, t in zip(rng.integers(20, 200, len(tests)), tests)]
        if variant == "noaf":  # two diverged trials, recorded in two ways
            rows.append(({"hidden_size": 50}, None, float("nan"), optuna.trial.TrialState.FAIL,
                         {"failure": "loss became nan"}))
            rows.append(({"hidden_size": 60}, 9.0, 9.0, optuna.trial.TrialState.COMPLETE,
                         {"failure": "loss became inf"}))
        _study(url, "welch", variant, rows, distributions)
    report = _run(url, tmp_path / "out", "welch", min_trials_for_fanova=1000)

    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")
    for variant in ("cifg", "noaf"):
        expected = stats.ttest_ind(samples[variant], samples["vanilla"], equal_var=False).pvalue
        assert variants.loc[variant, "welch_p_all"] == pytest.approx(expected, rel=1e-9)
        assert bool(variants.loc[variant, "differs_all"]) == (expected < 0.05)
        # best 10 % by validation (= test here): the 2 smallest of 20
        top = np.sort(samples[variant])[:2]
        top_reference = np.sort(samples["vanilla"])[:2]
        expected_top = stats.ttest_ind(top, top_reference, equal_var=False).pvalue
        assert variants.loc[variant, "welch_p_top"] == pytest.approx(expected_top, rel=1e-9)
        assert variants.loc[variant, "mean_top"] == pytest.approx(top.mean())
    assert variants.loc["noaf", "differs_all"]
    assert math.isnan(variants.loc["vanilla", "welch_p_all"])
    assert variants.loc["noaf", "n_failed"] == 2 and variants.loc["noaf", "n_usable"] == 20
    assert variants.loc["noaf", "mean_all"] == pytest.approx(samples["noaf"].mean())
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 62 and (trials.excluded == "failed").sum() == 2
    text = report.read_text()
    assert "2 failed" in text and "fANOVA skipped" in text
    assert (tmp_path / "out" / "boxplots.png").exists()


def test_trials_that_do_not_count_are_named_and_left_out_not_called_failures(tmp_path):
    """A sweep's stopped (lost), surplus and duplicate trials are not failures of the model:
    the report names them apart, n_trials counts only the rest, and a plain FAIL (a study of
    another tool) is still a failure."""
    rng = np.random.default_rng(5)
    distributions = {"hidden_size": D.IntDistribution(20, 200, log=True)}
    url = _journal(tmp_path)
    fail = optuna.trial.TrialState.FAIL
    for variant in ("vanilla", "cifg"):
        rows = [_complete({"hidden_size": int(h)}, float(t))
                for h, t in zip(rng.integers(20, 200, 12), rng.normal(5.0, 0.3, 12))]
        if variant == "cifg":
            rows += [({"hidden_size": 30}, None, None, fail, {"lost": "stopped: KeyboardInterrupt"}),
                     ({"hidden_size": 31}, None, None, fail, {"surplus": True}),
                     ({"hidden_size": 32}, None, None, fail, {}),
                     ({"hidden_size": 33}, 4.0, 4.0, optuna.trial.TrialState.COMPLETE, {"duplicate_of": 2})]
        _study(url, "uncounted", variant, rows, distributions)
    report = _run(url, tmp_path / "out", "uncounted", min_trials_for_fanova=1000)
    trials = pd.read_csv(tmp_path / "out" / "trials.csv").query("variant == 'cifg'").set_index("number")
    assert list(trials.loc[[12, 13, 14, 15], "excluded"]) == ["lost", "surplus", "failed", "duplicate"]
    assert list(trials.loc[[12, 13, 14, 15], "counted"]) == [False, False, True, False]
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")
    assert variants.loc["cifg", "n_trials"] == 13 and variants.loc["cifg", "n_not_counted"] == 3
    assert variants.loc["cifg", "n_complete"] == 12  # not the duplicate
    assert variants.loc["cifg", "n_failed"] == 1 and variants.loc["cifg", "n_usable"] == 12
    text = report.read_text()
    assert "3 of 28 trials do not count toward n_trials" in text and "1 lost" in text and "1 duplicate" in text
    assert "1 of 25 counted trials are excluded" in text and "1 failed" in text


def test_foreign_study_without_vanilla_and_only_failed_trials(tmp_path):
    # a study not made by this tool: its own parameter names, a categorical one, no
    # vanilla, and one variant whose every trial failed
    url = _journal(tmp_path)
    distributions = {"depth": D.IntDistribution(1, 8), "optimizer": D.CategoricalDistribution(["sgd", "adam"])}
    rng = np.random.default_rng(4)
    rows = [_complete({"depth": int(d), "optimizer": o}, float(d) + (o == "adam"))
            for d, o in zip(rng.integers(1, 9, 30), rng.choice(["sgd", "adam"], 30))]
    _study(url, "foreign", "mine", rows, distributions)
    failed = [({"depth": 2, "optimizer": "sgd"}, None, None, optuna.trial.TrialState.FAIL, {})] * 3
    _study(url, "foreign", "broken", failed, distributions)
    report = _run(url, tmp_path / "out", "foreign")
    text = report.read_text()
    assert "no usable `vanilla`" in text
    assert "Variant `broken` has no usable trial" in text
    importance = pd.read_csv(tmp_path / "out" / "importance.csv")
    assert set(importance[importance.variant == "all"].term) >= {"depth", "optimizer", "depth:optimizer"}


def test_user_errors(tmp_path):
    url = _storage(tmp_path)
    _study(url, "jsb_chorales", "vanilla", [], {})
    with pytest.raises(UserError, match="jsb_chorales"):
        _run(url, tmp_path / "out", "timit")
    with pytest.raises(UserError, match="no study storage at .*missing.db"):
        _run(f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "out", "timit")
    with pytest.raises(UserError, match="analysis.storage"):
        _run("notadatabase://nowhere", tmp_path / "out", "timit")
    with pytest.raises(UserError, match="analysis.dataset"):
        analysis.run({"dataset": None, "storage": url, "out": None})


def _step_study(rng, n, diverged):
    """Steps at 1/2 in x1, x2, x3 (a forest represents them exactly) plus noise, and
    `diverged` trials whose metric blew up to about 3,000 but stayed finite.

    With s_i = [x_i > 1/2] (Bernoulli 1/2, variance 1/4): f = 10 + 2 s1 + 1.2 s2 + 0.6 s3
    + 1.6 (s1 - 1/2)(s2 - 1/2). Main-effect variances 1, 0.36, 0.09; the product has mean
    zero given s1 or s2 alone, so it is pure interaction with variance 1.6^2 / 16 = 0.16."""
    rows = []
    for k, (x1, x2, x3) in enumerate(rng.uniform(size=(n, 3))):
        s1, s2, s3 = x1 > 0.5, x2 > 0.5, x3 > 0.5
        f = 10 + 2 * s1 + 1.2 * s2 + 0.6 * s3 + 1.6 * (s1 - 0.5) * (s2 - 0.5) + rng.normal(0, 0.05)
        if k < diverged:
            f = 3000 + 500 * rng.uniform()
        rows.append(_complete({"x1": x1, "x2": x2, "x3": x3}, f))
    return rows


def test_known_decomposition_with_diverged_trials_fractions_and_intervals(tmp_path):
    total = 1 + 0.36 + 0.09 + 0.16
    truth = {"x1": 1 / total, "x2": 0.36 / total, "x3": 0.09 / total, "x1:x2": 0.16 / total,
             "higher_order": 0.16 / total, "x1:x3": 0.0, "x2:x3": 0.0}
    rng = np.random.default_rng(5)
    distributions = {name: D.FloatDistribution(0, 1) for name in ("x1", "x2", "x3")}
    url = _journal(tmp_path)
    _study(url, "steps", "vanilla", _step_study(rng, 300, diverged=9), distributions)  # 3 %
    report = _run(url, tmp_path / "out", "steps", n_bootstrap=40, figures=False, crosscheck=False)

    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert trials.diverged.sum() == 9 and set(trials[trials.diverged].number) == set(range(9))
    pooled = pd.read_csv(tmp_path / "out" / "importance.csv").query("variant == 'all'")
    pooled = pooled.set_index("term")
    for term, value in truth.items():
        row = pooled.loc[term]
        assert abs(row.fraction - value) < 0.1, term
        # the interval holds the truth (0.01 of slack: a forest's splits never sit exactly
        # at 1/2, so even a perfect fit is off by about that much)
        assert row.ci_low - 0.01 <= value <= row.ci_high + 0.01, (term, row.ci_low, row.ci_high)
        assert row.ci_low <= row.fraction <= row.ci_high, term
    # without the rule the diverged trials make most of the variance: the headline is wrong
    without = pd.read_csv(tmp_path / "out" / "importance_without_rule.csv").set_index("term")
    assert abs(without.loc["x1", "fraction"] - truth["x1"]) > 0.2
    text = report.read_text()
    assert "9 trial(s) set aside" in text and "without the rule" in text
    assert "40 resamples" in text


def test_holm_matches_hand_worked_values():
    from harness.analysis.statistics import holm

    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04, raised to 0.06 (monotone)
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def _lr_study(rng, n, offset, extra=None):
    """metric = 9 + 0.5 (log10 lr + 3)^2 + offset + noise: learning rate dominates."""
    rows = []
    for _ in range(n):
        lr, h = 10 ** rng.uniform(-6, -2), int(rng.integers(20, 201))
        params = {"learning_rate": lr, "hidden_size": h}
        if extra:
            params[extra] = rng.uniform()
        value = 9 + 0.5 * (math.log10(lr) + 3) ** 2 + offset + rng.normal(0, 0.3)
        rows.append(_complete(params, value, validation=value + rng.normal(0, 0.05)))
    return rows


LR_SPACE = {"learning_rate": D.FloatDistribution(1e-6, 1e-2, log=True),
            "hidden_size": D.IntDistribution(20, 200, log=True)}


def test_scorecard_judges_the_papers_findings(tmp_path):
    rng = np.random.default_rng(6)
    url = _journal(tmp_path)
    for variant, offset in (("vanilla", 0.0), ("nfg", 1.5), ("cifg", 0.0)):
        _study(url, "jsb_chorales", variant, _lr_study(rng, 60, offset), LR_SPACE)
    _study(url, "jsb_chorales", "noaf", _lr_study(rng, 10, 1.5), LR_SPACE)
    report = _run(url, tmp_path / "out", "jsb_chorales", n_bootstrap=20, figures=False,
                  crosscheck=False)
    card = pd.read_csv(tmp_path / "out" / "scorecard.csv").set_index("finding")
    verdict = card["verdict"]
    assert verdict["NFG (no forget gate) significantly worse"] == "agrees"
    assert "Holm p" in card.loc["NFG (no forget gate) significantly worse", "evidence"]
    # 10 NOAF trials: worse by 1.5 but too few to call it if the test does not
    assert verdict["NOAF (no output activation) significantly worse"] in ("agrees", "undecided")
    # CIFG, no difference, 60 trials: equivalent exactly when every shift the one-look rank test
    # (critical z_.95, two one-sided tests at 0.05) keeps lies inside the music margin of +-0.3,
    # found here by scanning shifts with scipy's Mann-Whitney test
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    cifg, ref = (trials[trials.variant == v].test_metric.to_numpy() for v in ("cifg", "vanilla"))
    low, high = _kept_shifts(cifg, ref, stats.norm.isf(0.05))
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")
    assert variants.loc["cifg", "rank_equivalence_low"] == pytest.approx(low, abs=0.011)
    assert variants.loc["cifg", "rank_equivalence_high"] == pytest.approx(high, abs=0.011)
    inside = -0.3 < low and high < 0.3
    assert verdict["CIFG and NP not significantly different"] == ("agrees" if inside else "undecided")
    assert verdict["no variant significantly better than vanilla"] in ("agrees", "undecided")
    assert verdict["NIG, NOG, NIAF significantly worse"] == "not applicable"  # music (JSB)
    assert verdict["FGR (full gate recurrence) significantly worse"] == "not applicable"  # no study
    assert verdict["input noise helps speech a little, hurts the others"] == "not applicable"
    # learning rate: the whole interval above 2/3 (independent check from the formula:
    # log10 lr uniform on [-6, -2] gives 0.5 (u + 3)^2 a variance of 0.71, noise 0.09)
    lr = pd.read_csv(tmp_path / "out" / "importance.csv").query(
        "variant == 'all' and term == 'learning_rate'").iloc[0]
    assert lr.ci_low > 2 / 3
    assert verdict["learning rate explains the most variance, more than two thirds"] == "agrees"
    # Welch + Holm columns against scipy
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    ref = trials[trials.variant == "vanilla"].test_metric
    p = {v: stats.ttest_ind(trials[trials.variant == v].test_metric, ref, equal_var=False).pvalue
         for v in ("cifg", "nfg", "noaf")}
    ordered = sorted(p, key=p.get)
    expected = {}
    running = 0.0
    for rank, v in enumerate(ordered):
        running = max(running, min(1.0, (3 - rank) * p[v]))
        expected[v] = running
    for v in p:
        assert variants.loc[v, "welch_holm_all"] == pytest.approx(expected[v], rel=1e-9)
    assert "What this study says about the paper" in report.read_text()
    assert "Margin: 0.3 (the music default" in report.read_text()


def _kept_shifts(variant, vanilla, critical, step=0.01):
    """The shifts d at which scipy's two-sided Mann-Whitney test of (variant - d) against
    vanilla (asymptotic, tie-corrected, no continuity correction) stays below `critical`,
    scanned on a grid: (smallest, largest)."""
    grid = np.arange(-3, 3, step)
    kept = [d for d in grid if stats.norm.isf(stats.mannwhitneyu(
        variant - d, vanilla, method="asymptotic", use_continuity=False).pvalue / 2) < critical]
    return min(kept), max(kept)


def _welch_interval_by_hand(a, b, level):
    """mean(a) - mean(b) +- t * se, Welch-Satterthwaite degrees of freedom."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    return diff - half, diff + half


def _known_effects(tmp_path, effects, **options):
    """Studies of normal metrics with known shifts from vanilla: {variant: (shift, n, sd)};
    returns the scorecard (by finding) and variants.csv (by variant)."""
    rng = np.random.default_rng(11)
    tmp_path.mkdir(exist_ok=True)
    url = _journal(tmp_path)
    space = {"learning_rate": D.FloatDistribution(1e-3, 2e-3)}
    for variant, (shift, n, sd) in effects.items():
        rows = [_complete({"learning_rate": 1e-3 * (1 + rng.uniform())}, 10 + shift + sd * rng.normal())
                for _ in range(n)]
        _study(url, "jsb_chorales", variant, rows, space)
    _run(url, tmp_path / "out", "jsb_chorales", n_bootstrap=0, figures=False, crosscheck=False,
         min_trials_for_fanova=10_000, **options)
    card = pd.read_csv(tmp_path / "out" / "scorecard.csv").set_index("finding").verdict
    return card, pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")


NFG, FGR = "NFG (no forget gate) significantly worse", "FGR (full gate recurrence) significantly worse"
SAME, NONE_BETTER = "CIFG and NP not significantly different", "no variant significantly better than vanilla"


def test_verdicts_follow_the_interval_and_the_margin_on_known_effects(tmp_path):
    # margin 0.3 (music). NFG worse by 1 with 200 trials at sd 0.5: z about 20 -> worse.
    # CIFG and NP identical to vanilla, 200 trials at sd 0.5: the 90 % interval is +-0.083
    # around a difference of sd 0.05, inside +-0.3 unless |difference| > 0.21 (4 sd) -> equivalent.
    # FGR worse by 0.12 with 50 trials at sd 2: interval +-0.47 -> undecided, never
    # "disagrees" (the case of a true effect read as none).
    card, variants = _known_effects(tmp_path, {"vanilla": (0, 200, 0.5), "nfg": (1.0, 200, 0.5),
                                               "cifg": (0, 200, 0.5), "np": (0, 200, 0.5), "fgr": (0.12, 50, 2.0)})
    assert card[NFG] == "agrees"
    assert card[SAME] == "agrees"
    assert card[FGR] == "undecided"
    assert variants.loc["fgr", "comparison"] == "undecided"
    # the interval is Welch's at 1 - 2 alpha, computed here by hand
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    ref = trials[trials.variant == "vanilla"].test_metric.to_numpy()
    lows = {}
    for variant in ("nfg", "cifg", "np", "fgr"):
        low, high = _welch_interval_by_hand(trials[trials.variant == variant].test_metric.to_numpy(), ref, 0.90)
        assert variants.loc[variant, "tost_low"] == pytest.approx(low, rel=1e-9)
        assert variants.loc[variant, "tost_high"] == pytest.approx(high, rel=1e-9)
        lows[variant] = low
    # no variant better: the lower end of every variant's interval of the shift (the rank test
    # inverted, one look, at z_.95) above -0.3, checked against scipy's test scanned over shifts
    # (a fixed comparison reads vanilla's first n trials against a variant's n: FGR has 50)
    ends = {}
    for v in ("nfg", "cifg", "np", "fgr"):
        values = trials[trials.variant == v].sort_values("number").test_metric.to_numpy()
        first = trials[trials.variant == "vanilla"].sort_values("number").test_metric.to_numpy()[:len(values)]
        ends[v] = _kept_shifts(values, first, stats.norm.isf(0.05))[0]
    for v, end in ends.items():
        assert variants.loc[v, "rank_equivalence_low"] == pytest.approx(end, abs=0.011)
    assert card[NONE_BETTER] == ("agrees" if min(ends.values()) > -0.3 else "undecided")


def test_equivalent_variants_contradict_a_finding_of_a_difference(tmp_path):
    # NFG identical to vanilla with 200 trials at sd 0.5: equivalent (as above) -> "NFG
    # worse" disagrees; FGR better by 0.5 -> "no variant better" and "FGR worse" disagree;
    # "CIFG same" with a CIFG worse by 1 -> disagrees.
    card, variants = _known_effects(tmp_path, {"vanilla": (0, 200, 0.5), "nfg": (0, 200, 0.5),
                                               "cifg": (1.0, 200, 0.5), "fgr": (-0.5, 200, 0.5)})
    assert variants.loc["nfg", "comparison"] == "equivalent"
    assert card[NFG] == "disagrees"
    assert card[FGR] == "disagrees"  # significantly better is not worse
    assert card[NONE_BETTER] == "disagrees"
    assert card[SAME] == "disagrees"


def test_few_trials_are_undecided_and_a_margin_can_be_set(tmp_path):
    # 8 trials a variant, NFG worse by 0.12: undecided (no count of trials makes it a
    # contradiction); with analysis.margin=5 the same study is equivalent (+-5 is wide).
    card, _ = _known_effects(tmp_path / "a", {"vanilla": (0, 8, 1.0), "nfg": (0.12, 8, 1.0)})
    assert card[NFG] == "undecided"
    card, variants = _known_effects(tmp_path / "b", {"vanilla": (0, 8, 1.0), "nfg": (0.12, 8, 1.0)}, margin=5.0)
    assert variants.loc["nfg", "comparison"] == "equivalent" and card[NFG] == "disagrees"


def test_intervals_match_welch_and_the_normal_approximation(tmp_path):
    # the bootstrap interval of a difference of means against scipy's Welch interval;
    # the median's against its normal approximation, 1.2533 sigma / sqrt(n) (loosely:
    # a median's bootstrap interval is lumpy)
    rng = np.random.default_rng(7)
    n = 400
    samples = {"vanilla": rng.normal(10, 1.0, n), "cifg": rng.normal(10.3, 1.5, n)}
    url = _journal(tmp_path)
    for variant, values in samples.items():
        rows = [_complete({"learning_rate": 1e-3 * (1 + rng.uniform())}, t) for t in values]
        _study(url, "median", variant, rows, {"learning_rate": D.FloatDistribution(1e-3, 2e-3)})
    _run(url, tmp_path / "out", "median", n_bootstrap=400, figures=False,
         min_trials_for_fanova=10_000)
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index("variant")
    welch = stats.ttest_ind(samples["cifg"], samples["vanilla"], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    row = variants.loc["cifg"]
    width = high - low
    assert row.mean_diff_all == pytest.approx(samples["cifg"].mean() - samples["vanilla"].mean())
    assert row.mean_diff_all_ci_low == pytest.approx(low, abs=0.1 * width)
    assert row.mean_diff_all_ci_high == pytest.approx(high, abs=0.1 * width)
    row = variants.loc["vanilla"]
    half = 1.96 * 1.2533 * 1.0 / math.sqrt(n)
    assert 0.5 * half < (row.median_all_ci_high - row.median_all_ci_low) / 2 < 2 * half
    assert row.median_all_ci_low < row.median_all < row.median_all_ci_high


def test_mixed_parameter_sets_too_few_trials_and_no_variance(tmp_path):
    rng = np.random.default_rng(8)
    url = _journal(tmp_path)
    space_extra = {**LR_SPACE, "dropout": D.FloatDistribution(0, 1)}
    _study(url, "mixed", "vanilla", _lr_study(rng, 30, 0.0), LR_SPACE)
    _study(url, "mixed", "cifg", _lr_study(rng, 30, 0.0, extra="dropout"), space_extra)
    flat = [_complete({"learning_rate": 1e-3, "hidden_size": int(h)}, 5.0)
            for h in rng.integers(20, 200, 25)]
    _study(url, "mixed", "flat", flat, LR_SPACE)
    _study(url, "mixed", "tiny", _lr_study(rng, 4, 0.0), LR_SPACE)
    report = _run(url, tmp_path / "out", "mixed", n_bootstrap=5, figures=True, crosscheck=False)
    text = report.read_text()
    assert "left out: `dropout` (set in 30 of" in text  # pooled: only cifg has dropout
    importance = pd.read_csv(tmp_path / "out" / "importance.csv")
    assert "dropout" not in set(importance[importance.variant == "all"].term)
    assert "dropout" in set(importance[importance.variant == "cifg"].term)  # its own analysis keeps it
    assert "`flat`: the metric is the same in every trial: fANOVA skipped." in text
    assert "`tiny`: 4 usable trials, fewer than min_trials_for_fanova" in text


def test_any_optuna_study_made_by_hand(tmp_path):
    # no user attributes, no test metric, a maximised objective, intermediate values
    url = _journal(tmp_path)
    study = optuna.create_study(study_name="my-study", storage=_open(url), direction="maximize")

    def objective(trial):
        x, c = trial.suggest_float("x", -2, 2), trial.suggest_categorical("c", ["a", "b"])
        for step in range(3):
            trial.report(-(x ** 2) + step, step)
        return -(x ** 2) + (c == "b") + 10

    study.optimize(objective, n_trials=40)
    report = _run(url, tmp_path / "out", "my-study", n_bootstrap=5, crosscheck=False)
    text = report.read_text()
    assert "the objective value (higher is better)" in text
    importance = pd.read_csv(tmp_path / "out" / "importance.csv").query("variant == 'all'")
    assert set(importance.term) >= {"x", "c", "c:x", "higher_order"}
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").iloc[0]
    best = max(t.value for t in study.trials)
    assert variants.best_all == pytest.approx(best)  # higher is better: the best is the largest
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000
    assert "Learning curves" in text and "no intermediate values" not in text
    card = pd.read_csv(tmp_path / "out" / "scorecard.csv")
    assert (card.verdict == "not applicable").all()  # none of the paper's parameters or variants


def test_diverged_rule_keeps_runs_that_did_not_learn():
    from harness.analysis.diverged import flag

    rng = np.random.default_rng(9)
    # 88 trained runs near NLL 9, 12 that did not learn (a tiny learning rate: NLL 20-60,
    # below the untrained network's 61), 3 that diverged and stayed finite
    values = np.concatenate([rng.uniform(8.5, 10, 88), rng.uniform(20, 60, 12),
                             [3200.0, 800.0, 150.0]])
    frame = pd.DataFrame({"variant": "vanilla", "test_metric": values})
    flags, fences = flag(frame, "test_metric", 1.0, "auto", 5.0, 10.0)
    assert list(np.flatnonzero(flags)) == [100, 101, 102]
    assert fences["vanilla"].value == pytest.approx(10 * np.median(values))
    # a quarter of the runs diverged (NOAF in a short study): the median still holds
    quarter = pd.DataFrame({"variant": "noaf", "test_metric": np.r_[rng.uniform(10, 60, 18),
                                                                    rng.uniform(1000, 5000, 6)]})
    assert list(np.flatnonzero(flag(quarter, "test_metric", 1.0, "auto")[0])) == list(range(18, 24))
    # the iqr rule on a metric that crosses zero (a log-likelihood, higher is better)
    loglik = pd.DataFrame({"variant": "v", "test_metric": np.r_[rng.normal(0, 1, 40), -900.0]})
    flags, fences = flag(loglik, "test_metric", -1.0, "auto", 5.0, 10.0)
    assert list(np.flatnonzero(flags)) == [40]
    q1, q3 = np.percentile(loglik.test_metric[:40].to_numpy().tolist() + [-900.0], [25, 75])
    assert fences["v"].value == pytest.approx(q1 - 5 * (q3 - q1))
    # too few trials, or the rule off: nothing is flagged
    assert not flag(frame.head(5), "test_metric", 1.0, "auto", 5.0, 10.0)[0].any()
    assert not flag(frame, "test_metric", 1.0, "none", 5.0, 10.0)[0].any()


def test_diverged_fence_is_anchored_where_a_catastrophic_variant_cannot_move_it():
    from harness.analysis.diverged import flag

    rng = np.random.default_rng(12)
    vanilla = np.r_[rng.uniform(6.5, 8, 90), 7.2 * 5]  # one run that did not learn: 5 x the median
    nfg = rng.uniform(8, 12, 60)  # worse than vanilla as a whole, by less than the ratio
    noaf = 7.2 * 10 ** rng.uniform(2, 3, 50)  # the reported case: every run at 100-1000 x vanilla's
    frame = pd.DataFrame({"variant": ["vanilla"] * 91 + ["nfg"] * 60 + ["noaf"] * 50,
                          "test_metric": np.r_[vanilla, nfg, noaf]})
    fence = 10 * np.median(vanilla)  # by hand: one fence, from vanilla alone
    for anchor in ("reference", "pooled"):
        flags, fences = flag(frame, "test_metric", 1.0, "auto", anchor=anchor, reference="vanilla")
        assert list(np.flatnonzero(flags)) == list(range(151, 201)), anchor  # all of noaf, nothing else
        assert {f.anchor for f in fences.values()} == {anchor}
    assert fences["noaf"].value == pytest.approx(10 * np.median(frame.test_metric))  # pooled
    flags, fences = flag(frame, "test_metric", 1.0, "auto", reference="vanilla")
    assert [f.value for f in fences.values()] == pytest.approx([fence] * 3)
    assert fences["noaf"].source == "vanilla" and fences["noaf"].centre == pytest.approx(np.median(vanilla))
    # each variant's own median (the rule before issue 34): noaf's catastrophe is its own yardstick
    assert not flag(frame, "test_metric", 1.0, "auto", anchor="own")[0].any()
    # no reference study: the pooled median, which moves only when half of all trials diverged
    flags, fences = flag(frame[frame.variant != "vanilla"], "test_metric", 1.0, "ratio", reference="vanilla")
    assert fences["noaf"].anchor == "pooled" and "no usable `vanilla`" in fences["noaf"].why
    assert flags.sum() == 50 and fences["nfg"].value == pytest.approx(10 * np.median(np.r_[nfg, noaf]))
    # the iqr rule from vanilla's quartiles, on a metric that is higher where better: all of
    # noaf goes, and with it whatever else lies beyond 5 of vanilla's narrow IQRs (the run
    # that did not learn, nfg's worst: the iqr rule's known cost, docs/analysis.md)
    flags, fences = flag(frame.assign(test_metric=-frame.test_metric), "test_metric", -1.0, "iqr", k=5.0)
    q1, q3 = np.percentile(-vanilla, [25, 75])
    assert fences["nfg"].value == pytest.approx(q1 - 5 * (q3 - q1)) and fences["nfg"].rule == "iqr"
    assert list(flags) == list(-frame.test_metric < q1 - 5 * (q3 - q1)) and flags[151:].all()


def test_one_variants_catastrophe_cannot_decide_the_pooled_importance(tmp_path):
    # vanilla, cifg, nfg: metric = 7.2 x 10^(0.35 max(0, -4 - log10 lr)) + noise, a function
    # of the learning rate alone, so its pooled fraction is 1 but for the noise; runs with
    # lr near 1e-6 did not learn and end at up to 5 x the median (7.2 x 10^0.7 = 36).
    # noaf: every run at 100-1000 x vanilla's median, set by the hidden size alone.
    rng = np.random.default_rng(13)
    url = _journal(tmp_path)
    for variant in ("vanilla", "cifg", "nfg", "noaf"):
        rows = []
        for _ in range(80 if variant != "noaf" else 60):
            lr, h = 10 ** rng.uniform(-6, -2), int(round(10 ** rng.uniform(math.log10(20), math.log10(200))))
            if variant == "noaf":
                value = 7.2 * 10 ** (2 + math.log10(h / 20))
            else:
                value = 7.2 * 10 ** (0.35 * max(0.0, -4 - math.log10(lr))) + rng.normal(0, 0.05)
            rows.append(_complete({"learning_rate": lr, "hidden_size": h}, value))
        _study(url, "long_pieces", variant, rows, LR_SPACE)
    common = dict(n_bootstrap=0, figures=False, crosscheck=False)
    report = _run(url, tmp_path / "out", "long_pieces", **common)

    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert trials[trials.variant == "noaf"].diverged.all()
    assert not trials[trials.variant != "noaf"].diverged.any()
    did_not_learn = trials[(trials.variant != "noaf") & (trials.test_metric > 4 * 7.2)]
    assert len(did_not_learn) > 0  # at 4-5 x the median, and kept
    pooled = pd.read_csv(tmp_path / "out" / "importance.csv").query("variant == 'all'").set_index("term")
    assert pooled.loc["learning_rate", "fraction"] > 0.9
    assert "noaf" not in set(pd.read_csv(tmp_path / "out" / "importance.csv").variant)
    without = pd.read_csv(tmp_path / "out" / "importance_without_rule.csv").set_index("term")
    assert without.loc["learning_rate", "fraction"] < 0.3 < without.loc["hidden_size", "fraction"]
    text = report.read_text()
    assert "60 trial(s) set aside: noaf 60 of 60, every usable run" in text
    assert "anchor `reference`" in text and "of `vanilla`'s 80 usable trials" in text

    # each variant's own median: nothing flagged, and noaf decides the headline
    _run(url, tmp_path / "own", "long_pieces", diverged_anchor="own", **common)
    assert not pd.read_csv(tmp_path / "own" / "trials.csv").diverged.any()
    own = pd.read_csv(tmp_path / "own" / "importance.csv").query("variant == 'all'").set_index("term")
    assert own.loc["learning_rate", "fraction"] < 0.3
    with pytest.raises(UserError, match="analysis.diverged_anchor"):
        _run(url, tmp_path / "bad", "long_pieces", diverged_anchor="median")

def test_studies_the_analysis_cannot_read_give_one_clear_message(tmp_path):
    url = _journal(tmp_path)
    two = optuna.create_study(study_name="pareto", storage=_open(url), directions=["minimize"] * 2)
    two.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[1.0, 2.0]))
    with pytest.raises(UserError, match="2 objectives"):
        _run(url, tmp_path / "out", "pareto")
    for variant, direction in (("a", "minimize"), ("b", "maximize")):
        study = optuna.create_study(study_name=f"mix.{variant}", storage=_open(url), direction=direction)
        study.set_user_attr("dataset", "mix")
    with pytest.raises(UserError, match="mix minimised and maximised"):
        _run(url, tmp_path / "out", "mix")
    with pytest.raises(UserError, match="analysis.diverged_rule"):
        _run(url, tmp_path / "out", "mix", diverged_rule="median")


def test_the_fanova_compatibility_step_refuses_releases_it_was_not_written_for():
    from harness.analysis.fanova_compat import TESTED, check_versions

    check_versions()  # the installed releases are the tested ones (constraints.txt)
    check_versions(dict(TESTED))
    with pytest.raises(UserError, match=r"fanova 2\.1\.0 is installed, .*written for fanova 2\.0\.19.*constraints"):
        check_versions({**TESTED, "fanova": "2.1.0"})
    with pytest.raises(UserError, match=r"pyrfr 0\.9\.1 is installed"):
        check_versions({**TESTED, "pyrfr": "0.9.1"})
    with pytest.raises(ImportError, match="pyrfr is not installed"):
        check_versions({"fanova": TESTED["fanova"]})


def test_a_study_whose_variant_has_the_pooled_groups_name_is_refused(tmp_path):
    url = _journal(tmp_path)
    _study(url, "elsewhere", "all", [], {})
    with pytest.raises(UserError, match="study 'elsewhere.all' has variant 'all', the analysis's name"):
        _run(url, tmp_path / "out", "elsewhere")


def test_the_scorecard_reads_the_rank_verdict_and_shows_welch_beside_it():
    """One method: each finding follows the rank test's verdict (fixed or in rounds), whatever
    Welch's test on the converged runs says; Welch appears in the evidence as information."""
    from harness.analysis import scorecard

    def row(variant, verdict, shift, low, high, family="rounds", look=150):
        return {"variant": variant, "n_usable": 150, "comparison": verdict, "family": family, "rank_look": look,
                "rank_z": 2.9, "rank_boundary": 3.2, "rank_level": 0.05 / 8, "rank_shift": shift,
                "rank_shift_low": low - 0.1, "rank_shift_high": high + 0.1, "rank_equivalence_low": low,
                "rank_equivalence_high": high, "mean_diff_all": 0.2, "tost_low": -0.5, "tost_high": 0.9,
                "welch_p_all": 0.001, "welch_holm_all": 0.004}

    variants = pd.DataFrame([{**row("vanilla", "", 0, 0, 0), "comparison": ""},
                             row("nfg", "undecided", 0.32, 0.07, 0.60), row("cifg", "equivalent", 0.07, -0.12, 0.27),
                             row("np", "equivalent", 0.07, -0.14, 0.28), row("fgr", "worse", 0.4, 0.2, 0.6),
                             row("gru", "undecided", -0.1, -0.5, 0.3, family="fixed", look=50)])
    options = {"reference_variant": "vanilla", "alpha": 0.05, "margin": 0.3}
    importance = pd.DataFrame(columns=["variant", "term", "fraction", "std", "ci_low", "ci_high"])
    card = scorecard.judge("jsb_chorales", "music", variants, importance, {}, options, 1.0).set_index("finding")
    nfg = card.loc["NFG (no forget gate) significantly worse"]
    assert nfg.verdict == "undecided"  # Welch's Holm p of 0.004 decides nothing
    assert "undecided at look 150 of its rounds" in nfg.evidence and "Holm p = 0.004" in nfg.evidence
    assert card.loc["CIFG and NP not significantly different", "verdict"] == "agrees"
    assert card.loc["FGR (full gate recurrence) significantly worse", "verdict"] == "agrees"
    # no variant better: the GRU's interval of the shift reaches -0.5, past the margin
    none_better = card.loc["no variant significantly better than vanilla"]
    assert none_better.verdict == "undecided" and "gru" in none_better.evidence and "on 50 trials of each" in \
        none_better.evidence
    without_gru = scorecard.judge("jsb_chorales", "music", variants[variants.variant != "gru"], importance, {},
                                  options, 1.0).set_index("finding")
    assert without_gru.loc["no variant significantly better than vanilla", "verdict"] == "agrees"
    # a "better" contradicts "no variant better"; an "equivalent" contradicts "NFG worse"
    flipped = variants.copy()
    flipped.loc[flipped.variant == "cifg", "comparison"] = "better"
    flipped.loc[flipped.variant == "nfg", "comparison"] = "equivalent"
    flipped_card = scorecard.judge("jsb_chorales", "music", flipped, importance, {}, options, 1.0).set_index("finding")
    assert flipped_card.loc["no variant significantly better than vanilla", "verdict"] == "disagrees"
    assert flipped_card.loc["NFG (no forget gate) significantly worse", "verdict"] == "disagrees"


def test_a_long_bootstrap_shows_its_progress(tmp_path, monkeypatch, capsys):
    """The pooled fANOVA of a large study takes minutes: it says how far it is."""
    from harness.analysis import fanova_fit

    monkeypatch.setattr(fanova_fit, "PROGRESS_EVERY", 0.0)  # a line after every resample
    rng = np.random.default_rng(3)
    url = _journal(tmp_path)
    _study(url, "jsb_chorales", "vanilla", _lr_study(rng, 40, 0.0), LR_SPACE)
    _run(url, tmp_path / "out", "jsb_chorales", n_bootstrap=3, figures=False, crosscheck=False)
    said = capsys.readouterr().out
    assert "all: 1/3 resamples" in said and "all: 2/3 resamples" in said and "min left" in said
