"""Step 5: the replication scorecard: each finding of Greff et al. (2017) judged on the
study at hand as agrees / disagrees / undecided / not applicable, with its evidence.

Rules (docs/analysis.md, "Scorecard"): a variant is *significantly* worse or better
than the reference when Welch's t-test on all trials, after Holm's correction over the
variants, gives p < alpha; its direction is the sign of the difference of means.

- "X significantly worse": agrees if so; disagrees if X is significantly better, or if
  it is not significantly worse although both variants have at least
  `scorecard_min_trials` usable trials; otherwise undecided (too few trials to say).
- "not significantly different" / "none better": disagrees on a significant
  difference; agrees when there is none with at least `scorecard_min_trials` trials
  each; otherwise undecided.
- Fractions (pooled fANOVA of all variants): a claim holds when the whole bootstrap
  interval is on its side of the threshold, fails when the whole interval is on the
  other side, and is undecided when the interval straddles it.
"""

from __future__ import annotations

import re

import pandas as pd

from harness.analysis.read import POOLED, finite

RATE, SIZE, MOMENTUM, NOISE = "learning_rate", "hidden_size", "one_minus_momentum", "input_noise_std"
TASK_PATTERNS = {"music": r"jsb|chorale|nottingham|muse|piano|music|midi",
                 "speech": r"timit|speech|wav|phone",
                 "handwriting": r"iam|handwrit|inkml|ondb|online"}
ALL = ("music", "speech", "handwriting")

# (id, finding as the paper states it, tasks where it holds)
FINDINGS = [
    ("none_better", "no variant significantly better than vanilla", ALL),
    ("nfg_worse", "NFG (no forget gate) significantly worse", ALL),
    ("noaf_worse", "NOAF (no output activation) significantly worse", ALL),
    ("nig_nog_niaf_worse", "NIG, NOG, NIAF significantly worse", ("speech", "handwriting")),
    ("fgr_worse", "FGR (full gate recurrence) significantly worse", ("music",)),
    ("cifg_np_same", "CIFG and NP not significantly different", ALL),
    ("lr_dominant", "learning rate explains the most variance, more than two thirds", ALL),
    ("hidden_second", "hidden size second; momentum negligible", ALL),
    ("input_noise", "input noise helps speech a little, hurts the others", ALL),
    ("interactions_small", "interactions small (largest: learning rate x hidden size); the best "
                           "learning rate does not move with hidden size", ALL),
]


def infer_task(dataset: str, given=None) -> str | None:
    """music / speech / handwriting from analysis.task or the data set's name; else None."""
    if given:
        return str(given)
    for task, pattern in TASK_PATTERNS.items():
        if re.search(pattern, dataset.lower()):
            return task
    return None


def _combine(verdicts):
    if any(v == "disagrees" for v in verdicts):
        return "disagrees"
    if verdicts and all(v == "agrees" for v in verdicts):
        return "agrees"
    return "undecided"


def _fmt(x, digits=3):
    return "nan" if not finite(x) else f"{x:.{digits}g}"


