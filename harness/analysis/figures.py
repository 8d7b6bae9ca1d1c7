"""Figures of the analysis stage, after Greff et al. (2017), Figs. 3-6.

Each figure is written as PNG (for the report) and PDF (for papers). `draw_all`
returns {name: file name of the PNG} for what it could draw. Figures only draw what
harness.analysis computed (fractions with their bootstrap intervals, marginal curves,
the interaction surface, the learning curves); nothing here imports the analysis.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

# The paper's words for the searched parameters (docs/training.md); anything else keeps its own name.
LABELS = {
    "learning_rate": "learning rate",
    "hidden_size": "hidden size (LSTM blocks)",
    "one_minus_momentum": "1 − momentum",
    "input_noise_std": "input noise (std. dev.)",
    "higher_order": "higher order",
}
COLORS = {
    "learning_rate": "#4c72b0",
    "hidden_size": "#dd8452",
    "one_minus_momentum": "#55a868",
    "input_noise_std": "#c44e52",
    "higher_order": "#bbbbbb",
}
OTHER_COLORS = ["#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
MARGINAL_ORDER = ["learning_rate", "hidden_size", "input_noise_std", "one_minus_momentum"]


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def _color(name: str, others: list[str]) -> str:
    if name in COLORS:
        return COLORS[name]
    if name not in others:
        others.append(name)
    return OTHER_COLORS[others.index(name) % len(OTHER_COLORS)]


def _log_axis(axis) -> None:
    """Log scale with plain tick labels (20, 50, 100 rather than 2x10^1) on short ranges."""
    low, high = sorted(axis.get_view_interval())
    if high / low < 100:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(ticker.NullFormatter())


def _save(fig, out: Path, stem: str) -> str:
    fig.savefig(out / f"{stem}.png", dpi=120, bbox_inches="tight")
    fig.savefig(out / f"{stem}.pdf", bbox_inches="tight")
    plt.close(fig)
    return f"{stem}.png"


def _slices(result) -> tuple[list[str], list[float]]:
    names = [p.name for p in result.parameters]
    fractions = {row["term"]: row["fraction"] for row in result.rows}
    terms = names + ["higher_order"]
    return terms, [max(fractions.get(t, 0.0), 0.0) for t in terms]


def _with_interval(result, term) -> str:
    """`learning rate 62 % [48-75]`: a slice's label with its bootstrap interval."""
    row = next((r for r in result.rows if r["term"] == term), None)
    if row is None:
        return label(term)
    text = f"{label(term)} {100 * row['fraction']:.0f} %"
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and np.isfinite(low) and np.isfinite(high):
        text += f" [{100 * max(low, 0):.0f}–{100 * high:.0f}]"
    return text


def _pie(ax, result, others, title):
    terms, sizes = _slices(result)
    colors = [_color(t, others) for t in terms]
    wedges, _, autotexts = ax.pie(sizes, colors=colors, startangle=90, counterclock=False,
                                  autopct=lambda v: f"{v:.0f} %" if v >= 4 else "",
                                  pctdistance=0.72, wedgeprops={"linewidth": 1, "edgecolor": "white"})
    for text in autotexts:
        text.set_fontsize(9)
    ax.set_title(title, fontsize=11)
    ax.set_aspect("equal")
    return wedges, terms


def pie_pooled(out, result, dataset) -> str:
    others = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    wedges, terms = _pie(ax, result, others,
                         f"{dataset}: share of test-metric variance\n(fANOVA, all variants, "
                         f"{result.n_trials} trials)")
    ax.legend(wedges, [_with_interval(result, t) for t in terms], loc="center left",
              bbox_to_anchor=(1.0, 0.5), frameon=False, title="share [95 % bootstrap interval]")
    return _save(fig, out, "fanova_pie")


