"""Step 1: read the studies of a data set (or one named study) from an Optuna storage.

A study belongs to `analysis.dataset` when its user attribute `dataset` says so, when
its name is `<dataset>.<variant>`, or when its name *is* the given name (a study made
elsewhere: its name is then both the data set and the variant). Studies of different
training recipes (study user attribute `recipe`; greff where a study has none) are never
pooled: `recipe` picks one, and a data set with studies of several recipes needs it
(harness.analysis.compare puts recipes side by side). Any single-objective
study with numeric or categorical parameters can be read; the metric analysed is the
user attribute `test_metric` where the trials carry one, else the objective value.
The data set's task (music, speech, handwriting or none) is what its studies recorded
(user attribute `task`, harness.storage.protocol) when they agree; `Studies.task` is None where
none recorded it (studies made elsewhere or before odyssey did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd

from harness.analysis import sequential as sequential_module
from harness.errors import UserError
from harness.storage import uncounted
from harness.storage.protocol import TASK, mixed_reason

ATTR_COLUMNS = ["n_params", "seconds", "epochs", "best_epoch", "seed"]
GREFF = "greff"  # the recipe of a study without a `recipe` attribute (made before recipes)
# The group of every variant's trials together. harness.models lets no model take the name;
# a study made elsewhere whose variant has it is refused (load).
POOLED = "all"


@dataclass
class Studies:
    """What the analysis reads: one row a trial, and what belongs to the studies."""

    trials: pd.DataFrame  # variant, number, state, excluded, counted, failure, param:*, metrics, attrs
    distributions: dict  # variant -> {parameter: optuna distribution}
    curves: dict  # (variant, number) -> (epochs, values): the trial's intermediate values
    sign: float  # +1 when lower is better (minimised studies), -1 when higher is
    metric: str  # "test_metric" or "validation_metric": the column analysed
    names: dict = field(default_factory=dict)  # variant -> study names
    recipe: str = GREFF  # the training recipe of every study read
    sequential: dict = field(default_factory=dict)  # variant -> `sequential` of its study (harness.study.rounds)
    mixed: dict = field(default_factory=dict)  # study name -> why its trials are not of one protocol
    series: dict = field(default_factory=dict)  # variant -> what a sweep until=decided judges (sequential.series)
    task: tuple | None = None  # (task, why) the studies recorded (recorded_task); None: none recorded one


def _dataset_variant(summary) -> tuple[str | None, str]:
    attrs = summary.user_attrs
    name = summary.study_name
    dataset = attrs.get("dataset", name.rsplit(".", 1)[0] if "." in name else None)
    variant = attrs.get("variant", name.rsplit(".", 1)[1] if "." in name else name)
    return dataset, str(variant)


def recipe_of(summary) -> str:
    return str(summary.user_attrs.get("recipe", GREFF))


def load(storage, dataset: str, metric: str = "auto", recipe: str | None = None) -> Studies:
    """Every trial of the studies of `dataset` trained with `recipe` (None: the only recipe
    its studies have); `metric` is auto, test or validation."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    found: dict[str, list] = {}
    recipes: set[str] = set()
    for summary in summaries:
        their_dataset, variant = _dataset_variant(summary)
        if their_dataset == dataset or summary.study_name == dataset:
            recipes.add(recipe_of(summary))
            if recipe is not None and recipe_of(summary) != recipe:
                continue
            found.setdefault(variant if their_dataset == dataset else summary.study_name, []).append(summary)
    if recipe is None and len(recipes) > 1:
        raise UserError(f"the studies of {dataset!r} were trained with several recipes ({', '.join(sorted(recipes))}); "
                        f"set analysis.recipe to one of them, or to a list such as [{', '.join(sorted(recipes))}] "
                        "to put them side by side.")
    if not found and recipes:
        raise UserError(f"No study of data set {dataset!r} was trained with recipe {recipe!r}; its recipes are "
                        f"{', '.join(sorted(recipes))}. Set analysis.recipe to one of them.")
    if not found:
        others = sorted({_dataset_variant(s)[0] for s in summaries} - {None}
                        | {s.study_name for s in summaries})
        listing = ", ".join(others) if others else "none (the storage holds no study)"
        raise UserError(f"No study of data set {dataset!r} in this storage; the data sets and "
                        f"studies there are: {listing}. Set analysis.dataset to one of them.")
    if POOLED in found:
        raise UserError(f"study {found[POOLED][0].study_name!r} has variant {POOLED!r}, the analysis's name for the "
                        "trials of every variant pooled; set its `variant` user attribute to another name.")
    directions = set()
    for variant, group in found.items():
        for summary in group:
            if len(summary.directions) != 1:
                raise UserError(f"study {summary.study_name!r} has {len(summary.directions)} "
                                "objectives; analysis.dataset must name single-objective studies.")
            directions.add(summary.directions[0])
    if len(directions) > 1:
        raise UserError(f"the studies of {dataset!r} mix minimised and maximised objectives; "
                        "analyse them separately (set analysis.dataset to one study's name).")
    sign = -1.0 if directions == {optuna.study.StudyDirection.MAXIMIZE} else 1.0

    rows, distributions, curves, names, sequential, mixed, series = [], {}, {}, {}, {}, {}, {}
    frozen = []
    for variant in sorted(found):
        for summary in found[variant]:
            names.setdefault(variant, []).append(summary.study_name)
            if "sequential" in summary.user_attrs:  # a sweep with search.until=decided
                sequential[variant] = summary.user_attrs["sequential"]
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            if (reason := mixed_reason(summary.user_attrs, trials)) is not None:
                mixed[summary.study_name] = reason  # harness.storage.protocol: not one random search
            if variant not in series or "sequential" in summary.user_attrs:  # the judged study of a variant
                series[variant] = sequential_module.series(trials)
            why = uncounted(trials)  # lost, surplus, duplicate or retried trials: the sweep redid their work
            for trial in trials:
                frozen.append((variant, trial, why.get(trial.number)))
                for name, distribution in trial.distributions.items():
                    distributions.setdefault(variant, {}).setdefault(name, distribution)
    has_test = any("test_metric" in t.user_attrs for _, t, _ in frozen)
    if metric == "auto":
        metric = "test" if has_test else "validation"
    if metric not in ("test", "validation"):
        raise UserError(f"analysis.metric={metric!r}: use auto, test or validation.")
    column = "test_metric" if metric == "test" else "validation_metric"
    for variant, trial, why in frozen:
        rows.append(_trial_row(variant, trial, column, why))
        if trial.intermediate_values:
            steps = sorted(trial.intermediate_values)
            curves[(variant, trial.number)] = (
                np.array(steps), np.array([trial.intermediate_values[s] for s in steps], dtype=float))
    frame = pd.DataFrame(rows)
    if not len(frame):
        frame = pd.DataFrame(columns=["variant", "number", "state", "excluded", "counted", "failure",
                                      "validation_metric", "test_metric", *ATTR_COLUMNS])
    return Studies(frame, distributions, curves, sign, column, names,
                   recipe if recipe is not None else next(iter(recipes)), sequential, mixed, series,
                   recorded_task([s for group in found.values() for s in group]))


