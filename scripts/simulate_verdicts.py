"""The statistical claims of the verdicts (harness.analysis.sequential.family) checked by
simulation on studies shaped like the JSB reference study: trials resampled with replacement
from its real vanilla trials (heavy tails; resampling makes ties), diverged runs as NaN.

    python scripts/simulate_verdicts.py [--studies N] [--seed S] [--out results/simulations/verdicts.json]

Seven blocks, each a row per claim with its rate and Monte Carlo standard error
(sqrt(p (1 - p) / studies)): 1 the family-wise false difference rate over 8 null variants
(Holm against none), 2 the trials a real difference takes, 3 equivalence at shift 0 and at
exactly the margin, 4 raising the cap during a study, 5 the level of the asymptotic
boundaries at small looks, 6 unequal spreads with equal medians (Behrens-Fisher), 7 the
margin derived from vanilla's first 10 trials. Prints a table and writes it as JSON.

Every simulated study is a row of a 2-D array (studies x trials), judged by the library
vectorised over studies. The rank statistics of a variant do not depend on the level it is
tested at, so they are computed once per variant (sequential.rank_statistics) and judged by
sequential.Decision at each design's boundaries (sequential.design): the null family of
block 1 is shared by blocks 2, 4, 5 and 6. `check_shortcut` first compares this with
sequential.family itself on a few studies.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.analysis import diverged, scorecard, sequential  # noqa: E402

STORAGE = f"sqlite:///{ROOT / 'results' / 'reference.db'}"
REFERENCE_JSON = ROOT / "tests" / "data" / "jsb_reference_test_metrics.json"
ALPHA = 0.05
MARGIN = 0.3  # the music default (docs/analysis.md, "Verdicts")
CAP = 200
LOOKS = list(range(10, CAP + 1, 10))  # a look every 10 trials a variant, as search.look_every
FAMILY = 8  # the paper's eight variants
JITTER = 1e-6  # metric units: breaks resampling's ties, moves nothing else (trials differ by 1e-3 or more)
DIVERGED = 0.05  # share of runs that diverge, in every arm alike, where a block says so
FIXED = 50  # trials a variant of a fixed study (the reference study's size)
CHUNK = 500  # studies judged at once (memory)
OLD = "3a62f77"  # the last commit with sequential.verdicts as it was before issue 34
DIFFERENT = ("worse", "better")


# ----------------------------------------------------------------------------- data


def reference_pools() -> tuple[np.ndarray, np.ndarray, str]:
    """(vanilla, noaf, where from): the test metric of each counted trial of the reference
    study, a NOAF trial beyond the diverged fence (docs/analysis.md, "Diverged trials": 10 x
    vanilla's median) as NaN. Without the storage: the 50 + 50 trials of the test data."""
    if (ROOT / "results" / "reference.db").exists():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        vanilla, noaf = (sequential.series(optuna.load_study(study_name=f"jsb_chorales.{name}", storage=STORAGE)
                                           .get_trials(deepcopy=False)) for name in ("vanilla", "noaf"))
        source = "results/reference.db"
    else:
        found = json.loads(REFERENCE_JSON.read_text())
        vanilla, noaf = np.array(found["vanilla"], float), np.array(found["noaf"], float)
        source = str(REFERENCE_JSON.relative_to(ROOT))
    trials = pd.DataFrame({"variant": ["vanilla"] * len(vanilla) + ["noaf"] * len(noaf),
                           "test_metric": np.concatenate([vanilla, noaf])})
    usable = trials[np.isfinite(trials.test_metric)]
    flags, _ = diverged.flag(usable, "test_metric", 1.0, "ratio")
    trials.loc[flags[flags].index, "test_metric"] = np.nan
    return (trials.test_metric[trials.variant == "vanilla"].to_numpy(),
            trials.test_metric[trials.variant == "noaf"].to_numpy(), source)


def resample(rng, pool, studies: int, trials: int = CAP, diverging: float = 0.0, untied: bool = False) -> np.ndarray:
    """(studies, trials) drawn with replacement from the pool; each run diverges (NaN) with
    chance `diverging`, on top of the pool's own NaN. untied: each value moved by a uniform
    JITTER, so that no two are tied, as real metrics never are (resampling makes ties across
    the arms, and the statistic breaks those against the claim: the test is then conservative)."""
    values = rng.choice(pool, size=(studies, trials))
    if untied:
        values += rng.uniform(-JITTER, JITTER, size=values.shape)
    if diverging:
        values[rng.random(values.shape) < diverging] = np.nan
    return values


def shifted(values: np.ndarray, shift: float) -> np.ndarray:
    """values + shift, checked to give the values back exactly when the statistic subtracts
    the shift again: a shift of exactly the margin must leave the ties with vanilla's values
    ties, which the rank statistic breaks against the claim."""
    moved = values + shift
    finite = np.isfinite(values)
    if not np.array_equal((moved - shift)[finite], values[finite]):
        raise ValueError(f"a shift of {shift!r} does not come back exactly in floating point")
    return moved


def grid_margin(margin: float) -> float:
    """The margin on a grid of 2^-20 (a change below 1e-6), so that `shifted` is exact."""
    return round(margin * 2 ** 20) / 2 ** 20


# ----------------------------------------------------------------------------- judging


class Arm:
    """One variant's rank statistics against one vanilla, at every look, for every study."""

    def __init__(self, vanilla, variant, looks, margin):
        same_bounds = sequential.design(looks, CAP if looks else None, ALPHA, 1)[1] if margin else None
        parts = [sequential.rank_statistics(sequential.worst_for_nan(vanilla[s:s + CHUNK]),
                                        [sequential.worst_for_nan(variant[s:s + CHUNK])], looks, margin, same_bounds)
                 for s in range(0, len(vanilla), CHUNK)]
        self.worse_z = np.concatenate([p[0][0] for p in parts])
        self.better_z = np.concatenate([p[1][0] for p in parts])
        self.same = np.concatenate([p[2][0] for p in parts])
        self.present = parts[0][3][0]

    def first(self, k: int) -> "Arm":
        """The same statistics, only the first k looks (a design that ends there)."""
        cut = Arm.__new__(Arm)
        cut.worse_z, cut.better_z, cut.same = self.worse_z[:, :k], self.better_z[:, :k], self.same[:, :k]
        cut.present = self.present[:k]
        return cut

    def without_margin(self) -> "Arm":
        """The same statistics with nothing equivalent (margin None)."""
        cut = self.first(self.worse_z.shape[1])
        cut.same = np.zeros_like(self.same)
        return cut


def judge(arms: list[Arm], looks, cap=CAP, multiplicity: str = "holm") -> np.ndarray:
    """The family of these arms judged: verdicts (studies, variants, looks)."""
    bounds = sequential.design(looks, cap, ALPHA, len(arms), multiplicity)[0]
    found = [sequential.Decision([a.worse_z[s:s + CHUNK] for a in arms], [a.better_z[s:s + CHUNK] for a in arms],
                                 [a.same[s:s + CHUNK] for a in arms], [a.present for a in arms], bounds).run().verdict
             for s in range(0, len(arms[0].worse_z), CHUNK)]
    return np.concatenate(found)


def check_shortcut(vanilla, variants) -> None:
    """Statistics computed once and judged by Decision give what sequential.family gives."""
    few = {f"null{i}": y[:40] for i, y in enumerate(variants)}
    arms = [Arm(vanilla[:40], y, LOOKS, MARGIN) for y in few.values()]
    for multiplicity in sequential.MULTIPLICITY:
        expected = sequential.family(vanilla[:40], few, looks=LOOKS, alpha=ALPHA, margin=MARGIN, cap=CAP,
                                     multiplicity=multiplicity)
        found = judge(arms, LOOKS, multiplicity=multiplicity)
        if not all(np.array_equal(found[:, v], expected[name]) for v, name in enumerate(few)):
            raise SystemExit(f"the shortcut disagrees with sequential.family ({multiplicity}); fix check_shortcut's Arm")


def final(verdict: np.ndarray) -> np.ndarray:
    """The verdict at the last look (a decision stands, so this is the study's outcome)."""
    return verdict[..., -1]


def different(verdict: np.ndarray) -> np.ndarray:
    return np.isin(final(verdict), DIFFERENT)


def first_look(verdict: np.ndarray, which: str, looks) -> np.ndarray:
    """Trials a variant at the first look whose verdict is `which` (NaN: never)."""
    hit = verdict == which
    return np.where(hit.any(axis=-1), np.asarray(looks)[hit.argmax(axis=-1)], np.nan)


def old_verdicts():
    """sequential.verdicts as it was before issue 34 (commit OLD), or None where git or the
    commit is not at hand."""
    try:
        source = subprocess.run(["git", "show", f"{OLD}:harness/analysis/sequential.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("sequential_before_issue_34")
    exec(compile(source, f"{OLD}:harness/analysis/sequential.py", "exec"), module.__dict__)
    return module.verdicts


# ----------------------------------------------------------------------------- rows


class Table:
    """The rows of the simulation, a block at a time: a rate with its Monte Carlo standard
    error, or the trials a variant at a decision (mean with its error, median, 10-90 %)."""

    def __init__(self):
        self.blocks, self.rows, self.notes, self.started = {}, [], [], time.perf_counter()

    def block(self, block: int, title: str, settings: str) -> None:
        self.blocks[block] = {"title": title, "settings": settings}
        self.progress(block, title)

    def rate(self, block: int, what: str, settings: str, hits, nominal: str = "", **extra) -> float:
        hits = np.asarray(hits, bool)
        p, n = float(hits.mean()), int(hits.size)
        row = {"block": block, "what": what, "settings": settings, "rate": p,
               "mc_se": math.sqrt(p * (1 - p) / n), "studies": n, "nominal": nominal}
        row.update(extra)
        self.rows.append(row)
        return p

    def trials(self, block: int, what: str, settings: str, looks_at) -> None:
        """Trials a variant at the decision, over the studies that reached it."""
        looks_at = np.asarray(looks_at, float)
        decided = looks_at[np.isfinite(looks_at)]
        if not len(decided):
            return
        self.rows.append({"block": block, "what": what, "settings": settings, "mean": float(decided.mean()),
                          "mc_se": float(decided.std(ddof=1) / math.sqrt(len(decided))) if len(decided) > 1 else 0.0,
                          "median": float(np.median(decided)),
                          "p10": float(np.percentile(decided, 10)), "p90": float(np.percentile(decided, 90)),
                          "studies": int(len(decided))})

    def note(self, block: int, text: str) -> None:
        self.notes.append({"block": block, "note": text})

    def progress(self, block: int, what: str) -> None:
        print(f"  block {block}: {what} ({time.perf_counter() - self.started:.0f} s)", flush=True)

    def text(self) -> str:
        lines = []
        for block, about in self.blocks.items():
            lines.append(f"{block}. {about['title']} ({about['settings']})")
            for row in (r for r in self.rows if r["block"] == block):
                if "rate" in row:
                    result = f"{100 * row['rate']:6.2f} % ± {100 * row['mc_se']:.2f}"
                else:
                    result = (f"mean {row['mean']:.1f} ± {row['mc_se']:.1f}, median {row['median']:.0f} "
                              f"[10-90 %: {row['p10']:.0f}-{row['p90']:.0f}]")
                nominal = f"  ({row['nominal']})" if row.get("nominal") else ""
                lines.append(f"   {row['what']:46} {row['settings']:36} {result}  n={row['studies']}{nominal}")
            lines.extend(f"   note: {n['note']}" for n in self.notes if n["block"] == block)
        return "\n".join(lines)


def main(studies: int, seed: int, out: Path) -> None:
    started = time.perf_counter()
    pool, noaf, source = reference_pools()
    print(f"reference: {source}, vanilla {len(pool)} trials ({np.isnan(pool).sum()} diverged), noaf {len(noaf)} "
          f"({np.isnan(noaf).sum()} diverged); {studies} studies a block, seed {seed}", flush=True)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    table = Table()
    median = float(np.nanmedian(pool))
    looks_text = f"looks every 10 to cap {CAP}"
    null_text = "as vanilla"

    # 1. the family-wise false difference rate: 8 variants drawn as vanilla is
    table.block(1, "family-wise false difference rate: P(any of 8 null variants worse or better)",
                f"each arm resampled from vanilla's {len(pool)} trials, margin {MARGIN}, alpha {ALPHA}")
    rng = rngs[1]
    vanilla = resample(rng, pool, studies)
    nulls = [resample(rng, pool, studies) for _ in range(FAMILY)]
    check_shortcut(vanilla, nulls)
    table.progress(1, "the shortcut agrees with sequential.family; statistics of the null family")
    arms = [Arm(vanilla, y, LOOKS, MARGIN) for y in nulls]
    sick_vanilla = resample(rng, pool, studies, diverging=DIVERGED)
    sick_nulls = [resample(rng, pool, studies, diverging=DIVERGED) for _ in range(FAMILY)]
    table.progress(1, f"the null family with {DIVERGED:.0%} of runs diverged in every arm")
    sick_arms = [Arm(sick_vanilla, y, LOOKS, MARGIN) for y in sick_nulls]
    table.progress(1, "the null family without ties")
    untied_vanilla = resample(rng, pool, studies, untied=True)
    untied_arms = [Arm(untied_vanilla, resample(rng, pool, studies, untied=True), LOOKS, MARGIN) for _ in range(FAMILY)]
    expected = {"holm": "<= 5 %", "none": "about 1 - 0.95^8 = 34 % if independent"}
    for arms_, drawn in ((arms, "0% diverged"), (sick_arms, f"{DIVERGED:.0%} diverged"), (untied_arms, "no ties")):
        for multiplicity in sequential.MULTIPLICITY:
            verdict = judge(arms_, LOOKS, multiplicity=multiplicity)
            table.rate(1, f"sequential, multiplicity {multiplicity}", f"{looks_text}, {drawn}",
                       different(verdict).any(axis=1), expected[multiplicity],
                       per_variant=float(different(verdict).mean()))
    table.progress(1, "fixed studies, one look")
    for multiplicity in sequential.MULTIPLICITY:
        for x, ys, diverging in ((vanilla, nulls, 0.0), (sick_vanilla, sick_nulls, DIVERGED)):
            found = sequential.family(x[:, :FIXED], {f"null{i}": y[:, :FIXED] for i, y in enumerate(ys)}, looks=None,
                                      alpha=ALPHA, margin=MARGIN, multiplicity=multiplicity)
            table.rate(1, f"fixed, multiplicity {multiplicity}", f"one look at {FIXED}, {diverging:.0%} diverged",
                       np.column_stack([np.isin(v[:, -1], DIFFERENT) for v in found.values()]).any(axis=1),
                       expected[multiplicity])

    # 2. trials to decide a real difference, in a family of 8 whose other 7 are null
    table.block(2, "trials to decide: one real difference in a family of 8, the other 7 null",
                f"holm, {looks_text}, margin {MARGIN}")
    rng = rngs[2]
    effects = {"NOAF-like": (resample(rng, noaf, studies), f"NOAF's {len(noaf)} trials, {np.isnan(noaf).sum()} NaN"),
               "+0.5 nats": (resample(rng, pool, studies) + 0.5, "vanilla resample + 0.5"),
               "+0.3 nats": (resample(rng, pool, studies) + 0.3, "vanilla resample + 0.3")}
    for name, (y, drawn) in effects.items():
        table.progress(2, name)
        verdict = judge(arms[:FAMILY - 1] + [Arm(vanilla, y, LOOKS, MARGIN)], LOOKS)
        table.rate(2, f"{name}: worse by {CAP} (power)", drawn, final(verdict[:, -1]) == "worse")
        table.rate(2, f"{name}: worse by {FIXED}", drawn, verdict[:, -1, LOOKS.index(FIXED)] == "worse")
        table.rate(2, f"{name}: better (wrong way)", drawn, final(verdict[:, -1]) == "better")
        table.trials(2, f"{name}: trials a variant at decision", "studies decided worse",
                     first_look(verdict[:, -1], "worse", LOOKS))
        table.rate(2, f"{name}: any of the 7 null worse/better", null_text, different(verdict[:, :-1]).any(axis=1),
                   "<= 5 %")

    # 3. equivalence, one comparison (an intersection-union claim: no correction for a family)
    table.block(3, "equivalence: one comparison, variant = vanilla resample + shift",
                f"{looks_text}, margin {MARGIN}, two one-sided tests at {ALPHA}")
    rng = rngs[3]
    for shift, diverging, x in ((0.0, 0.0, vanilla), (MARGIN, 0.0, vanilla), (-MARGIN, 0.0, vanilla),
                                (MARGIN, DIVERGED, sick_vanilla)):
        table.progress(3, f"shift {shift:+g}, {diverging:.0%} diverged")
        y = shifted(resample(rng, pool, studies, diverging=diverging), shift)
        verdict = judge([Arm(x, y, LOOKS, MARGIN)], LOOKS)[:, 0]
        settings = f"{diverging:.0%} diverged in both arms"
        table.rate(3, f"shift {shift:+g}: called equivalent", settings, final(verdict) == "equivalent",
                   "power" if shift == 0 else "<= 5 %")
        table.rate(3, f"shift {shift:+g}: called worse/better", settings, np.isin(final(verdict), DIFFERENT),
                   "<= 5 %" if shift == 0 else "")
        if shift == 0:
            table.trials(3, "shift 0: trials a variant at equivalence", settings, first_look(verdict, "equivalent", LOOKS))

    # 4. raising the cap from 100 to 200 in studies undecided at 50 (one comparison, no margin)
    at_50, at_100 = LOOKS.index(50), LOOKS.index(100)
    caps = [100] * (at_50 + 1) + [CAP] * (len(LOOKS) - at_50 - 1)
    table.block(4, "raising the cap: designed for 100, raised to 200 where undecided at 50",
                "one comparison, no difference, no margin, a look every 10")
    null = arms[0].without_margin()
    planned = judge([null.first(at_100 + 1)], LOOKS[:at_100 + 1], cap=100)[:, 0]
    raised = judge([null], LOOKS, cap=caps)[:, 0]
    rejudged = judge([null], LOOKS, cap=CAP)[:, 0]
    decided_at_50 = planned[:, at_50] != "undecided"
    if not np.array_equal(raised[:, :at_50 + 1], planned[:, :at_50 + 1]):
        table.note(4, "PROBLEM: the raised design changed verdicts at looks judged before the raise")
    # the chance of crossing, asymptotically, of the boundaries each rule uses in effect
    bounds_raised = sequential.boundaries(LOOKS, ALPHA, caps)
    bounds_naive = np.concatenate([sequential.boundaries(LOOKS[:at_50 + 1], ALPHA, 100),
                                   sequential.boundaries(LOOKS, ALPHA, CAP)[at_50 + 1:]])
    level = {name: float(sum(map(sum, sequential.crossings(b, LOOKS))))
             for name, b in (("raised", bounds_raised), ("naive", bounds_naive))}
    table.rate(4, "cap 100 as planned: worse/better by 100", "cap 100", np.isin(planned[:, -1], DIFFERENT), "5 %")
    table.rate(4, "raised: worse/better by 200", "caps [100]*5 + [200]*15", np.isin(raised[:, -1], DIFFERENT),
               f"asymptotic {100 * level['raised']:.2f} %")
    naive = np.where(decided_at_50, np.isin(planned[:, at_50], DIFFERENT), np.isin(rejudged[:, -1], DIFFERENT))
    table.rate(4, "naive: every look re-judged at cap 200", "cap 200 for all looks once raised", naive,
               f"asymptotic {100 * level['naive']:.2f} %")
    old = old_verdicts()
    if old is None:
        table.note(4, f"the code before issue 34 (commit {OLD}) is not at hand: no row for the old behaviour")
    else:
        table.progress(4, f"the old behaviour (sequential.verdicts of {OLD})")
        early = old(vanilla, nulls[0], LOOKS[:at_50 + 1], alpha=ALPHA, cap=100)[:, -1]
        late = old(vanilla, nulls[0], LOOKS, alpha=ALPHA, cap=CAP)[:, -1]
        table.rate(4, f"old: code of {OLD}, re-judged at cap 200", "its rounds re-judged every look",
                   np.where(early != "undecided", np.isin(early, DIFFERENT), np.isin(late, DIFFERENT)),
                   f"asymptotic {100 * level['naive']:.2f} %")
    silent = [n for n, b in zip(LOOKS, bounds_raised) if b >= sequential.LARGEST]
    table.note(4, f"raised design: looks {silent} have boundary {sequential.LARGEST:g} (spend nothing: by 50 the cap-100 "
                  f"design had spent {100 * float(sequential.spent(0.5, ALPHA)):.2f} %, which cap 200 allows only at "
                  f"100), so no verdict can change there")

    # 5. the level of the asymptotic boundaries at small looks (one comparison, no difference)
    table.block(5, "level of the asymptotic boundaries: one comparison, no difference", f"alpha {ALPHA}, no margin")
    rng = rngs[5]
    many = 10 * studies  # one look at few trials is cheap: ten times the studies
    for n in (10, FIXED):
        for diverging, untied in ((0.0, False), (DIVERGED, False), (0.0, True)):
            drawn = "no ties" if untied else f"{diverging:.0%} diverged in both"
            table.progress(5, f"one look at {n}, {drawn}")
            found = sequential.verdicts(resample(rng, pool, many, n, diverging, untied),
                                        resample(rng, pool, many, n, diverging, untied), None, alpha=ALPHA)
            table.rate(5, f"one look at {n} a variant: worse/better", drawn, np.isin(found[:, -1], DIFFERENT), "5 %")
    table.progress(5, "looks every 10 to 200")
    first_spent = float(sequential.spent(LOOKS[0] / CAP, ALPHA))
    for arm, drawn in ((arms[0], "0% diverged in both"), (sick_arms[0], f"{DIVERGED:.0%} diverged in both"),
                       (untied_arms[0], "no ties")):
        verdict = judge([arm.without_margin()], LOOKS)[:, 0]
        table.rate(5, f"{looks_text}: worse/better, any look", drawn, np.isin(verdict[:, -1], DIFFERENT), "5 %")
        table.rate(5, f"{looks_text}: worse/better at 10", drawn,
                   np.isin(verdict[:, 0], DIFFERENT), f"{100 * first_spent:.3f} % spent there")

    # 6. equal medians, the variant spread 3 x vanilla's (Behrens-Fisher)
    table.block(6, "unequal spreads: equal medians, variant = median + 3 (resample - median)",
                f"margin {MARGIN}; ranks test P(variant < vanilla) = 1/2, which unequal spreads break")
    rng = rngs[6]
    spread = median + 3 * (resample(rng, pool, studies) - median)
    normal_sd = float(np.nanstd(pool))
    normal = rng.normal(median, normal_sd, size=(studies, CAP))
    normal_spread = median + 3 * (rng.normal(median, normal_sd, size=(studies, CAP)) - median)
    for name, x, y in (("resampled", vanilla, spread), ("normal", normal, normal_spread)):
        table.progress(6, f"{name} data")
        pairs = np.subtract.outer(median + 3 * (pool - median), pool) if name == "resampled" else None
        truth = float((pairs < 0).mean() + (pairs == 0).mean() / 2) if pairs is not None else 0.5
        wide = Arm(x, y, LOOKS, MARGIN)
        verdict = judge([wide], LOOKS)[:, 0]
        for which in DIFFERENT:
            table.rate(6, f"{name}: called {which}", f"one comparison, {looks_text}", final(verdict) == which,
                       f"2.5 % each side; P(variant < vanilla) = {truth:.3f}")
        found = sequential.verdicts(x[:, :FIXED], y[:, :FIXED], None, alpha=ALPHA, margin=MARGIN)[:, -1]
        table.rate(6, f"{name}: worse/better", f"one comparison, one look at {FIXED}", np.isin(found, DIFFERENT), "5 %")
        if name == "resampled":
            verdict = judge(arms[:FAMILY - 1] + [wide], LOOKS)
            table.rate(6, f"{name}: worse/better", "family of 8 (7 null), holm", different(verdict[:, -1]), "<= 5 %")
            table.rate(6, f"{name}: any of the family worse/better", "family of 8 (7 null), holm",
                       different(verdict).any(axis=1), "<= 5 %")

    # 7. the margin derived from vanilla's first 10 trials; a shift of exactly that margin
    table.block(7, "derived margin: variant = vanilla resample + the margin derived from that study's vanilla",
                f"{scorecard.DERIVED_PER_IQR:g} x IQR of vanilla's first {scorecard.DERIVED_FROM}, one comparison, "
                f"{looks_text}")
    rng = rngs[7]
    margins, equivalent = [], []
    for s in range(studies):
        margin = scorecard.derived_margin(vanilla[s])[0]
        if margin is None:
            continue
        margin = grid_margin(margin)
        y = shifted(resample(rng, pool, 1)[0], margin)
        verdict = sequential.verdicts(vanilla[s], y, LOOKS, alpha=ALPHA, margin=margin, cap=CAP)
        margins.append(margin)
        equivalent.append(verdict[-1] == "equivalent")
        if (s + 1) % 1000 == 0:
            table.progress(7, f"{s + 1} of {studies} studies")
    relative = np.array(margins) / MARGIN
    spread_of = {"median": float(np.median(relative)), "p10": float(np.percentile(relative, 10)),
                 "p90": float(np.percentile(relative, 90))}
    table.rate(7, "shift = derived margin: called equivalent", "margin per study", equivalent, "<= 5 %",
               margin_over_0_3=spread_of)
    table.note(7, f"derived margin / {MARGIN}: median {spread_of['median']:.2f}, 10-90 % {spread_of['p10']:.2f}-"
                  f"{spread_of['p90']:.2f} over {len(relative)} studies ({studies - len(relative)} without one)")

    seconds = time.perf_counter() - started
    text = table.text()
    print()
    print(text)
    print(f"run time {seconds:.0f} s ({studies} studies a block, seed {seed})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "what": "verdicts of harness.analysis.sequential.family on studies resampled from the JSB reference study",
        "script": "scripts/simulate_verdicts.py", "reference": source, "studies": studies, "seed": seed,
        "alpha": ALPHA, "margin": MARGIN, "cap": CAP, "looks": LOOKS, "diverged_share": DIVERGED,
        "run_seconds": round(seconds, 1), "blocks": table.blocks, "rows": table.rows, "notes": table.notes,
        "table": text}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=4000,
                        help="simulated studies a block (default: 4000, about 7 minutes on one core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "simulations" / "verdicts.json")
    options = parser.parse_args()
    if options.studies < 40:
        parser.error("--studies must be at least 40")
    main(options.studies, options.seed, options.out)
