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
from harness.errors import UserError

UNTIL = ("n_trials", "decided")


def check(cfg, variants: list[str]) -> None:
    """One line naming the key for a setting the rounds cannot run with."""
    search = cfg.search
    until = search.get("until", "n_trials")
    if until not in UNTIL:
        raise UserError(f"search.until={until}: give n_trials (every variant gets search.n_trials trials) or decided "
                        "(rounds until each variant's comparison with vanilla is decided).")
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
    """analysis.margin, or the default of the data set's task (harness.analysis.scorecard)."""
    task = scorecard.infer_task(str(cfg.dataset.name), cfg.analysis.get("task"))
    return scorecard.margin_for(task, cfg.analysis.get("margin"))


def series(study) -> np.ndarray:
    """The counted trials' test metric in trial-number order; NaN for a diverged trial."""
    return sequential.series(study.get_trials(deepcopy=False))


def judge(reference: np.ndarray, variant: np.ndarray, every: int, cap: int, alpha: float, margin) -> dict:
    """The verdict of one variant at its last look so far, with what decided it."""
    looks = sequential.looks_up_to(min(len(reference), len(variant)), every, cap)
    outcome = {"verdict": "undecided", "look": looks[-1] if looks else 0, "n_trials": int(len(variant)),
               "alpha": alpha, "margin": margin, "look_every": every, "cap": cap}
    if not looks:
        return outcome
    last = sequential.path(reference, variant, looks, alpha=alpha, margin=margin, cap=cap)[-1]
    verdict, n, z, differ = last["verdict"], last["look"], last["z"], last["boundary"]
    low, high = last["shift_low"], last["shift_high"]
    outcome.update(verdict=verdict, look=n, z=z, boundary=differ, shift=last["shift"], shift_low=low, shift_high=high)
    if verdict in ("worse", "better"):
        outcome["by"] = f"rank test |Z| = {abs(z):.2f} >= boundary {differ:.2f} at {n} trials a variant"
    elif verdict == "equivalent":
        outcome["by"] = (f"repeated interval of the shift [{low:.3g}, {high:.3g}] inside ±{margin:g} "
                         f"at {n} trials a variant")
    else:
        outcome["by"] = (f"at {n} trials a variant: |Z| = {abs(z):.2f} < {differ:.2f}; shift [{low:.3g}, {high:.3g}]"
                         + (f" not inside ±{margin:g}" if margin is not None else " (no margin)"))
    return outcome


def run(cfg, variants: list[str], top_up, study_of) -> dict:
    """The rounds: top_up(name, target) brings a variant's study to `target` counted trials;
    study_of(name) opens it. Returns {variant: outcome} of every variant but the reference."""
    search, analysis = cfg.search, cfg.analysis
    reference = analysis.get("reference_variant", "vanilla")
    every, cap, alpha = int(search.look_every), int(search.n_trials), float(analysis.alpha)
    margin, why = margin_of(cfg)
    others = [v for v in variants if v != reference]
    print(f"until decided: rounds of {every} trials a variant up to {cap}, each judged against {reference} "
          f"(alpha {alpha:g}, margin {'none' if margin is None else f'{margin:g}'}: {why})", flush=True)
    sizes = None
    while True:
        base = series(study_of(reference))
        outcomes = {}
        for name in others:
            study = study_of(name)
            outcomes[name] = judge(base, series(study), every, cap, alpha, margin)
            study.set_user_attr("sequential", outcomes[name])
        open_ = [name for name, o in outcomes.items() if o["verdict"] == "undecided" and o["look"] < cap]
        print("round: " + "; ".join(f"{name} {o['verdict']} at {o['look']}" for name, o in outcomes.items()),
              flush=True)
        if not open_:
            return outcomes
        now = [len(series(study_of(name))) for name in variants]
        if now == sizes:  # the last round added nothing (its workers died): say so, do not spin
            raise UserError("search.until=decided: the last round added no trial; see the workers' messages above, "
                            "then run the same command to go on from the last look.")
        sizes = now
        target = min(cap, min(outcomes[name]["look"] for name in open_) + every)
        for name in [reference, *open_]:
            top_up(name, target)
