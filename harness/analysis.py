"""Analysis stage: from the studies of one data set in an Optuna storage to tables,
figures and a report (shared/SPEC.md, section 6).

    run(cfg) -> Path of report.md

cfg keys (conf/analysis/default.yaml): dataset (required: the studies' `dataset`
attribute), storage (Optuna URL; a relative sqlite path starts at the project root),
out (default results/analysis/<dataset>/), n_trees, min_samples_leaf, seed,
top_fraction, min_trials_for_fanova, alpha, reference_variant, grid_points,
crosscheck, figures (false: tables and report only).

Which trials count. A trial is *usable* when its state is COMPLETE, it has no
`failure` user attribute (the trainer sets one when the loss became NaN or inf), and
both its value (validation metric) and `test_metric` are finite. Every other trial is
listed in trials.csv with its reason (`failed`, `not finished`, `no test metric`),
counted in variants.csv and the report, and left out of fANOVA, box plots and tests.

fANOVA. One random forest per group (each variant, and `all` variants pooled), fitted
to the TEST metric of the usable trials over the parameters every trial of the group
has. Log-sampled parameters (the study's distributions say which) enter as log10;
bounds are the distributions' bounds padded by 1 % of their range so that boundary
samples are accepted. Terms: each parameter, each pair `a:b` (the pure interaction),
and higher_order = 1 - sum of the single-parameter fractions (all interactions
together). `std` is the standard deviation of a fraction across the trees.

Implementation note on `fanova` 2.0.19 + pyrfr 0.9 built with SWIG 4: the per-tree
statistics object that fanova reads (`marginal_prediction_stat_of_tree`) comes back
as an opaque SwigPyObject (a SWIG 4 typedef mismatch between pyrfr's two modules;
fanova's README asks for SWIG 3.0.12, which PyPI no longer has). We therefore fit one
single-tree fANOVA per seed and join them: each tree's marginal prediction comes from
that tree's working `marginal_mean_variance_prediction`, and fanova's own code does
the variance decomposition. The result is a forest of `n_trees` bootstrapped trees,
as fanova would build.

Cross-check. Optuna's FanovaImportanceEvaluator (main effects only, its own forest) is
run on the same transformed data and reported, unnormalised, in the column
`optuna_fraction`: like `fraction`, a share of the total variance. (Optuna's
`get_param_importances` by default rescales the main effects to sum to 1, which
hides the interactions; we ask for normalize=False.)
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from scipy import stats

import harness
from harness import storage
from harness.errors import UserError

DEFAULTS = {
    "storage": "sqlite:///results/odyssey.db",
    "out": None,
    "n_trees": 32,
    "min_samples_leaf": 3,
    "seed": 0,
    "top_fraction": 0.1,
    "min_trials_for_fanova": 20,
    "alpha": 0.05,
    "reference_variant": "vanilla",
    "grid_points": 40,
    "crosscheck": True,
    "figures": True,
}
ATTR_COLUMNS = ["n_params", "seconds", "epochs", "best_epoch"]
POOLED = "all"


# --------------------------------------------------------------------------- fanova


def import_fanova():
    """Import the `fanova` package, after giving NumPy 2 the `np.float` it still uses.

    fanova 2.0.19 writes `np.full(..., dtype=np.float)`; NumPy 2 removed that alias of
    the builtin float. Restoring the alias is all it needs; we never pin NumPy below 2.
    """
    if not hasattr(np, "float"):
        np.float = float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fanova
    logging.getLogger("fanova").setLevel(logging.WARNING)
    return fanova


class _TreeMarginal:
    """Stands in for pyrfr's per-tree running statistic (see the module docstring)."""

    def __init__(self, mean: float):
        self._mean = mean

    def mean(self) -> float:
        return self._mean

    def sum_of_weights(self) -> float:
        return 1.0  # without cutoffs every marginal covers the whole space


