"""Reading the aggregated CSVs and rendering the tables as the paper prints them."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from pandas.io.formats.style import Styler

from frernn.errors import FrernnError
from frernn.io import atomic_write_text

DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"}
PAPER_DATASETS = ("mnist", "cifar10")
LABELS = {"depth": "L", "beta": "β", "alpha": "α", "agt_p": "P"}
STATS = ("test_best_mean", "test_best_std", "test_final_mean", "test_final_std", "train_best_mean")
SUMMARY_COLUMNS = ("row", "method", "dataset", "n", "diverged", *STATS)
MATCH_CSS = "background-color: #d9efe6"  # agrees with the published value (bluish green tint)
MISMATCH_CSS = "background-color: #f9dcc4; font-weight: bold"  # differs: vermillion tint
COMPARISON_CSS = {"agrees": MATCH_CSS, "differs": MISMATCH_CSS}
TRAIN_ACCURACY = {
    "running": "running accuracy over the epoch's training batches, while the weights change",
    "eval": "an evaluation pass over the whole training set after each epoch",
}
DIVERGED_CSS = "color: #D55E00; font-weight: bold"
ALIGNMENT_COLUMN = re.compile(r"^align_(before|after)_(\w+)_mean$")
ALIGNMENT_FIELDS = {"before": "cos(update, BP) at init", "after": "cos(update, BP) trained"}


def read_csv(
    path: str | Path, columns: Iterable[str] = (), scale: str | None = None
) -> pd.DataFrame:
    """Load an aggregated CSV; a missing, empty or malformed file raises FrernnError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FrernnError(f"missing CSV {path}: run the workflow target that writes it")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise FrernnError(f"empty CSV {path}: it has no header and no rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FrernnError(f"malformed CSV {path}: {exc}") from None
    if df.empty:
        raise FrernnError(f"empty CSV {path}: it has a header but no rows")
    lacking = [c for c in columns if c not in df.columns]
    if lacking:
        raise FrernnError(f"CSV {path} lacks column(s): {', '.join(lacking)}")
    if scale and "scale" in df.columns:
        found = sorted({str(s) for s in df["scale"].dropna()} - {scale})
        if found:
            raise FrernnError(f"CSV {path} holds scale {', '.join(found)}, expected {scale}")
    return df


def is_true(value: object) -> bool:
    """A CSV boolean (True/False, 1/0, 'true'), missing counting as false."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def paper_dataset(df: pd.DataFrame) -> pd.Series:
    """The paper's dataset column each row stands for (``paper_dataset``, else guessed)."""
    if "paper_dataset" in df.columns:
        return df["paper_dataset"].astype(str)

    def pick(row: pd.Series) -> str:
        names = [str(row.get(c, "")) for c in ("dataset", "substitute")]
        return next((n for n in names if n in PAPER_DATASETS), names[0])

    return df.apply(pick, axis=1)


def substitute_of(df: pd.DataFrame) -> str | None:
    """The dataset every run actually used in place of the paper's, or None."""
    used = set()
    for _, row in df.iterrows():
        names = {str(row.get(c, "")) for c in ("dataset", "substitute")} & set(DATASET_LABELS)
        used |= names - set(PAPER_DATASETS)
    return ", ".join(sorted(used)) or None


def dataset_label(name: str, substitute: str | None) -> str:
    """Column heading for a dataset, saying what it was replaced by."""
    label = DATASET_LABELS.get(name, name)
    if substitute:
        label += f" (ran on {DATASET_LABELS.get(substitute, substitute)})"
    return label


def fmt_acc(mean: float, std: float = math.nan, train: float = math.nan) -> str:
    """``97.64 ± 0.10 (99.98)`` as the paper prints accuracies; empty when there is no value."""
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    return text if pd.isna(train) else f"{text} ({train:.2f})"


def fmt_duration(seconds: float) -> str:
    """``h:mm:ss`` as the paper prints wall clock; empty when unknown."""
    if pd.isna(seconds):
        return ""
    total = round(float(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def fmt_diff(value: float) -> str:
    """A signed difference in points, empty when there is nothing to compare."""
    return "" if pd.isna(value) else f"{value:+.2f}"


def _layer_order(name: str) -> tuple[bool, int]:
    """conv1, conv2, …, then the readout (fc / readout)."""
    digits = re.sub(r"\D", "", name)
    return (not digits, int(digits or 0))


def fmt_alignment(row: pd.Series, phase: str) -> str:
    """``conv1 0.214 ± 0.050 · conv2 0.991 ± 0.002 · fc 1.000 ± 0.000`` for one phase."""
    layers = [m[2] for c in row.index if (m := ALIGNMENT_COLUMN.match(c)) and m[1] == phase]
    parts = []
    for layer in sorted(layers, key=_layer_order):
        mean = _value(row, f"align_{phase}_{layer}_mean")
        std = _value(row, f"align_{phase}_{layer}_std")
        if not pd.isna(mean):
            parts.append(f"{layer} {mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}"))
    return " · ".join(parts)


def fmt_comparison(row: pd.Series) -> str:
    """``+0.36 (t = +0.62, p = 0.60)`` where the row was compared, else its status."""
    status = str(row.get("comparison", "") or "")
    if status in COMPARISON_CSS:
        t, p = _value(row, "t"), _value(row, "p")
        return f"{fmt_diff(_value(row, 'diff'))} (t = {t:+.2f}, p = {p:.2g})"
    return "" if status in ("", "nan", "not judged") else status


def _value(row: pd.Series, column: str) -> float:
    """A numeric cell, NaN when the column is absent or empty."""
    return pd.to_numeric(row.get(column, math.nan), errors="coerce")


def _cells(row: pd.Series) -> tuple[dict[str, str], dict[str, str]]:
    """Display strings and CSS of one configuration's comparison fields."""
    n, expected = _value(row, "n"), _value(row, "n_expected")
    diverged = _value(row, "diverged")
    text = {
        "reproduced": fmt_acc(row["test_best_mean"], row["test_best_std"], row["train_best_mean"]),
        "final epoch": fmt_acc(row["test_final_mean"], row["test_final_std"]),
        "published": fmt_acc(
            _value(row, "paper_test_mean"),
            _value(row, "paper_test_std"),
            _value(row, "paper_train"),
        ),
        "Δ": fmt_comparison(row),
        "n": "" if pd.isna(n) else f"{n:.0f}" + ("" if pd.isna(expected) else f"/{expected:.0f}"),
        "diverged": "" if pd.isna(diverged) else f"{diverged:.0f}",
        "wall clock": fmt_duration(_value(row, "wall_seconds_mean")),
    }
    if "paper_wall_seconds" in row.index:
        text["published wall clock"] = fmt_duration(_value(row, "paper_wall_seconds"))
    if any(ALIGNMENT_COLUMN.match(c) for c in row.index):
        text |= {field: fmt_alignment(row, phase) for phase, field in ALIGNMENT_FIELDS.items()}
    css = dict.fromkeys(text, "")
    css["Δ"] = COMPARISON_CSS.get(str(row.get("comparison", "")), "")
    shared = row.get("shared_with", "")
    if isinstance(shared, str) and shared:
        text["runs"] = "same runs as " + ", ".join(shared.split(";"))
        css["runs"] = ""
    if diverged > 0:
        css["diverged"] = DIVERGED_CSS
    return text, css


def comparison_table(df: pd.DataFrame) -> Styler:
    """Rows (row, method) × per-dataset groups: reproduced, final epoch, published, Δ, n, ..."""
    substitute = substitute_of(df)
    datasets = list(dict.fromkeys(paper_dataset(df)))
    text: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    css: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    for (_, row), dataset in zip(df.iterrows(), paper_dataset(df), strict=True):
        key = (str(row["row"]), str(row["method"]))
        group = dataset_label(dataset, substitute)
        row_text, row_css = _cells(row)
        text.setdefault(key, {}).update({(group, f): v for f, v in row_text.items()})
        css.setdefault(key, {}).update({(group, f): v for f, v in row_css.items()})
    groups = [dataset_label(d, substitute) for d in datasets]
    fields = list(dict.fromkeys(f for cells in text.values() for _, f in cells))
    columns = pd.MultiIndex.from_tuples([(g, f) for g in groups for f in fields])
    index = pd.MultiIndex.from_tuples(list(text), names=["row", "method"])
    shown = pd.DataFrame.from_dict(text, orient="index").reindex(columns=columns)
    shown = shown.astype(object).fillna("")
    styles = pd.DataFrame.from_dict(css, orient="index").reindex(columns=columns)
    styles = styles.astype(object).fillna("")
    shown.index, styles.index = index, index
    return shown.style.apply(lambda _: styles, axis=None)


def sweep_matrix(df: pd.DataFrame, index: str = "depth", columns: str = "beta") -> Styler:
    """Table S1's layout: a block of rows per ``index`` value, a column per ``columns`` value."""
    text: dict[tuple[str, str], dict[str, str]] = {}
    css: dict[tuple[str, str], dict[str, str]] = {}
    for _, row in df.sort_values([index, columns]).iterrows():
        row_text, row_css = _cells(row)
        column = f"{LABELS.get(columns, columns)} = {row[columns]:g}"
        for field in ("reproduced", "final epoch", "published", "Δ", "diverged"):
            key = (f"{LABELS.get(index, index)} = {row[index]:g}", field)
            text.setdefault(key, {})[column] = row_text[field]
            css.setdefault(key, {})[column] = row_css[field]
    shown = pd.DataFrame.from_dict(text, orient="index").fillna("")
    styles = pd.DataFrame.from_dict(css, orient="index").reindex_like(shown).fillna("")
    return shown.style.apply(lambda _: styles, axis=None)


def grid_columns(df: pd.DataFrame) -> list[str]:
    """A block's grid columns: those between ``run_id`` and the statistics (``n`` / ``epoch``)."""
    columns = list(df.columns)
    if "run_id" not in columns:
        return []
    start = columns.index("run_id") + 1
    stop = next((i for i, c in enumerate(columns) if c in ("n", "epoch") and i >= start), start)
    return columns[start:stop]


def configurations(df: pd.DataFrame) -> pd.Series:
    """A readable name per configuration: its row label, then the grid values that vary within
    one label, then the dataset when there are several."""
    parts = []
    rows = df["row"].fillna("").astype(str) if "row" in df.columns else None
    if rows is not None and (rows != "").any():
        parts.append(rows)
    for name in grid_columns(df):
        spread = df.groupby(rows)[name].nunique().max() if parts else df[name].nunique()
        if spread > 1:
            label = LABELS.get(name, name)
            parts.append(df[name].map(lambda v, label=label: f"{label}={_short(v)}"))
    if "paper_dataset" in df.columns and df["paper_dataset"].nunique() > 1:
        parts.append(df["paper_dataset"].map(lambda d: DATASET_LABELS.get(d, d)))
    if not parts:
        return df.get("run_id", pd.Series("", index=df.index)).astype(str)
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.str.cat(part, sep=" ")
    return joined.str.strip()


def _short(value: object) -> str:
    """A grid value as it reads in a label (``0.1``, ``4``, ``asymmetric``)."""
    number = pd.to_numeric(value, errors="coerce")
    return str(value) if pd.isna(number) else f"{number:g}"


def _accuracies(df: pd.DataFrame, prefix: str) -> list[str]:
    """``mean ± std`` of the ``<prefix>_mean`` and ``<prefix>_std`` columns, row by row."""
    return [fmt_acc(m, s) for m, s in df[[f"{prefix}_mean", f"{prefix}_std"]].to_numpy()]


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    """The configurations with at least one finished seed (not the cited rows)."""
    return df[pd.to_numeric(df["n"], errors="coerce") > 0]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Best- and final-epoch test accuracy (mean ± std over seeds) per configuration."""
    missing = [c for c in SUMMARY_COLUMNS if c not in df.columns]
    if missing:
        raise FrernnError(f"summary table lacks column(s): {', '.join(missing)}")
    ours = _finished(df)
    seeds = ours[["n", "n_expected"]].astype(float).to_numpy()
    shown = {
        "configuration": configurations(ours).to_numpy(),
        "best epoch": _accuracies(ours, "test_best"),
        "final epoch": _accuracies(ours, "test_final"),
        "n": [f"{n:.0f}/{expected:.0f}" for n, expected in seeds],
        "diverged": ours["diverged"].astype(int).to_numpy(),
    }
    if any(ALIGNMENT_COLUMN.match(c) for c in df.columns):  # measured: cosines with BP
        for phase, field in ALIGNMENT_FIELDS.items():
            shown[field] = [fmt_alignment(row, phase) for _, row in ours.iterrows()]
    return pd.DataFrame(shown).set_index("configuration")


def published_beside(df: pd.DataFrame) -> pd.DataFrame:
    """The configurations the paper gives a number for: ours, published and, where the data can
    be compared, the difference with Welch's t."""
    if "paper_test_mean" not in df.columns:
        return pd.DataFrame()
    hit = _finished(df[pd.to_numeric(df["paper_test_mean"], errors="coerce").notna()])
    return pd.DataFrame(
        {
            "configuration": configurations(hit).to_numpy(),
            "reproduced": _accuracies(hit, "test_best"),
            "published": _accuracies(hit, "paper_test"),
            "Δ": [fmt_comparison(row) for _, row in hit.iterrows()],
        }
    ).set_index("configuration")


def save(table: pd.DataFrame | Styler, path: str | Path, note: str = "") -> None:
    """Write a table shown by a notebook as an HTML fragment (the report embeds it), after
    ``note``, a line saying how to read it."""
    head = f"<p>{html.escape(note)}.</p>\n" if note else ""
    atomic_write_text(path, head + table.to_html())


def provenance(scale: str, substitute: str = "") -> str:
    """One Markdown line saying at which scale, and on which data, a table or figure was made."""
    text = f"**scale:** {scale}"
    if substitute:
        label = DATASET_LABELS.get(substitute, substitute)
        text += (
            f"; **dataset substituted:** every experiment ran on {label}; published values are "
            "shown beside ours, never compared"
        )
    return text


def train_accuracy_note(df: pd.DataFrame) -> str:
    """What the train % in brackets is, from the table's ``train_acc`` column."""
    kinds = sorted({str(k) for k in df.get("train_acc", pd.Series(dtype=str)).dropna()})
    if not kinds:
        return "train % in brackets: how it was measured is not recorded"
    said = "; ".join(f"{k}: {TRAIN_ACCURACY.get(k, k)}" for k in kinds)
    return f"train % in brackets (its best epoch) = {said}"
