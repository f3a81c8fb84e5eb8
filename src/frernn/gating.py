"""What a verdict or a published-value comparison may rest on.

A number can back a verdict only when it comes from runs at paper scale (the paper's epochs,
data sizes and every other setting of the run spec), on the paper's dataset, with every
configured seed finished. The aggregated tables carry, per row, ``paper_scale``,
``scale_note`` (what differs from the paper's run spec), ``substitute``, ``dataset``,
``paper_dataset``, ``n``, ``n_expected`` and ``missing``; :func:`reasons` reads them.
"""

from __future__ import annotations

import pandas as pd

from frernn.tables import DATASET_LABELS, is_true

BASIS_COLUMNS = ("paper_scale", "substitute", "n", "n_expected")


def _label(name: object) -> str:
    return DATASET_LABELS.get(str(name), str(name))


def _distinct(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values.dropna() if str(v)))


def scale_reason(rows: pd.DataFrame) -> str | None:
    """Why these rows are not at paper scale, or None when they all are."""
    if "paper_scale" not in rows.columns:
        return "the tables do not say whether the runs are at paper scale"
    below = rows[~rows["paper_scale"].map(is_true)]
    if below.empty:
        return None
    scales = ", ".join(_distinct(below["scale"])) if "scale" in below else "?"
    notes = _distinct(below["scale_note"]) if "scale_note" in below else []
    detail = f" ({notes[0]})" if notes else ""
    return f"{scales} scale, not the paper's{detail}"


def substitution_reason(rows: pd.DataFrame) -> str | None:
    """Which dataset replaced the paper's, or None when none did."""
    if "substitute" not in rows.columns:
        return None
    swapped = rows[rows["substitute"].map(is_true)]
    if swapped.empty:
        return None
    used = ", ".join(_label(d) for d in _distinct(swapped.get("dataset", pd.Series(dtype=str))))
    paper = ", ".join(_label(d) for d in _distinct(swapped.get("paper_dataset", pd.Series())))
    return f"ran on {used or 'a substitute dataset'} instead of {paper or 'the paper dataset'}"


def missing_reason(rows: pd.DataFrame) -> str | None:
    """The unfinished runs behind these rows, or None when every seed finished."""
    count = "n_runs" if "n_runs" in rows.columns else "n"
    if not {count, "n_expected"} <= set(rows.columns):
        return "the tables do not say how many seeds finished"
    n = pd.to_numeric(rows[count], errors="coerce").fillna(0)
    expected = pd.to_numeric(rows["n_expected"], errors="coerce").fillna(0)
    short = rows[n < expected]
    if short.empty:
        return None
    names = [
        m
        for text in short.get("missing", pd.Series(dtype=str)).dropna()
        for m in str(text).split(";")
        if m
    ]
    names = list(dict.fromkeys(names))
    count = int((expected - n)[n < expected].sum())
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{count} run(s) not finished" + (f": {shown}" if shown else "")


def _frame(rows: pd.DataFrame | list[pd.DataFrame]) -> pd.DataFrame:
    if isinstance(rows, list):
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return rows


def data_reasons(rows: pd.DataFrame | list[pd.DataFrame]) -> list[str]:
    """Why these rows do not stand for the paper's experiment: scale or substituted data."""
    rows = _frame(rows)
    if rows.empty:
        return ["no runs"]
    return [r for r in (scale_reason(rows), substitution_reason(rows)) if r]


def reasons(rows: pd.DataFrame | list[pd.DataFrame]) -> list[str]:
    """Why numbers from these table rows cannot back a verdict (empty: they can)."""
    rows = _frame(rows)
    found = data_reasons(rows)
    if rows.empty:
        return found
    return found + [r for r in (missing_reason(rows),) if r]


def judgeable(rows: pd.DataFrame | list[pd.DataFrame]) -> bool:
    """True when every row is at paper scale, on the paper's dataset, with all seeds finished."""
    return not reasons(rows)
