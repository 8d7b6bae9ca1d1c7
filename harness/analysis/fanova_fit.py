"""Step 4: fANOVA of one group of trials (a variant, or `all` pooled), with intervals.

One random forest (`n_trees` trees) fitted to the analysed metric over the parameters
every trial of the group has. Log-sampled parameters enter as log10; bounds are the
distributions' bounds padded by 1 % of their range. Terms: each parameter, each pair
`a:b` (the pure interaction), and higher_order = 1 - the sum of the single-parameter
fractions. `std` is the spread of a fraction across the trees.

Intervals (`ci_low`, `ci_high`): `n_bootstrap` resamples of the trials with
replacement, each fitted with a smaller forest of `bootstrap_trees` trees; the
interval is the percentile interval of the resampled fractions at level `ci_level`.
A small forest adds its own tree-to-tree noise, which widens the interval a little: it
errs on the safe side. Each resample also gives two effects the scorecard uses: the
predicted metric at the top minus the bottom of the input-noise range, and how many
decades the best learning rate moves from the smallest to the largest hidden size.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd

from harness.analysis import fanova_compat
from harness.analysis.read import Parameter, shared_parameters

NOISE, RATE, SIZE = "input_noise_std", "learning_rate", "hidden_size"
PROGRESS_EVERY = 60.0  # seconds between two progress lines of a group's bootstrap
EFFECTS = {"noise_effect": "predicted metric at the largest minus the smallest input noise",
           "lr_shift": "decades the best learning rate moves from the smallest to the largest "
                       "hidden size"}


@dataclass
class FanovaResult:
    """Everything the figures and the report need about one group's fANOVA."""

    group: str
    parameters: list[Parameter]
    rows: list[dict]
    n_trials: int = 0
    note: str = ""
    left_out: dict = field(default_factory=dict)  # parameter -> why it was not analysed
    marginals: dict = field(default_factory=dict)  # parameter -> grid, mean, std
    pair: tuple | None = None  # (a, b, grid_a, grid_b, surface) for the interaction figure
    effects: dict = field(default_factory=dict)  # name -> (estimate, ci_low, ci_high)
    n_resamples: int = 0  # resamples that gave a forest
    seconds: float = 0.0  # fitting the main forest
    bootstrap_seconds: float = 0.0

    @property
    def fitted(self) -> bool:
        return bool(self.rows)


def _space(parameters):
    import ConfigSpace
    from ConfigSpace.hyperparameters import CategoricalHyperparameter, UniformFloatHyperparameter

    space = ConfigSpace.ConfigurationSpace()
    for p in parameters:
        if p.choices is not None:
            space.add(CategoricalHyperparameter(p.name, [str(i) for i in range(len(p.choices))]))
        else:
            space.add(UniformFloatHyperparameter(p.name, p.low, p.high))
    return space


