"""A small plotting API for the notebooks: panels, heat maps, bands, sweeps, saving.

The shared, tested pieces live here; what is particular to one figure of the paper (which
facets, which colour for what, which cell to box) stays in that figure's notebook.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from frernn.errors import FrernnError
from frernn.io import atomic_write
from frernn.plotstyle import PALETTE, SEQUENTIAL_CMAP, TEXT_WIDTH, size, styled
from frernn.tables import LABELS, configurations, grid_columns

HIGHLIGHT = "#D55E00"  # vermillion: the boxed best cell


def panels(
    rows: int = 1,
    cols: int = 1,
    height: float | None = None,
    width: float = TEXT_WIDTH,
    **subplots: object,
) -> tuple[Figure, np.ndarray]:
    """A figure (default: the paper's text width) and a 2-D array of ``rows`` × ``cols`` axes;
    ``height`` in rows of panels. Call ``plotstyle.use()`` first for the project style."""
    fig = Figure(figsize=size(height or rows, width=width))
    return fig, fig.subplots(rows, cols, squeeze=False, **subplots)


def in_order(values: Iterable) -> list:
    """Distinct values, numerically sorted when they are numbers, else in order of appearance."""
    unique = list(dict.fromkeys(values))
    numeric = pd.to_numeric(pd.Series(unique, dtype=object), errors="coerce")
    if len(unique) and numeric.notna().all():
        return [unique[i] for i in np.argsort(numeric.to_numpy(), kind="stable")]
    return unique


def colour(k: int) -> str:
    """The ``k``-th colour of the palette (cycling)."""
    return PALETTE[k % len(PALETTE)]


def panel_title(ax: Axes, k: int, text: str = "") -> None:
    """``(a) text`` at the top left, as the paper labels its panels."""
    ax.set_title(f"({chr(ord('a') + k)}) {text}".rstrip(), loc="left")


def heatmap(
    ax: Axes,
    grid: pd.DataFrame,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = SEQUENTIAL_CMAP,
    annotate: str | None = "{:.1f}",
    mark_best: bool = False,
) -> AxesImage:
    """``grid`` (index = rows, columns = columns) as an image, each cell labelled with its value
    (``annotate`` format, None for none); ``mark_best`` boxes the highest cell."""
    values = grid.to_numpy(dtype=float)
    if not np.isfinite(values).any():
        raise FrernnError("heat map has no finite value to show")
    low = np.nanmin(values) if vmin is None else vmin
    high = np.nanmax(values) if vmax is None else vmax
    image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto")
    if annotate:
        for (r, c), value in np.ndenumerate(values):
            if np.isfinite(value):
                dark = value < (low + high) / 2
                text = annotate.format(value)
                ink = "white" if dark else "black"
                ax.text(c, r, text, ha="center", va="center", fontsize=5, color=ink)
    if mark_best:
        r, c = np.unravel_index(np.nanargmax(values), values.shape)
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=1.5, ec=HIGHLIGHT))
    ax.set_xticks(range(values.shape[1]), [_tick(v) for v in grid.columns])
    ax.set_yticks(range(values.shape[0]), [_tick(v) for v in grid.index])
    ax.grid(False)
    return image


def _tick(value: object) -> str:
    """A compact tick label: numbers with %g, anything else as text."""
    return f"{value:g}" if isinstance(value, int | float | np.number) else str(value)


def band(
    ax: Axes,
    x: pd.Series,
    mean: pd.Series,
    std: pd.Series,
    color: str,
    label: str = "",
    diverged: pd.Series | None = None,
) -> None:
    """A line with a ±1 std band (a missing std, one seed, draws no band); markers on the
    points when there are few (a single epoch is then still visible). ``diverged`` (seeds whose
    loss became non-finite at that point; they stay in the mean) marks those points ×."""
    marker = "o" if len(x) <= 12 else None
    ax.plot(x, mean, color=color, label=label, marker=marker, markersize=3)
    spread = std.fillna(0)
    ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.2, lw=0)
    if diverged is not None:
        broke = (pd.to_numeric(diverged, errors="coerce") > 0).to_numpy()
        ax.plot(x[broke], mean[broke], "x", color=color, ms=6, mew=1.5)


def beside(ax: Axes, df: pd.DataFrame, labels: Iterable[str]) -> None:
    """Best-epoch test accuracy per row: reproduced (filled, ±1 std) above published (open)."""
    y = np.arange(len(df))
    for k, (prefix, label) in enumerate((("test_best", "reproduced"), ("paper_test", "published"))):
        mean = pd.to_numeric(df[f"{prefix}_mean"], errors="coerce")
        std = pd.to_numeric(df[f"{prefix}_std"], errors="coerce").fillna(0)
        face = colour(k) if k == 0 else "white"
        if mean.notna().any():
            ax.errorbar(mean, y + 0.3 * k - 0.15, xerr=std, fmt="o", color=colour(k), mfc=face,
                        capsize=2, label=label)  # fmt: skip
    ax.set_yticks(y, list(labels))
    ax.set_ylim(len(df) - 0.5, -0.5)
    ax.set_xlabel("best-epoch test accuracy (%)")


def shared_legend(fig: Figure, axes: Iterable[Axes], ncols: int = 2) -> None:
    """One legend under the figure holding every labelled series of ``axes`` once."""
    entries: dict[str, object] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        entries.update(zip(labels, handles, strict=True))
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=ncols)


def _together(df: pd.DataFrame, a: str, b: str) -> bool:
    """Columns ``a`` and ``b`` vary together (a zipped grid axis: depth with T and K)."""
    return bool(
        df.groupby(a, dropna=False)[b].nunique(dropna=False).max() == 1
        and df.groupby(b, dropna=False)[a].nunique(dropna=False).max() == 1
    )


def varying(df: pd.DataFrame) -> list[str]:
    """The independent axes of a block: grid columns taking several values, zipped companions
    dropped, then ``row`` and ``paper_dataset`` when they vary on their own."""
    labels = [c for c in ("row", "paper_dataset") if c in df]
    kept: list[str] = []
    for name in [*grid_columns(df), *labels]:
        if df[name].nunique() > 1 and not any(_together(df, k, name) for k in kept):
            kept.append(name)
    return kept


def sweep_axes(summary: pd.DataFrame) -> list[str]:
    """The numeric independent axes of a summary table (one: line plot, two: heat map)."""
    numeric = []
    for name in varying(summary):
        values = pd.to_numeric(summary[name], errors="coerce")
        if name not in ("row", "paper_dataset") and values.notna().all():
            numeric.append(name)
    return numeric


def has_sweep(summary: pd.DataFrame) -> bool:
    """A line plot (one numeric axis, any others as series) or a heat map (exactly two) fits."""
    axes, others = sweep_axes(summary), len(varying(summary)) - len(sweep_axes(summary))
    return len(axes) == 1 or (len(axes) == 2 and others == 0)


def accuracy_per_epoch(ax: Axes, epochs: pd.DataFrame) -> None:
    """Test accuracy vs epoch, one line per configuration, ±1 std band over seeds, × where a
    seed diverged."""
    labelled = epochs.assign(configuration=configurations(epochs))
    for k, (name, sub) in enumerate(labelled.groupby("configuration", sort=False)):
        sub = sub.sort_values("epoch")
        mean, std = sub["test_acc_mean"], sub["test_acc_std"]
        band(ax, sub["epoch"], mean, std, colour(k), str(name), sub.get("diverged"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")


def sweep(ax: Axes, summary: pd.DataFrame) -> AxesImage | None:
    """Best-epoch test accuracy over the numeric axis (a line per value of the other axes,
    ±1 std) or the two numeric axes (heat map, best cell boxed) of a summary table."""
    if not has_sweep(summary):
        raise FrernnError("a sweep plot needs one numeric grid axis, or two and nothing else")
    axes = sweep_axes(summary)
    if len(axes) == 2:
        rows, cols = axes
        grid = summary.pivot_table(index=rows, columns=cols, values="test_best_mean")
        image = heatmap(ax, grid, mark_best=True)
        ax.set_xlabel(LABELS.get(cols, cols))
        ax.set_ylabel(LABELS.get(rows, rows))
        return image
    (x,) = axes
    rest = [c for c in varying(summary) if c != x]
    groups = summary.groupby(rest, sort=False) if rest else [((), summary)]
    for k, (key, sub) in enumerate(groups):
        sub = sub.assign(**{x: pd.to_numeric(sub[x])}).sort_values(x)
        ax.errorbar(
            sub[x],
            sub["test_best_mean"],
            yerr=sub["test_best_std"].fillna(0),
            color=colour(k),
            marker="o",
            capsize=2,
            label=_tick_key(rest, key),
        )
    if rest:
        ax.legend(fontsize=5)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel("best test accuracy (%)")
    return None


def _tick_key(columns: list[str], key: object) -> str:
    """Legend text of one group of a line sweep: ``depth=4, beta=0.1``."""
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={_tick(v)}" for c, v in zip(columns, values, strict=False))


def experiment_figure(summary: pd.DataFrame, epochs: pd.DataFrame) -> Figure:
    """The generic template's figure: (a) accuracy per epoch; (b) the sweep, when it has one."""
    with_sweep = has_sweep(summary)
    fig, ax = panels(1, 2 if with_sweep else 1, height=1.4)
    accuracy_per_epoch(ax[0, 0], epochs)
    panel_title(ax[0, 0], 0, "test accuracy per epoch (±1 std)")
    if epochs["run_id"].nunique() <= 8:
        ax[0, 0].legend(fontsize=5)
    if with_sweep:
        image = sweep(ax[0, 1], summary)
        panel_title(ax[0, 1], 1, "best-epoch test accuracy")
        if image is not None:
            fig.colorbar(image, ax=ax[0, 1], label="test accuracy (%)", shrink=0.9)
    return fig


@styled
def save(fig: Figure, pdf: str | Path, png: str | Path) -> None:
    """Write ``fig`` atomically as PDF (reproducible: no timestamp) and PNG."""
    atomic_write(pdf, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
