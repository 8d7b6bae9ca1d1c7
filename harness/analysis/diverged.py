"""Step 2: trials that diverged but stayed finite (docs/analysis.md, "Diverged trials").

A trainer that stops on NaN/inf marks those runs itself; a run whose loss blew up and
then settled somewhere finite and huge (an NLL of 3,200 where the rest lie at 9-11)
is not marked, yet one such trial can make most of the variance a forest sees. The
rule needs nothing but the metric, so it works on studies made elsewhere. A fence is
drawn from an *anchor*, a set of trials that diverging runs cannot move:

- `reference` (the default): the reference variant's usable trials (vanilla), when it
  has at least `min_trials`; else `pooled`.
- `pooled`: every variant's usable trials together; its median moves only when half of
  all trials diverged, whatever one variant does.
- `own`: each variant's own trials, as before issue 34: a variant whose typical run blew
  up (NOAF on long pieces, median NLL 1,680 against vanilla's 7.2) then flags nothing, and
  its runs decide the pooled fractions. Kept for comparison.

and every variant is judged against the same fence, so a variant whose runs all diverged
is set aside whole and leaves the pooled fractions to the others:

- `ratio` (for metrics whose values are all positive: NLL, error rates, MSE): a trial is
  diverged when it is more than `diverged_ratio` (10) times worse than the anchor's
  median: above 10 x median when lower is better, below median / 10 when higher is.
- `iqr` (any metric): more than `diverged_k` (5) interquartile ranges of the anchor
  beyond its quartile on the bad side (Q3 when lower is better, Q1 when higher is).

`auto` (the default) takes `ratio` where every value is positive, else `iqr`. Runs that
merely did not learn (a learning rate of 1e-6) end near the untrained network's score,
on JSB 2-7 times vanilla's median: they stay, as they must, since they are the spread
the learning-rate fraction measures; so does a variant worse than vanilla as a whole by
less than the ratio. Limits: the anchor needs `min_trials` usable trials (fewer:
nothing is flagged); a metric whose good runs are near zero (an error rate of 1 %
against chance at 50 %) puts honest runs beyond 10 x the median: raise
analysis.diverged_ratio or set analysis.diverged_rule=none there. The report shows the
pooled fractions without the rule beside those with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RULES = ("auto", "ratio", "iqr", "none")
ANCHORS = ("reference", "pooled", "own")


@dataclass(frozen=True)
class Fence:
    """Where one variant's trials count as diverged: worse than `value` (metric units)."""

    value: float
    rule: str  # "ratio" or "iqr", as applied (auto resolved)
    anchor: str  # "reference", "pooled" or "own", as applied (a fallback resolved)
    source: str  # whose trials drew it: the reference variant's name, "all variants", or the variant's
    centre: float  # the anchor's median (ratio) or its quartile on the bad side (iqr)
    n_trials: int  # usable trials in the anchor
    why: str = ""  # why the anchor is not the one asked for; "" when it is


def flag(usable: pd.DataFrame, column: str, sign: float, rule: str, k: float = 5.0,
         ratio: float = 10.0, min_trials: int = 8, anchor: str = "reference",
         reference: str = "vanilla") -> tuple[pd.Series, dict]:
    """A boolean Series (index of `usable`): diverged by the rule; and {variant: Fence}
    for every variant the rule judged (a trial worse than its fence's value is diverged).
    Nothing is flagged where the anchor has fewer than `min_trials` usable trials, no
    spread (iqr), or a value that is not positive (ratio)."""
    flags = pd.Series(False, index=usable.index)
    fences = {}
    if rule == "none":
        return flags, fences
    if anchor not in ANCHORS:
        raise ValueError(f"anchor {anchor!r} is not one of {ANCHORS}")
    why = ""
    if anchor == "reference":
        ours = usable[usable.variant == reference]
        if len(ours) >= min_trials:
            source = reference
        else:
            anchor = "pooled"
            why = (f"`{reference}` has {len(ours)} usable trial(s), fewer than {min_trials}"
                   if len(ours) else f"there is no usable `{reference}` study")
    if anchor == "pooled":
        ours, source = usable, "all variants"
    shared = None
    if anchor != "own":  # one fence for every variant
        shared = _fence(ours[column].to_numpy(dtype=float), usable[column].to_numpy(dtype=float),
                        sign, rule, k, ratio, min_trials)
    for variant, group in usable.groupby("variant"):
        values = group[column].to_numpy(dtype=float)
        if anchor == "own":
            fence = _fence(values, values, sign, rule, k, ratio, min_trials)
            source, size = str(variant), len(values)
        else:
            fence, size = shared, len(ours)
        if fence is None:
            continue
        use, value, centre = fence
        fences[variant] = Fence(value, use, anchor, source, centre, size, why)
        flags.loc[group.index] = sign * values > sign * value
    return flags, fences


def _fence(anchor_values, judged, sign, rule, k, ratio, min_trials):
    """(rule applied, fence, centre) from the anchor's values, or None where the rule
    cannot draw one. `judged`: every value the fence will be applied to (a ratio means
    nothing across zero, so `auto` takes iqr unless all of them are positive)."""
    if len(anchor_values) < min_trials:
        return None
    use = rule if rule != "auto" else ("ratio" if (judged > 0).all() else "iqr")
    if use == "ratio":
        if not (judged > 0).all():
            return None
        median = float(np.median(anchor_values))
        return use, (median * ratio if sign > 0 else median / ratio), median
    badness = sign * anchor_values  # larger is worse
    q1, q3 = np.percentile(badness, [25, 75])
    if q3 <= q1:
        return None  # no spread to measure against: flag nothing
    return use, float(sign * (q3 + k * (q3 - q1))), float(sign * q3)
