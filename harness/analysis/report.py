"""report.md of the analysis stage: one Markdown page, figures beside it in the same
directory, readable without the tool. It writes what harness.analysis computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A Markdown table (no `tabulate` needed)."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _interval(row, value, low, high, digits=3):
    v, lo, hi = row[value], row[low], row[high]
    if not np.isfinite(v):
        return ""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def _summary(card) -> list[str]:
    applicable = card[card.verdict != "not applicable"]
    counts = applicable.verdict.value_counts()
    said = [f"{counts.get(v, 0)} {v}" for v in ("agrees", "disagrees", "undecided")]
    lines = [f"Of the paper's {len(card)} findings, {len(applicable)} apply to this study: "
             + ", ".join(said) + "."]
    for verdict, words in (("agrees", "It reproduces"), ("disagrees", "It contradicts"),
                           ("undecided", "It cannot decide")):
        found = list(applicable[applicable.verdict == verdict].finding)
        if found:
            lines.append(f"{words}: " + "; ".join(found) + ".")
    return [" ".join(lines), ""]


def pruned_lines(trials) -> list[str]:
    """What pruning (search.pruner) cut: how many trials, the epochs and seconds they ran,
    beside the trials that ran to their end (what a pruned trial would have cost is not known)."""
    pruned = trials[trials.state == "PRUNED"]
    if not len(pruned):
        return []
    full = trials[trials.state == "COMPLETE"]
    line = (f"{len(pruned)} of {len(trials)} trials were pruned (search.pruner): they count toward n_trials "
            f"and are left out of fANOVA, box plots and tests. Together they trained {int(pruned.epochs.sum())} "
            f"epochs in {pruned.seconds.sum():.0f} s (mean {pruned.epochs.mean():.1f} epochs, "
            f"{pruned.seconds.mean():.1f} s each)")
    if len(full):
        line += (f"; the {len(full)} complete trials ran a mean of {full.epochs.mean():.1f} epochs in "
                 f"{full.seconds.mean():.1f} s each")
    return [line + ".", ""]


def sequential_lines(sequential: dict, variants, counted_rows, reference, figure: str | None = None) -> list[str]:
    """The rounds of a sweep with search.until=decided: counted trials each variant got, the
    verdict at its last look as this analysis judges the recorded looks, what the sweep
    recorded at its last round beside it, and the figure of every look."""
    if not sequential:
        return []
    first = next(iter(sequential.values()))
    margin = first.get("margin")
    lines = ["## Sequential study", "",
             f"The sweep ran in rounds of {first.get('look_every')} trials a variant (search.until=decided), "
             f"judging each variant against {reference} after every round by the group-sequential rank test "
             f"(margin {'none' if margin is None else f'±{margin:g}'}, cap {first.get('cap')} trials a variant; "
             "docs/analysis.md, \"Sequential studies\"), and stopped each variant when decided. The verdicts are "
             "this analysis's, at the looks recorded with the study; `recorded` is what the sweep stored at its "
             "last round (they differ only where the method changed since).", ""]
    counts = counted_rows.groupby("variant").size()  # not the lost, surplus or duplicate ones
    judged = variants.set_index("variant") if len(variants) else variants
    rows = []
    for v, o in sorted(sequential.items()):
        row = judged.loc[v] if v in judged.index else None
        rows.append({"variant": v, "trials": int(counts.get(v, 0)),
                     "verdict": "" if row is None else row["comparison"],
                     "at look": "" if row is None or not np.isfinite(row["rank_look"]) else int(row["rank_look"]),
                     "level": "" if row is None else f"{row['rank_level']:.3g}",
                     "recorded": f"{o.get('verdict')} at {o.get('look')}"})
    rows.append({"variant": reference, "trials": int(counts.get(reference, 0)), "verdict": "(reference)",
                 "at look": "", "level": "", "recorded": ""})
    lines += [table(pd.DataFrame(rows)), ""]
    if figure:
        lines += [f"Each comparison at every look, up to the one that decided it (`sequential.csv`): the "
                  f"Hodges-Lehmann shift of a variant's trials against {reference}'s and the repeated interval "
                  "of the shift that equivalence reads (inside the margin: *equivalent*). *Worse* or *better* is "
                  "decided when |Z| reaches the boundary of the variant's level (`sequential.csv`: `z`, "
                  "`boundary`, `level`, and the interval of that test, `shift_low` and `shift_high`, which then "
                  "excludes 0).", "",
                  f"![The sequential study]({figure})", ""]
    return lines


def _shift(row) -> str:
    """The rank test's shift with the interval its verdict reads (that of the difference for
    worse or better, of equivalence otherwise)."""
    if not row.get("comparison"):
        return ""
    difference = row["comparison"] in ("worse", "better")
    low, high = ((row["rank_shift_low"], row["rank_shift_high"]) if difference
                 else (row["rank_equivalence_low"], row["rank_equivalence_high"]))
    return f"{row['rank_shift']:+.3g} [{low:.3g}, {high:.3g}]"


def verdict_rules(variants, options, reference) -> str:
    """The paragraph under the scorecard: the method, the families and their levels, the margin."""
    alpha, multiplicity = options["alpha"], options.get("multiplicity", "holm")
    families = variants[variants.family != ""].groupby("family").variant.apply(list) if len(variants) else {}
    named = {"rounds": "swept in rounds (search.until=decided; judged at the looks recorded with the study)",
             "fixed": "of fixed size (one look)"}
    family_words = "; ".join(f"{', '.join(sorted(names))}: {named.get(kind, kind)}" for kind, names in
                             dict(families).items())
    level = (f"at a family-wise level of {alpha} over the variants of each family (Holm-type procedure for "
             "group-sequential tests, Maurer & Bretz 2013; Holm's for one look)" if multiplicity == "holm"
             else f"each at {alpha} on its own (analysis.multiplicity=none: no family-wise level)")
    margin = (f"Margin: {options['margin']:g} ({options['margin_reason']})." if options.get("margin") is not None
              else f"Margin: none ({options.get('margin_reason', '')}).")
    return (f"Rules: each variant is compared with {reference} by the Wilcoxon-Mann-Whitney rank test on every counted "
            "trial, a failed or diverged run ranking worst. It is *worse* or *better* when the test says so "
            f"{level}; *equivalent* when the interval of the shift that inverts the same test lies inside ±margin "
            f"(two one-sided tests, at {alpha} each: an intersection-union claim needs no correction); otherwise "
            "*undecided*. The shift is the Hodges-Lehmann shift of a variant's trials against "
            f"{reference}'s (a median difference, not a difference of means); an end at inf means no finite shift "
            "makes the variant's diverged runs as good. Families: " + (family_words or "none") + ". Assumptions: "
            "trials are independent draws of the random search; the boundaries are asymptotic (normal); the "
            "directional claims are about the shift when the two spreads are alike (docs/analysis.md, "
            "\"Verdicts\", measures what unequal spreads do). A finding of a difference disagrees only on "
            "*equivalent* or the opposite difference; a finding of no difference agrees only on *equivalent*. "
            + margin + " Welch's t-test on the converged runs, the paper's test, is in the evidence and the "
            "variants table as information.")


def fanova_singles(importance: pd.DataFrame, group: str) -> dict[str, float]:
    """{parameter: fANOVA fraction} of one group (no pairs, no higher_order)."""
    rows = importance[(importance.variant == group) & ~importance.term.str.contains(":")
                      & (importance.term != "higher_order")]
    return dict(zip(rows.term, rows.fraction))


def order(importances: dict) -> list[str]:
    """Parameter names, most important first (ties by name, so the order is stable)."""
    return sorted(importances, key=lambda name: (-importances[name], name))


def order_sentence(fanova: dict, ped: dict, intervals: dict | None = None) -> str:
    """One sentence on whether fANOVA and PED-ANOVA put the same parameters first and second,
    naming both orders where they do not. `intervals`: {parameter: (ci_low, ci_high)} of the
    fANOVA fractions, to say when fANOVA's own second place is within its intervals' reach."""
    by_fanova, by_ped = order(fanova), order(ped)
    places = [place for i, place in enumerate(("first", "second"))
              if i < min(len(by_fanova), len(by_ped)) and by_fanova[i] != by_ped[i]]
    if not places:
        named = " and ".join(f"`{name}` {place}" for name, place in zip(by_fanova, ("first", "second")))
        return f"Both put {named}."
    sentence = (f"fANOVA and PED-ANOVA disagree on which parameter is {' and '.join(places)}: fANOVA orders "
                + " > ".join(f"`{n}`" for n in by_fanova) + ", PED-ANOVA "
                + " > ".join(f"`{n}`" for n in by_ped) + ".")
    if "second" in places and len(by_fanova) > 2 and intervals:
        high, low = intervals.get(by_fanova[2], (np.nan, np.nan))[1], intervals.get(by_fanova[1], (np.nan, np.nan))[0]
        if np.isfinite(high) and np.isfinite(low) and high >= low:
            sentence += (f" fANOVA's own second place is not settled: the bootstrap intervals of `{by_fanova[1]}` "
                         f"and `{by_fanova[2]}` overlap.")
    return sentence


def ped_anova_lines(importance, ped, pooled, options, metric_words) -> list[str]:
    """The section that puts PED-ANOVA beside fANOVA: what each measures, both per group, and
    where they disagree on which parameter is first or second."""
    if not ped:
        return []
    fitted = {g: r for g, r in ped.items() if r.importances}
    lines = ["## PED-ANOVA beside fANOVA", "",
             "fANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014; the paper's method, above) splits the variance of "
             f"{metric_words} over the whole search space: a parameter counts as much as it moves the metric "
             "anywhere, in the bad regions too. PED-ANOVA (Watanabe, Bansal & Hutter, IJCAI 2023; Optuna's "
             f"PedAnovaImportanceEvaluator, {next(iter(ped.values())).settings}) asks what one must get right to reach the best "
             f"{float(options['ped_anova_target_quantile']):.0%} of the trials: how far each parameter's "
             "distribution among those trials departs from its distribution among all of them (a Pearson "
             "divergence of two Parzen estimates), normalised to sum to 1, with no interaction terms. They differ "
             "where a parameter spreads the metric widely but leaves the best trials anywhere in its range (much "
             "fANOVA, little PED-ANOVA), or changes the metric little overall but must sit in a narrow range for "
             "the best trials (the other way round). optuna-dashboard's importances are PED-ANOVA (Optuna 5's "
             "default evaluator, called with its defaults), which is why the dashboard shows other numbers than "
             "fANOVA's; it computes them per study on the objective (the validation metric) of every complete "
             f"trial, here they are on {metric_words} of the trials fANOVA uses (diverged runs set aside), so a "
             "variant's numbers are close to the dashboard's, not equal (docs/analysis.md, \"PED-ANOVA beside "
             "fANOVA\"). Column `ped_anova` of `importance.csv`.", ""]
    notes = [f"- `{g}`: {r.note}" for g, r in ped.items() if r.note]
    lines += notes + ([""] if notes else [])
    if not fitted:
        return lines
    fanova = {group: fanova_singles(importance, group) for group in fitted}
    rows = []
    for group, result in fitted.items():
        row = {"variant": group, "trials": result.n_trials}
        for name in sorted(result.importances):
            value = fanova[group].get(name, np.nan)
            row[name] = ("" if not np.isfinite(value) else f"{value:.2f}") + f" / {result.importances[name]:.2f}"
        row["fANOVA order"] = " > ".join(order(fanova[group]))
        row["PED-ANOVA order"] = " > ".join(order(result.importances))
        rows.append(row)
    lines += ["Each parameter's fANOVA fraction / PED-ANOVA importance, and the order each puts them in:", "",
              table(pd.DataFrame(rows)), ""]
    if fanova.get(pooled):
        rows = importance[importance.variant == pooled]
        intervals = {t: (lo, hi) for t, lo, hi in zip(rows.term, rows.ci_low, rows.ci_high)}
        lines += ["All variants pooled: " + order_sentence(fanova[pooled], fitted[pooled].importances, intervals), ""]
    compared = [g for g in fitted if g != pooled and fanova[g]]
    differ = [g for g in compared if order(fanova[g])[:2] != order(fitted[g].importances)[:2]]
    if differ:
        lines += ["They put different parameters first or second for " + ", ".join(f"`{g}`" for g in differ)
                  + f" ({len(differ)} of {len(compared)} variants; the orders are in the table).", ""]
    elif len(compared) > 1:
        lines += [f"For each of the {len(compared)} variants they put the same parameters first and second.", ""]
    return lines


def header_lines(dataset, recipe, storage, trials, task, options, metric_words, better, mixed) -> list[str]:
    """The title, what was analysed and how, and a line for each mixed study."""
    lines = [f"# Analysis of `{dataset}`" + ("" if recipe == "greff" else f", recipe `{recipe}`"), "",
             f"Storage: `{storage}`. Training recipe: `{recipe}`. Studies: {trials.variant.nunique()} variants, "
             f"{len(trials)} trials. Analysed: {metric_words} ({better} is better); the best "
             f"{options['top_fraction']:.0%} are chosen by the validation metric. Task: "
             f"{task or 'unknown'}" + (f" ({options['task_reason']})" if options.get("task_reason") else "")
             + f". Intervals are {options['ci_level']:.0%} percentile "
             f"bootstrap intervals over trials ({options['n_bootstrap']} resamples).", ""]

    for name, reason in (mixed or {}).items():
        lines += [f"**Study `{name}` is mixed**: {reason}. Its trials are not one random search, so its fANOVA "
                  "and tests describe a blend of protocols (docs/training.md, \"The protocol of a study\").", ""]
    return lines


def paper_lines(scorecard, variants, options, reference) -> list[str]:
    """The paper's findings: the summary, the scorecard and the rules of its verdicts."""
    lines = []
    lines += ["## What this study says about the paper", ""]
    lines += _summary(scorecard)
    lines += [table(scorecard[["finding", "verdict", "evidence"]]), "",
              verdict_rules(variants, options, reference)
              + " A claim about a fraction is decided only when its whole bootstrap interval lies on one side "
              "of the threshold. Table: `scorecard.csv`; the rules in full: docs/analysis.md.", ""]
    return lines