class _JoinedForest:
    """A forest made of single-tree pyrfr forests, with the per-tree calls fanova makes."""

    def __init__(self, forests):
        self.forests = forests

    def marginal_prediction_stat_of_tree(self, tree_index, sample):
        return _TreeMarginal(self.forests[tree_index].marginal_mean_variance_prediction(sample)[0])

    def marginal_mean_variance_prediction(self, sample):
        means = [forest.marginal_mean_variance_prediction(sample)[0] for forest in self.forests]
        return float(np.mean(means)), float(np.var(means))


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


def _parameters(distributions: dict, frame: pd.DataFrame) -> list[Parameter]:
    """Analysis parameters from Optuna distributions; constant ones are dropped."""
    parameters = []
    for name, distribution in sorted(distributions.items()):
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            choices = tuple(distribution.choices)
            if len(choices) > 1:
                parameters.append(Parameter(name, False, 0, len(choices) - 1, choices))
            continue
        log = bool(getattr(distribution, "log", False))
        low, high = float(distribution.low), float(distribution.high)
        values = frame[name].to_numpy(dtype=float)
        low, high = min(low, values.min()), max(high, values.max())
        if log:
            low, high = math.log10(low), math.log10(high)
        if high <= low:
            continue
        pad = 0.01 * (high - low)
        parameters.append(Parameter(name, log, low - pad, high + pad))
    return parameters


@dataclass
class FanovaResult:
    """Importance rows of one group and the forest, kept for the marginal figures."""

    group: str
    parameters: list[Parameter]
    rows: list[dict]
    model: object = None
    n_trials: int = 0
    note: str = ""
    marginals: dict = field(default_factory=dict)


def fit_fanova(group, frame, distributions, options) -> FanovaResult:
    """fANOVA of the test metric of `frame` (usable trials of one group)."""
    parameters = _parameters(distributions, frame)
    result = FanovaResult(group, parameters, [], n_trials=len(frame))
    if len(frame) < options["min_trials_for_fanova"]:
        result.note = (f"{len(frame)} usable trials, fewer than min_trials_for_fanova = "
                       f"{options['min_trials_for_fanova']}: fANOVA skipped.")
        return result
    if not parameters:
        result.note = "no parameter varies across the trials: fANOVA skipped."
        return result
    y = frame["test_metric"].to_numpy(dtype=float)
    if np.ptp(y) == 0:
        result.note = "the test metric is the same in every trial: fANOVA skipped."
        return result

    fanova = import_fanova()
    import ConfigSpace
    from ConfigSpace.hyperparameters import CategoricalHyperparameter, UniformFloatHyperparameter

    space = ConfigSpace.ConfigurationSpace()
    for p in parameters:
        if p.choices is not None:
            space.add(CategoricalHyperparameter(p.name, [str(i) for i in range(len(p.choices))]))
        else:
            space.add(UniformFloatHyperparameter(p.name, p.low, p.high))
    order = list(space.keys())  # ConfigSpace sorts by name; fanova indexes in this order
    by_name = {p.name: p for p in parameters}
    x = pd.DataFrame({name: by_name[name].transform(frame[name]) for name in order})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trees = [fanova.fANOVA(x, y, space, n_trees=1, seed=options["seed"] + k,
                               min_samples_leaf=options["min_samples_leaf"],
                               max_features=len(order))
                 for k in range(options["n_trees"])]
        model = trees[0]
        model.the_forest = _JoinedForest([tree.the_forest for tree in trees])
        model.n_trees = len(trees)
        model.all_midpoints = [tree.all_midpoints[0] for tree in trees]
        model.all_sizes = [tree.all_sizes[0] for tree in trees]
        model.trees_total_variance = [tree.trees_total_variance[0] for tree in trees]

        index = {name: i for i, name in enumerate(order)}
        names = [p.name for p in parameters]
        singles = {}
        for name in names:
            term = model.quantify_importance((index[name],))[(index[name],)]
            singles[name] = term
            result.rows.append(_row(group, name, term))
        for a, b in itertools.combinations(names, 2):
            dims = (index[a], index[b])
            result.rows.append(_row(group, f"{a}:{b}", model.quantify_importance(dims)[dims]))
    # higher order per tree, so that it gets a spread across trees like the other terms
    total = np.asarray(model.trees_total_variance, dtype=float)
    explained = sum(np.asarray(model.V_U_individual[(index[n],)], dtype=float) for n in names)
    keep = total > 0
    per_tree = 1 - explained[keep] / total[keep]
    result.rows.append({"variant": group, "term": "higher_order",
                        "fraction": float(np.mean(per_tree)), "std": float(np.std(per_tree))})
    result.model = model
    result.marginals = _marginals(model, parameters, index, options["grid_points"])
    return result


