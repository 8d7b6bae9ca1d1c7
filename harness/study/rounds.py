"""`search.until=decided`: a sweep in rounds that stops each variant once its comparison
with vanilla is decided (docs/analysis.md, "Sequential studies").

    odyssey sweep search.variants=lstm search.until=decided search.look_every=10 search.n_trials=200

Every round gives `search.look_every` more trials to each variant still undecided, and to
the reference variant (analysis.reference_variant, vanilla) while any is; then each of
them is judged against the reference by harness.analysis.sequential.verdicts at every look
so far (looks at multiples of look_every, and at the cap `search.n_trials`), with
`analysis.alpha` and `analysis.margin` (null: the task's default). The series are the
counted trials' test metrics in trial-number order (a trial whose loss diverged is the worst
outcome); a variant's look k compares its first n_k trials with the reference's first n_k.

Everything is decided from what the storage holds, so a rerun (after a crash, a stop or a
raised cap) goes on from the last look and loses nothing. The outcome of each variant is
recorded in its study's user attribute `sequential` (verdict, the look that decided it,
the statistic and boundary, the settings), which the analysis report shows.
"""

from __future__ import annotations

import numpy as np

from harness.analysis import scorecard, sequential
from harness.datasets import task_kind
from harness.errors import UserError

UNTIL = ("n_trials", "decided")


def check(cfg, variants: list[str]) -> None:
    """One line naming the key for a setting the rounds cannot run with."""
    search = cfg.search
    until = search.get("until", "n_trials")
    if until not in UNTIL:
        raise UserError(f"search.until={until}: give n_trials (every variant gets search.n_trials trials) or decided "
                        "(rounds until each variant's comparison with vanilla is decided).")
    sequential.checked_multiplicity(cfg.analysis.get("multiplicity", "holm"))
    margin = cfg.analysis.get("margin")
    if margin is not None and not float(margin) > 0:
        raise UserError(f"analysis.margin={margin}: give a positive shift in the metric's units, or null for the "
                        "task's default.")
    if until != "decided":
        return
    reference = cfg.analysis.get("reference_variant", "vanilla")
    if reference not in variants or len(variants) < 2:
        raise UserError(f"search.until=decided compares every variant with {reference}: list {reference} and at least "
                        f"one other in search.variants (got {', '.join(variants)}).")
    if search.get("pruner", "none") != "none":
        raise UserError(f"search.pruner={search.pruner}: search.until=decided judges complete trials; use "
                        "search.pruner=none.")
    if search.get("launcher", "local") != "local":
        raise UserError(f"search.launcher={search.launcher}: search.until=decided runs its rounds from this machine; "
                        "use search.launcher=local (its workers may still share a storage with other machines).")


def margin_of(cfg) -> tuple[float | None, str]:
    """analysis.margin, or the default of the data set's task (analysis.task, else the kind its
    config gives: harness.datasets.task_kind; harness.analysis.scorecard.MARGINS); None for a
    task without one (the rounds then derive it from vanilla's first look)."""
    return scorecard.margin_for(cfg.analysis.get("task") or task_kind(cfg.dataset), cfg.analysis.get("margin"))


def series(study) -> np.ndarray:
    """The counted trials' test metric in the order their work started; NaN for a diverged trial."""
    return sequential.series(study.get_trials(deepcopy=False))


def looks_now(past: list[list[int]], available: int, every: int, cap: int) -> list[list[int]]:
    """The looks judged before (with their caps) and the new ones `available` trials reach:
    multiples of `every` past the last judged one, and the cap, each at the cap in force now."""
    judged = past[-1][0] if past else 0
    if any(n >= c for n, c in past):  # a look reached the cap in force then: alpha is spent, nothing to add
        return [list(look) for look in past]
    new = [n for n in sequential.looks_up_to(available, every, cap) if n > judged]
    return [list(look) for look in past] + [[n, cap] for n in new]