def recorded_task(summaries) -> tuple[str | None, str] | None:
    """(task, why) from the studies' `task` attributes: the one they agree on (None: the data
    set's config names none of the paper's tasks), or None with the disagreement said in
    `why`; None when no study recorded a task."""
    tasks = {s.study_name: s.user_attrs[TASK] for s in summaries if TASK in s.user_attrs}
    if not tasks:
        return None
    kinds = set(tasks.values())
    if len(kinds) > 1:
        listing = ", ".join(f"{name}: {task or 'none'}" for name, task in sorted(tasks.items()))
        return None, f"the studies recorded different tasks ({listing}), so none; set analysis.task to choose one"
    task = kinds.pop()
    some = "" if len(tasks) == len(summaries) else f" ({len(tasks)} of {len(summaries)} studies)"
    if task is None:
        return None, (f"recorded with the studies{some}: the data set's config names none of the paper's tasks; "
                      "set analysis.task to compare with one")
    return task, f"recorded with the studies{some}, from the data set's config"


def _trial_row(variant, trial, column, uncounted_why: str | None = None) -> dict:
    """One row of the trials table; `excluded` says why a trial is left out of the analysis
    ("" if it is not), `counted` whether it counts toward n_trials (harness.storage.uncounted)."""
    attrs = trial.user_attrs
    value = trial.value if trial.values else np.nan
    test = attrs.get("test_metric", np.nan)
    analysed = test if column == "test_metric" else value
    failure = attrs.get("failure")
    if uncounted_why is not None:
        excluded = uncounted_why
    elif trial.state == optuna.trial.TrialState.FAIL or failure:
        excluded = "failed"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        excluded = "pruned"
    elif trial.state != optuna.trial.TrialState.COMPLETE:
        excluded = "not finished"
    elif not finite(value):
        excluded = "failed"
    elif not finite(analysed):
        excluded = "no test metric" if "test_metric" not in attrs else "failed"
    else:
        excluded = ""
    row = {"variant": variant, "number": trial.number, "state": trial.state.name,
           "excluded": excluded, "counted": uncounted_why is None, "failure": failure or ""}
    row.update({f"param:{k}": v for k, v in trial.params.items()})
    row["validation_metric"] = value
    row["test_metric"] = test
    row.update({k: attrs.get(k, np.nan) for k in ATTR_COLUMNS})
    return row


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- parameters