def pies_by_variant(out, results, pooled) -> str | None:
    groups = [g for g, r in results.items() if g != pooled and r.fitted]
    if not groups:
        return None
    columns = min(4, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows + 0.5),
                             squeeze=False)
    others, legend = [], {}
    for ax, group in zip(axes.flat, groups):
        wedges, terms = _pie(ax, results[group], others, f"{group} ({results[group].n_trials})")
        legend.update(zip(terms, wedges))
    for ax, group in zip(axes.flat, groups):
        top = max(results[group].rows, key=lambda r: r["fraction"] if ":" not in r["term"] else -1)
        ax.set_xlabel(_with_interval(results[group], top["term"]), fontsize=8)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    fig.legend(list(legend.values()), [label(t) for t in legend], loc="lower center",
               ncol=min(5, len(legend)), frameon=False)
    fig.subplots_adjust(bottom=0.5 / (2.6 * rows + 0.5), top=0.95, hspace=0.15, wspace=0.05)
    return _save(fig, out, "fanova_pies_by_variant")


def bars(out, results, dataset) -> str | None:
    """Every group's single-parameter fractions and higher order, with bootstrap intervals."""
    groups = [g for g, r in results.items() if r.fitted]
    if not groups:
        return None
    terms = []
    for group in groups:
        for t in [p.name for p in results[group].parameters] + ["higher_order"]:
            if t not in terms:
                terms.append(t)
    terms = [t for t in terms if t != "higher_order"] + ["higher_order"]
    width = 0.8 / len(terms)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(terms) / 3) + 2), 3.8))
    others = []
    for k, term in enumerate(terms):
        xs, ys, low, high = [], [], [], []
        for i, group in enumerate(groups):
            row = next((r for r in results[group].rows if r["term"] == term), None)
            if row is None:
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(row["fraction"])
            lo, hi = row.get("ci_low", np.nan), row.get("ci_high", np.nan)
            low.append(row["fraction"] - lo if np.isfinite(lo) else 0.0)
            high.append(hi - row["fraction"] if np.isfinite(hi) else 0.0)
        ax.bar(xs, ys, width=width * 0.95, color=_color(term, others), label=label(term),
               yerr=[np.nan_to_num(np.maximum(low, 0)), np.nan_to_num(np.maximum(high, 0))],
               capsize=2,
               error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(groups)), [f"{g}\n({results[g].n_trials})" for g in groups],
                  rotation=45 if len(groups) > 6 else 0)
    ax.set_ylabel("share of variance")
    ax.set_ylim(0, 1.05)
    ax.axhline(2 / 3, color="#444444", linewidth=0.8, linestyle=":")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(f"{dataset}: fANOVA fractions with 95 % bootstrap intervals (dotted: 2/3)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "fanova_bars")


def boxplots(out, usable, top, variants, column, options, dataset) -> str | None:
    if usable.empty:
        return None
    reference = options["reference_variant"]
    order = list(variants[variants.n_usable > 0].variant)
    if reference in order:  # the reference first, as in the paper
        order.remove(reference)
        order.insert(0, reference)
    table = variants.set_index("variant")
    metric_label = column.replace("_", " ")
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(order) + 3), 4.6), sharey=False)
    panels = [(usable, "all", "all trials"),
              (top, "top", f"best {options['top_fraction']:.0%} by validation")]
    for ax, (frame, key, title) in zip(axes, panels):
        counts = ax.twinx()  # parameter counts in the background
        counts.bar(range(len(order)), [table.loc[v, "mean_n_params"] for v in order],
                   color="#999999", alpha=0.15, width=0.8, zorder=0)
        counts.set_ylabel("parameters (bars)", color="#888888")
        counts.tick_params(axis="y", colors="#888888")
        ax.set_zorder(counts.get_zorder() + 1)
        ax.patch.set_visible(False)
        data = [frame[frame.variant == v][column].astype(float).to_numpy() for v in order]
        notches = None
        if key == "all":  # notches: the bootstrap interval of each median
            notches = [[table.loc[v, "median_all_ci_low"], table.loc[v, "median_all_ci_high"]]
                       if np.isfinite(table.loc[v, "median_all_ci_low"]) else None for v in order]
        boxes = ax.boxplot(data, positions=range(len(order)), widths=0.55, patch_artist=True,
                           showmeans=True, showfliers=True, notch=notches is not None,
                           conf_intervals=notches,
                           meanprops={"marker": "D", "markerfacecolor": "white",
                                      "markeredgecolor": "black", "markersize": 5},
                           medianprops={"color": "black", "linewidth": 1.5})
        if key == "top":  # the best-fraction mean with its bootstrap interval
            means = [table.loc[v, "mean_top"] for v in order]
            low = [table.loc[v, "mean_top_ci_low"] for v in order]
            high = [table.loc[v, "mean_top_ci_high"] for v in order]
            ok = [i for i in range(len(order)) if np.isfinite(low[i])]
            if ok:
                ax.errorbar([i + 0.33 for i in ok], [means[i] for i in ok],
                            yerr=[[max(means[i] - low[i], 0.0) for i in ok],
                                  [max(high[i] - means[i], 0.0) for i in ok]],
                            fmt="none", ecolor="#c44e52", capsize=3, linewidth=1.2)
        for box, variant in zip(boxes["boxes"], order):  # the study's verdict (the rank test), in both panels
            verdict = str(table.loc[variant, "comparison"]) if "comparison" in table.columns else ""
            box.set_facecolor({"worse": "#c44e52", "better": "#4c72b0"}.get(
                verdict, "#dddddd" if variant == reference else "#ffffff"))
        values = np.concatenate([d for d in data if len(d)]) if any(len(d) for d in data) else np.array([])
        if len(values) and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")  # a few runs far off the rest would flatten every box
            title += " (log scale)"
        ax.set_xticks(range(len(order)), order, rotation=45 if len(order) > 6 else 0)
        ax.set_title(title + (": notches = 95 % interval of the median" if key == "all"
                              else ": red = 95 % interval of the mean"), fontsize=9)
        ax.set_ylabel(metric_label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{dataset}: {metric_label} per variant (red: worse than {reference}, blue: better, by the "
                 f"study's verdict at family-wise {options['alpha']}; ◇ mean, — median)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "boxplots")


def marginals(out, result, dataset) -> str | None:
    curves = result.marginals
    names = [n for n in MARGINAL_ORDER if n in curves] + sorted(
        n for n in curves if n not in MARGINAL_ORDER)
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        curve = curves[name]
        x = 10 ** curve["grid"] if curve["log"] else curve["grid"]
        color = COLORS.get(name, "#4c72b0")
        ax.plot(x, curve["mean"], color=color)
        ax.fill_between(x, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                        color=color, alpha=0.25, linewidth=0)
        if curve["log"]:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
        if curve["choices"] is not None:
            ax.set_xticks(range(len(curve["choices"])), [str(c) for c in curve["choices"]])
        ax.set_xlabel(label(name))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted metric")
    fig.suptitle(f"{dataset}: predicted marginal metric (all variants; mean ± std over "
                 f"trees)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "marginals")


def interaction(out, pair, dataset) -> str:
    a, b, grid_a, grid_b, surface, log_a, log_b = pair
    xa = 10 ** grid_a if log_a else grid_a
    xb = 10 ** grid_b if log_b else grid_b
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    mesh = ax.pcolormesh(xa, xb, surface.T, shading="nearest", cmap="viridis_r")
    fig.colorbar(mesh, ax=ax, label="predicted metric")
    if log_a:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    if log_b:
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.set_xlabel(label(a))
    ax.set_ylabel(label(b))
    ax.set_title(f"{dataset}: {label(a)} × {label(b)}\n(pairwise marginal, all variants)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "interaction")


def learning_curves(out, curves, dataset) -> str | None:
    """Validation metric per epoch of each variant's best trials (trial.report values)."""
    if not curves:
        return None
    groups = sorted(curves)
    columns = min(4, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows + 0.4),
                             squeeze=False)
    for ax, group in zip(axes.flat, groups):
        for rank, (number, epochs, values) in enumerate(curves[group]):
            ax.plot(epochs, values, marker="." if len(epochs) < 20 else None,
                    color=OTHER_COLORS[rank % len(OTHER_COLORS)], label=f"trial {number}")
        values = np.concatenate([v for _, _, v in curves[group]])
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")  # one epoch that blew up would flatten the others
        ax.set_title(group, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation metric")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"{dataset}: learning curves of each variant's best trials", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "learning_curves")


def sequential_paths(out, paths, reference, margin, dataset) -> str | None:
    """A sweep with search.until=decided, look by look: each variant's Hodges-Lehmann shift
    against the reference with the repeated interval that equivalence reads, the margin around
    0, and the verdict where the sweep stopped it (harness.analysis.sequential.paths)."""
    if not paths:
        return None
    groups = sorted(paths)
    columns = min(4, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows + 0.5), squeeze=False,
                             sharex=True)
    for ax, group in zip(axes.flat, groups):
        steps = paths[group]
        looks = np.array([r["look"] for r in steps], dtype=float)
        shift = np.array([r["shift"] for r in steps], dtype=float)
        low = np.array([r["equivalence_low"] for r in steps], dtype=float)  # the interval equivalence reads
        high = np.array([r["equivalence_high"] for r in steps], dtype=float)
        if margin:
            for edge in (-margin, margin):
                ax.axhline(edge, color="#55a868", ls="--", lw=1, label=f"±{margin:g} margin" if edge > 0 else None)
        ax.axhline(0, color="black", lw=0.6)
        # The scale shows the shifts, the margin and the intervals of the last third of the looks;
        # the first looks' wide intervals, and an end at +inf (diverged trials rank as the worst
        # outcome), run off the axes.
        last = len(steps) * 2 // 3
        later = np.array([*shift, *low[last:], *high[last:], -(margin or 0), margin or 0])
        later = later[np.isfinite(later)]
        pad = 0.08 * (np.ptp(later) or 1.0)
        bottom, top = later.min() - pad, later.max() + pad
        ax.fill_between(looks, np.clip(low, bottom - pad, top + pad), np.clip(high, bottom - pad, top + pad),
                        color="#4c72b0", alpha=0.25, lw=0, label="repeated interval")
        ax.plot(looks, shift, color="#4c72b0", marker=".", label="shift")
        ax.set_ylim(bottom, top)
        verdict = steps[-1]["verdict"]
        ax.set_title(f"{group}: {verdict} at {int(looks[-1])}", fontsize=10,
                     color={"worse": "#c44e52", "better": "#4c72b0", "equivalent": "#55a868"}.get(verdict, "black"))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, frameon=False, loc="upper right")
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"shift against {reference}")
    for ax in axes[-1]:
        ax.set_xlabel("trials a variant (look)")
    fig.suptitle(f"{dataset}: the sequential study, each variant's shift against {reference} at every look",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "sequential")


def draw_all(out: Path, usable, top, variants, results, curves, column, options, pooled: str) -> dict[str, str]:
    """Every figure that the results allow; `pooled` is the name of the group of all
    variants' trials in `results`."""
    dataset = str(options["dataset"])
    drawn = {}
    everything = results.get(pooled)
    if everything is not None and everything.fitted:
        drawn["fanova_pie"] = pie_pooled(out, everything, dataset)
        drawn["marginals"] = marginals(out, everything, dataset)
        if everything.pair:
            drawn["interaction"] = interaction(out, everything.pair, dataset)
    drawn["fanova_pies_by_variant"] = pies_by_variant(out, results, pooled)
    drawn["fanova_bars"] = bars(out, results, dataset)
    drawn["boxplots"] = boxplots(out, usable, top, variants, column, options, dataset)
    drawn["learning_curves"] = learning_curves(out, curves, dataset)
    return {k: v for k, v in drawn.items() if v}