def _refuse_changes(recorded: dict, alpha: float, margin, every: int, cap: int, multiplicity: str,
                    names: list[str]) -> None:
    """A setting that would re-judge the looks already judged: one line naming the key."""
    past = sequential.history(recorded)
    if past and cap < past[-1][0]:
        raise UserError(f"search.n_trials={cap}: the study was already judged at {past[-1][0]} trials a variant; a cap "
                        f"below that would undo its decisions. Give search.n_trials={past[-1][0]} or more.")
    for key, now, then in (("analysis.alpha", alpha, recorded.get("alpha")),
                           ("search.look_every", every, recorded.get("look_every")),
                           ("analysis.multiplicity", multiplicity, recorded.get("multiplicity", multiplicity))):
        if then is not None and now != then:
            raise UserError(f"{key}={now}: the study's earlier rounds were judged with {then}; changing it would "
                            f"re-judge decisions already made. Use {key}={then}, or a new storage.")
    if recorded.get("margin") is not None and margin is not None and float(recorded["margin"]) != float(margin):
        raise UserError(f"analysis.margin={margin}: the study's earlier rounds were judged with margin "
                        f"{recorded['margin']}; use that, or a new storage.")
    if recorded.get("family") and sorted(recorded["family"]) != sorted(names):
        raise UserError(f"search.variants: the study's rounds judged the family {', '.join(recorded['family'])} "
                        f"against the reference; this run lists {', '.join(names)}. List the same variants (the "
                        "family-wise level is over them), or sweep the others without search.until=decided.")


def outcomes(reference: np.ndarray, series_of: dict, looks: list[list[int]], alpha: float, margin,
             multiplicity: str, every: int, cap: int) -> dict:
    """{variant: its outcome at its last look}: the verdict, the look that decided it, the
    statistic, the boundary and level, the shift and its intervals, and the settings and looks
    that a later run needs to go on without re-judging anything."""
    names = list(series_of)
    base = {"alpha": alpha, "margin": margin, "multiplicity": multiplicity, "look_every": every, "cap": cap,
            "family": names, "looks": looks}
    if not looks:
        return {name: {**base, "verdict": "undecided", "look": 0, "n_trials": int(len(series_of[name]))}
                for name in names}
    counts, caps = [n for n, _ in looks], [c for _, c in looks]
    found = sequential.paths(reference, series_of, counts, alpha=alpha, margin=margin, cap=caps,
                             multiplicity=multiplicity)
    result = {}
    for name in names:
        last = found[name][-1] if found[name] else None
        outcome = {**base, "n_trials": int(len(series_of[name])), "verdict": "undecided", "look": 0}
        if last is not None:
            outcome.update({key: last[key] for key in ("verdict", "look", "z", "level", "boundary", "crossed",
                                                       "equivalence_boundary", "shift", "shift_low", "shift_high",
                                                       "equivalence_low", "equivalence_high")})
            outcome["by"] = explain(outcome)
        result[name] = outcome
    return result


def explain(o: dict) -> str:
    """One line: what decided a comparison, or where it stands."""
    n, margin = o["look"], o.get("margin")
    again = f" (its look {o['crossed']} tested again at the level passed on)" if o.get("crossed") not in (None, n) else ""
    if o["verdict"] in ("worse", "better"):
        return (f"rank test |Z| = {abs(o['z']):.2f} >= boundary {o['boundary']:.2f} at level {o['level']:.3g} at "
                f"{n} trials a variant{again}; shift [{o['shift_low']:.3g}, {o['shift_high']:.3g}] excludes 0")
    if o["verdict"] == "equivalent":
        return (f"interval of the shift [{o['equivalence_low']:.3g}, {o['equivalence_high']:.3g}] inside "
                f"±{margin:g} at {n} trials a variant")
    return (f"at {n} trials a variant: |Z| = {abs(o['z']):.2f} < {o['boundary']:.2f} (level {o['level']:.3g}); "
            f"shift [{o['equivalence_low']:.3g}, {o['equivalence_high']:.3g}]"
            + (f" not inside ±{margin:g}" if margin is not None else " (no margin)"))


