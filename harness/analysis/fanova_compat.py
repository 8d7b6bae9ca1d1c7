"""The `fanova` package (Hutter, Hoos & Leyton-Brown 2014) made to work here.

Two small steps of our own, both documented in docs/analysis.md:

- fanova 2.0.19 writes `np.full(..., dtype=np.float)`; NumPy 2 removed that alias of
  the builtin float. Restoring the alias is all it needs; we never pin NumPy below 2.
- With pyrfr 0.9 built by SWIG 4, the per-tree statistics object that fanova reads
  (`marginal_prediction_stat_of_tree`) comes back as an opaque SwigPyObject (a SWIG 4
  typedef mismatch between pyrfr's two modules; fanova's README asks for SWIG 3.0.12,
  which PyPI no longer has). We therefore fit one single-tree fANOVA per seed and join
  them: each tree's marginal prediction comes from that tree's working
  `marginal_mean_variance_prediction`, and fanova's own code does the variance
  decomposition. The result is a forest of `n_trees` bootstrapped trees, as fanova
  would build.

Both steps rest on what these exact releases do inside, so `import_fanova` checks the
installed versions against `TESTED` (the versions of constraints.txt) and refuses any
other with a message that says what to do; `forest` also checks that the attributes it
replaces are still there. Nothing else in the project touches fanova's internals (the
per-tree variances the higher-order term needs are read here too).
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings

import numpy as np

from harness.errors import UserError

# The releases this module was written against: fanova's fANOVA object and pyrfr's forest.
TESTED = {"fanova": "2.0.19", "pyrfr": "0.9.0"}
# What `forest` sets on the fANOVA object (fanova 2.0.19, fanova/fanova.py, fANOVA.__init__).
REPLACED = ("the_forest", "n_trees", "all_midpoints", "all_sizes", "trees_total_variance")


def _changed(what: str) -> UserError:
    return UserError(f"{what}, but harness/analysis/fanova_compat.py was written for fanova {TESTED['fanova']} "
                     f"with pyrfr {TESTED['pyrfr']}; install those (pip install -c constraints.txt --no-build-"
                     "isolation pyrfr fanova) or check the compatibility step against the new release.")


def check_versions(installed=None) -> None:
    """Refuse fanova or pyrfr releases other than `TESTED`; `installed` maps package to
    version (default: what importlib.metadata finds)."""
    for package, tested in TESTED.items():
        if installed is not None:
            version = installed.get(package)
        else:
            try:
                version = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                version = None
        if version is None:
            raise ImportError(f"{package} is not installed (bash scripts/setup.sh builds it)")
        if version != tested:
            raise _changed(f"{package} {version} is installed")


def import_fanova():
    """Import the `fanova` package, after checking its version and giving NumPy 2 the
    `np.float` it still uses. ImportError when it is not installed."""
    check_versions()
    if not hasattr(np, "float"):
        np.float = float  # fanova 2.0.19 only needs the alias, which is the builtin float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fanova
    logging.getLogger("fanova").setLevel(logging.WARNING)
    return fanova


class _TreeMarginal:
    """Stands in for pyrfr's per-tree running statistic."""

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


def higher_order_per_tree(model, singles: list[int]) -> np.ndarray:
    """1 - the sum of the single-parameter fractions, one value a tree (NaN alone when no
    tree has variance). Needs `model.quantify_importance((d,))` done for each d of
    `singles`: fanova 2.0.19 then holds each tree's variances in `V_U_individual` and
    `trees_total_variance`, which it does not return."""
    total = np.asarray(model.trees_total_variance, dtype=float)
    explained = sum(np.asarray(model.V_U_individual[(d,)], dtype=float) for d in singles)
    keep = total > 0
    return 1 - explained[keep] / total[keep] if keep.any() else np.array([np.nan])


def forest(x, y, space, n_trees: int, seed: int, min_samples_leaf: int, max_features=None):
    """A fanova.fANOVA of `n_trees` trees on x (DataFrame in the space's order) and y."""
    fanova = import_fanova()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trees = [fanova.fANOVA(x, y, space, n_trees=1, seed=seed + k,
                               min_samples_leaf=min_samples_leaf,
                               max_features=max_features or x.shape[1])
                 for k in range(n_trees)]
    model = trees[0]
    missing = [name for name in REPLACED if not hasattr(model, name)]
    if missing:
        raise _changed(f"fanova's fANOVA object has no {', '.join(missing)}")
    model.the_forest = _JoinedForest([tree.the_forest for tree in trees])
    model.n_trees = len(trees)
    model.all_midpoints = [tree.all_midpoints[0] for tree in trees]
    model.all_sizes = [tree.all_sizes[0] for tree in trees]
    model.trees_total_variance = [tree.trees_total_variance[0] for tree in trees]
    return model