def _row(group, term, importance):
    return {"variant": group, "term": term,
            "fraction": float(importance["individual importance"]),
            "std": float(importance["individual std"])}


def _marginals(model, parameters, index, points):
    """Predicted test metric over each parameter and each pair: mean and std over trees."""
    curves = {}
    for p in parameters:
        grid = (np.arange(len(p.choices)) if p.choices is not None
                else np.linspace(p.low, p.high, points))
        mean, std = [], []
        for value in grid:
            m, v = model.marginal_mean_variance_for_values([index[p.name]], [float(value)])
            mean.append(m)
            std.append(math.sqrt(max(v, 0.0)))
        curves[p.name] = {"grid": grid, "mean": np.array(mean), "std": np.array(std)}
    return curves


def pair_marginal(result: FanovaResult, a: str, b: str, points: int):
    """Mean predicted test metric on a grid of parameters a (rows) and b (columns)."""
    index = {name: i for i, name in enumerate(sorted(p.name for p in result.parameters))}
    by_name = {p.name: p for p in result.parameters}
    grid_a = np.linspace(by_name[a].low, by_name[a].high, points)
    grid_b = np.linspace(by_name[b].low, by_name[b].high, points)
    surface = np.empty((points, points))
    for i, u in enumerate(grid_a):
        for j, v in enumerate(grid_b):
            surface[i, j] = result.model.marginal_mean_variance_for_values(
                [index[a], index[b]], [float(u), float(v)])[0]
    return grid_a, grid_b, surface


def optuna_crosscheck(group, frame, parameters, seed, n_trees) -> dict[str, float]:
    """Optuna's fANOVA main effects on the same (log10) data, as shares of the variance.

    Empty when scikit-learn (which Optuna's evaluator needs) is not installed."""
    if not parameters:
        return {}
    try:
        import sklearn  # noqa: F401  Optuna's evaluator builds its forest with it
    except ImportError:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    distributions = {
        p.name: (optuna.distributions.CategoricalDistribution(list(range(len(p.choices))))
                 if p.choices is not None else optuna.distributions.FloatDistribution(p.low, p.high))
        for p in parameters}
    columns = {p.name: p.transform(frame[p.name]) for p in parameters}
    for i, value in enumerate(frame["test_metric"].to_numpy(dtype=float)):
        params = {name: (int(column[i]) if parameters[k].choices is not None else float(column[i]))
                  for k, (name, column) in enumerate(columns.items())}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(value)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                       normalize=False)


# --------------------------------------------------------------------------- storage


def open_storage(url):
    """The Optuna storage at `url` (never a new, empty one), or a UserError saying what to do."""
    return storage.open_storage(url, key="analysis.storage", create=False)


def _study_dataset_variant(summary) -> tuple[str | None, str]:
    attrs = summary.user_attrs
    name = summary.study_name
    dataset = attrs.get("dataset", name.rsplit(".", 1)[0] if "." in name else None)
    variant = attrs.get("variant", name.rsplit(".", 1)[1] if "." in name else name)
    return dataset, str(variant)


