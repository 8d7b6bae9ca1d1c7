"""Step 3: per-variant statistics with intervals, Welch's t-test and Holm's correction.

- Intervals: percentile bootstrap over trials (`n_bootstrap` resamples, level
  `ci_level`), for each variant's median (all trials), its best-fraction mean (the
  `top_fraction` of a resample chosen again by validation metric) and the difference of
  means to the reference variant (both resampled independently).
- Welch's t-test (scipy, unequal variances) of each variant against the reference, on
  all trials and on the best 10 %, as Greff et al. did; `welch_holm_*` are those p-values
  after Holm's step-down correction over the variants compared (one family per panel).
- The comparison with the reference (`comparison` and the `rank_*` columns) is not computed
  here: it is the rank test of harness.analysis.sequential (docs/analysis.md, "Verdicts"),
  passed in. Welch's test on the converged runs, the paper's own test, stays beside it as
  information, with its interval at level 1 - 2 alpha (`tost_low`, `tost_high`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from harness.analysis.read import finite


def top_trials(frame: pd.DataFrame, fraction: float, sign: float) -> pd.DataFrame:
    """The best `fraction` of each variant's trials by validation metric (at least 2)."""
    def best(group):
        n = min(len(group), max(2, math.ceil(fraction * len(group))))
        order = np.argsort(sign * group["validation_metric"].to_numpy(dtype=float), kind="stable")
        return group.iloc[order[:n]]
    if not len(frame):
        return frame
    return frame.groupby("variant", group_keys=False)[frame.columns].apply(best)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    index = np.flatnonzero(~np.isnan(p))
    m = len(index)
    running = 0.0
    for rank, i in enumerate(index[np.argsort(p[index], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _percentile(values, level):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return np.nan, np.nan
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _top_mean(metric, validation, fraction, sign):
    n = min(len(metric), max(2, math.ceil(fraction * len(metric))))
    order = np.argsort(sign * validation, kind="stable")
    return float(np.mean(metric[order[:n]]))


def welch_interval(metric, reference, level: float) -> tuple[float, float]:
    """The Welch (unequal variances) interval of mean(metric) - mean(reference) at `level`."""
    if len(metric) < 2 or len(reference) < 2:
        return np.nan, np.nan
    low, high = stats.ttest_ind(metric, reference, equal_var=False).confidence_interval(level)
    return float(low), float(high)


VERDICT_COLUMNS = ("verdict", "look", "z", "level", "boundary", "shift", "shift_low", "shift_high",
                   "equivalence_low", "equivalence_high")


def variants_table(trials, screened, top, column, sign, options, verdicts=None, families=None) -> pd.DataFrame:
    """Counts, summaries with bootstrap intervals, the verdict of each comparison with the
    reference (`verdicts`: {variant: its last row of harness.analysis.sequential.paths};
    `families`: {variant: "rounds" or "fixed"}), and Welch and Holm beside it."""
    reference = options["reference_variant"]
    level, resamples = float(options["ci_level"]), int(options["n_bootstrap"])
    fraction = float(options["top_fraction"])
    rng = np.random.default_rng(int(options["seed"]))
    ref_metric = screened.loc[screened.variant == reference, column].to_numpy(dtype=float)
    rows = []
    for variant, group in trials.groupby("variant"):
        used = screened[screened.variant == variant]
        best = top[top.variant == variant]
        counted = group["counted"].astype(bool)
        row = {"variant": variant, "n_trials": int(counted.sum()),
               "n_complete": int(((group.state == "COMPLETE") & counted).sum()),
               "n_failed": int((group.excluded == "failed").sum()),
               "n_not_finished": int((group.excluded == "not finished").sum()),
               "n_no_test_metric": int((group.excluded == "no test metric").sum()),
               "n_not_counted": int((~counted).sum()),  # lost, surplus, duplicate, retried
               "n_diverged": int(group.get("diverged", pd.Series(False, index=group.index)).sum()),
               "n_usable": len(used), "n_top": len(best)}
        for label, part in (("all", used), ("top", best)):
            metric = part[column].astype(float)
            row[f"mean_{label}"] = metric.mean()
            row[f"median_{label}"] = metric.median()
            row[f"best_{label}"] = (metric.min() if sign > 0 else metric.max())
        metric = used[column].to_numpy(dtype=float)
        validation = used["validation_metric"].to_numpy(dtype=float)
        row["test_at_best_validation"] = (float(metric[np.argmin(sign * validation)])
                                          if len(used) else np.nan)
        medians, tops, diffs = [], [], []
        if len(used) >= 2:
            for _ in range(resamples):
                pick = rng.integers(len(used), size=len(used))
                medians.append(np.median(metric[pick]))
                tops.append(_top_mean(metric[pick], validation[pick], fraction, sign))
                if variant != reference and len(ref_metric) >= 2:
                    other = ref_metric[rng.integers(len(ref_metric), size=len(ref_metric))]
                    diffs.append(np.mean(metric[pick]) - np.mean(other))
        row["median_all_ci_low"], row["median_all_ci_high"] = _percentile(medians, level)
        row["mean_top_ci_low"], row["mean_top_ci_high"] = _percentile(tops, level)
        row["mean_diff_all"] = (float(np.mean(metric) - np.mean(ref_metric))
                                if variant != reference and len(used) and len(ref_metric) else np.nan)
        row["mean_diff_all_ci_low"], row["mean_diff_all_ci_high"] = _percentile(diffs, level)
        row["sd_all"] = float(np.std(metric, ddof=1)) if len(metric) >= 2 else np.nan
        row["tost_low"], row["tost_high"] = ((np.nan, np.nan) if variant == reference else
                                             welch_interval(metric, ref_metric, 1 - 2 * float(options["alpha"])))
        for label, part in (("all", used), ("top", best)):
            ref = (screened if label == "all" else top)
            ref = ref[ref.variant == reference][column].astype(float)
            p = np.nan
            if variant != reference and len(part) >= 2 and len(ref) >= 2:
                p = stats.ttest_ind(part[column].astype(float), ref, equal_var=False).pvalue
            row[f"welch_p_{label}"] = p
            row[f"differs_{label}"] = bool(finite(p) and p < options["alpha"])
        row["mean_n_params"] = pd.to_numeric(group["n_params"], errors="coerce").mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    for label in ("all", "top"):
        if len(table):
            table[f"welch_holm_{label}"] = holm(table[f"welch_p_{label}"])
            table[f"differs_holm_{label}"] = table[f"welch_holm_{label}"] < options["alpha"]
    if len(table):
        margin = options.get("margin")
        table["margin"] = np.nan if margin is None else float(margin)
        verdicts, families = verdicts or {}, families or {}
        # the verdict: the rank test (sign: the metric's shift is in its own direction, lower is better
        # once multiplied by sign, as the trials' series are)
        for key in VERDICT_COLUMNS:
            table[f"rank_{key}" if key != "verdict" else "comparison"] = [
                verdicts[v][key] if v in verdicts else ("" if key == "verdict" else np.nan) for v in table.variant]
        table["family"] = [families.get(v, "") for v in table.variant]
    return table
