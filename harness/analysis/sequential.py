"""Verdicts of the variants against vanilla: one method, whether a study is fixed or swept
in rounds (docs/analysis.md, "Verdicts" and "Sequential studies" say why and under which
assumptions).

    family(vanilla, {"nfg": ..., "noaf": ...}, looks=[10, 20, ...], alpha=0.05, margin=0.3, cap=200)
        -> {"nfg": ["undecided", ..., "worse"], "noaf": [...]}
    verdicts(vanilla, variant, looks, ...) -> the verdicts of one comparison at its own alpha

- The statistic (harness.analysis.ranks): at look k both series are cut to their first n_k
  values (trials in the order they were started), and the Wilcoxon-Mann-Whitney statistic
  Z_k of the variant against vanilla is computed with midranks and the tie-corrected
  variance, a NaN (a failed or diverged trial) ranking worst. A fixed study is the case of
  one look (`looks=None`), at every counted trial of a variant and as many of vanilla's.
- worse / better: |Z_k| reaches the boundary of the level the variant holds at that look
  (harness.analysis.boundaries: Hwang-Shih-DeCani spending, gamma -2, over the information
  fractions n_k / cap). The family's error of calling any variant different when none is
  stays at alpha by the Holm-type procedure for group-sequential tests of Maurer & Bretz
  (2013): each of the m variants starts at alpha / m; when one is rejected its level passes
  in equal parts to every variant not rejected, so after r rejections each holds
  alpha / (m - r), and each variant's earlier looks are tested again at its new level
  (boundaries are lower at a higher level). With one look this is Holm (1979).
  `multiplicity="none"`: each comparison at alpha on its own.
- equivalent: the interval of the shift that inverts the same statistic at the equivalence
  boundary (2 alpha spent over both sides: two one-sided tests at alpha, Schuirmann 1987)
  lies inside (-margin, +margin). Equivalence is an intersection-union claim: each holds at
  alpha on its own, with no correction for the family (Berger 1982).
- undecided: neither. A decision stands at every later look: a variant decided worse,
  better or equivalent gets no more trials; one decided equivalent is never called
  different afterwards (its level, passed on by others, is left unused).
"""

from __future__ import annotations

import math

import numpy as np
from optuna.trial import TrialState

from harness.analysis import ranks
from harness.analysis.boundaries import GAMMA, LARGEST, boundaries, crossings, spent  # noqa: F401 (public)
from harness.analysis.ranks import rank_z, shift_interval, worst_for_nan  # noqa: F401 (public)
from harness.errors import UserError
from harness.storage import counted, lineages

VERDICTS = ("worse", "better", "equivalent", "undecided")
MULTIPLICITY = ("holm", "none")


def checked_multiplicity(value) -> str:
    """analysis.multiplicity as given, or one line naming the key (UserError)."""
    if value not in MULTIPLICITY:
        raise UserError(f"analysis.multiplicity={value}: give holm (a family-wise level over the variants, the "
                        "default) or none (each comparison at analysis.alpha on its own).")
    return str(value)


def levels(alpha: float, m: int, multiplicity: str = "holm") -> list[float]:
    """The level a variant holds after r = 0 .. m-1 rejections among the m of its family."""
    if multiplicity not in MULTIPLICITY:
        raise ValueError(f"multiplicity must be one of {', '.join(MULTIPLICITY)}: {multiplicity}")
    return [alpha / (m - r) if multiplicity == "holm" else alpha for r in range(m)]


def _check(looks, cap, length: int, margin) -> tuple[list[int], list[float]]:
    looks = [int(n) for n in looks]
    caps = list(np.broadcast_to(np.asarray(looks[-1] if cap is None else cap, dtype=float), (len(looks),)))
    if not looks or looks[0] < 2 or np.any(np.diff(looks) <= 0) or any(n > c for n, c in zip(looks, caps)):
        raise ValueError(f"looks must increase from at least 2 trials up to the cap {cap}: {looks}")
    if looks[-1] > length:
        raise ValueError(f"the last look ({looks[-1]}) needs that many trials in vanilla's series")
    if margin is not None and not margin > 0:
        raise ValueError(f"margin must be positive: {margin}")
    return looks, caps