def load_trials(storage, dataset: str):
    """All trials of the studies of `dataset`: a frame and the distributions per variant."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    found = {}
    for summary in summaries:
        their_dataset, variant = _study_dataset_variant(summary)
        if their_dataset == dataset:
            found.setdefault(variant, []).append(summary.study_name)
    if not found:
        others = sorted({str(_study_dataset_variant(s)[0]) for s in summaries})
        listing = ", ".join(others) if others else "none (the storage holds no study)"
        raise UserError(f"No study of data set {dataset!r} in this storage; the data sets "
                        f"there are: {listing}. Set analysis.dataset to one of them.")
    rows, distributions = [], {}
    for variant in sorted(found):
        for study_name in found[variant]:
            study = optuna.load_study(study_name=study_name, storage=storage)
            for trial in study.get_trials(deepcopy=False):
                rows.append(_trial_row(variant, trial))
                for name, distribution in trial.distributions.items():
                    distributions.setdefault(variant, {}).setdefault(name, distribution)
    frame = pd.DataFrame(rows)
    return frame, distributions


def _trial_row(variant, trial) -> dict:
    attrs = trial.user_attrs
    value = trial.value if trial.values else np.nan
    test = attrs.get("test_metric", np.nan)
    failure = attrs.get("failure")
    if trial.state == optuna.trial.TrialState.FAIL or failure:
        excluded = "failed"
    elif trial.state != optuna.trial.TrialState.COMPLETE:
        excluded = "not finished"
    elif not _finite(value):
        excluded = "failed"
    elif not _finite(test):
        excluded = "no test metric" if "test_metric" not in attrs else "failed"
    else:
        excluded = ""
    row = {"variant": variant, "number": trial.number, "state": trial.state.name,
           "excluded": excluded, "failure": failure or ""}
    row.update({f"param:{k}": v for k, v in trial.params.items()})
    row["validation_metric"] = value
    row["test_metric"] = test
    row.update({k: attrs.get(k, np.nan) for k in ATTR_COLUMNS})
    return row


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- tables


def top_trials(frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The best `fraction` of each variant's trials by validation metric (at least 2)."""
    def best(group):
        n = min(len(group), max(2, math.ceil(fraction * len(group))))
        return group.nsmallest(n, "validation_metric")
    return frame.groupby("variant", group_keys=False)[frame.columns].apply(best)


def variants_table(trials, usable, top, options) -> pd.DataFrame:
    """Counts, summary statistics and Welch's t-test against the reference variant."""
    reference = options["reference_variant"]
    rows = []
    for variant, group in trials.groupby("variant"):
        used = usable[usable.variant == variant]
        best = top[top.variant == variant]
        row = {"variant": variant, "n_trials": len(group),
               "n_complete": int((group.state == "COMPLETE").sum()),
               "n_failed": int((group.excluded == "failed").sum()),
               "n_not_finished": int((group.excluded == "not finished").sum()),
               "n_no_test_metric": int((group.excluded == "no test metric").sum()),
               "n_usable": len(used), "n_top": len(best)}
        for label, part in (("all", used), ("top", best)):
            metric = part["test_metric"].astype(float)
            row[f"mean_{label}"] = metric.mean()
            row[f"median_{label}"] = metric.median()
            row[f"best_{label}"] = metric.min()
        row["test_at_best_validation"] = (used.loc[used.validation_metric.idxmin(), "test_metric"]
                                          if len(used) else np.nan)
        for label, part in (("all", used), ("top", best)):
            ref = (usable if label == "all" else top)
            ref = ref[ref.variant == reference]["test_metric"].astype(float)
            p = np.nan
            if variant != reference and len(part) >= 2 and len(ref) >= 2:
                p = stats.ttest_ind(part["test_metric"].astype(float), ref,
                                    equal_var=False).pvalue
            row[f"welch_p_{label}"] = p
            row[f"differs_{label}"] = bool(_finite(p) and p < options["alpha"])
        row["mean_n_params"] = pd.to_numeric(group["n_params"], errors="coerce").mean()
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- entry point