@dataclass
class Parameter:
    """One searched parameter as the analysis sees it (log ones in log10 units)."""

    name: str
    log: bool
    low: float  # bounds in analysis units, padded
    high: float
    choices: tuple | None = None  # categorical parameters only

    def transform(self, values: pd.Series) -> np.ndarray:
        if self.choices is not None:
            index = {choice: i for i, choice in enumerate(self.choices)}
            return values.map(index).to_numpy(dtype=float)
        values = values.to_numpy(dtype=float)
        return np.log10(values) if self.log else values


def merged_distributions(frame: pd.DataFrame, distributions: dict) -> dict:
    """{name: distribution} of the variants in `frame`: the first variant (by name) that has
    a parameter gives its distribution (log scale, bounds, choices)."""
    merged = {}
    for variant in sorted(frame.variant.unique()):
        for name, distribution in distributions.get(variant, {}).items():
            merged.setdefault(name, distribution)
    return merged


def shared_parameters(frame: pd.DataFrame, distributions: dict) -> tuple[list[Parameter], dict]:
    """The parameters every trial of `frame` has and that vary, and {name: why} for the rest.

    `distributions` maps variant -> {name: distribution} (merged_distributions)."""
    merged = merged_distributions(frame, distributions)
    parameters, left_out = [], {}
    n = len(frame)
    for name, distribution in sorted(merged.items()):
        values = frame[name] if name in frame.columns else pd.Series([np.nan] * n)
        present = int(values.notna().sum())
        if present < n:
            left_out[name] = f"set in {present} of {n} trials"
            continue
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            choices = tuple(distribution.choices)
            if values.nunique() < 2:
                left_out[name] = "the same in every trial"
                continue
            parameters.append(Parameter(name, False, 0, len(choices) - 1, choices))
            continue
        log = bool(getattr(distribution, "log", False))
        numbers = values.to_numpy(dtype=float)
        low = min(float(distribution.low), numbers.min())
        high = max(float(distribution.high), numbers.max())
        if np.ptp(numbers) == 0:
            left_out[name] = "the same in every trial"
            continue
        if log:
            low, high = math.log10(low), math.log10(high)
        pad = 0.01 * (high - low)
        parameters.append(Parameter(name, log, low - pad, high + pad))
    return parameters, left_out