class Decision:
    """A family's comparisons judged look by look (the engine of `family` and `verdicts`).

    Built from each variant's statistics at each look (arrays (studies, looks)): `worse_z`,
    `better_z` (Z just above and just below shift 0: ties across the arms count against the
    claim), `same` (the equivalence interval inside the margin), `present` (the variant has
    that look's trials). `bounds[r]` are the boundaries at the level held after r rejections,
    `same_bounds` those of equivalence. After `run`: `verdict` (studies, variants, looks) as
    strings, and for each study and variant the look index of the decision `decided_at`, the
    look whose statistic crossed `crossed_at`, and the number of rejections `held` whose
    level the variant held when it was decided (or at the end)."""

    def __init__(self, worse_z, better_z, same, present, bounds):
        self.worse_z, self.better_z, self.same = worse_z, better_z, same  # lists over variants
        self.present, self.bounds = present, np.asarray(bounds)

    def run(self) -> "Decision":
        variants, (studies, looks) = len(self.worse_z), self.worse_z[0].shape
        rejected = np.zeros((studies, variants), bool)
        retired = np.zeros((studies, variants), bool)  # equivalent: never called different afterwards
        state = np.full((studies, variants), "undecided", dtype=object)
        self.verdict = np.full((studies, variants, looks), "undecided", dtype=object)
        self.decided_at = np.full((studies, variants), -1)
        self.crossed_at = np.full((studies, variants), -1)
        self.held = np.zeros((studies, variants), int)
        for k in range(looks):
            while True:  # reject what the levels allow, pass the levels on, test again
                r = rejected.sum(axis=1)
                bound = self.bounds[np.minimum(r, len(self.bounds) - 1), :k + 1]  # (studies, k+1)
                found = False
                for v in range(variants):
                    live = ~rejected[:, v] & ~retired[:, v]
                    if not live.any():
                        continue
                    seen = self.present[v][:k + 1]
                    up = (self.worse_z[v][:, :k + 1] >= bound) & seen
                    down = (self.better_z[v][:, :k + 1] <= -bound) & seen
                    crossed = (up | down) & live[:, None]
                    hit = crossed.any(axis=1)
                    if not hit.any():
                        continue
                    first = crossed.argmax(axis=1)
                    rows = np.flatnonzero(hit)
                    state[rows, v] = np.where(up[rows, first[rows]], "worse", "better")
                    rejected[rows, v] = True
                    self.decided_at[rows, v], self.crossed_at[rows, v] = k, first[rows]
                    self.held[rows, v] = r[rows]
                    found = True
                if not found:
                    break
            for v in range(variants):
                if not self.present[v][k]:
                    continue
                now = self.same[v][:, k] & ~rejected[:, v] & ~retired[:, v]
                state[now, v], retired[now, v] = "equivalent", True
                self.decided_at[now, v] = self.crossed_at[now, v] = k
                self.held[now, v] = rejected.sum(axis=1)[now]
            self.verdict[:, :, k] = state
        open_ = self.decided_at < 0
        self.held[open_] = rejected.sum(axis=1)[np.nonzero(open_)[0]]
        return self


def rank_statistics(x, ys, looks, margin, same_bounds):
    """What `Decision` judges, per variant: Z just above and below shift 0 and whether
    equivalence is reached, at each look (arrays (studies, looks)), and which looks it has.
    x: vanilla (studies, trials), ys: the variants' series alike (NaN already +inf),
    same_bounds: the equivalence boundaries (`design`); looks=None: one look (a fixed study).
    Public for simulations that judge the same statistics at several designs."""
    worse_z, better_z, same, present = [], [], [], []
    for y in ys:
        cuts = [None] if looks is None else looks
        w = np.zeros((x.shape[0], len(cuts)))
        b, s = np.zeros_like(w), np.zeros(w.shape, bool)
        seen = np.array([n is None or n <= y.shape[-1] for n in cuts])
        for k, n in enumerate(cuts):
            if not seen[k]:
                continue
            n = min(x.shape[-1], y.shape[-1]) if n is None else n
            a, c = x[:, :n], y[:, :n]
            w[:, k], b[:, k] = ranks.leaning(a, c, 0.0)
            if margin is not None and same_bounds[k] < LARGEST:
                below = ranks.leaning(a, c, margin)[1] <= -same_bounds[k]  # the shift < +margin
                above = ranks.leaning(a, c, -margin)[0] >= same_bounds[k]  # the shift > -margin
                s[:, k] = below & above
        worse_z.append(w)
        better_z.append(b)
        same.append(s)
        present.append(seen)
    return worse_z, better_z, same, present


def design(looks, cap, alpha: float, m: int, multiplicity: str = "holm"):
    """(bounds, same_bounds): the boundaries of a difference at the level held after r
    rejections (rows r = 0 .. m-1), and those of equivalence (2 alpha, two one-sided tests).
    looks=None: one look (a fixed study)."""
    points, caps = ([1.0], [1.0]) if looks is None else (looks, cap)
    bounds = np.array([boundaries(points, level, caps) for level in levels(alpha, m, multiplicity)])
    return bounds, boundaries(points, min(2 * alpha, 0.999), caps)


