"""Recipes side by side: the analysis of one data set's studies for each training recipe,
and one page that puts their scorecards, fANOVA fractions and variants together.

    odyssey analyze analysis.dataset=jsb_chorales analysis.recipe=[greff,adam]

Each recipe is analysed on its own studies only (harness.analysis.run with
analysis.recipe set to it, into <out>/<recipe>/), so trials of two recipes never pool;
then <out>/compare.md and <out>/scorecards.csv show, for each of the paper's findings,
the verdict under every recipe: which findings survive a change of optimizer.
<out> defaults to results/analysis/<dataset>.<recipe>-vs-<recipe>/.

Entry point: `compare(cfg) -> Path` of compare.md (cfg: the `analysis` section).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

import harness
from harness.analysis import run
from harness.analysis.read import POOLED
from harness.analysis.report import table
from harness.errors import UserError


def is_comparison(cfg) -> bool:
    """Whether analysis.recipe asks for several recipes (a list)."""
    recipe = cfg.get("recipe")
    return recipe is not None and not isinstance(recipe, str)


def compare(cfg) -> Path:
    recipes = [str(r) for r in cfg.recipe]
    if len(recipes) < 2 or len(set(recipes)) != len(recipes):
        raise UserError(f"analysis.recipe={recipes}: name two or more different recipes to compare, "
                        "e.g. analysis.recipe=[greff,adam], or one recipe as a plain name.")
    dataset = cfg.get("dataset")
    if not dataset:
        raise UserError("analysis.dataset is not set: name the data set of the studies, "
                        "e.g. `odyssey analyze analysis.dataset=jsb_chorales analysis.recipe=[greff,adam]`.")
    out = Path(cfg.out) if cfg.get("out") else (
        harness.project_root() / "results" / "analysis" / f"{dataset}.{'-vs-'.join(recipes)}")
    if not out.is_absolute():
        out = harness.project_root() / out
    parts = {}
    for recipe in recipes:
        one = OmegaConf.merge(cfg, {"recipe": recipe, "out": str(out / recipe)})
        print(f"[compare] recipe {recipe}", flush=True)
        run(one)
        parts[recipe] = {name: pd.read_csv(out / recipe / f"{name}.csv")
                         for name in ("scorecard", "importance", "variants", "trials")}
    cards = side_by_side(parts)
    cards.to_csv(out / "scorecards.csv", index=False)
    path = out / "compare.md"
    path.write_text(page(dataset, recipes, parts, cards))
    print(f"[compare] {path}")
    return path


def side_by_side(parts: dict) -> pd.DataFrame:
    """One row a finding: the finding, its tasks, then each recipe's verdict."""
    recipes = list(parts)
    first = parts[recipes[0]]["scorecard"]
    frame = first[["finding", "tasks"]].copy()
    for recipe in recipes:
        card = parts[recipe]["scorecard"].set_index("finding")
        frame[recipe] = [card.verdict.get(finding, "") for finding in frame.finding]
    return frame


def _fraction(importance: pd.DataFrame, term: str) -> str:
    rows = importance[(importance.variant == POOLED) & (importance.term == term) & importance.fraction.notna()]
    if not len(rows):  # not searched, or a row of PED-ANOVA's only (harness.analysis.ped_anova.beside)
        return ""
    row = rows.iloc[0]
    if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
        return f"{row.fraction:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
    return f"{row.fraction:.2f}"


def _trials(frame: pd.DataFrame) -> dict:
    usable = frame[(frame.excluded.isna() | (frame.excluded == "")) & ~frame.diverged.astype(bool)]
    return {"trials": len(frame), "usable": len(usable), "pruned": int((frame.state == "PRUNED").sum()),
            "failed or diverged": len(frame) - len(usable) - int((frame.state == "PRUNED").sum()),
            "trained seconds": f"{frame.seconds.fillna(0).sum():.0f}",
            "lowest test metric": f"{usable.test_metric.min():.3f}" if len(usable) else ""}


def page(dataset: str, recipes: list[str], parts: dict, cards: pd.DataFrame) -> str:
    lines = [f"# `{dataset}`: the paper's findings under {len(recipes)} training recipes", "",
             "Each recipe's studies analysed on their own (its report: "
             + ", ".join(f"[{r}]({r}/report.md)" for r in recipes)
             + "); the verdicts follow the same rules (docs/analysis.md, Scorecard).", "",
             "## Scorecards", "", table(cards), ""]
    counts = pd.DataFrame({r: _trials(parts[r]["trials"]) for r in recipes})
    lines += ["## Trials", "", table(counts.rename_axis("").reset_index()), ""]
    terms = []
    for recipe in recipes:
        importance = parts[recipe]["importance"]
        pooled = importance[(importance.variant == POOLED) & ~importance.term.str.contains(":")]
        terms += [t for t in pooled.term if t not in terms]
    if terms:
        fractions = pd.DataFrame({"term": terms, **{r: [_fraction(parts[r]["importance"], t) for t in terms]
                                                    for r in recipes}})
        lines += ["## fANOVA, all variants pooled", "",
                  "Fraction of the variance of the test metric (bootstrap interval); a parameter "
                  "one recipe does not search has no entry there.", "", table(fractions), ""]
    variants = sorted(set().union(*(set(parts[r]["variants"].variant) for r in recipes)))
    medians = {}
    for recipe in recipes:
        frame = parts[recipe]["variants"].set_index("variant")
        medians[f"{recipe}: median"] = [f"{frame.median_all[v]:.3f}" if v in frame.index
                                        and np.isfinite(frame.median_all[v]) else "" for v in variants]
        medians[f"{recipe}: mean of best 10 %"] = [f"{frame.mean_top[v]:.3f}" if v in frame.index
                                                   and np.isfinite(frame.mean_top[v]) else "" for v in variants]
    lines += ["## Test metric per variant", "", table(pd.DataFrame({"variant": variants, **medians})), ""]
    return "\n".join(lines)