class _Judge:
    def __init__(self, variants, importance, effects, options):
        self.variants = variants.set_index("variant") if len(variants) else variants
        self.importance = importance
        self.effects = effects
        self.reference = options["reference_variant"]
        self.alpha = float(options["alpha"])
        self.min_trials = int(options["scorecard_min_trials"])
        self.options = options

    # -- variant comparisons
    def compare(self, variant, claim):
        """(verdict, evidence) of `variant` vs the reference; claim: worse, same or not_better."""
        v, ref = self.variants, self.reference
        if variant not in v.index:
            return "not applicable", f"{variant}: no study"
        if ref not in v.index or v.loc[ref, "n_usable"] < 2:
            return "undecided", f"{variant}: no usable {ref} trials to compare with"
        row = v.loc[variant]
        diff, p = row["mean_diff_all"], row["welch_holm_all"]
        n, n_ref = int(row["n_usable"]), int(v.loc[ref, "n_usable"])
        worse = finite(diff) and self.sign * diff > 0
        evidence = (f"{variant}: mean {'+' if diff >= 0 else ''}{_fmt(diff)} "
                    f"[{_fmt(row['mean_diff_all_ci_low'])}, {_fmt(row['mean_diff_all_ci_high'])}] "
                    f"vs {ref}, Holm p = {_fmt(p, 2)} (Welch p = {_fmt(row['welch_p_all'], 2)}; "
                    f"best 10 %: p = {_fmt(row['welch_p_top'], 2)}), n = {n} / {n_ref}")
        significant = finite(p) and p < self.alpha
        enough = min(n, n_ref) >= self.min_trials
        if claim == "worse":
            if significant:
                return ("agrees" if worse else "disagrees"), evidence
            return ("disagrees" if enough else "undecided"), evidence + (
                "" if enough else f" (fewer than {self.min_trials} trials)")
        if claim == "not_better" and significant and worse:
            return "agrees", evidence  # significantly worse is not better
        if significant:
            return "disagrees", evidence
        return ("agrees" if enough else "undecided"), evidence + (
            "" if enough else f" (fewer than {self.min_trials} trials)")

    # -- fractions of the pooled fANOVA
    def term(self, name):
        rows = self.importance[(self.importance.variant == POOLED) & (self.importance.term == name)]
        if not len(rows):
            return None
        row = rows.iloc[0]
        return float(row["fraction"]), float(row["ci_low"]), float(row["ci_high"])

    def above(self, name, threshold):
        """agrees if the whole interval is above the threshold, disagrees if below."""
        f, low, high = self.term(name)
        if not (finite(low) and finite(high)):
            return "undecided"
        return "agrees" if low > threshold else ("disagrees" if high < threshold else "undecided")


def _ci(t):
    return f"{_fmt(t[0], 2)} [{_fmt(t[1], 2)}, {_fmt(t[2], 2)}]"


def judge(dataset, task, variants, importance, effects, options, sign=1.0) -> pd.DataFrame:
    """One row a finding: finding, tasks, verdict, evidence."""
    j = _Judge(variants, importance, effects, options)
    j.sign = sign
    rows = []
    pooled = importance[importance.variant == POOLED] if len(importance) else importance
    singles = [t for t in pooled.term if ":" not in t and t != "higher_order"] if len(pooled) else []
    for key, finding, tasks in FINDINGS:
        if task is None and tasks != ALL:
            verdict, evidence = "not applicable", "the study's task is unknown (set analysis.task)"
        elif task is not None and task not in tasks:
            verdict, evidence = "not applicable", f"the paper states it for {', '.join(tasks)}, not {task}"
        else:
            verdict, evidence = _finding(key, j, pooled, singles, effects, task, options, sign)
        rows.append({"finding": finding, "tasks": ", ".join(tasks), "verdict": verdict,
                     "evidence": evidence})
    return pd.DataFrame(rows)