def run(cfg, variants: list[str], top_up, study_of) -> dict:
    """The rounds: top_up(name, target) brings a variant's study to `target` counted trials;
    study_of(name) opens it. Returns {variant: outcome} of every variant but the reference."""
    search, analysis = cfg.search, cfg.analysis
    reference = analysis.get("reference_variant", "vanilla")
    every, cap, alpha = int(search.look_every), int(search.n_trials), float(analysis.alpha)
    multiplicity = str(analysis.get("multiplicity", "holm"))
    others = [v for v in variants if v != reference]
    stored = [study_of(name).user_attrs.get("sequential") for name in others]
    recorded = max((o for o in stored if o), key=lambda o: len(sequential.history(o)), default={})  # the family's looks
    margin, why = margin_of(cfg)
    if margin is None and recorded.get("margin") is not None:
        margin, why = float(recorded["margin"]), "the margin recorded with the study"
    _refuse_changes(recorded, alpha, margin, every, cap, multiplicity, others)
    past = sequential.history(recorded)
    print(f"until decided: rounds of {every} trials a variant up to {cap}, each judged against {reference}, "
          f"family-wise alpha {alpha:g} over {len(others)} variant(s) ({multiplicity}), margin "
          f"{'none' if margin is None else f'{margin:g}'} ({why})", flush=True)
    if past and cap > past[-1][1]:
        print(f"until decided: the cap goes from {past[-1][1]} to {cap}; the {len(past)} look(s) judged stay as they "
              "were, and the new looks spend only the alpha left", flush=True)
    sizes, said, derived = None, set(), False
    while True:
        series_of = {name: series(study_of(name)) for name in others}
        base = series(study_of(reference))
        if margin is None and not derived and len(base) >= scorecard.DERIVED_FROM:  # no task default: frozen now
            derived = True
            margin, why = scorecard.derived_margin(base)
            print(f"until decided: margin {'none' if margin is None else f'{margin:.4g}'} ({why}), recorded with "
                  "the study", flush=True)
        looks = looks_now(past, len(base), every, cap)
        found = outcomes(base, series_of, looks, alpha, margin, multiplicity, every, cap)
        for name in others:
            study_of(name).set_user_attr("sequential", found[name])
        past = looks
        spent = any(n >= c for n, c in looks)  # a look at its cap spent all of alpha
        judged = looks[-1][0] if looks else 0
        targets = {}
        for name, o in found.items():
            if o["verdict"] != "undecided":
                continue
            behind = [n for n, _ in looks if n > len(series_of[name])]
            if behind:  # behind the family's looks (a variant re-opened by a change of method): catch up
                targets[name] = behind[0]
            elif not spent and judged < cap:
                targets[name] = min(cap, judged + every)
        for name, o in found.items():
            if o["verdict"] != "undecided" and name not in said:
                print(f"{name}: decided {o['verdict']} at {o['look']} trials a variant; it gets no more trials",
                      flush=True)
                said.add(name)
        if spent and any(o["verdict"] == "undecided" and name not in targets for name, o in found.items()):
            print(f"until decided: the look at {looks[-1][0]} was at the cap in force then and spent all of alpha; "
                  "the undecided stay undecided (more trials cannot decide them at this level)", flush=True)
        print("round: " + "; ".join(f"{name} {o['verdict']} at {o['look']}" for name, o in found.items()),
              flush=True)
        if not targets:
            return found
        now = [len(base), *(len(series_of[name]) for name in others)]  # read at the top of this round
        if now == sizes:  # the last round added nothing (its workers died): say so, do not spin
            raise UserError("search.until=decided: the last round added no trial; see the workers' messages above, "
                            "then run the same command to go on from the last look.")
        sizes = now
        ahead = max(targets.values())
        if ahead > len(base):
            top_up(reference, ahead)
        for name, target in targets.items():
            top_up(name, target)
