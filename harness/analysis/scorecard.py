"""Step 5: the replication scorecard: each finding of Greff et al. (2017) judged on the
study at hand as agrees / disagrees / undecided / not applicable, with its evidence.

Rules (docs/analysis.md, "Scorecard" and "Verdicts"): each variant's comparison with the
reference is the rank test of harness.analysis.sequential (statistics.py, columns
`comparison` and `rank_*`), whether the study was fixed (one look) or swept in rounds
(search.until=decided): worse / better at the family-wise level `analysis.alpha` over the
variants (Holm-type), equivalent when the interval of the shift that inverts the same test
lies inside (-margin, +margin) (`analysis.margin`, default by task: MARGINS), undecided
otherwise. Every counted trial enters, a failed or diverged one ranking worst. No count of
trials decides a verdict. Welch's t-test on the converged runs, the paper's test, is shown
beside it in the evidence, as information.

- "X significantly worse": agrees on worse; disagrees on equivalent or better; else undecided.
- "not significantly different": agrees on equivalent; disagrees on worse or better.
- "no variant better": disagrees when a variant is significantly better; agrees when no
  variant's interval of the shift (the equivalence interval) reaches below -margin; else
  undecided.
- Fractions (pooled fANOVA of all variants): a claim holds when the whole bootstrap
  interval is on its side of the threshold, fails when the whole interval is on the
  other side, and is undecided when the interval straddles it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from harness.analysis.read import POOLED, finite

RATE, SIZE, MOMENTUM, NOISE = "learning_rate", "hidden_size", "one_minus_momentum", "input_noise_std"
TASK_PATTERNS = {"music": r"jsb|chorale|nottingham|muse|piano|music|midi",
                 "speech": r"timit|speech|wav|phone",
                 "handwriting": r"iam|handwrit|inkml|ondb|online"}
ALL = ("music", "speech", "handwriting")
# analysis.margin when it is null: the smallest shift of a variant's trials against vanilla's
# that matters (the Hodges-Lehmann shift the rank test speaks of), in the task's metric units
# (docs/analysis.md, "Verdicts", says why each).
MARGINS = {
    "music": (0.3, "0.3 nats of NLL per frame: the shift that the paper's design (200 trials a variant, the "
                   "rank test at 0.05) detects with 80 % power, resampling the 200 vanilla trials of the JSB "
                   "reference study (0.28-0.30 nats; 0.16 of their interquartile range)"),
    "speech": (0.02, "0.02 frame error (2 points): the same rule, 0.16 of an assumed interquartile range of 0.12 "
                     "between trials; set analysis.margin = 0.16 x your vanilla trials' interquartile range"),
    "handwriting": (0.02, "0.02 character error rate (2 points): the same rule at an assumed interquartile range "
                          "of 0.12; set analysis.margin = 0.16 x your vanilla trials' interquartile range"),
}
DERIVED_PER_IQR = 0.15  # a data set without a task default: this many interquartile ranges of vanilla's first trials
DERIVED_FROM = 10  # ... of its first this many trials (the first look of a sweep in rounds of 10)

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


def task_of(dataset: str, given=None, recorded: tuple | None = None) -> tuple[str | None, str]:
    """(task, why): analysis.task when set; else what the studies recorded from their data
    set's config (read.recorded_task); else, for studies that recorded none (made elsewhere,
    or before odyssey recorded it), a guess from the data set's name (infer_task)."""
    if given:
        return str(given), "set by analysis.task"
    if recorded is not None:
        return recorded
    guessed = infer_task(dataset)
    if guessed is None:
        return None, "unknown: the studies recorded no task and the data set's name suggests none; set analysis.task"
    return guessed, "guessed from the data set's name: the studies recorded no task"


def infer_task(dataset: str) -> str | None:
    """music / speech / handwriting guessed from the data set's name; else None."""
    for task, pattern in TASK_PATTERNS.items():
        if re.search(pattern, dataset.lower()):
            return task
    return None


def margin_for(task, given) -> tuple[float | None, str]:
    """(margin, why): analysis.margin when set, else the task's default (None: no task)."""
    if given is not None:
        return float(given), "set by analysis.margin"
    if task in MARGINS:
        return MARGINS[task][0], f"the {task} default, " + MARGINS[task][1]
    return None, "no margin: the task is unknown and analysis.margin is not set, so nothing is equivalent"


