"""The rank statistic of a variant against vanilla, and the shift it speaks of
(docs/analysis.md, "Verdicts").

    rank_z(vanilla, variant) -> Z (positive: the variant's values tend to be larger)
    leaning(vanilla, variant, shift) -> (Z just above, Z just below) the shift
    shift_interval(vanilla, variant, critical) -> (shift, low, high)
    shift_intervals(vanilla, variant, criticals) -> (shift, [(low, high) at each critical])

Every counted trial enters: a trial that failed or diverged (NaN) is the worst outcome,
+inf, lower being better. Z is the Wilcoxon-Mann-Whitney statistic with midranks and the
tie-corrected variance. The interval is that same statistic inverted: the shifts d for which
the test of (variant - d) against vanilla does not reach `critical` on either side. A
variant value of +inf stays +inf whatever d, so with many diverged runs an end of the
interval (or the shift itself) is +inf: no finite shift makes the variant as good.

Ties between the two arms at exactly the shift tested are broken against the claim: the
test of "worse" (Z >= c at d) reads Z just above d (the variant's tied values counted as
better), the test of "better" just below. Z is then a step function of d, constant between
the pairwise differences, and the verdict at d and the interval's ends never disagree.
"""

from __future__ import annotations

import numpy as np


def worst_for_nan(values) -> np.ndarray:
    """The values as floats, NaN (a failed or diverged trial) as +inf, the worst outcome."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isnan(values), np.inf, values)


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


def _nudged(values: np.ndarray, towards: float) -> np.ndarray:
    """Finite values moved by one unit in the last place (ties across the arms at exactly
    this shift broken; ties within an arm kept); +inf stays +inf."""
    return np.where(np.isfinite(values), np.nextafter(values, towards), values)


def leaning(vanilla, variant, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(Z just above, Z just below) the shift: the rank statistic of (variant - shift)
    against vanilla with the variant's values tied to vanilla's counted as better (first) or
    worse (second). The first reaching +c says "worse than shift"; the second reaching -c
    says "better than shift". Works along the last axis, like rank_z."""
    x, y = worst_for_nan(vanilla), worst_for_nan(variant) - shift
    return rank_z(x, _nudged(y, -np.inf)), rank_z(x, _nudged(y, np.inf))


def shift_interval(vanilla, variant, critical: float) -> tuple[float, float, float]:
    """(shift, low, high): the Hodges-Lehmann shift and the interval of the rank test at one
    critical value (`shift_intervals`)."""
    shift, [(low, high)] = shift_intervals(vanilla, variant, [critical])
    return shift, low, high


def shift_intervals(vanilla, variant, criticals) -> tuple[float, list[tuple[float, float]]]:
    """Hodges-Lehmann shift of `variant` against `vanilla` and, for each critical value, the
    interval of shifts the rank test with that critical value does not reject, from the same
    tie-corrected statistic (the pairwise differences are found once for all): low is the
    largest pairwise difference at which Z just above it still reaches critical (every
    smaller shift is rejected: the variant is worse than that), high the smallest at which Z
    just below it reaches -critical. An end is +inf or -inf where no finite shift
    is rejected (or kept) on that side. The shift is the middle of the interval at critical
    0 (the median pairwise difference, infinite differences included: with half the pairs
    or more infinite, +inf)."""
    x, y = worst_for_nan(vanilla), worst_for_nan(variant)
    finite_x, finite_y = x[np.isfinite(x)], y[np.isfinite(y)]
    differences = np.unique(np.subtract.outer(finite_y, finite_x).ravel())
    if not len(differences):
        differences = np.array([0.0])
    # Z between consecutive differences (and beyond both ends), nonincreasing in the shift
    between = np.concatenate([[differences[0] - 1.0], (differences[1:] + differences[:-1]) / 2,
                              [differences[-1] + 1.0]])

    def z(index):
        return float(rank_z(x, y - between[index]))

    def first_below(level):  # the first index whose Z < level, len(between) if none
        lo, hi = 0, len(between)
        while lo < hi:
            mid = (lo + hi) // 2
            if z(mid) < level:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def last_above(level):  # the last index whose Z > level, -1 if none
        lo, hi = -1, len(between) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if z(mid) > level:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def low_end(level):
        i = first_below(level)
        return np.inf if i == len(between) else (-np.inf if i == 0 else float(differences[i - 1]))

    def high_end(level):
        j = last_above(level)
        return -np.inf if j < 0 else (np.inf if j == len(between) - 1 else float(differences[j]))

    shift = (low_end(0.0) + high_end(0.0)) / 2  # the two never are infinite of opposite signs
    return float(shift), [(float(low_end(c)), float(high_end(-c))) for c in criticals]
