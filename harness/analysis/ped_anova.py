"""PED-ANOVA of one group of trials (a variant, or `all` pooled), beside its fANOVA.

Optuna's PedAnovaImportanceEvaluator (Watanabe et al., IJCAI 2023), the evaluator
optuna-dashboard shows: how much each parameter's distribution among the best
`ped_anova_target_quantile` of the trials differs from its distribution among the
trials of the region (the best `ped_anova_region_quantile`, 1.0: all of them), as a
Pearson divergence of two Parzen estimates, normalised to sum to 1 over the parameters.
fANOVA asks what explains the variance over the whole space; this asks what one must get
right to reach the best trials (docs/analysis.md, "PED-ANOVA beside fANOVA").

The trials are fANOVA's (usable, diverged ones set aside, the parameters every trial of
the group has), handed to Optuna as an in-memory study: the study's own distributions
(log scale, bounds, choices) and values, its direction (lower is better for a minimised
metric), one COMPLETE trial a row. Deterministic: no seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd

from harness.analysis.read import merged_distributions, shared_parameters


@dataclass
class PedAnovaResult:
    group: str
    importances: dict = field(default_factory=dict)  # parameter -> importance, largest first
    n_trials: int = 0
    note: str = ""
    settings: str = ""  # the evaluator's, as importance.csv and the report name them


def settings(options) -> str:
    """The evaluator's settings as importance.csv and the report name them."""
    return (f"target_quantile={float(options['ped_anova_target_quantile']):g}, "
            f"region_quantile={float(options['ped_anova_region_quantile']):g}, evaluate_on_local=True")


def _covering(distribution, values: pd.Series):
    """The study's distribution, widened where a trial of the group lies outside it (the
    variants of a pooled group may have searched different bounds)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution
    low, high = min(distribution.low, values.min()), max(distribution.high, values.max())
    if (low, high) == (distribution.low, distribution.high):
        return distribution
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return optuna.distributions.IntDistribution(int(low), int(high), log=distribution.log)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=distribution.log)


def study_of(frame: pd.DataFrame, column: str, names: list[str], distributions: dict,
             sign: float) -> optuna.Study:
    """An in-memory study holding `frame`'s trials: parameters `names`, value `column`."""
    merged = merged_distributions(frame, distributions)
    space = {name: _covering(merged[name], frame[name]) for name in names}
    study = optuna.create_study(direction="minimize" if sign > 0 else "maximize")
    trials = []
    for row, value in zip(frame[names].to_dict("records"), frame[column].to_numpy(dtype=float)):
        params = {name: (int(round(v)) if isinstance(space[name], optuna.distributions.IntDistribution)
                         else v if isinstance(space[name], optuna.distributions.CategoricalDistribution)
                         else float(v)) for name, v in row.items()}
        trials.append(optuna.trial.create_trial(params=params, distributions=space, value=float(value)))
    study.add_trials(trials)
    return study


def analyse(group: str, frame: pd.DataFrame, column: str, distributions: dict, sign: float,
            options) -> PedAnovaResult:
    """PED-ANOVA importances of `frame[column]` over the group's shared parameters."""
    result = PedAnovaResult(group, n_trials=len(frame), settings=settings(options))
    parameters, _ = shared_parameters(frame, distributions)  # fANOVA's; it names what it left out
    minimum = int(options["min_trials_for_fanova"])
    if len(frame) < minimum:
        result.note = f"{len(frame)} usable trials, fewer than min_trials_for_fanova = {minimum}: PED-ANOVA skipped."
    elif not parameters:
        result.note = "no parameter is shared by every trial and varies: PED-ANOVA skipped."
    elif np.ptp(frame[column].to_numpy(dtype=float)) == 0:
        result.note = "the metric is the same in every trial: PED-ANOVA skipped."
    if result.note:
        return result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study_of(frame, column, [p.name for p in parameters], distributions, sign)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(
        target_quantile=float(options["ped_anova_target_quantile"]),
        region_quantile=float(options["ped_anova_region_quantile"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        result.importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    return result


def beside(importance: pd.DataFrame, results: dict, options) -> pd.DataFrame:
    """importance.csv: fANOVA's rows with PED-ANOVA's importance of each parameter beside
    its fraction (columns `ped_anova`, `ped_anova_settings`); a group fANOVA skipped but
    PED-ANOVA did not gets rows of its own."""
    values = {(r.group, name): value for r in results.values() for name, value in r.importances.items()}
    table = importance.copy()
    table["ped_anova"] = [values.get((v, t), np.nan) for v, t in zip(table.variant, table.term)]
    missing = [{"variant": group, "term": name, "ped_anova": value} for (group, name), value in values.items()
               if not ((table.variant == group) & (table.term == name)).any()]
    if missing:
        table = pd.concat([table, pd.DataFrame(missing)], ignore_index=True)
    table["ped_anova_settings"] = np.where(table.ped_anova.notna(), settings(options), "")
    return table