def _options(cfg) -> dict:
    options = dict(DEFAULTS)
    options.update({k: cfg[k] for k in cfg.keys()} if hasattr(cfg, "keys") else {})
    if not options.get("dataset"):
        raise UserError("analysis.dataset is not set: name the data set of the studies, "
                        "e.g. `odyssey analyze analysis.dataset=jsb_chorales`.")
    if not 0 < float(options["top_fraction"]) <= 1:
        raise UserError("analysis.top_fraction must lie in (0, 1], e.g. 0.1 for the best 10 %.")
    return options


def run(cfg) -> Path:
    """Analyse every study of cfg.dataset in cfg.storage; return the path of report.md."""
    from harness import figures, report

    options = _options(cfg)
    dataset = str(options["dataset"])
    out = Path(options["out"]) if options["out"] else (
        harness.project_root() / "results" / "analysis" / dataset)
    if not out.is_absolute():
        out = harness.project_root() / out
    started = time.time()
    print(f"[analyze] reading studies of {dataset!r} from {options['storage']}")
    storage = open_storage(options["storage"])
    trials, distributions = load_trials(storage, dataset)
    out.mkdir(parents=True, exist_ok=True)
    param_columns = sorted(c for c in trials.columns if c.startswith("param:"))
    print(f"[analyze] {len(trials)} trials in {trials.variant.nunique()} variants")

    table = trials.rename(columns={c: c[len("param:"):] for c in param_columns})
    table.to_csv(out / "trials.csv", index=False)
    usable = table[table.excluded == ""].copy()
    top = top_trials(usable, float(options["top_fraction"])) if len(usable) else usable
    variants = variants_table(table, usable, top, options)
    variants.to_csv(out / "variants.csv", index=False)

    groups = [POOLED] + sorted(usable.variant.unique())
    results, importance_rows = {}, []
    for group in groups:
        part = usable if group == POOLED else usable[usable.variant == group]
        print(f"[analyze] fANOVA of {group} ({len(part)} usable trials)")
        merged = _group_distributions(part, distributions, group)
        frame = part[["test_metric"] + list(merged)].dropna()
        if group != POOLED and len(groups) == 2:  # a single variant: the pooled analysis
            pooled = results[POOLED]
            result = dataclasses.replace(
                pooled, group=group, rows=[{**row, "variant": group} for row in pooled.rows])
        else:
            result = fit_fanova(group, frame, merged, options)
            if result.model is not None and options["crosscheck"]:
                check = optuna_crosscheck(group, frame, result.parameters, options["seed"],
                                          options["n_trees"])
                for row in result.rows:
                    row["optuna_fraction"] = check.get(row["term"], np.nan)
        if result.model is None:
            print(f"[analyze]   {result.note}")
        results[group] = result
        importance_rows += result.rows
    importance = pd.DataFrame(importance_rows,
                              columns=["variant", "term", "fraction", "std", "optuna_fraction"])
    importance.to_csv(out / "importance.csv", index=False)

    drawn = {}
    if options["figures"]:
        print("[analyze] drawing figures")
        drawn = figures.draw_all(out, usable, top, variants, results, options)
    path = report.write(out, dataset=dataset, storage=options["storage"], trials=table,
                        variants=variants, importance=importance, results=results,
                        figures=drawn, options=options)
    print(f"[analyze] done in {time.time() - started:.1f} s: {path}")
    return path


def _group_distributions(part, distributions, group) -> dict:
    """Distributions of the parameters every usable trial of the group has."""
    variants = part.variant.unique()
    merged = {}
    for variant in variants:
        for name, distribution in distributions.get(variant, {}).items():
            merged.setdefault(name, distribution)
    return {name: d for name, d in merged.items()
            if name in part.columns and part[name].notna().all()}
