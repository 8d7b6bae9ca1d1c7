"""Sequential verdicts: a variant against vanilla, looked at after every round of trials.

    verdicts(vanilla, variant, looks, alpha=0.05, margin=0.3) -> ["undecided", ..., "worse", "worse"]

The method (docs/analysis.md, "Sequential studies", says why and under which assumptions):
a group-sequential design with Lan & DeMets (1983) alpha spending on the Wilcoxon-Mann-
Whitney rank statistic, and repeated confidence intervals (Jennison & Turnbull 1989) of
the shift, from the same rank statistic, for equivalence.

- At look k both series are cut to their first n_k = looks[k] values (trials in the order
  they finished), so each look compares n_k trials with n_k trials. A value that is NaN
  (a trial whose loss diverged) ranks as the worst possible outcome (+inf); lower is better.
- Z_k = (U_k - n_k^2 / 2) / sd(U_k), U_k counting pairs (variant trial, vanilla trial) with
  the variant's worse (ties 1/2), sd with the tie correction: under "no difference"
  (identical distributions) its law is exact by permutation, whatever the tails.
- Information grows like n_k, so look k sits at the fraction t_k = n_k / cap of the cap
  (the last look unless given). The boundaries c_k spend alpha as the Hwang, Shih &
  DeCani (1990) function with gamma = -2, alpha(t) = alpha (1 - e^{2t}) / (1 - e^2)
  (`spent`), so the chance of ever crossing over all looks is alpha under no difference
  (canonical joint normal law of Z_1..Z_K, by numerical integration: `boundaries`).
- worse / better: |Z_k| >= c_k, by the sign of Z_k.
- equivalent: the shift's repeated confidence interval at look k lies inside
  (-margin, +margin): the rank test of (variant - margin) against vanilla says lower and
  that of (variant + margin) says higher, each one-sided at alpha over all looks
  (boundaries spending 2 alpha two-sided: two one-sided tests, Schuirmann 1987).
- undecided: neither. A decision stands at every later look (the variant stops there).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from optuna.trial import TrialState
from scipy import optimize, stats

from harness.storage import counted

VERDICTS = ("worse", "better", "equivalent", "undecided")
GAMMA = -2.0  # the spending function's shape (docs/analysis.md: chosen by simulation on the reference study)
GRID = 801  # points of the numerical integration over one look's continuation region
LARGEST = 40.0  # a boundary that spends (next to) nothing: never crossed


def spent(t, alpha: float, gamma: float = GAMMA):
    """The error rate spent by information fraction t (0 at t = 0, alpha at t = 1): the
    spending family of Hwang, Shih & DeCani (1990), alpha (1 - e^{-gamma t}) / (1 - e^{-gamma}).
    gamma = -2 spends little early (boundaries near 3.1-3.3 in the first quarter of the cap),
    so a large difference stops a study early while the last look keeps most of its power."""
    t = np.asarray(t, dtype=float)
    return alpha * (1 - np.exp(-gamma * t)) / (1 - np.exp(-gamma))


def boundaries(fractions, alpha: float, spending=spent) -> np.ndarray:
    """Two-sided boundaries c_k of Z at the information fractions t_1 < ... < t_K (<= 1):
    under no difference P(|Z_j| < c_j for j < k, |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1}),
    where Z_k = B(t_k) / sqrt(t_k) for a standard Brownian motion B (Armitage, McPherson &
    Rowe 1969: the density of B on the continuation region, carried from look to look).
    `spending(t, alpha)`: the error spent by t (default: `spent`)."""
    fractions = np.asarray(fractions, dtype=float)
    if np.any(np.diff(fractions) <= 0) or fractions[0] <= 0 or fractions[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase within (0, 1]: {fractions}")
    increments = np.diff(np.concatenate([[0.0], spending(fractions, alpha)]))
    found, grid, density, previous = [], None, None, 0.0
    for t, rate in zip(fractions, increments):
        step = t - previous
        if grid is None:  # first look: B(t_1) ~ N(0, t_1)
            def crossing(c):
                return 2 * stats.norm.sf(c)
        else:
            weights = density * np.gradient(grid)  # trapezoid-like weights of the carried density

            def crossing(c, t=t, step=step, weights=weights):
                edge = c * np.sqrt(t)
                sd = np.sqrt(step)
                return float(np.sum(weights * (stats.norm.sf((edge - grid) / sd)
                                               + stats.norm.cdf((-edge - grid) / sd))))
        c = LARGEST
        if rate > crossing(LARGEST):
            c = optimize.brentq(lambda c: crossing(c) - rate, 1e-6, LARGEST, xtol=1e-10)
        found.append(c)
        edge = c * np.sqrt(t)
        points = np.linspace(-edge, edge, GRID)
        if grid is None:
            carried = stats.norm.pdf(points, scale=np.sqrt(t))
        else:  # density of B(t_k) on the region, from that of B(t_{k-1}) and an N(0, step) increment
            kernel = stats.norm.pdf((points[:, None] - grid[None, :]) / np.sqrt(step)) / np.sqrt(step)
            carried = kernel @ (density * np.gradient(grid))
        grid, density, previous = points, carried, t
    return np.array(found)


@functools.lru_cache(maxsize=64)
def _differ_and_same(fractions: tuple, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The boundaries of a difference (alpha) and of equivalence (2 alpha) at these information
    fractions: `verdicts` and `path` need both, and the rounds judge every variant at the same
    looks, so each set is integrated once."""
    differ, same = boundaries(np.array(fractions), alpha), boundaries(np.array(fractions), 2 * alpha)
    differ.flags.writeable = same.flags.writeable = False
    return differ, same