def decide(vanilla, variants: dict, looks=None, alpha: float = 0.05, margin: float | None = None, cap=None,
           multiplicity: str = "holm") -> tuple[Decision, np.ndarray, np.ndarray]:
    """The family judged: (Decision, bounds, same_bounds); arguments as for `family`."""
    x = worst_for_nan(vanilla)
    single = x.ndim == 1
    ys = [np.atleast_2d(worst_for_nan(y)) for y in variants.values()]
    x = np.atleast_2d(x)
    if not ys:
        raise ValueError("a family needs at least one variant")
    if looks is not None:
        looks, cap = _check(looks, cap, x.shape[-1], margin)
    elif margin is not None and not margin > 0:
        raise ValueError(f"margin must be positive: {margin}")
    if not single and any(y.shape[0] != x.shape[0] for y in ys):
        raise ValueError("simulated studies: every series needs as many rows as vanilla's")
    bounds, same_bounds = design(looks, cap, alpha, len(ys), multiplicity)
    decision = Decision(*rank_statistics(x, ys, looks, margin, same_bounds), bounds).run()
    return decision, bounds, same_bounds


def family(vanilla, variants: dict, looks=None, alpha: float = 0.05, margin: float | None = None, cap=None,
           multiplicity: str = "holm") -> dict:
    """The verdict of each variant against vanilla at each look, "worse", "better",
    "equivalent" or "undecided" (lower is better), the directional claims holding a
    family-wise level alpha over the variants (`multiplicity="holm"`, Maurer & Bretz 2013).

    vanilla: the metric of each vanilla trial in the order trials were started; variants:
    {name: series} the same way (NaN: failed or diverged, the worst outcome); 1-D, or 2-D
    (studies x trials) for many simulated studies at once. looks: increasing numbers of
    trials a variant (both series are cut to the first n_k at look k; a series shorter than
    a look has stopped, and keeps its verdict); None: a fixed study, one look at as many
    trials of each as the shorter of the two has (vanilla's first n of a variant's n).
    margin: the smallest shift that matters, in metric units (None: nothing is
    equivalent). cap: the number of trials a variant at which all of alpha is spent, one
    number or one a look (the cap in force when each look was judged); default: the last look.
    Returns {name: list of verdicts} for 1-D input, {name: array (studies, looks)} for 2-D."""
    single = np.asarray(vanilla).ndim == 1
    decision, _, _ = decide(vanilla, variants, looks, alpha, margin, cap, multiplicity)
    return {name: (list(decision.verdict[0, v]) if single else decision.verdict[:, v])
            for v, name in enumerate(variants)}


def verdicts(vanilla, variant, looks, alpha: float = 0.05, margin: float | None = None, cap=None):
    """The verdicts of one comparison at its own level alpha (a family of one); arguments as
    for `family`. A list for 1-D series, an array (studies, looks) for 2-D."""
    return family(vanilla, {"variant": variant}, looks, alpha, margin, cap)["variant"]


def paths(vanilla, variants: dict, looks=None, alpha: float = 0.05, margin: float | None = None, cap=None,
          multiplicity: str = "holm") -> dict[str, list[dict]]:
    """{name: the comparison as it stood at each look up to the one that decided it (the
    variant stops there; an undecided one to its last look)}, 1-D series. Each row: `look`
    (trials a variant; for a fixed study, those of the variant), `verdict`, `z` (the rank
    statistic), `level` (the variant's share of alpha then) and its `boundary`, `crossed`
    (the look whose statistic crossed, when a look was tested again at a higher level), the
    Hodges-Lehmann `shift`, the interval of the difference test [`shift_low`, `shift_high`]
    (it excludes 0 exactly when the verdict is worse or better) and that of equivalence
    [`equivalence_low`, `equivalence_high`] at `equivalence_boundary` (inside the margin
    exactly when equivalent)."""
    decision, bounds, same_bounds = decide(vanilla, variants, looks, alpha, margin, cap, multiplicity)
    x = worst_for_nan(vanilla)
    share = levels(alpha, len(variants), multiplicity)
    found = {}
    for v, (name, series_) in enumerate(variants.items()):
        y = worst_for_nan(series_)
        cuts = [None] if looks is None else [n for n in looks if n <= len(y)]
        decided, rows = decision.decided_at[0, v], []
        for k, n in enumerate(cuts):
            held = decision.held[0, v] if k == decided else _held_at(decision, v, k)
            source = decision.crossed_at[0, v] if k == decided else k  # a look tested again: its own data
            cut = cuts[source] or min(len(x), len(y))
            a, b = x[:cut], y[:cut]
            boundary, same = float(bounds[held, source]), float(same_bounds[source])
            shift, [(low, high), (same_low, same_high)] = ranks.shift_intervals(a, b, [boundary, same])
            if same >= LARGEST:  # a look that spends nothing on equivalence: it leaves every shift open
                same_low, same_high = -np.inf, np.inf
            rows.append({"look": int(n or cut), "verdict": decision.verdict[0, v, k],
                         "z": float(rank_z(a, b)), "level": share[held], "boundary": boundary,
                         "crossed": int(cut),
                         "equivalence_boundary": same, "shift": shift, "shift_low": low, "shift_high": high,
                         "equivalence_low": same_low, "equivalence_high": same_high})
            if k == decided:
                break
        found[name] = rows
    return found