def trials_lines(trials, variants, sequential, figures, reference) -> list[str]:
    """The sequential study, if any, then the trials: states, those not counted, those excluded, pruned."""
    lines = []
    counted_mask = trials.counted.astype(bool)  # harness.analysis.read: lost, surplus, duplicate, retried are not
    counted_rows, redone = trials[counted_mask], trials[~counted_mask]
    lines += sequential_lines(sequential or {}, variants, counted_rows, reference, figures.get("sequential"))
    lines += ["## Trials", "", table(pd.crosstab(trials.variant, trials.state).reset_index()), ""]
    if len(redone):
        reasons = redone.excluded.value_counts()
        lines += [f"{len(redone)} of {len(trials)} trials do not count toward n_trials and are left out of "
                  "everything below: " + ", ".join(f"{n} {r}" for r, n in reasons.items()) + " (lost = stopped by "
                  "Ctrl-C, SIGTERM or a time limit, and redone; surplus = started past the target; duplicate = a "
                  "second result of one configuration; retried = taken for dead, and redone by its retry). None of "
                  "them is a failure of the model.", ""]
    excluded = counted_rows[counted_rows.excluded != ""]
    if len(excluded):
        reasons = excluded.excluded.value_counts()
        lines += [f"{len(excluded)} of {len(counted_rows)} counted trials are excluded from fANOVA, "
                  "box plots and tests: " + ", ".join(f"{n} {r}" for r, n in reasons.items())
                  + " (failed = FAIL state, a `failure` attribute such as a NaN/inf loss, or a "
                  "non-finite metric).", ""]
        for variant, part in excluded.groupby("variant"):
            if len(part) == len(counted_rows[counted_rows.variant == variant]):
                lines += [f"Variant `{variant}` has no usable trial.", ""]
    else:
        lines += ["Every counted trial finished with a finite validation and analysed metric.", ""]
    lines += pruned_lines(trials)
    return lines