def _finding(key, j, pooled, singles, effects, task, options, sign):
    variants = list(j.variants.index) if len(j.variants) else []
    if key in ("nfg_worse", "noaf_worse", "fgr_worse", "nig_nog_niaf_worse"):
        names = {"nfg_worse": ["nfg"], "noaf_worse": ["noaf"], "fgr_worse": ["fgr"],
                 "nig_nog_niaf_worse": ["nig", "nog", "niaf"]}[key]
        judged = [j.compare(n, "worse") for n in names]
        present = [v for v, _ in judged if v != "not applicable"]
        if not present:
            return "not applicable", "; ".join(e for _, e in judged)
        return _combine(present), "; ".join(e for _, e in judged)
    if key == "cifg_np_same":
        judged = [j.compare(n, "same") for n in ("cifg", "np")]
        present = [v for v, _ in judged if v != "not applicable"]
        if not present:
            return "not applicable", "; ".join(e for _, e in judged)
        return _combine(present), "; ".join(e for _, e in judged)
    if key == "none_better":
        others = [v for v in variants if v != j.reference]
        if not others or j.reference not in variants:
            return "not applicable", f"needs {j.reference} and at least one other variant"
        judged = [(n, *j.compare(n, "not_better")) for n in others]
        better = [e for n, v, e in judged if v == "disagrees"]
        if better:
            return "disagrees", "significantly better: " + "; ".join(better)
        verdicts = ["agrees" if v in ("agrees",) else "undecided" for _, v, _ in judged]
        few = [n for n, v, _ in judged if v == "undecided"]
        evidence = ("no variant significantly better (Holm-corrected Welch, all trials)"
                    + (f"; too few trials to rule it out for {', '.join(few)}" if few else ""))
        return _combine(verdicts), evidence
    if not len(pooled) or not singles:
        return "undecided", "no pooled fANOVA (too few trials or no shared parameters)"
    if key == "lr_dominant":
        if RATE not in singles:
            return "not applicable", "learning_rate is not a searched parameter"
        lr = j.term(RATE)
        ranked = sorted(singles, key=lambda t: -j.term(t)[0])
        evidence = (f"learning rate {_ci(lr)} (threshold 2/3); largest term: {ranked[0]}")
        return j.above(RATE, 2 / 3), evidence
    if key == "hidden_second":
        if SIZE not in singles:
            return "not applicable", "hidden_size is not a searched parameter"
        hs = j.term(SIZE)
        others = [t for t in singles if t not in (RATE, SIZE)]
        verdicts, parts = [], [f"hidden size {_ci(hs)}"]
        beaten = [t for t in others if j.term(t)[1] > hs[2]]
        if beaten:
            verdicts.append("disagrees")
        elif all(hs[1] > j.term(t)[2] for t in others):
            verdicts.append("agrees")
        else:
            verdicts.append("undecided")
        parts += [f"{t} {_ci(j.term(t))}" for t in others]
        if MOMENTUM in singles:
            negligible = float(options["negligible_fraction"])
            m = j.term(MOMENTUM)
            verdicts.append("agrees" if m[2] < negligible else
                            "disagrees" if m[1] > negligible else "undecided")
            parts.append(f"momentum negligible means below {negligible:g}")
        return _combine(verdicts), "; ".join(parts)
    if key == "input_noise":
        if "noise_effect" not in effects:
            return "not applicable", "input_noise_std is not a searched parameter"
        value, low, high = effects["noise_effect"]
        hurts_expected = task != "speech"
        evidence = (f"predicted metric at the largest minus the smallest input noise: "
                    f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}] (positive = "
                    f"{'worse' if sign > 0 else 'better'})")
        if task is None:
            return "not applicable", "which way it should go depends on the task (set analysis.task)"
        if not (finite(low) and finite(high)) or low <= 0 <= high:
            return "undecided", evidence
        hurts = (low > 0) == (sign > 0)  # the interval excludes 0: its side says which way
        return ("agrees" if hurts == hurts_expected else "disagrees"), evidence
    if key == "interactions_small":
        if not {RATE, SIZE} <= set(singles):
            return "not applicable", "learning_rate and hidden_size are not both searched parameters"
        small = float(options["small_interactions"])
        verdicts = [j.above("higher_order", small)]
        verdicts[0] = {"agrees": "disagrees", "disagrees": "agrees"}.get(verdicts[0], verdicts[0])
        parts = [f"all interactions {_ci(j.term('higher_order'))} (small means below {small:g})"]
        pairs = [t for t in pooled.term if ":" in t]
        lr_hs = next((t for t in pairs if set(t.split(":")) == {RATE, SIZE}), None)
        if lr_hs:
            top = max(pairs, key=lambda t: j.term(t)[0])
            stronger = [t for t in pairs if t != lr_hs and j.term(t)[1] > j.term(lr_hs)[2]]
            verdicts.append("disagrees" if stronger else "agrees" if top == lr_hs else "undecided")
            parts.append(f"{lr_hs} {_ci(j.term(lr_hs))}, largest pair {top}")
        if "lr_shift" in effects:
            tolerance = float(options["lr_shift_tolerance"])
            value, low, high = effects["lr_shift"]
            inside = finite(low) and -tolerance <= low and high <= tolerance
            outside = finite(low) and (low > tolerance or high < -tolerance)
            verdicts.append("agrees" if inside else "disagrees" if outside else "undecided")
            parts.append(f"best learning rate moves {_fmt(value, 2)} [{_fmt(low, 2)}, "
                         f"{_fmt(high, 2)}] decades from the smallest to the largest hidden "
                         f"size (does not move means within ±{tolerance:g})")
        return _combine(verdicts), "; ".join(parts)
    return "undecided", ""
