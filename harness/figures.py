"""Figures of the analysis stage, after Greff et al. (2017), Figs. 3-6.

Each figure is written as PNG (for the report) and PDF (for papers). `draw_all`
returns {name: file name of the PNG} for what it could draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

# The paper's words for the parameters of SPEC 5; anything else keeps its own name.
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
    ax.legend(wedges, [label(t) for t in terms], loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    return _save(fig, out, "fanova_pie")


def pies_by_variant(out, results) -> str | None:
    groups = [g for g, r in results.items() if g != "all" and r.model is not None]
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
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    fig.legend(list(legend.values()), [label(t) for t in legend], loc="lower center",
               ncol=min(5, len(legend)), frameon=False)
    fig.subplots_adjust(bottom=0.5 / (2.6 * rows + 0.5), top=0.95, hspace=0.15, wspace=0.05)
    return _save(fig, out, "fanova_pies_by_variant")


def boxplots(out, usable, top, variants, options, dataset) -> str | None:
    if usable.empty:
        return None
    reference = options["reference_variant"]
    order = list(variants[variants.n_usable > 0].variant)
    if reference in order:  # the reference first, as in the paper
        order.remove(reference)
        order.insert(0, reference)
    table = variants.set_index("variant")
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
        data = [frame[frame.variant == v]["test_metric"].astype(float).to_numpy() for v in order]
        boxes = ax.boxplot(data, positions=range(len(order)), widths=0.55, patch_artist=True,
                           showmeans=True, showfliers=True,
                           meanprops={"marker": "D", "markerfacecolor": "white",
                                      "markeredgecolor": "black", "markersize": 5},
                           medianprops={"color": "black", "linewidth": 1.5})
        for box, variant in zip(boxes["boxes"], order):
            differs = bool(table.loc[variant, f"differs_{key}"])
            box.set_facecolor("#4c72b0" if differs else ("#dddddd" if variant == reference
                                                          else "#ffffff"))
        values = np.concatenate([d for d in data if len(d)]) if any(len(d) for d in data) else np.array([])
        if len(values) and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")  # a few runs far off the rest would flatten every box
            title += " (log scale)"
        ax.set_xticks(range(len(order)), order, rotation=45 if len(order) > 6 else 0)
        ax.set_title(title)
        ax.set_ylabel("test metric")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{dataset}: test metric per variant (blue: differs from {reference}, Welch's "
                 f"t-test p < {options['alpha']}; ◇ mean, — median)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "boxplots")


def marginals(out, result, dataset) -> str | None:
    curves = result.marginals
    names = [n for n in MARGINAL_ORDER if n in curves] + sorted(
        n for n in curves if n not in MARGINAL_ORDER)
    if not names:
        return None
    by_name = {p.name: p for p in result.parameters}
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        curve, parameter = curves[name], by_name[name]
        x = 10 ** curve["grid"] if parameter.log else curve["grid"]
        color = COLORS.get(name, "#4c72b0")
        ax.plot(x, curve["mean"], color=color)
        ax.fill_between(x, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                        color=color, alpha=0.25, linewidth=0)
        if parameter.log:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
        if parameter.choices is not None:
            ax.set_xticks(range(len(parameter.choices)), [str(c) for c in parameter.choices])
        ax.set_xlabel(label(name))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted test metric")
    fig.suptitle(f"{dataset}: predicted marginal test metric (all variants; mean ± std over "
                 f"trees)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "marginals")


def interaction(out, result, pair, surface_data, dataset) -> str:
    a, b = pair
    grid_a, grid_b, surface = surface_data
    by_name = {p.name: p for p in result.parameters}
    xa = 10 ** grid_a if by_name[a].log else grid_a
    xb = 10 ** grid_b if by_name[b].log else grid_b
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    mesh = ax.pcolormesh(xa, xb, surface.T, shading="nearest", cmap="viridis_r")
    fig.colorbar(mesh, ax=ax, label="predicted test metric")
    if by_name[a].log:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    if by_name[b].log:
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.set_xlabel(label(a))
    ax.set_ylabel(label(b))
    ax.set_title(f"{dataset}: {label(a)} × {label(b)}\n(pairwise marginal, all variants)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "interaction")


def draw_all(out: Path, usable, top, variants, results, options) -> dict[str, str]:
    from harness.analysis import pair_marginal

    dataset = str(options["dataset"])
    drawn = {}
    pooled = results.get("all")
    if pooled is not None and pooled.model is not None:
        drawn["fanova_pie"] = pie_pooled(out, pooled, dataset)
        drawn["marginals"] = marginals(out, pooled, dataset)
        pair = _interaction_pair(pooled)
        if pair:
            drawn["interaction"] = interaction(
                out, pooled, pair, pair_marginal(pooled, *pair, options["grid_points"]), dataset)
    by_variant = pies_by_variant(out, results)
    if by_variant:
        drawn["fanova_pies_by_variant"] = by_variant
    boxes = boxplots(out, usable, top, variants, options, dataset)
    if boxes:
        drawn["boxplots"] = boxes
    return {k: v for k, v in drawn.items() if v}


def _interaction_pair(result):
    """Learning rate x hidden size as in the paper, else the strongest numeric pair."""
    numeric = {p.name for p in result.parameters if p.choices is None}
    if {"learning_rate", "hidden_size"} <= numeric:
        return ("learning_rate", "hidden_size")
    pairs = [(row["fraction"], row["term"].split(":")) for row in result.rows
             if ":" in row["term"] and set(row["term"].split(":")) <= numeric]
    return tuple(max(pairs)[1]) if pairs else None