def _held_at(decision: Decision, v: int, k: int) -> int:
    """Rejections in the family before variant v's look k was judged (its level then)."""
    others = np.delete(np.arange(decision.verdict.shape[1]), v)
    return int(sum(1 for o in others if decision.verdict[0, o, k] in ("worse", "better")))


def path(vanilla, variant, looks, alpha: float = 0.05, margin: float | None = None, cap=None) -> list[dict]:
    """One comparison at its own alpha, look by look (`paths` of a family of one)."""
    return paths(vanilla, {"variant": variant}, looks, alpha, margin, cap)["variant"]


def looks_up_to(n: int, every: int, cap: int) -> list[int]:
    """The looks a variant with n trials has passed: multiples of `every`, and the cap."""
    looks = list(range(every, min(n, cap) + 1, every))
    if n >= cap and (not looks or looks[-1] != cap):
        looks.append(cap)
    return [k for k in looks if k >= 2]


def series(trials) -> np.ndarray:
    """What a comparison judges: a study's counted trials (harness.storage.counted) in the
    order their work was first started (a retry or a lost trial's redo takes the place of the
    trial it redoes: storage.lineages), each by its test metric (its objective where it has
    none), NaN for one that did not complete (its loss diverged)."""
    trials = list(trials)
    root = lineages(trials)
    values = [t.user_attrs.get("test_metric", t.value) if t.state == TrialState.COMPLETE else math.nan
              for t in sorted(counted(trials), key=lambda t: (root[t.number], t.number))]
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def history(recorded: dict) -> list[list[int]]:
    """The looks a comparison swept in rounds was judged at, [[trials a variant, the cap
    then], ...], from its study's `sequential` attribute (harness.study.rounds); one written before
    looks were recorded: every look up to its last, at its one cap."""
    if not recorded:
        return []
    if recorded.get("looks"):
        return [[int(n), int(c)] for n, c in recorded["looks"]]
    return [[n, int(recorded["cap"])] for n in looks_up_to(int(recorded.get("look") or 0),
                                                          int(recorded["look_every"]), int(recorded["cap"]))]


def judge_study(series_of: dict, settings: dict, reference: str, alpha: float, margin, multiplicity: str = "holm"):
    """Every variant of a study against the reference: ({variant: `paths` rows}, {variant:
    its family}). The variants swept in rounds (`settings`: {variant: its `sequential`
    attribute}) form one family, judged at the looks recorded with them (their alpha,
    margin and multiplicity where recorded); the others form a fixed family, one look each
    (`family` with looks=None), at `alpha` and `margin`. Each family holds its own level."""
    base = series_of.get(reference)
    if base is None:
        return {}, {}
    rounds = {v: o for v, o in settings.items() if v != reference and v in series_of and len(series_of[v]) >= 2}
    fixed = {v: y for v, y in series_of.items() if v != reference and v not in rounds and len(y) >= 2}
    found, families = {}, {}
    if rounds:
        first = max(rounds.values(), key=lambda o: len(history(o)))
        looks = [look for look in history(first) if look[0] <= len(base)]
        if looks:
            chosen = {v: series_of[v] for v in rounds}
            found.update(paths(base, chosen, [n for n, _ in looks], alpha=float(first.get("alpha", alpha)),
                               margin=first.get("margin", margin), cap=[c for _, c in looks],
                               multiplicity=first.get("multiplicity", multiplicity)))
            families.update({v: "rounds" for v in chosen})
    if fixed and len(base) >= 2:
        found.update(paths(base, fixed, None, alpha=alpha, margin=margin, multiplicity=multiplicity))
        families.update({v: "fixed" for v in fixed})
    return found, families
