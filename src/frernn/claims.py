"""Verdicts on the claims of SPEC §7, computed from the aggregated tables, never by hand."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from frernn import speed
from frernn.tables import paper_dataset

HOLDS = "holds"
FAILS = "does not hold"
NOT_COMPARABLE = "not comparable at this scale"
SCALE_RANK = {"smoke": 0, "quick": 1, "paper": 2}
MATCH_POINTS = 0.5  # "≈": within this many points, or 2 combined std if larger

Tables = dict[str, pd.DataFrame]


class NotComparable(Exception):
    """The data needed to judge a claim are absent from the tables."""


@dataclass(frozen=True)
class Verdict:
    """One claim, where the paper makes it, the verdict and the numbers behind it."""

    claim: str
    source: str
    verdict: str
    evidence: str


def _slug(text: object) -> str:
    """Lowercase token so that ``EP-Residual``, ``ep_residual`` and ``EP residual`` match."""
    return re.sub(r"[\s_\-]+", "-", str(text)).strip("-").lower()


def _table(tables: Tables, name: str) -> pd.DataFrame:
    """A table by name, or NotComparable when the run did not produce it."""
    df = tables.get(name)
    if df is None or df.empty:
        raise NotComparable(f"no {name} data")
    return df


def _stat(
    df: pd.DataFrame, row: str, method: Callable[[str], bool], dataset: str
) -> tuple[float, float]:
    """(mean, std) of best-epoch test accuracy of the row whose label and method match."""
    target = _slug(row)
    keys = df["row"].map(_slug)  # a label may go on with the method ("10-symm EP-Residual")
    hit = df[
        ((keys == target) | keys.str.startswith(target + "-"))
        & df["method"].map(_slug).map(method)
        & (paper_dataset(df) == dataset)
        & (pd.to_numeric(df["n"], errors="coerce") > 0)
    ]
    if hit.empty or pd.isna(hit["test_best_mean"].iloc[0]):
        raise NotComparable(f"no result for {row} ({dataset})")
    std = hit["test_best_std"].iloc[0]
    return float(hit["test_best_mean"].iloc[0]), 0.0 if pd.isna(std) else float(std)


def _is(name: str) -> Callable[[str], bool]:
    """Method matcher: exactly ``name`` (``ep`` is not ``ep-residual``)."""
    return lambda method: method == name


def _has(token: str) -> Callable[[str], bool]:
    """Method matcher: a variant naming ``token`` (``ep-agt-(p=0.2)``)."""
    return lambda method: token in method


def _tolerance(std_a: float, std_b: float) -> float:
    """How far two means may differ and still "match": 0.5 points or 2 combined std."""
    return max(MATCH_POINTS, 2 * math.hypot(std_a, std_b))


def ep_matches_bp(tables: Tables) -> tuple[bool, str]:
    """EP within tolerance of (or above) BP for every EP/BP pair on MNIST in Tables 1 and 2."""
    pairs = [("table1", "2HL-512"), ("table1", "3HL-512"), ("table1", "Conv")]
    pairs += [("table2", "5-symm"), ("table2", "Conv")]
    notes, ok, found = [], True, 0
    for name, row in pairs:
        try:
            df = _table(tables, name)
            ep, ep_std = _stat(df, row, _is("ep"), "mnist")
            bp, bp_std = _stat(df, row, _is("bp"), "mnist")
        except NotComparable:
            continue
        found += 1
        tol = _tolerance(ep_std, bp_std)
        ok &= ep >= bp - tol
        notes.append(f"{name} {row}: EP {ep:.2f} vs BP {bp:.2f} (Δ {ep - bp:+.2f}, tol {tol:.2f})")
    if not found:
        raise NotComparable("no EP/BP pair on MNIST in table1/table2")
    return ok, "; ".join(notes)


def residual_rescues_depth(tables: Tables) -> tuple[bool, str]:
    """10-symm EP-Residual gains ≥ half the published gain over EP (+5 MNIST, +9.56 CIFAR)."""
    df = _table(tables, "table2")
    notes, ok, found = [], True, 0
    for dataset, published in (("mnist", 5.0), ("cifar10", 9.56)):
        try:
            residual, _ = _stat(df, "10-symm", _has("residual"), dataset)
            plain, _ = _stat(df, "10-symm", _is("ep"), dataset)
        except NotComparable:
            continue
        found += 1
        ok &= residual - plain >= published / 2
        notes.append(
            f"{dataset}: {residual:.2f} vs {plain:.2f} (gain {residual - plain:+.2f}, "
            f"needs ≥ {published / 2:.2f})"
        )
    if not found:
        raise NotComparable("no 10-symm EP / EP-Residual pair in table2")
    return ok, "; ".join(notes)


def agt_beats_fa(tables: Tables) -> tuple[bool, str]:
    """10-asymm EP-AGT above FA on MNIST by more than one combined std."""
    df = _table(tables, "table2")
    agt, agt_std = _stat(df, "10-asymm", _has("agt"), "mnist")
    fa, fa_std = _stat(df, "10-asymm", _is("fa"), "mnist")
    margin = math.hypot(agt_std, fa_std)
    return (
        agt - fa > margin,
        f"AGT {agt:.2f} vs FA {fa:.2f} (Δ {agt - fa:+.2f}, needs > {margin:.2f})",
    )


def optimal_beta_grows(tables: Tables) -> tuple[bool, str]:
    """Table S1: the best β per depth never falls as depth grows, and ends above where it starts."""
    df = _table(tables, "tableS1").dropna(subset=["test_best_mean"])
    best = {}
    for depth, sub in df.groupby("depth"):
        if sub["beta"].nunique() >= 2:
            best[depth] = float(sub.loc[sub["test_best_mean"].idxmax(), "beta"])
    if len(best) < 2:
        raise NotComparable("Table S1 needs two depths with two β each")
    betas = [best[d] for d in sorted(best)]
    ok = all(a <= b for a, b in zip(betas, betas[1:], strict=False)) and betas[-1] > betas[0]
    return ok, "best β by depth: " + ", ".join(f"L{d:g}: {best[d]:g}" for d in sorted(best))


def _fig5_value(df: pd.DataFrame, feedback: str, phase: str, beta: float, metric: str) -> float:
    """One Fig. 5 mean; a convergence time with nothing converged counts as never (inf)."""
    pick = (df["feedback"] == feedback) & (df["phase"] == phase) & np.isclose(df["beta"], beta)
    values = df.loc[pick & (df["metric"] == metric), "mean"]
    fraction = df.loc[pick & (df["metric"] == "conv_frac"), "mean"]
    if metric == "conv_time" and (values.empty or pd.isna(values.iloc[0])):
        return math.inf if fraction.empty or fraction.iloc[0] == 0 else math.nan
    return math.nan if values.empty else float(values.iloc[0])


def small_beta_stabilises(tables: Tables) -> tuple[bool, str]:
    """Fig. 5: at the smallest β, FTMLE and convergence time are below those at the largest β."""
    df = _table(tables, "fig5")
    low, high = df["beta"].min(), df["beta"].max()
    if low == high:
        raise NotComparable("Fig. 5 has a single β")
    notes, ok = [], True
    for (feedback, phase), _ in df.groupby(["feedback", "phase"]):
        for metric in ("ftmle", "conv_time"):
            a, b = (_fig5_value(df, feedback, phase, beta, metric) for beta in (low, high))
            if math.isnan(a) or math.isnan(b):
                continue
            ok &= a < b
            notes.append(f"{feedback}/{phase} {metric}: β={low:g} {a:.3g} vs β={high:g} {b:.3g}")
    if not notes:
        raise NotComparable("Fig. 5 lacks FTMLE and convergence time")
    return ok, "; ".join(notes)


def ten_steps_suffice(tables: Tables) -> tuple[bool, str]:
    """Fig. 6a–d: at β=0.01 the best test accuracy with the fewest steps T matches the most T."""
    df = _table(tables, "fig6")
    df = df[(df["panel"] == "T-sweep") & np.isclose(df["beta"], 0.01)]
    if df["T"].nunique() < 2:
        raise NotComparable("Fig. 6 has no T sweep at β=0.01")
    best = df.loc[df.groupby("T")["test_acc_mean"].idxmax()].set_index("T")
    few, many = best.index.min(), best.index.max()
    std = best["test_acc_std"].fillna(0)
    tol = _tolerance(std[few], std[many])
    a, b = best.loc[few, "test_acc_mean"], best.loc[many, "test_acc_mean"]
    return (
        a >= b - tol,
        f"T={few:g}: {a:.2f} vs T={many:g}: {b:.2f} (Δ {a - b:+.2f}, tol {tol:.2f})",
    )


def faster_than_pep(tables: Tables) -> tuple[bool, str]:
    """Table 1: per family, P-EP over FRE-RNN EP, by wall clock where P-EP ran on this machine
    (``table1_pep``), else by relaxation steps per sample (frernn.speed)."""
    return speed.verdict(speed.comparison(tables.get("table1"), tables.get("table1_pep")))


CLAIMS: tuple[tuple[str, str, str, Callable[[Tables], tuple[bool, str]]], ...] = (
    ("EP ≈ BP on MNIST", "Tables 1, 2", "quick", ep_matches_bp),
    (
        "Residual connections rescue depth (10-symm +5 MNIST, +9 CIFAR-10)",
        "Table 2",
        "quick",
        residual_rescues_depth,
    ),
    ("AGT beats FA at depth 10 on MNIST", "Table 2", "quick", agt_beats_fa),
    ("Optimal β grows with depth", "Table S1", "quick", optimal_beta_grows),
    ("Small β cuts convergence time and FTMLE", "Fig. 5", "quick", small_beta_stabilises),
    ("T=10 suffices at β=0.01", "Fig. 6a–d", "quick", ten_steps_suffice),
    ("EP is ≥10× faster than P-EP", "Table 1", "paper", faster_than_pep),
)


def evaluate(tables: Tables, scale: str) -> list[Verdict]:
    """One verdict per claim; below a claim's minimum scale the result is shown, not judged."""
    verdicts = []
    for claim, source, min_scale, judge in CLAIMS:
        try:
            ok, evidence = judge(tables)
        except NotComparable as exc:
            verdicts.append(Verdict(claim, source, NOT_COMPARABLE, str(exc)))
            continue
        verdict = HOLDS if ok else FAILS
        if SCALE_RANK.get(scale, 0) < SCALE_RANK[min_scale]:
            evidence = f"{scale}-scale runs cannot judge it (computed: {verdict}); {evidence}"
            verdict = NOT_COMPARABLE
        verdicts.append(Verdict(claim, source, verdict, evidence))
    return verdicts
