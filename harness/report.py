"""report.md of the analysis stage: one Markdown page, figures beside it in the same
directory, readable without the tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A Markdown table (no `tabulate` needed)."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write(out: Path, *, dataset, storage, trials, variants, importance, results, figures,
          options) -> Path:
    reference = options["reference_variant"]
    lines = [f"# Analysis of `{dataset}`", "",
             f"Storage: `{storage}`. Studies: {trials.variant.nunique()} variants, "
             f"{len(trials)} trials. Metric: lower is better; fANOVA and box plots use the "
             f"test metric, the best {options['top_fraction']:.0%} are chosen by the "
             "validation metric.", ""]

    lines += ["## Trials", "", _table(pd.crosstab(trials.variant, trials.state).reset_index()), ""]
    excluded = trials[trials.excluded != ""]
    if len(excluded):
        reasons = excluded.excluded.value_counts()
        lines += [f"{len(excluded)} of {len(trials)} trials are counted but excluded from fANOVA, "
                  "box plots and tests: " + ", ".join(f"{n} {r}" for r, n in reasons.items())
                  + " (failed = FAIL state, a `failure` attribute such as a NaN/inf loss, or a "
                  "non-finite metric).", ""]
        for variant, part in excluded.groupby("variant"):
            if len(part) == len(trials[trials.variant == variant]):
                lines += [f"Variant `{variant}` has no usable trial.", ""]
    else:
        lines += ["Every trial finished with a finite validation and test metric.", ""]

    lines += ["## Variants", ""]
    if reference not in set(trials[trials.excluded == ""].variant):
        lines += [f"There is no usable `{reference}` study, so Welch's t-tests against it are "
                  "skipped (their columns are empty).", ""]
    else:
        for key, what in (("all", "all trials"), ("top", f"the best {options['top_fraction']:.0%}")):
            differ = list(variants[variants[f"differs_{key}"]].variant)
            lines += [f"Differ from `{reference}` by Welch's t-test (p < {options['alpha']}), "
                      f"{what}: {', '.join(differ) if differ else 'none'}."]
        lines += [""]
    shown = ["variant", "n_trials", "n_usable", "n_failed", "mean_all", "median_all", "best_all",
             "mean_top", "median_top", "welch_p_all", "differs_all", "welch_p_top",
             "differs_top", "mean_n_params"]
    table = variants[shown].copy()
    table["mean_n_params"] = table["mean_n_params"].round().astype("Int64")  # not 7.8e+04
    lines += [_table(table), "", "All columns: `variants.csv`.", ""]
    if "boxplots" in figures:
        lines += [f"![Test metric per variant]({figures['boxplots']})", ""]

    lines += ["## Hyperparameter importance (fANOVA)", "",
              "Fraction of the variance of the test metric explained by each parameter alone, "
              "by each pair's interaction (`a:b`), and by all interactions together "
              "(`higher_order` = 1 − the sum of the single fractions); `std` across the "
              f"{options['n_trees']} trees. Log-sampled parameters are analysed as log10. "
              "`optuna_fraction` is Optuna's FanovaImportanceEvaluator on the same data "
              "(main effects only, its own forest, not normalised) as a cross-check.", ""]
    for group, result in results.items():
        if result.model is None:
            lines += [f"- `{group}`: {result.note}"]
    lines += [""]
    if len(importance):
        pooled = importance[importance.variant == "all"]
        if len(pooled):
            lines += ["Pooled over all variants:", "", _table(pooled.drop(columns="variant"), 3), ""]
        singles = importance[~importance.term.str.contains(":")]
        wide = singles.pivot(index="variant", columns="term", values="fraction").reset_index()
        lines += ["Single-parameter fractions per variant (full table: `importance.csv`):", "",
                  _table(wide, 2), ""]
    for key, caption in (("fanova_pie", "fANOVA, all variants"),
                         ("fanova_pies_by_variant", "fANOVA per variant"),
                         ("marginals", "Predicted marginal test metric"),
                         ("interaction", "Interaction")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", ""]
    lines += ["Every figure is also saved as PDF beside this page. Tables: `trials.csv`, "
              "`variants.csv`, `importance.csv`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