def diverged_lines(trials, options, fences, unscreened, results, pooled, column, sign) -> list[str]:
    """The diverged-but-finite trials set aside, with the fence that set them aside, and the pooled
    fANOVA without the rule beside the headline."""
    lines = []
    flagged = trials[trials.diverged]
    if options["diverged_rule"] == "none":
        lines += ["The rule for diverged-but-finite trials is off (analysis.diverged_rule=none).", ""]
    else:
        # diverged.flag: one fence for every variant, drawn from an anchor that diverging runs cannot
        # move (the reference's trials, or all of them pooled); anchor `own` gives each variant its own
        def drawn(fence, whose):
            side = ("above" if sign > 0 else "below") + f" {fence.value:.4g}"
            if fence.rule == "ratio":
                return (f"{side}, {options['diverged_ratio']:g} times worse than the median "
                        f"{fence.centre:.4g} of {whose} {fence.n_trials} usable trials")
            return (f"{side}, {options['diverged_k']:g} interquartile ranges of {whose} {fence.n_trials} "
                    f"usable trials beyond their {'Q3' if sign > 0 else 'Q1'} {fence.centre:.4g}")

        def listed(values):
            values = sorted(values, key=lambda x: sign * x)
            return (", ".join(f"{x:.4g}" for x in values) if len(values) <= 8
                    else f"{values[0]:.4g} to {values[-1]:.4g}")

        usable_rows = trials[trials.excluded == ""]
        shared = next((f for f in fences.values() if f.anchor != "own"), None)
        if not fences:
            anchor = (f"anchor `{options['diverged_anchor']}`, which has too few usable trials, no spread, "
                      "or, for a ratio, a value that is not positive, so no fence was drawn")
        elif shared is not None:
            whose = "every variant's" if shared.anchor == "pooled" else f"`{shared.source}`'s"
            anchor = (f"anchor `{shared.anchor}`" + (f", since {shared.why}" if shared.why else "")
                      + "; one fence for every variant, so that one variant's catastrophe cannot move it: "
                      + drawn(shared, whose))
        else:
            anchor = "anchor `own`: each variant's fence from its own trials"
        parts = []
        for variant, part in flagged.groupby("variant"):
            n = int((usable_rows.variant == variant).sum())
            whole = (", every usable run: the variant is out of the fANOVA, box plots and tests, and the "
                     "pooled fractions come from the other variants" if len(part) == n else "")
            own = f"; fence {drawn(fences[variant], 'its')}" if shared is None else ""
            parts.append(f"{variant} {len(part)} of {n}{whole} (values {listed(part[column])}{own})")
        lines += [f"Diverged but finite (rule `{options['diverged_rule']}`, {anchor}; docs/analysis.md, "
                  "\"Diverged trials\"): "
                  f"{len(flagged)} trial(s) set aside" + (": " + "; ".join(parts) if parts else "") + ".", ""]
        if unscreened is not None and unscreened.fitted:
            with_rule = {r["term"]: r["fraction"] for r in results[pooled].rows} if pooled in results else {}
            without = {r["term"]: r["fraction"] for r in unscreened.rows}
            terms = [t for t in without if ":" not in t]
            lines += ["Pooled fANOVA without the rule (all usable trials, "
                      f"{unscreened.n_trials}) beside the headline with it:", "",
                      table(pd.DataFrame({"term": terms,
                                           "without rule": [without[t] for t in terms],
                                           "with rule": [with_rule.get(t, np.nan) for t in terms]}), 2),
                      "", "Full table: `importance_without_rule.csv`.", ""]
    return lines


