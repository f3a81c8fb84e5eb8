"""The paper's figures redrawn from the aggregated CSVs (SPEC §6), one builder per figure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from frernn.errors import FrernnError
from frernn.io import atomic_write
from frernn.plotstyle import (
    DIVERGING_CMAP,
    LINESTYLES,
    MARKERS,
    PALETTE,
    SEQUENTIAL_CMAP,
    size,
    styled,
)
from frernn.tables import DATASET_LABELS, paper_dataset, read_csv

COLUMNS = {
    "fig2": ("config", "step", "neuron", "activity", "change"),
    "fig3": ("graph", "src", "dst", "kind"),
    "fig4": ("depth", "alpha", "beta", "test_best_mean", "test_best_std"),
    "fig5": ("feedback", "beta", "phase", "metric", "mean", "std", "n"),
    "fig6": ("panel", "depth", "T", "K", "beta", "epoch", "test_acc_mean", "test_acc_std", "n"),
    "figS8": ("agt_p", "test_best_mean", "test_best_std", "test_final_mean", "test_final_std"),
}
EDGE_KINDS = ("input", "forward", "feedback", "readout")
FIG5_PANELS = (
    ("test_err", "test error (%)"),
    ("sr", "spectral radius"),
    ("ftmle", "FTMLE"),
    ("mle", "MLE"),
    ("conv_time", "convergence time (steps,\nconverged samples)"),
    ("conv_frac", "fraction converged"),
)


def load(name: str, path: str | Path, scale: str | None = None) -> pd.DataFrame:
    """Read the CSV behind figure ``name``, checking the columns its builder needs."""
    return read_csv(path, COLUMNS[name], scale)


def _in_order(values: pd.Series) -> list:
    """Distinct values, numerically sorted when they are numbers, else in order of appearance."""
    unique = list(dict.fromkeys(values))
    numeric = pd.to_numeric(pd.Series(unique), errors="coerce")
    return (
        [unique[i] for i in np.argsort(numeric.to_numpy(), kind="stable")]
        if numeric.notna().all()
        else unique
    )


def fig2_dynamics(df: pd.DataFrame) -> Figure:
    """Fig. 2: activity and one-step change (neuron × step) of one sample per config."""
    configs = list(dict.fromkeys(df["config"]))
    fig = Figure(figsize=size(2))
    axes = fig.subplots(2, len(configs), squeeze=False, sharex="col", sharey=True)
    change_limit = float(df["change"].abs().max()) or 1.0
    for j, config in enumerate(configs):
        sub = df[df["config"] == config]
        for i, (column, limit) in enumerate((("activity", 1.0), ("change", change_limit))):
            grid = sub.pivot_table(index="neuron", columns="step", values=column)
            extent = (grid.columns.min() - 0.5, grid.columns.max() + 0.5)
            image = axes[i, j].imshow(
                grid.to_numpy(),
                aspect="auto",
                origin="lower",
                cmap=DIVERGING_CMAP,
                vmin=-limit,
                vmax=limit,
                extent=(*extent, grid.index.min() - 0.5, grid.index.max() + 0.5),
                interpolation="nearest",
            )
            axes[i, j].grid(False)
            if j == len(configs) - 1:
                fig.colorbar(image, ax=axes[i, :], label=column, shrink=0.9)
        axes[0, j].set_title(str(config))
        axes[1, j].set_xlabel("time step")
    axes[0, 0].set_ylabel("neuron (activity)")
    axes[1, 0].set_ylabel("neuron (one-step change)")
    return fig


def fig3_adjacency(df: pd.DataFrame) -> Figure:
    """Fig. 3: adjacency matrix (source × destination) of each graph, coloured by edge kind."""
    graphs = list(dict.fromkeys(df["graph"]))
    fig = Figure(figsize=size(1.6))
    axes = fig.subplots(1, len(graphs), squeeze=False)[0]
    kinds = [k for k in EDGE_KINDS if k in set(df["kind"])] + sorted(
        set(df["kind"]) - set(EDGE_KINDS)
    )
    cmap = ListedColormap(["#ffffff", *PALETTE[: len(kinds)]])
    norm = BoundaryNorm(np.arange(len(kinds) + 2) - 0.5, cmap.N)
    for ax, graph in zip(axes, graphs, strict=True):
        sub = df[df["graph"] == graph]
        nodes = _in_order(pd.concat([sub["src"], sub["dst"]]))
        position = {node: k for k, node in enumerate(nodes)}
        matrix = np.zeros((len(nodes), len(nodes)))
        for src, dst, kind in sub[["src", "dst", "kind"]].itertuples(index=False):
            matrix[position[src], position[dst]] = kinds.index(kind) + 1
        ax.imshow(matrix, cmap=cmap, norm=norm, interpolation="nearest")
        ticks = range(len(nodes))
        ax.set_xticks(ticks, [str(n) for n in nodes], fontsize=5, rotation=90)
        ax.set_yticks(ticks, [str(n) for n in nodes], fontsize=5)
        ax.set_xlabel("to layer")
        ax.set_ylabel("from layer")
        ax.set_title(str(graph))
        ax.grid(False)
    handles = [Patch(color=cmap(k + 1), label=kind) for k, kind in enumerate(kinds)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(kinds))
    return fig


def fig4_heatmaps(df: pd.DataFrame) -> Figure:
    """Fig. 4: best-epoch test accuracy over α × β, one heat map per depth, best cell boxed."""
    depths = _in_order(df["depth"])
    fig = Figure(figsize=size(1.4))
    axes = fig.subplots(1, len(depths), squeeze=False)[0]
    low, high = df["test_best_mean"].min(), df["test_best_mean"].max()
    for ax, depth in zip(axes, depths, strict=True):
        grid = df[df["depth"] == depth].pivot_table(
            index="alpha", columns="beta", values="test_best_mean"
        )
        image = ax.imshow(grid.to_numpy(), cmap=SEQUENTIAL_CMAP, vmin=low, vmax=high, aspect="auto")
        for (r, c), value in np.ndenumerate(grid.to_numpy()):
            if np.isfinite(value):
                light = value < (low + high) / 2
                ax.text(
                    c,
                    r,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="white" if light else "black",
                )
        best = np.unravel_index(np.nanargmax(grid.to_numpy()), grid.shape)
        ax.add_patch(
            Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, lw=1.5, ec="#D55E00")
        )
        ax.set_xticks(range(grid.shape[1]), [f"{b:g}" for b in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{a:g}" for a in grid.index])
        ax.set_xlabel("β")
        ax.set_ylabel("α")
        ax.set_title(f"L = {depth:g}")
        ax.grid(False)
    fig.colorbar(image, ax=list(axes), label="test accuracy (%)", shrink=0.9)
    return fig


def fig5_diagnostics(df: pd.DataFrame) -> Figure:
    """Fig. 5: test error, SR, FTMLE/MLE and convergence vs β, per feedback, before/after."""
    panels = [(m, label) for m, label in FIG5_PANELS if m in set(df["metric"])]
    rows = -(-len(panels) // 3)
    fig = Figure(figsize=size(rows))
    axes = fig.subplots(rows, 3, squeeze=False).ravel()
    feedbacks = list(dict.fromkeys(df["feedback"]))
    phases = [p for p in ("before", "after") if p in set(df["phase"])]
    for k, (ax, (metric, label)) in enumerate(zip(axes, panels, strict=False)):
        for f, feedback in enumerate(feedbacks):
            for p, phase in enumerate(phases):
                sub = df[
                    (df["metric"] == metric) & (df["feedback"] == feedback) & (df["phase"] == phase)
                ]
                sub = sub.sort_values("beta")
                if sub.empty:
                    continue
                ax.errorbar(
                    sub["beta"],
                    sub["mean"],
                    yerr=sub["std"].fillna(0),
                    color=PALETTE[f],
                    ls=LINESTYLES[p],
                    marker=MARKERS[f],
                    capsize=2,
                    label=f"{feedback}, {phase} training",
                )
        ax.set_xscale("log")
        ax.set_xlabel("β")
        ax.set_ylabel(label)
        ax.set_title(f"({chr(ord('a') + k)})", loc="left")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    legend = {}  # every series once: test error exists after training only, so use all panels
    for ax in axes[: len(panels)]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=2)
    return fig


def _curves(ax: Axes, df: pd.DataFrame, by: str, label: Callable[[float], str]) -> None:
    """Test error vs epoch, one line per value of ``by``, with a ±1 std band over seeds.

    A seed whose loss became non-finite stays in the mean; its last epoch is marked ×.
    """
    for k, value in enumerate(_in_order(df[by])):
        sub = df[df[by] == value].sort_values("epoch")
        error = 100 - sub["test_acc_mean"]
        std = sub["test_acc_std"].fillna(0)
        colour = PALETTE[k % len(PALETTE)]
        ax.plot(sub["epoch"], error, color=colour, label=label(value))
        ax.fill_between(sub["epoch"], error - std, error + std, color=colour, alpha=0.2, lw=0)
        broke = sub["diverged"] > 0 if "diverged" in sub else pd.Series(False, index=sub.index)
        ax.plot(sub["epoch"][broke], error[broke], "x", color=colour, ms=6, mew=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")


def fig6_curves(df: pd.DataFrame) -> Figure:
    """Fig. 6: test error vs epoch; (a–d) one panel per β over T, (e–h) one per depth over β."""
    sweeps = [
        ("T-sweep", "beta", "β = {:g}", "T", "T = {:g}"),
        ("depth-sweep", "depth", "L = {:g}", "beta", "β = {:g}"),
    ]
    sweeps = [s for s in sweeps if s[0] in set(df["panel"])]
    if not sweeps:
        raise FrernnError("fig6 data has neither a 'T-sweep' nor a 'depth-sweep' panel")
    facets = [_in_order(df.loc[df["panel"] == s[0], s[1]]) for s in sweeps]
    width = max(len(values) for values in facets)
    fig = Figure(figsize=size(len(sweeps)))
    axes = fig.subplots(len(sweeps), width, squeeze=False)
    for r, ((name, facet, facet_label, line, line_label), values) in enumerate(
        zip(sweeps, facets, strict=True)
    ):
        for c in range(width):
            ax = axes[r, c]
            if c >= len(values):
                ax.set_visible(False)
                continue
            sub = df[(df["panel"] == name) & (df[facet] == values[c])]
            _curves(ax, sub, line, line_label.format)
            if c == len(values) - 1:
                ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
            ax.set_title(
                f"({chr(ord('a') + r * width + c)}) {facet_label.format(values[c])}", loc="left"
            )
    return fig


def figS8_agt(df: pd.DataFrame) -> Figure:
    """Fig. S8: test accuracy vs AGT connection probability P (best and final epoch, ±1 std)."""
    fig = Figure(figsize=size(1, width=3.3))
    ax = fig.subplots()
    probabilities = _in_order(df["agt_p"])
    for k, dataset in enumerate(dict.fromkeys(paper_dataset(df))):
        sub = df[paper_dataset(df) == dataset].set_index("agt_p").reindex(probabilities)
        x = np.arange(len(probabilities)) + 0.08 * k
        name = DATASET_LABELS.get(dataset, dataset)
        ax.errorbar(
            x,
            sub["test_best_mean"],
            yerr=sub["test_best_std"].fillna(0),
            color=PALETTE[k],
            marker="o",
            capsize=2,
            label=f"{name}, best epoch",
        )
        ax.errorbar(
            x,
            sub["test_final_mean"],
            yerr=sub["test_final_std"].fillna(0),
            color=PALETTE[k],
            marker="o",
            mfc="white",
            ls="--",
            capsize=2,
            label=f"{name}, final epoch",
        )
    ax.set_xticks(range(len(probabilities)), [f"{p:g}" for p in probabilities])
    ax.set_xlabel("connection probability P")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    return fig


BUILDERS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "fig2": fig2_dynamics,
    "fig3": fig3_adjacency,
    "fig4": fig4_heatmaps,
    "fig5": fig5_diagnostics,
    "fig6": fig6_curves,
    "figS8": figS8_agt,
}


@styled
def draw(name: str, df: pd.DataFrame) -> Figure:
    """Build figure ``name`` from its data under the project style."""
    return BUILDERS[name](df)


@styled
def save(fig: Figure, pdf: str | Path, png: str | Path) -> None:
    """Write ``fig`` atomically as PDF (reproducible: no timestamp) and PNG."""
    atomic_write(pdf, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
