"""harness.analysis.sequential by simulation, never by its own output: the boundaries against
published values and Brownian motion, the error rates on studies resampled from the JSB
reference study (tests/data/jsb_reference_test_metrics.json: the test metric of each of its
50 vanilla and 50 NOAF trials), and the number of trials a real difference takes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from harness.analysis import sequential

REFERENCE = json.loads((Path(__file__).parent / "data" / "jsb_reference_test_metrics.json").read_text())
VANILLA, NOAF = np.array(REFERENCE["vanilla"]), np.array(REFERENCE["noaf"])
LOOKS = list(range(10, 201, 10))  # a look every 10 trials up to 200
STUDIES = 2000
ALPHA = 0.05
MC = math.sqrt(ALPHA * (1 - ALPHA) / STUDIES)  # Monte Carlo error of a rate near alpha


def test_boundaries_match_published_lan_demets_values():
    # Lan-DeMets O'Brien-Fleming-type spending, two-sided 0.05, five equal looks: 4.877,
    # 3.357, 2.680, 2.290, 2.031 (as printed by the R packages ldbounds and gsDesign); that
    # spending function is 2 (2 - 2 Phi(z_{1 - alpha/4} / sqrt t)) in total over both sides.
    def obrien_fleming(t, alpha):
        t = np.asarray(t, dtype=float)
        return 2 * (2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 4) / np.sqrt(t)))

    found = sequential.boundaries(np.arange(1, 6) / 5, 0.05, spending=obrien_fleming)
    assert found == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=5e-4)


@pytest.mark.parametrize("looks, pocock, obrien_fleming", [
    (2, 2.178, 1.977), (3, 2.289, 2.004), (4, 2.361, 2.024), (5, 2.413, 2.040), (10, 2.555, 2.087)])
def test_crossing_chances_match_the_published_pocock_and_obrien_fleming_constants(looks, pocock, obrien_fleming):
    # Jennison & Turnbull (2000), tables 2.1 and 2.3: the constant C of a two-sided test at 0.05 with
    # K equally spaced looks, Pocock's boundaries C at every look, O'Brien & Fleming's C sqrt(K / k);
    # the integration must give a total crossing chance of 0.05 there, to the tables' 3 decimals
    information = np.arange(1, looks + 1)

    def total(bounds):
        return sum(map(sum, sequential.crossings(bounds, information)))
    found = optimize.brentq(lambda c: total(np.full(looks, c)) - 0.05, 1.5, 4)
    assert found == pytest.approx(pocock, abs=5e-4)
    found = optimize.brentq(lambda c: total(c * np.sqrt(looks / information)) - 0.05, 1.5, 4)
    assert found == pytest.approx(obrien_fleming, abs=5e-4)


def test_boundaries_spend_alpha_as_brownian_motion_crosses_them():
    # 400,000 Brownian paths observed at the looks' fractions: the share first crossing at
    # each look is the spending function's increment there
    fractions = np.array(LOOKS) / 200
    c = sequential.boundaries(fractions, ALPHA)
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(400_000, len(fractions))) * np.sqrt(np.diff(np.concatenate([[0], fractions])))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    crossed = np.abs(z) >= c
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    total = np.mean(first >= 0)
    assert total == pytest.approx(ALPHA, abs=3 * math.sqrt(ALPHA / 400_000))
    expected = sequential.spent(fractions, ALPHA)
    observed = np.cumsum([np.mean(first == k) for k in range(len(fractions))])
    assert observed == pytest.approx(expected, abs=1.5e-3)


def _resampled(values, rng, shift=0.0):
    return rng.choice(values, size=(STUDIES, LOOKS[-1])) + shift


def test_no_difference_keeps_alpha_under_a_look_every_ten_trials_where_welch_does_not():
    # 2,000 studies of two variants resampled from the same 50 real vanilla trials
    # (heavy ties, a skewed, bounded spread over nats): the procedure calls a difference
    # at some look in at most alpha of them; Welch's test after every look, in far more.
    rng = np.random.default_rng(1)
    vanilla, variant = _resampled(VANILLA, rng), _resampled(VANILLA, rng)
    found = sequential.verdicts(vanilla, variant, LOOKS, alpha=ALPHA)
    rate = np.mean(np.isin(found[:, -1], ["worse", "better"]))
    assert rate <= ALPHA + 2 * MC, rate
    naive = np.zeros(STUDIES, dtype=bool)
    for n in LOOKS:
        naive |= stats.ttest_ind(variant[:, :n], vanilla[:, :n], axis=1, equal_var=False).pvalue < ALPHA
    assert naive.mean() > 3 * ALPHA, naive.mean()


def test_equivalence_is_rarely_claimed_for_a_difference_of_the_margin():
    # the variant is vanilla shifted by exactly the margin (a difference that matters):
    # "equivalent" at any look in at most alpha of the studies
    rng = np.random.default_rng(2)
    margin = 0.3
    vanilla, variant = _resampled(VANILLA, rng), _resampled(VANILLA, rng, shift=margin)
    found = sequential.verdicts(vanilla, variant, LOOKS, alpha=ALPHA, margin=margin)
    rate = np.mean(found[:, -1] == "equivalent")
    assert rate <= ALPHA + 2 * MC, rate
    # and without a difference most studies end equivalent by the cap
    same = sequential.verdicts(vanilla, _resampled(VANILLA, rng), LOOKS, alpha=ALPHA, margin=margin)
    assert np.mean(same[:, -1] == "equivalent") > 0.8


def test_noaf_is_found_worse_with_fewer_trials_than_a_fixed_fifty():
    # NOAF's 50 real trials (a few diverged to NLL in the thousands) against vanilla's:
    # the trials a variant at the look that decides, against a fixed study of 50 trials a
    # variant judged once by Welch's test. Measured: the mean and the median of that
    # number over 2,000 resampled studies, and how often each design ends on "worse".
    rng = np.random.default_rng(3)
    vanilla, variant = _resampled(VANILLA, rng), _resampled(NOAF, rng)
    found = sequential.verdicts(vanilla, variant, LOOKS, alpha=ALPHA, margin=0.3)
    decided = found != "undecided"
    at = np.where(decided.any(axis=1), np.array(LOOKS)[decided.argmax(axis=1)], LOOKS[-1])
    worse = np.mean(found[:, -1] == "worse")
    welch = stats.ttest_ind(variant[:, :50], vanilla[:, :50], axis=1, equal_var=False)
    fixed = np.mean((welch.pvalue < ALPHA) & (welch.statistic > 0))
    assert at.mean() < 45 and np.median(at) <= 40, (at.mean(), np.median(at))
    assert worse >= fixed, (worse, fixed)


def test_rank_statistic_matches_scipys_mann_whitney_with_ties():
    rng = np.random.default_rng(5)
    vanilla = rng.choice(VANILLA[:12], size=(50, 30))  # many ties
    variant = rng.choice(VANILLA[:12], size=(50, 30)) + rng.choice([0.0, 0.5], size=(50, 30))
    z = sequential.rank_z(vanilla, variant)
    for i in range(50):
        test = stats.mannwhitneyu(variant[i], vanilla[i], method="asymptotic", use_continuity=False)
        assert abs(z[i]) == pytest.approx(stats.norm.isf(test.pvalue / 2), rel=1e-6, abs=1e-9)
        assert np.sign(z[i]) == np.sign(test.statistic - 30 * 30 / 2)


def test_one_study_nan_as_the_worst_outcome_and_a_decision_stands():
    rng = np.random.default_rng(4)
    vanilla = rng.normal(10, 1, 60)
    worse = vanilla + 5  # every variant trial far worse: decided at the first look that can
    found = sequential.verdicts(vanilla, worse, [10, 20, 30, 40, 50, 60], margin=0.3)
    assert isinstance(found, list) and found[-1] == "worse"
    first = found.index("worse")
    assert all(v == "undecided" for v in found[:first]) and all(v == "worse" for v in found[first:])
    # a trial whose loss became NaN ranks as the worst: all-NaN is worse, not undecided
    assert sequential.verdicts(vanilla, np.full(60, np.nan), [20, 40, 60])[-1] == "worse"
    with pytest.raises(ValueError, match="looks"):
        sequential.verdicts(vanilla, worse, [20, 10])
    with pytest.raises(ValueError, match="margin"):
        sequential.verdicts(vanilla, worse, [10, 20], margin=0)


def test_shift_interval_is_the_set_of_shifts_the_rank_test_does_not_reject():
    # Moses' interval from order statistics of the pairwise differences, against the shifts d
    # that scipy's Mann-Whitney test of (variant - d) against vanilla does not reject at the
    # critical value, found by scanning d: the interval holds every kept shift, and reaches
    # at most one pairwise difference beyond them at each end (it rounds its order down)
    rng = np.random.default_rng(8)
    vanilla, variant = rng.choice(VANILLA, 40), rng.choice(NOAF[np.isfinite(NOAF)], 40)
    differences = np.unique(np.subtract.outer(variant, vanilla))
    for critical in (1.96, 2.6):
        shift, low, high = sequential.shift_interval(vanilla, variant, critical=critical)
        step = 0.0005
        grid = np.arange(low - 0.3, high + 0.3, step)
        kept = np.array([d for d in grid if stats.norm.isf(stats.mannwhitneyu(
            variant - d, vanilla, method="asymptotic", use_continuity=False).pvalue / 2) < critical])
        assert low <= kept.min() and kept.max() <= high
        assert np.sum((differences >= low) & (differences < kept.min() - step)) <= 1
        assert np.sum((differences <= high) & (differences > kept.max() + step)) <= 1
        assert shift == pytest.approx(np.median(np.subtract.outer(variant, vanilla)))
        assert low < shift < high


def test_a_path_shows_every_look_up_to_the_decision_and_agrees_with_the_verdicts():
    rng = np.random.default_rng(9)
    looks = list(range(10, 201, 10))
    for vanilla, variant, expected in (
            (rng.choice(VANILLA, 200), rng.choice(NOAF, 200), "worse"),  # NaN in NOAF: diverged trials
            (rng.normal(9, 0.4, 200), rng.normal(9, 0.4, 200), "equivalent"),
            (rng.normal(9, 1.5, 200), rng.normal(9.2, 1.5, 200), "undecided")):
        found = sequential.verdicts(vanilla, variant, looks, margin=0.3)
        steps = sequential.path(vanilla, variant, looks, margin=0.3)
        assert [s["verdict"] for s in steps] == found[:len(steps)]
        assert [s["look"] for s in steps] == looks[:len(steps)]
        decided = [v for v in found if v != "undecided"]
        assert len(steps) == (found.index(decided[0]) + 1 if decided else len(looks))  # ends at the decision
        assert steps[-1]["verdict"] == expected
        for s in steps:
            # the rank test and the interval are two computations; their verdicts must agree
            crossed = abs(s["z"]) >= s["boundary"]
            excludes_zero = s["shift_low"] > 0 or s["shift_high"] < 0  # the difference test's interval
            inside = -0.3 < s["equivalence_low"] and s["equivalence_high"] < 0.3  # equivalence's
            assert (s["verdict"] in ("worse", "better")) == crossed == excludes_zero
            assert (s["verdict"] == "equivalent") == (inside and not crossed)
            assert s["shift_low"] <= s["shift"] <= s["shift_high"]
            assert s["shift_low"] <= s["equivalence_low"] <= s["equivalence_high"] <= s["shift_high"]


def test_the_interval_inverts_the_verdicts_test_with_diverged_runs_and_ties():
    # many diverged runs (NaN, the worst outcome) in both arms and heavy ties: the shift is never NaN,
    # an end is +inf where no finite shift makes the variant's diverged runs as good, and the verdict
    # of a difference at a critical value agrees with its interval (excludes 0) in every study
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(8, 60))
        vanilla = np.round(rng.choice(VANILLA, n), 1)
        variant = np.round(rng.choice(VANILLA, n) + rng.choice([0, 0.5, 2.0]), 1)
        vanilla[rng.random(n) < rng.choice([0, 0.1, 0.3])] = np.nan
        variant[rng.random(n) < rng.choice([0, 0.2, 0.6])] = np.nan
        critical = float(rng.choice([1.0, 1.96, 2.8]))
        shift, low, high = sequential.shift_interval(vanilla, variant, critical)
        worse_z, better_z = sequential.ranks.leaning(vanilla, variant)
        assert not np.isnan(shift) and low <= high
        assert (worse_z >= critical) == (low > 0)
        assert (better_z <= -critical) == (high < 0)
    # more than half of the variant's runs diverged, none of vanilla's: the shift is +inf
    assert sequential.shift_interval(VANILLA[:20], np.r_[np.full(12, np.nan), VANILLA[:8]], 1.96)[0] == np.inf


def test_a_fixed_family_is_holm_over_mann_whitney_tests():
    # one look: the family's directional verdicts are Holm's step-down over scipy's two-sided
    # Mann-Whitney p-values (asymptotic, tie-corrected, no continuity correction)
    rng = np.random.default_rng(12)
    for _ in range(30):
        vanilla = rng.choice(VANILLA, 50)
        variants = {f"v{i}": rng.choice(VANILLA, 50) + rng.choice([0, 0.3, 0.6, 1.0]) for i in range(6)}
        found = sequential.family(vanilla, variants, looks=None, alpha=ALPHA)
        p = np.array([stats.mannwhitneyu(y, vanilla, method="asymptotic", use_continuity=False).pvalue
                      for y in variants.values()])
        order, holm, running = np.argsort(p), np.empty(len(p)), 0.0
        for rank, i in enumerate(order):
            running = max(running, (len(p) - rank) * p[i])
            holm[i] = min(1.0, running)
        for (name, verdict), adjusted in zip(found.items(), holm):
            if abs(adjusted - ALPHA) > 1e-6:  # ties with the level itself are too close to call
                assert (verdict[0] in ("worse", "better")) == (adjusted < ALPHA), (name, adjusted)


def test_a_rejection_passes_its_level_on_and_earlier_looks_are_tested_again():
    # two variants, looks 10 and 20: B's look 10 crosses the boundary of alpha but not that of
    # alpha / 2, and its look 20 crosses neither; A is rejected at look 20 at alpha / 2 and passes
    # its level on, so B's look 10 is tested again at alpha: B is worse from look 20, by look 10
    looks, alpha = [10, 20], ALPHA
    half, whole = sequential.boundaries(looks, alpha / 2), sequential.boundaries(looks, alpha)
    rng = np.random.default_rng(1)  # a study drawn to be such a case; the conditions are checked here
    vanilla = rng.normal(0, 1, 20)
    a = np.r_[rng.normal(0.3, 1, 10), rng.normal(2.5, 1, 10)]
    b = np.r_[rng.normal(1.3, 1, 10), rng.normal(-0.3, 1, 10)]
    za = [sequential.ranks.leaning(vanilla[:n], a[:n])[0] for n in looks]
    zb = [sequential.ranks.leaning(vanilla[:n], b[:n]) for n in looks]
    assert za[0] < half[0] and za[1] >= half[1]
    assert whole[0] <= zb[0][0] < half[0] and abs(zb[1][0]) < whole[1] and abs(zb[1][1]) < whole[1]
    found = sequential.family(vanilla, {"a": a, "b": b}, looks, alpha=alpha)
    assert found == {"a": ["undecided", "worse"], "b": ["undecided", "worse"]}
    rows = sequential.paths(vanilla, {"a": a, "b": b}, looks, alpha=alpha)["b"]
    assert rows[-1]["crossed"] == 10 and rows[-1]["level"] == pytest.approx(alpha)
    assert rows[-1]["shift_low"] > 0  # the interval of the look that decided it excludes 0
    assert sequential.family(vanilla, {"a": a, "b": b}, looks, alpha=alpha, multiplicity="none")["b"][0] == "worse"