def variants_lines(trials, variants, options, reference, figures) -> list[str]:
    """Every variant against the reference: Welch's tests (information), the medians, means,
    rank verdicts and shifts, and the box plots."""
    lines = []
    lines += ["## Variants", ""]
    usable_variants = set(trials[(trials.excluded == "") & ~trials.diverged].variant)
    if reference not in usable_variants:
        lines += [f"There is no usable `{reference}` study, so Welch's t-tests against it are "
                  "skipped (their columns are empty).", ""]
    else:
        for key, what in (("all", "all trials"), ("top", f"the best {options['top_fraction']:.0%}")):
            differ = list(variants[variants[f"differs_{key}"]].variant)
            holm = list(variants[variants[f"differs_holm_{key}"]].variant)
            lines += [f"Differ from `{reference}` by Welch's t-test (p < {options['alpha']}), "
                      f"{what}: {', '.join(differ) if differ else 'none'}; after Holm's "
                      f"correction: {', '.join(holm) if holm else 'none'}."]
        lines += [""]
    shown = variants[["variant", "n_trials", "n_usable", "n_failed", "n_diverged"]].copy()
    shown["median (all)"] = [_interval(r, "median_all", "median_all_ci_low", "median_all_ci_high")
                             for _, r in variants.iterrows()]
    shown[f"mean best {options['top_fraction']:.0%}"] = [
        _interval(r, "mean_top", "mean_top_ci_low", "mean_top_ci_high") for _, r in variants.iterrows()]
    shown[f"mean − {reference}"] = [
        _interval(r, "mean_diff_all", "mean_diff_all_ci_low", "mean_diff_all_ci_high")
        for _, r in variants.iterrows()]
    shown[f"{1 - 2 * options['alpha']:.0%} Welch interval"] = [
        "" if not np.isfinite(r["tost_low"]) else f"[{r['tost_low']:.3g}, {r['tost_high']:.3g}]"
        for _, r in variants.iterrows()]
    shown["verdict (rank test)"] = variants["comparison"]
    shown["shift"] = [_shift(r) for _, r in variants.iterrows()]
    for key in ("all", "top"):
        shown[f"Welch p ({key})"] = variants[f"welch_p_{key}"]
        shown[f"Holm p ({key})"] = variants[f"welch_holm_{key}"]
    shown["parameters"] = variants["mean_n_params"].round().astype("Int64")
    lines += [table(shown, 3), "", "All columns: `variants.csv`.", ""]
    if "boxplots" in figures:
        lines += [f"![Metric per variant]({figures['boxplots']})", ""]
    return lines


