"""The one matplotlib style of every figure: paper-sized, 8 pt text, Okabe–Ito colours."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib as mpl
from cycler import cycler

# Okabe & Ito (2008) colour-blind-safe palette, most distinguishable first.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
SEQUENTIAL_CMAP = "viridis"  # accuracies, counts: perceptually uniform, colour-blind safe
DIVERGING_CMAP = "RdBu_r"  # signed activities and changes
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

TEXT_WIDTH = 5.5  # inches: the ICLR text width, so figures print at 1:1
ROW_HEIGHT = 1.9  # inches per row of panels

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "image.cmap": SEQUENTIAL_CMAP,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "figure.constrained_layout.use": True,
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` (a figure builder or saver) under the project style; rcParams restored."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with mpl.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper


def use() -> None:
    """Make the project style the default of this process (a notebook's kernel)."""
    mpl.rcParams.update(RC)


def size(rows: int = 1, width: float = TEXT_WIDTH) -> tuple[float, float]:
    """Figure size in inches for ``rows`` rows of panels at the paper's text width."""
    return (width, ROW_HEIGHT * rows)