def _fractions(model, names, index, pairs=True) -> dict[str, tuple[float, float]]:
    """{term: (fraction, std across trees)} of a fitted forest."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            term = model.quantify_importance((index[name],))[(index[name],)]
            out[name] = (float(term["individual importance"]), float(term["individual std"]))
        if pairs:
            for a, b in itertools.combinations(names, 2):
                dims = (index[a], index[b])
                term = model.quantify_importance(dims)[dims]
                out[f"{a}:{b}"] = (float(term["individual importance"]),
                                   float(term["individual std"]))
    per_tree = fanova_compat.higher_order_per_tree(model, [index[n] for n in names])
    out["higher_order"] = (float(np.mean(per_tree)), float(np.std(per_tree)))
    return out


def _marginal(model, index, names, values) -> float:
    return float(model.marginal_mean_variance_for_values([index[n] for n in names],
                                                        [float(v) for v in values])[0])


def _effects(model, by_name, index, points=9) -> dict[str, float]:
    """The two scorecard effects of one forest (only where the parameters are there)."""
    effects = {}
    noise = by_name.get(NOISE)
    if noise is not None and noise.choices is None:
        effects["noise_effect"] = (_marginal(model, index, [NOISE], [noise.high])
                                   - _marginal(model, index, [NOISE], [noise.low]))
    rate, size = by_name.get(RATE), by_name.get(SIZE)
    if rate is not None and size is not None and rate.choices is None and size.choices is None:
        rates = np.linspace(rate.low, rate.high, points)
        best = []
        for h in (size.low, size.high):
            curve = [_marginal(model, index, [RATE, SIZE], [r, h]) for r in rates]
            best.append(rates[int(np.argmin(curve))])
        effects["lr_shift"] = float(best[1] - best[0]) if rate.log else float(
            math.log10(max(best[1], 1e-300)) - math.log10(max(best[0], 1e-300)))
    return effects


def analyse(group: str, frame: pd.DataFrame, column: str, distributions: dict, options,
            bootstrap: bool = True) -> FanovaResult:
    """fANOVA of `frame[column]` (the trials of one group) with bootstrap intervals."""
    parameters, left_out = shared_parameters(frame, distributions)
    result = FanovaResult(group, parameters, [], n_trials=len(frame), left_out=left_out)
    y = frame[column].to_numpy(dtype=float)
    minimum = int(options["min_trials_for_fanova"])
    if len(frame) < minimum:
        result.note = (f"{len(frame)} usable trials, fewer than min_trials_for_fanova = "
                       f"{minimum}: fANOVA skipped.")
        return result
    if not parameters:
        result.note = "no parameter is shared by every trial and varies: fANOVA skipped."
        return result
    if np.ptp(y) == 0:
        result.note = "the metric is the same in every trial: fANOVA skipped."
        return result
    space = _space(parameters)
    order = list(space.keys())  # ConfigSpace sorts by name; fanova indexes in this order
    by_name = {p.name: p for p in parameters}
    index = {name: i for i, name in enumerate(order)}
    names = [p.name for p in parameters]
    x = pd.DataFrame({name: by_name[name].transform(frame[name]) for name in order})
    started = time.perf_counter()
    try:
        model = fanova_compat.forest(x, y, space, int(options["n_trees"]), int(options["seed"]),
                                     int(options["min_samples_leaf"]))
        fractions = _fractions(model, names, index)
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        result.note = f"the forest could not be fitted ({error}): fANOVA skipped."
        return result
    result.seconds = time.perf_counter() - started
    estimates = _effects(model, by_name, index)

    samples = {term: [] for term in fractions}
    effect_samples = {name: [] for name in estimates}
    started = time.perf_counter()
    if bootstrap and int(options["n_bootstrap"]) > 0:
        rng = np.random.default_rng(int(options["seed"]) + 7919)
        total, shown = int(options["n_bootstrap"]), started
        for b in range(total):
            now = time.perf_counter()
            if now - shown >= PROGRESS_EVERY and b:  # a large group takes minutes: say how far it is
                each = (now - started) / b
                print(f"[analyze]   {group}: {b}/{total} resamples, {each:.1f} s each, about "
                      f"{each * (total - b) / 60:.0f} min left", flush=True)
                shown = now
            pick = rng.integers(len(y), size=len(y))
            if np.ptp(y[pick]) == 0:
                continue
            try:
                resampled = fanova_compat.forest(
                    x.iloc[pick].reset_index(drop=True), y[pick], space,
                    int(options["bootstrap_trees"]), int(options["seed"]) + 100 * (b + 1),
                    int(options["min_samples_leaf"]))
                values = _fractions(resampled, names, index)
                effects = _effects(resampled, by_name, index)
            except (RuntimeError, ValueError, ZeroDivisionError):
                continue
            result.n_resamples += 1
            for term, (value, _) in values.items():
                samples[term].append(value)
            for name, value in effects.items():
                effect_samples[name].append(value)
    result.bootstrap_seconds = time.perf_counter() - started
    tail = 50 * (1 - float(options["ci_level"]))

    def interval(values):
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return np.nan, np.nan
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    for term, (value, std) in fractions.items():
        low, high = interval(samples[term])
        result.rows.append({"variant": group, "term": term, "fraction": value, "std": std,
                            "ci_low": low, "ci_high": high})
    for name, value in estimates.items():
        result.effects[name] = (value, *interval(effect_samples[name]))
    result.marginals = _marginals(model, parameters, index, int(options["grid_points"]))
    pair = interaction_pair(result)
    if pair:
        result.pair = (*pair, *_pair_surface(model, by_name, index, pair, int(options["grid_points"])))
    if options.get("crosscheck", True) and bootstrap:
        check = optuna_crosscheck(frame, column, parameters, int(options["seed"]),
                                  int(options["n_trees"]))
        for row in result.rows:
            row["optuna_fraction"] = check.get(row["term"], np.nan)
    return result


def _marginals(model, parameters, index, points):
    """Predicted metric over each parameter: mean and std over trees."""
    curves = {}
    for p in parameters:
        grid = (np.arange(len(p.choices)) if p.choices is not None
                else np.linspace(p.low, p.high, points))
        mean, std = [], []
        for value in grid:
            m, v = model.marginal_mean_variance_for_values([index[p.name]], [float(value)])
            mean.append(m)
            std.append(math.sqrt(max(v, 0.0)))
        curves[p.name] = {"grid": grid, "mean": np.array(mean), "std": np.array(std),
                          "log": p.log, "choices": p.choices}
    return curves


def _pair_surface(model, by_name, index, pair, points):
    a, b = pair
    grid_a = np.linspace(by_name[a].low, by_name[a].high, points)
    grid_b = np.linspace(by_name[b].low, by_name[b].high, points)
    surface = np.empty((points, points))
    for i, u in enumerate(grid_a):
        for j, v in enumerate(grid_b):
            surface[i, j] = _marginal(model, index, [a, b], [u, v])
    return grid_a, grid_b, surface, by_name[a].log, by_name[b].log


def interaction_pair(result):
    """Learning rate x hidden size as in the paper, else the strongest numeric pair."""
    numeric = {p.name for p in result.parameters if p.choices is None}
    if {RATE, SIZE} <= numeric:
        return (RATE, SIZE)
    pairs = [(row["fraction"], row["term"].split(":")) for row in result.rows
             if ":" in row["term"] and set(row["term"].split(":")) <= numeric]
    return tuple(max(pairs)[1]) if pairs else None


def optuna_crosscheck(frame, column, parameters, seed, n_trees) -> dict[str, float]:
    """Optuna's fANOVA main effects on the same (log10) data, as shares of the variance.

    Empty when scikit-learn (which Optuna's evaluator needs) is not installed."""
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
    for i, value in enumerate(frame[column].to_numpy(dtype=float)):
        params = {name: (int(values[i]) if parameters[k].choices is not None else float(values[i]))
                  for k, (name, values) in enumerate(columns.items())}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(value)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                           normalize=False)
        except (RuntimeError, ValueError):
            return {}