def importance_lines(importance, results, pooled, options, metric_words, figures, seconds) -> list[str]:
    """fANOVA's fractions pooled and per variant, the pooled forest's effects, the cost, the figures."""
    lines = []
    lines += ["## Hyperparameter importance (fANOVA)", "",
              f"Fraction of the variance of {metric_words} explained by each parameter alone, "
              "by each pair's interaction (`a:b`), and by all interactions together "
              "(`higher_order` = 1 − the sum of the single fractions); `std` across the "
              f"{options['n_trees']} trees; `ci_low`–`ci_high` the bootstrap interval over trials "
              f"({options['n_bootstrap']} resamples of {options['bootstrap_trees']} trees each). "
              "Log-sampled parameters are analysed as log10. `optuna_fraction` is Optuna's "
              "FanovaImportanceEvaluator on the same data (main effects only, its own forest, "
              "not normalised) as a cross-check.", ""]
    for group, result in results.items():
        if not result.fitted:
            lines += [f"- `{group}`: {result.note}"]
        if result.left_out:
            lines += [f"- `{group}`: analysed on the parameters every trial has; left out: "
                      + ", ".join(f"`{k}` ({why})" for k, why in result.left_out.items())]
    lines += [""]
    if len(importance):
        together = importance[importance.variant == pooled]
        if len(together):
            lines += ["Pooled over all variants:", "", table(together.drop(columns="variant"), 3), ""]
        singles = importance[~importance.term.str.contains(":")].copy()
        singles["cell"] = [f"{f:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{f:.2f}"
                           for f, lo, hi in zip(singles.fraction, singles.ci_low, singles.ci_high)]
        wide = singles.pivot(index="variant", columns="term", values="cell").reset_index()
        lines += ["Single-parameter fractions per variant with intervals (full table: "
                  "`importance.csv`):", "", table(wide), ""]
    effects = results[pooled].effects if pooled in results else {}
    if effects:
        words = {"noise_effect": "predicted metric at the largest minus the smallest input noise",
                 "lr_shift": "decades the best learning rate moves from the smallest to the "
                             "largest hidden size"}
        lines += ["Effects from the pooled forest (bootstrap intervals): "
                  + "; ".join(f"{words.get(k, k)}: {v:.3g} [{lo:.3g}, {hi:.3g}]"
                              for k, (v, lo, hi) in effects.items()) + ".", ""]
    cost = [(g, r.seconds, r.bootstrap_seconds, r.n_resamples) for g, r in results.items() if r.fitted]
    if cost:
        lines += ["Cost: " + "; ".join(f"`{g}` {a:.1f} s forest + {b:.1f} s for {n} resamples"
                                       for g, a, b, n in cost)
                  + f". The whole analysis took {seconds:.0f} s.", ""]
    for key, caption in (("fanova_pie", "fANOVA, all variants"),
                         ("fanova_bars", "fANOVA fractions with intervals"),
                         ("fanova_pies_by_variant", "fANOVA per variant"),
                         ("marginals", "Predicted marginal metric"),
                         ("interaction", "Interaction")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", ""]
    return lines


def curves_lines(figures, curves, options) -> list[str]:
    """The learning curves, or why there are none."""
    lines = []
    lines += ["## Learning curves", ""]
    if "learning_curves" in figures:
        lines += [f"Validation metric per epoch (the trials' reported intermediate values) of "
                  f"each variant's best {options['curves_per_variant']} trials by validation.", "",
                  f"![Learning curves]({figures['learning_curves']})", ""]
    elif curves:
        lines += ["The trials report per-epoch values (figures were not drawn).", ""]
    else:
        lines += ["The trials report no intermediate values, so there are no learning curves.", ""]
    return lines


def reproducibility_lines() -> list[str]:
    """What reproduces from a study and what does not."""
    lines = []
    lines += ["## Reproducibility", "",
              "The trials' parameters and seeds follow from the sweep's seed, the study and the "
              "trial number; the analysis is seeded (`analysis.seed`). The trained metrics are "
              "bit-identical only with the same machine type, engine, thread count and compiled "
              "kernels: another floating-point order, amplified by online SGD, makes some trials "
              "differ like trials of another seed (measured on a 48-trial JSB study, native against "
              "torch engine: 34 of 48 test metrics within 1e-6, 7 moved by more than 1 %, and one "
              "diverging run that crossed the diverged rule's fence moved the pooled learning-rate "
              "fraction by 0.33). Expect the same trials and, from a large enough study, the same "
              "findings, not the same metrics trial by trial (docs/analysis.md, \"Reproducibility\").",
              "", "Every figure is also saved as PDF beside this page. Tables: `trials.csv`, "
              "`variants.csv`, `importance.csv`, `scorecard.csv`.", ""]
    return lines


def write(out: Path, *, dataset, recipe="greff", pooled, storage, trials, variants, importance, results, unscreened,
          fences, scorecard, task, curves, figures, column, sign, options, seconds, sequential=None,
          mixed=None, ped_anova=None) -> Path:
    """report.md in `out`: its sections in order, each from what the analysis computed."""
    reference = options["reference_variant"]
    better = "lower" if sign > 0 else "higher"
    metric_words = "the test metric" if column == "test_metric" else "the objective value"
    lines = header_lines(dataset, recipe, storage, trials, task, options, metric_words, better, mixed)
    lines += paper_lines(scorecard, variants, options, reference)
    lines += trials_lines(trials, variants, sequential, figures, reference)
    lines += diverged_lines(trials, options, fences, unscreened, results, pooled, column, sign)
    lines += variants_lines(trials, variants, options, reference, figures)
    lines += importance_lines(importance, results, pooled, options, metric_words, figures, seconds)
    lines += ped_anova_lines(importance, ped_anova or {}, pooled, options, metric_words)
    lines += curves_lines(figures, curves, options)
    lines += reproducibility_lines()
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
