"""Step 2: trials that diverged but stayed finite (docs/analysis.md, "Diverged trials").

A trainer that stops on NaN/inf marks those runs itself; a run whose loss blew up and
then settled somewhere finite and huge (an NLL of 3,200 where the rest lie at 9-11)
is not marked, yet one such trial can make most of the variance a forest sees. The
rule needs nothing but the metric, so it works on studies made elsewhere:

    within each variant, a usable trial is *diverged* when its metric lies more than
    k interquartile ranges (k = `diverged_k`, 5 by default) beyond the quartile on the
    bad side (Q3 when lower is better, Q1 when higher is), measured on a log scale
    when every value is positive (metrics like NLL or error rates), else as it is.

Why so: the log scale keeps the honest but skewed spread that a log-uniform learning
rate gives from looking like outliers, while a run off by orders of magnitude is tens of
IQRs out. k = 5 is beyond Tukey's far-out fence (k = 3) because quartiles of 10-20
trials are noisy: measured on simulated honest spreads (normal, log-normal, shifted
exponential, a Greff-like quadratic in log learning rate), k = 5 flags a trial in at
most 3 % of 10-trial variants, 1.5 % of 20-trial ones and under 1 % from 50 trials on
(k = 3: up to 12-26 %). It is computed per variant so that a variant that is worse as a
whole is never cut for it. Limits: a variant needs `min_trials` usable trials (fewer:
nothing is flagged), and if about a quarter or more of a variant's runs diverged, the
quartile lies among them and they stay in; the report shows the pooled fractions without
the rule beside those with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flag(usable: pd.DataFrame, column: str, sign: float, rule: str, k: float,
         min_trials: int = 8) -> tuple[pd.Series, dict]:
    """A boolean Series (index of `usable`): diverged by the rule; and {variant: fence}
    (the fence in the metric's own units)."""
    flags = pd.Series(False, index=usable.index)
    fences = {}
    if rule == "none":
        return flags, fences
    for variant, group in usable.groupby("variant"):
        values = group[column].to_numpy(dtype=float)
        if len(values) < min_trials:
            continue
        log = bool((values > 0).all())
        scale = np.log(values) if log else values
        badness = sign * scale  # larger is worse
        q1, q3 = np.percentile(badness, [25, 75])
        if q3 <= q1:
            continue  # no spread to measure against: flag nothing
        fence = q3 + k * (q3 - q1)
        fences[variant] = float(np.exp(sign * fence) if log else sign * fence)
        flags.loc[group.index] = badness > fence
    return flags, fences