def derived_margin(vanilla, first: int = DERIVED_FROM) -> tuple[float | None, str]:
    """(margin, why) for a data set without a task default: DERIVED_PER_IQR times the
    interquartile range of vanilla's first `first` counted trials (a failed one ranks worst,
    so it is left out of the range), or None when there are too few finite ones (fewer than 4)
    or no spread. The music default is 0.16 interquartile ranges of the JSB reference study's
    vanilla trials; docs/analysis.md, "Verdicts", shows by simulation that a shift equal to a
    margin derived this way is called equivalent in at most alpha of studies."""
    values = np.asarray(vanilla, dtype=float)[:first]
    values = values[np.isfinite(values)]
    if len(values) < 4:
        return None, f"no margin: the task has no default and vanilla has fewer than 4 finished trials of its first {first}"
    q1, q3 = np.percentile(values, [25, 75])
    if not q3 > q1:
        return None, f"no margin: the task has no default and vanilla's first {first} trials have no spread"
    return float(DERIVED_PER_IQR * (q3 - q1)), (f"derived: {DERIVED_PER_IQR:g} x the interquartile range of "
                                                f"vanilla's first {len(values)} trials (the task has no default)")


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
        self.margin = options.get("margin")
        self.options = options

    # -- variant comparisons
    def compare(self, variant, claim):
        """(verdict, evidence) of `variant` vs the reference; claim: worse, same or not_better."""
        v, ref = self.variants, self.reference
        if variant not in v.index:
            return "not applicable", f"{variant}: no study"
        row = v.loc[variant]
        if ref not in v.index or not row.get("comparison"):
            return "undecided", f"{variant}: no {ref} trials to compare with"
        found, evidence = row["comparison"], self.evidence(variant, row)
        if claim == "worse":
            return {"worse": "agrees", "equivalent": "disagrees", "better": "disagrees"}.get(found, "undecided"), evidence
        if claim == "same":
            return {"equivalent": "agrees", "worse": "disagrees", "better": "disagrees"}.get(found, "undecided"), evidence
        # not_better: the interval's better-side end stays above -margin
        if found == "better":
            return "disagrees", evidence
        better_end = float(row["rank_equivalence_low"])  # lower is better, as every series judged
        if self.margin is not None and not np.isnan(better_end) and better_end > -float(self.margin):
            return "agrees", evidence
        return "undecided", evidence

    def evidence(self, variant, row):
        """The rank test's verdict with its statistic against the boundary of the level the
        variant held, the shift and its intervals against the margin; Welch beside them."""
        margin = "no margin" if self.margin is None else f"margin ±{self.margin:g}"
        where = (f"at look {int(row['rank_look'])} of its rounds" if row.get("family") == "rounds"
                 else f"on {int(row['rank_look'])} trials of each")
        interval = ((row["rank_shift_low"], row["rank_shift_high"]) if row["comparison"] in ("worse", "better")
                    else (row["rank_equivalence_low"], row["rank_equivalence_high"]))
        shift = row["rank_shift"]
        text = (f"{variant}: {row['comparison']} {where}: rank test |Z| = {abs(row['rank_z']):.2f} against "
                f"{row['rank_boundary']:.2f} (level {row['rank_level']:.2g} of the family's {self.alpha:g}), shift "
                f"{'+' if shift >= 0 else ''}{_fmt(shift)} [{_fmt(interval[0])}, {_fmt(interval[1])}] ({margin})")
        if row["comparison"] == "undecided" and row.get("family") == "fixed":
            text += "; more trials decide it only in rounds at the same level (search.until=decided)"
        if finite(row.get("welch_p_all", np.nan)):
            diff = row["mean_diff_all"]
            text += (f"; Welch on its {int(row['n_usable'])} converged trials: {'+' if diff >= 0 else ''}{_fmt(diff)} "
                     f"[{_fmt(row['tost_low'])}, {_fmt(row['tost_high'])}], Holm p = {_fmt(row['welch_holm_all'], 2)}")
        return text

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
        open_ = [e for n, v, e in judged if v == "undecided"]
        if not open_:
            return "agrees", (f"no variant's interval of the shift (rank test, all counted trials) reaches the margin "
                              f"past {j.reference} on the better side")
        return "undecided", "not ruled out: " + "; ".join(open_)
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
