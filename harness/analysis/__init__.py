"""Analysis stage: from the studies of one data set in an Optuna storage to tables,
figures, a scorecard and a report (docs/analysis.md says why each step is as it is).

    run(cfg) -> Path of report.md

The steps, one module each; data flows one way, and figures.py / report.py only draw
and write what these computed:

    read.py          studies -> one row a trial (+ learning curves), which metric, which way
    diverged.py      the rule for trials that diverged but stayed finite
    statistics.py    per-variant summaries, bootstrap intervals, Welch + Holm
    fanova_fit.py    fANOVA per group with bootstrap intervals (fanova_compat.py: fanova here)
    ped_anova.py     Optuna's PED-ANOVA per group beside it (what optuna-dashboard shows)
    scorecard.py     the paper's findings judged on this study
    ranks.py         the rank statistic of a variant against vanilla, and the shift it speaks of
    boundaries.py    group-sequential boundaries (alpha spending) at any looks and caps
    sequential.py    the verdicts: every variant against vanilla by the rank test, fixed (one look) or
                     in rounds (search.until=decided), at a family-wise level (sequential.csv and
                     sequential.png show a sweep in rounds look by look)

cfg keys: conf/analysis/default.yaml.

Which trials count. A trial is *usable* when its state is COMPLETE, it has no `failure`
user attribute (our trainer sets one when the loss became NaN or inf), and its
validation metric and analysed metric are finite. A usable trial that the diverged rule
flags is listed (trials.csv column `diverged`) and counted, but left out of fANOVA, box
plots and tests; the report gives the pooled fractions without the rule too.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

import harness
from harness.analysis import (diverged, fanova_fit, figures, ped_anova, read, report, scorecard, sequential,
                              statistics)
from harness.analysis.read import POOLED
from harness.errors import UserError
from harness.storage import move_password, open_storage, redact

# Every key and its default: conf/analysis/default.yaml, the one place they are written,
# read here too so that run() takes a partial mapping (a script's, a test's) as well.
DEFAULTS = OmegaConf.to_container(OmegaConf.load(harness.project_root() / "conf" / "analysis" / "default.yaml"))
DEFAULTS.pop("defaults", None)  # Hydra's defaults list of the file, not a key of the analysis
IMPORTANCE_COLUMNS = ["variant", "term", "fraction", "std", "ci_low", "ci_high", "optuna_fraction"]


def _options(cfg) -> dict:
    options = dict(DEFAULTS)
    options.update({k: cfg[k] for k in cfg.keys()} if hasattr(cfg, "keys") else {})
    if options.get("margin") is not None and not float(options["margin"]) > 0:
        raise UserError(f"analysis.margin={options['margin']}: give a positive shift in the metric's units, "
                        "or null for the task's default.")
    if not 0 < float(options["alpha"]) < 0.5:
        raise UserError(f"analysis.alpha={options['alpha']}: give a level in (0, 0.5), e.g. 0.05.")
    if not options.get("dataset"):
        raise UserError("analysis.dataset is not set: name the data set of the studies, "
                        "e.g. `odyssey analyze analysis.dataset=jsb_chorales`.")
    if not 0 < float(options["top_fraction"]) <= 1:
        raise UserError("analysis.top_fraction must lie in (0, 1], e.g. 0.1 for the best 10 %.")
    if not 0 < float(options["ped_anova_target_quantile"]) < float(options["ped_anova_region_quantile"]) <= 1:
        raise UserError("analysis.ped_anova_target_quantile and analysis.ped_anova_region_quantile must satisfy "
                        "0 < target < region <= 1, e.g. 0.1 and 1.0.")
    if not 0 < float(options["ci_level"]) < 1:
        raise UserError("analysis.ci_level must lie in (0, 1), e.g. 0.95.")
    if options["diverged_rule"] not in diverged.RULES:
        raise UserError(f"analysis.diverged_rule must be one of {', '.join(diverged.RULES)}.")
    sequential.checked_multiplicity(options["multiplicity"])
    if options["diverged_anchor"] not in diverged.ANCHORS:
        raise UserError(f"analysis.diverged_anchor must be one of {', '.join(diverged.ANCHORS)}.")
    for key in ("n_bootstrap", "bootstrap_trees", "n_trees"):
        if int(options[key]) < (0 if key == "n_bootstrap" else 1):
            raise UserError(f"analysis.{key} must be a positive integer (n_bootstrap may be 0).")
    return options


def run(cfg) -> Path:
    """Analyse every study of cfg.dataset in cfg.storage; return the path of report.md."""
    options = _options(cfg)
    dataset = str(options["dataset"])
    recipe = options["recipe"]
    if recipe is not None and not isinstance(recipe, str):
        raise UserError(f"analysis.recipe={recipe!r}: harness.analysis.run reads one recipe; harness.analysis.compare "
                        "puts several side by side (odyssey analyze does that for a list).")
    default = dataset if recipe in (None, read.GREFF) else f"{dataset}.{recipe}"
    out = Path(options["out"]) if options["out"] else (
        harness.project_root() / "results" / "analysis" / default)
    if not out.is_absolute():
        out = harness.project_root() / out
    started = time.time()
    options["storage"] = move_password(options["storage"])  # a password goes to PGPASSWORD, never on
    print(f"[analyze] reading studies of {dataset!r} from {redact(options['storage'])}")
    storage = open_storage(options["storage"], key="analysis.storage", create=False)  # never a new, empty one
    studies = read.load(storage, dataset, str(options["metric"]), recipe)
    column, sign = studies.metric, studies.sign
    out.mkdir(parents=True, exist_ok=True)
    trials = studies.trials
    print(f"[analyze] {len(trials)} trials in {trials.variant.nunique()} variants")
    for name, reason in studies.mixed.items():
        print(f"[analyze] study {name} is mixed: {reason}; its trials are not one random search", flush=True)

    table = trials.rename(columns={c: c[len("param:"):] for c in trials.columns
                                   if c.startswith("param:")})
    usable = table[table.excluded == ""]
    flags, fences = diverged.flag(usable, column, sign, str(options["diverged_rule"]),
                                  float(options["diverged_k"]), float(options["diverged_ratio"]),
                                  anchor=str(options["diverged_anchor"]),
                                  reference=str(options["reference_variant"]))
    table["diverged"] = False
    table.loc[flags.index, "diverged"] = flags
    table.to_csv(out / "trials.csv", index=False)
    usable = table[table.excluded == ""]
    screened = usable[~usable.diverged].copy()
    task, options["task_reason"] = scorecard.task_of(dataset, options.get("task"), studies.task)
    print(f"[analyze] task: {task or 'unknown'} ({options['task_reason']})")
    options["margin"], options["margin_reason"] = scorecard.margin_for(task, options.get("margin"))
    reference = str(options["reference_variant"])
    series_of = {v: sign * np.asarray(y, dtype=float) for v, y in studies.series.items()}  # lower is better
    if options["margin"] is None and reference in series_of:  # no task default: derived from vanilla's first trials
        options["margin"], options["margin_reason"] = scorecard.derived_margin(series_of[reference])
    paths, families = sequential.judge_study(series_of, studies.sequential, reference, float(options["alpha"]),
                                             options["margin"], str(options["multiplicity"]))
    top = statistics.top_trials(screened, float(options["top_fraction"]), sign)
    variants = statistics.variants_table(table, screened, top, column, sign, options,
                                         {v: rows[-1] for v, rows in paths.items() if rows}, families)
    variants.to_csv(out / "variants.csv", index=False)

    groups = [POOLED] + sorted(screened.variant.unique())
    results, rows = {}, []
    for group in groups:
        part = screened if group == POOLED else screened[screened.variant == group]
        if group != POOLED and len(groups) == 2:  # a single variant: the pooled analysis
            result = fanova_fit.FanovaResult(**{**vars(results[POOLED]), "group": group})
            result.rows = [{**row, "variant": group} for row in results[POOLED].rows]
        else:
            print(f"[analyze] fANOVA of {group} ({len(part)} trials, "
                  f"{options['n_bootstrap']} bootstrap resamples)", flush=True)
            result = fanova_fit.analyse(group, part, column, studies.distributions, options)
            if result.note:
                print(f"[analyze]   {result.note}")
        results[group] = result
        rows += result.rows
    importance = pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
    print(f"[analyze] PED-ANOVA of {', '.join(groups)} ({ped_anova.settings(options)})", flush=True)
    ped = {group: ped_anova.analyse(group, screened if group == POOLED else screened[screened.variant == group],
                                    column, studies.distributions, sign, options) for group in groups}
    ped_anova.beside(importance, ped, options).to_csv(out / "importance.csv", index=False)

    unscreened = None  # the headline without the rule, when the rule touched anything
    if int(flags.sum()):
        unscreened = fanova_fit.analyse(POOLED, usable, column, studies.distributions, options,
                                        bootstrap=False)
        pd.DataFrame(unscreened.rows, columns=IMPORTANCE_COLUMNS[:4]).to_csv(
            out / "importance_without_rule.csv", index=False)

    effects = results[POOLED].effects if POOLED in results else {}
    card = scorecard.judge(dataset, task, variants, importance, effects, options, sign)
    card.to_csv(out / "scorecard.csv", index=False)

    curves = _best_curves(screened, studies.curves, int(options["curves_per_variant"]), sign)
    paths = {v: rows for v, rows in paths.items() if families.get(v) == "rounds"}
    if paths:  # a sweep with search.until=decided: each comparison at every look
        pd.DataFrame([{"variant": v, **row} for v, rows in sorted(paths.items()) for row in rows]).to_csv(
            out / "sequential.csv", index=False)
    drawn = {}
    if options["figures"]:
        print("[analyze] drawing figures")
        drawn = figures.draw_all(out, screened, top, variants, results, curves, column, options, pooled=POOLED)
        if paths:
            drawn["sequential"] = figures.sequential_paths(out, paths, options["reference_variant"],
                                                           next(iter(studies.sequential.values())).get("margin"),
                                                           dataset)
    path = report.write(out, dataset=dataset, recipe=studies.recipe, pooled=POOLED, storage=redact(options["storage"]),
                        mixed=studies.mixed,
                        trials=table,
                        variants=variants, importance=importance, results=results, ped_anova=ped,
                        unscreened=unscreened, fences=fences, scorecard=card, task=task,
                        curves=curves, figures=drawn, column=column, sign=sign, options=options,
                        sequential=studies.sequential,
                        seconds=time.time() - started)
    print(f"[analyze] done in {time.time() - started:.1f} s: {path}")
    return path


def _best_curves(screened, curves, per_variant, sign) -> dict:
    """{variant: [(number, epochs, values), ...]}: the best trials' learning curves."""
    chosen = {}
    if not curves:
        return chosen
    for variant, group in screened.groupby("variant"):
        order = np.argsort(sign * group["validation_metric"].to_numpy(dtype=float), kind="stable")
        picked = []
        for number in group["number"].to_numpy()[order]:
            if (variant, int(number)) in curves:
                picked.append((int(number), *curves[(variant, int(number))]))
            if len(picked) == per_variant:
                break
        if picked:
            chosen[variant] = picked
    return chosen