def rank_z(vanilla: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Standardised Mann-Whitney statistic of `variant` against `vanilla` along the last
    axis (positive: the variant's values tend to be larger), midranks and tie-corrected
    variance; 0 where every value is tied."""
    m, n = vanilla.shape[-1], variant.shape[-1]
    both = np.concatenate([vanilla, variant], axis=-1)
    order = np.argsort(both, axis=-1, kind="stable")  # one sort gives the midranks and the ties
    ordered = np.take_along_axis(both, order, axis=-1)
    total = m + n
    position = np.broadcast_to(np.arange(1, total + 1), ordered.shape)
    starts = np.concatenate([np.ones(ordered.shape[:-1] + (1,), bool), ordered[..., 1:] != ordered[..., :-1]], axis=-1)
    ends = np.concatenate([starts[..., 1:], np.ones(ordered.shape[:-1] + (1,), bool)], axis=-1)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)  # where each tie group begins
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, total + 1), -1), axis=-1), -1)
    tied = last - first + 1
    u = np.where(order >= m, (first + last) / 2, 0).sum(axis=-1) - n * (n + 1) / 2
    variance = m * n / 12 * ((total + 1) - (tied ** 2 - 1).sum(axis=-1) / (total * (total - 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (u - m * n / 2) / np.sqrt(variance)
    return np.where(variance > 0, z, 0.0)


def _worst_for_nan(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isnan(values), np.inf, values)


def verdicts(vanilla, variant, looks, alpha: float = 0.05, margin: float | None = None,
             cap: int | None = None):
    """The verdict of `variant` against `vanilla` at each look: "worse", "better",
    "equivalent" or "undecided" (lower is better).

    vanilla, variant: the metric of each trial in the order trials finished; 1-D, or 2-D
    (studies x trials) for many simulated studies at once. looks: increasing numbers of
    trials a variant (each at most the length of both series). margin: the smallest
    difference that matters, in metric units (None: equivalence is never decided).
    cap: the largest number of trials a variant the study may reach, which fixes the
    information fractions n_k / cap (default: the last look).
    Returns a list of strings for 1-D input, an array of shape (studies, looks) for 2-D."""
    x, y = _worst_for_nan(vanilla), _worst_for_nan(variant)
    single = x.ndim == 1
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    looks = [int(n) for n in looks]
    cap = int(cap if cap is not None else looks[-1])
    if not looks or looks[0] < 2 or np.any(np.diff(looks) <= 0) or looks[-1] > cap:
        raise ValueError(f"looks must increase from at least 2 trials up to the cap {cap}: {looks}")
    if looks[-1] > min(x.shape[-1], y.shape[-1]):
        raise ValueError(f"the last look ({looks[-1]}) needs that many trials in both series")
    if margin is not None and not margin > 0:
        raise ValueError(f"margin must be positive: {margin}")
    fractions = np.array(looks) / cap
    differ, same = _differ_and_same(tuple(fractions), alpha)
    result = np.full((x.shape[0], len(looks)), "undecided", dtype=object)
    decided = np.zeros(x.shape[0], dtype=bool)
    for k, n in enumerate(looks):
        if k:
            result[:, k] = result[:, k - 1]  # a decision stands
        live = np.flatnonzero(~decided)
        if not len(live) or (differ[k] >= LARGEST and (margin is None or same[k] >= LARGEST)):
            continue  # nothing left to decide, or a look that spends nothing
        a, b = x[live, :n], y[live, :n]
        z = rank_z(a, b)
        verdict = np.where(z >= differ[k], "worse", np.where(z <= -differ[k], "better", "undecided")).astype(object)
        if margin is not None and same[k] < LARGEST:
            below = rank_z(a, b - margin) <= -same[k]   # shift < +margin
            above = rank_z(a, b + margin) >= same[k]    # shift > -margin
            verdict = np.where((verdict == "undecided") & below & above, "equivalent", verdict)
        result[live, k] = verdict
        decided[live] = verdict != "undecided"
    return list(result[0]) if single else result


def shift_interval(vanilla, variant, critical: float) -> tuple[float, float, float]:
    """Hodges-Lehmann shift of `variant` against `vanilla` (the median of all pairwise
    differences) and the shifts the rank test with critical value `critical` does not reject
    (Moses' interval, normal approximation without ties: at a look's boundary, the repeated
    confidence interval); NaN counts as +inf."""
    x, y = _worst_for_nan(vanilla), _worst_for_nan(variant)
    differences = np.sort((y[:, None] - x[None, :]).ravel())
    m, n = len(x), len(y)
    # Hollander & Wolfe: the C-th smallest and the C-th largest difference (1-based)
    c = max(1, int(np.floor(m * n / 2 - critical * np.sqrt(m * n * (m + n + 1) / 12))))
    with np.errstate(invalid="ignore"):
        middle = float(np.median(differences))
    return middle, float(differences[c - 1]), float(differences[len(differences) - c])


def path(vanilla, variant, looks, alpha: float = 0.05, margin: float | None = None,
         cap: int | None = None) -> list[dict]:
    """The comparison as it stood at each look, up to the first that decided it (the variant
    stops there): a dict per look with its number of trials a variant `look`, the `verdict`,
    the rank statistic `z` and its `boundary`, the Hodges-Lehmann `shift` of the variant and
    its repeated confidence interval [`shift_low`, `shift_high`] (at the equivalence
    boundary, `equivalence_boundary`). Arguments as for `verdicts` (1-D series)."""
    found = verdicts(vanilla, variant, looks, alpha=alpha, margin=margin, cap=cap)
    fractions = np.array(looks, dtype=float) / int(cap if cap is not None else looks[-1])
    differ, same = _differ_and_same(tuple(fractions), alpha)
    x, y = _worst_for_nan(vanilla), _worst_for_nan(variant)
    rows = []
    for k, n in enumerate(looks):
        shift, low, high = shift_interval(x[:n], y[:n], critical=float(same[k]))
        rows.append({"look": int(n), "verdict": found[k], "z": float(rank_z(x[:n], y[:n])),
                     "boundary": float(differ[k]), "equivalence_boundary": float(same[k]),
                     "shift": shift, "shift_low": low, "shift_high": high})
        if found[k] != "undecided":
            break
    return rows


def looks_up_to(n: int, every: int, cap: int) -> list[int]:
    """The looks a variant with n trials has passed: multiples of `every`, and the cap."""
    looks = list(range(every, min(n, cap) + 1, every))
    if n >= cap and (not looks or looks[-1] != cap):
        looks.append(cap)
    return [k for k in looks if k >= 2]


def series(trials) -> np.ndarray:
    """What a sweep with search.until=decided judges (harness.rounds): its counted trials
    (harness.storage.counted) in trial-number order, each by its test metric (its objective
    where it has none), NaN for one that did not complete (its loss diverged)."""
    values = [t.user_attrs.get("test_metric", t.value) if t.state == TrialState.COMPLETE else math.nan
              for t in sorted(counted(trials), key=lambda t: t.number)]
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def paths(series_of: dict, settings: dict, reference: str) -> dict[str, list[dict]]:
    """{variant: its `path`} for a sweep's stored outcomes: `settings` maps a variant to its
    study's `sequential` attribute (harness.rounds: look_every, cap, alpha, margin and the
    last look judged), `series_of` a variant to its `series`. Looks go up to the last one
    the sweep judged, so the path ends where the sweep's verdict stands."""
    found = {}
    for variant, outcome in settings.items():
        if variant == reference or variant not in series_of or reference not in series_of:
            continue
        n = min(len(series_of[reference]), len(series_of[variant]), int(outcome.get("look") or 0))
        looks = looks_up_to(n, int(outcome["look_every"]), int(outcome["cap"]))
        if looks:
            found[variant] = path(series_of[reference], series_of[variant], looks, alpha=float(outcome["alpha"]),
                                  margin=outcome.get("margin"), cap=int(outcome["cap"]))
    return found
