"""Step 2: trials that diverged but stayed finite (docs/analysis.md, "Diverged trials").

A trainer that stops on NaN/inf marks those runs itself; a run whose loss blew up and
then settled somewhere finite and huge (an NLL of 3,200 where the rest lie at 9-11)
is not marked, yet one such trial can make most of the variance a forest sees. The
rule needs nothing but the metric, so it works on studies made elsewhere. Within each
variant (so that a variant worse as a whole is never cut for it):

- `ratio` (for metrics whose values are all positive: NLL, error rates, MSE): a trial is
  diverged when it is more than `diverged_ratio` (10) times worse than the variant's
  median: above 10 x median when lower is better, below median / 10 when higher is.
  An order of magnitude beyond the typical run of its own variant.
- `iqr` (any metric): more than `diverged_k` (5) interquartile ranges beyond the quartile
  on the bad side (Q3 when lower is better, Q1 when higher is).

`auto` (the default) takes `ratio` where every value is positive, else `iqr`. The
median breaks down only when half of a variant's runs diverged; the quartiles already
at a quarter. Runs that merely did not learn (a learning rate of 1e-6) end near the
untrained network's score, on JSB 2-7 times the median: they stay, as they must, since
they are the spread the learning-rate fraction measures. Limits: a variant needs
`min_trials` usable trials (fewer: nothing is flagged); a metric whose good runs are
near zero (an error rate of 1 % against chance at 50 %) puts honest runs beyond 10 x
the median: raise analysis.diverged_ratio or set analysis.diverged_rule=none there.
The report shows the pooled fractions without the rule beside those with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RULES = ("auto", "ratio", "iqr", "none")


def flag(usable: pd.DataFrame, column: str, sign: float, rule: str, k: float = 5.0,
         ratio: float = 10.0, min_trials: int = 8) -> tuple[pd.Series, dict]:
    """A boolean Series (index of `usable`): diverged by the rule; and {variant: fence}
    (the fence in the metric's own units; a trial worse than it is diverged)."""
    flags = pd.Series(False, index=usable.index)
    fences = {}
    if rule == "none":
        return flags, fences
    for variant, group in usable.groupby("variant"):
        values = group[column].to_numpy(dtype=float)
        if len(values) < min_trials:
            continue
        use = rule if rule != "auto" else ("ratio" if (values > 0).all() else "iqr")
        if use == "ratio":
            if not (values > 0).all():
                continue  # a ratio means nothing across zero
            median = float(np.median(values))
            fence = median * ratio if sign > 0 else median / ratio
        else:
            badness = sign * values  # larger is worse
            q1, q3 = np.percentile(badness, [25, 75])
            if q3 <= q1:
                continue  # no spread to measure against: flag nothing
            fence = sign * (q3 + k * (q3 - q1))
        fences[variant] = float(fence)
        flags.loc[group.index] = sign * values > sign * fence
    return flags, fences
