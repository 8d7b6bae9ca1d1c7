"""Step 5: the replication scorecard: each finding of Greff et al. (2017) judged on the
study at hand as agrees / disagrees / undecided / not applicable, with its evidence.

Rules (docs/analysis.md, "Scorecard" and "Verdicts"): each variant's comparison with the
reference (statistics.py, column `comparison`) is worse / better (Welch on all trials,
Holm's correction over the variants, p < alpha), equivalent (the difference's Welch
interval at level 1 - 2 alpha inside (-margin, +margin), `analysis.margin`, default by
task: MARGINS) or undecided. No count of trials decides a verdict. A variant swept with
search.until=decided is judged instead by the verdict its sweep stopped on (its study's
`sequential` attribute, harness.rounds: the group-sequential rank test, each comparison
at its own alpha), since a fixed-sample test of a sample whose size the data chose does
not hold its level, and the sweep and its scorecard then say one thing.

- "X significantly worse": agrees on worse; disagrees on equivalent or better; else undecided.
- "not significantly different": agrees on equivalent; disagrees on worse or better.
- "no variant better": disagrees when a variant is significantly better; agrees when no
  variant's interval reaches below -margin (on the better side); else undecided.
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
# analysis.margin when it is null: the smallest difference that matters, in the task's
# metric units (docs/analysis.md, "Verdicts", says why each).
MARGINS = {
    "music": (0.3, "0.3 nats of NLL per frame: the difference Greff's design (200 trials a variant, Welch "
                   "at 0.05) detects with 80 % power at the spread of JSB trials (sd 1.1 nats)"),
    "speech": (0.02, "0.02 frame error (2 points): the same rule at an assumed spread of 0.07 between "
                     "trials; set analysis.margin = 0.28 x your vanilla trials' sd"),
    "handwriting": (0.02, "0.02 character error rate (2 points): the same rule at an assumed spread of 0.07; "
                          "set analysis.margin = 0.28 x your vanilla trials' sd"),
}

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


def infer_task(dataset: str, given=None) -> str | None:
    """music / speech / handwriting from analysis.task or the data set's name; else None."""
    if given:
        return str(given)
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


def _combine(verdicts):
    if any(v == "disagrees" for v in verdicts):
        return "disagrees"
    if verdicts and all(v == "agrees" for v in verdicts):
        return "agrees"
    return "undecided"


def _fmt(x, digits=3):
    return "nan" if not finite(x) else f"{x:.{digits}g}"


class _Judge:
    def __init__(self, variants, importance, effects, options, sequential=None):
        self.variants = variants.set_index("variant") if len(variants) else variants
        self.sequential = sequential or {}
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
        if ref not in v.index or v.loc[ref, "n_usable"] < 2:
            return "undecided", f"{variant}: no usable {ref} trials to compare with"
        row = v.loc[variant]
        outcome = self.sequential.get(variant)
        if outcome and outcome.get("verdict"):  # swept in rounds: the verdict its sweep stopped on
            found, margin = outcome["verdict"], outcome.get("margin")
            better_end = float(outcome.get("shift_low", float("nan")))  # lower is better, as every task's metric
            evidence = self.evidence_of_rounds(variant, row, outcome)
        else:
            found, margin = row["comparison"], self.margin
            better_end = min(self.sign * row["tost_low"], self.sign * row["tost_high"])
            evidence = self.evidence(variant, row)
        if claim == "worse":
            return {"worse": "agrees", "equivalent": "disagrees", "better": "disagrees"}.get(found, "undecided"), evidence
        if claim == "same":
            return {"equivalent": "agrees", "worse": "disagrees", "better": "disagrees"}.get(found, "undecided"), evidence
        # not_better: the interval's better-side end stays above -margin
        if found == "better":
            return "disagrees", evidence
        if margin is not None and finite(better_end) and better_end > -float(margin):
            return "agrees", evidence
        return "undecided", evidence

    @staticmethod
    def evidence_of_rounds(variant, row, outcome):
        """The sweep's verdict with the rank test's Z against its boundary, the Hodges-Lehmann
        shift and its repeated interval against the sweep's margin; Welch beside them."""
        margin = outcome.get("margin")
        shift, low, high = (float(outcome.get(k, float("nan"))) for k in ("shift", "shift_low", "shift_high"))
        z, boundary = (abs(float(outcome.get(k, float("nan")))) for k in ("z", "boundary"))
        return (f"{variant}: {outcome['verdict']} at look {outcome.get('look')} of the sequential rank test "
                f"(search.until=decided, alpha {outcome.get('alpha')} for this comparison): |Z| = {z:.2f} against "
                f"boundary {boundary:.2f}, shift {'+' if shift >= 0 else ''}{_fmt(shift)} [{_fmt(low)}, {_fmt(high)}] "
                f"(Hodges-Lehmann, repeated interval; margin {'none' if margin is None else f'±{margin:g}'}); "
                f"Welch on its {int(row['n_usable'])} usable trials: {'+' if row['mean_diff_all'] >= 0 else ''}"
                f"{_fmt(row['mean_diff_all'])} [{_fmt(row['tost_low'])}, {_fmt(row['tost_high'])}], Holm p = "
                f"{_fmt(row['welch_holm_all'], 2)}")

    def evidence(self, variant, row):
        """The difference, its interval, the margin, the test and what it found."""
        diff, ref = row["mean_diff_all"], self.reference
        level = 1 - 2 * self.alpha
        margin = "no margin" if self.margin is None else f"margin ±{self.margin:g}"
        text = (f"{variant}: mean {'+' if diff >= 0 else ''}{_fmt(diff)} vs {ref} "
                f"[{_fmt(row['tost_low'])}, {_fmt(row['tost_high'])}] ({level:.0%} Welch interval; {margin}), "
                f"Welch p = {_fmt(row['welch_p_all'], 2)}, Holm p = {_fmt(row['welch_holm_all'], 2)}, "
                f"n = {int(row['n_usable'])} / {int(self.variants.loc[ref, 'n_usable'])}: {row['comparison']}")
        if row["comparison"] == "undecided" and finite(row.get("trials_to_decide", float("nan"))):
            text += f" (about {int(row['trials_to_decide'])} trials a variant would likely decide it)"
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


def judge(dataset, task, variants, importance, effects, options, sign=1.0, sequential=None) -> pd.DataFrame:
    """One row a finding: finding, tasks, verdict, evidence. `sequential`: {variant: the
    outcome its sweep with search.until=decided stored} (read.Studies.sequential)."""
    j = _Judge(variants, importance, effects, options, sequential)
    j.sign = sign  # +1: lower is better
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
            kind = f"{1 - 2 * j.alpha:.0%} Welch interval (all trials)" + (
                " or repeated interval of a sequential sweep" if j.sequential else "")
            return "agrees", f"no variant's {kind} reaches the margin past {j.reference} on the better side"
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
