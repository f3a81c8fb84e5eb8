"""Verdicts on the paper's claims, computed from the aggregated tables, never by hand.

A judge reads the tables and returns a :class:`Finding`: what the data say (``holds``,
``does not hold``, ``not resolved`` when the confidence interval straddles the threshold) and
the table rows its numbers came from. :func:`judge` then gates it (:mod:`frernn.gating`): only
rows at paper scale, on the paper's datasets, with every seed finished can make a verdict;
otherwise it is ``indicative``, with what the data point to and why they cannot decide.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from frernn import gating, speed, stats
from frernn.tables import paper_dataset

HOLDS = "holds"
FAILS = "does not hold"
NOT_RESOLVED = "not resolved"  # paper-scale data whose noise cannot decide
INDICATIVE = "indicative"  # the data are not the paper's experiment: no verdict
NOT_COMPARABLE = "not comparable"  # the numbers the claim needs are absent or incommensurable
JUDGED = (HOLDS, FAILS, NOT_RESOLVED)
POINTS_TO = {  # wording of an indicative verdict (never the words of a verdict)
    HOLDS: "the data point towards the claim",
    FAILS: "the data point against the claim",
    NOT_RESOLVED: "the data do not decide",
}
MATCH_POINTS = 0.5  # "≈" / "matches": no worse than this many points (non-inferiority margin)
BOOTSTRAP_DECIDES = 0.95  # share of bootstrap draws that must agree for a verdict

Tables = dict[str, pd.DataFrame]


class NotComparable(Exception):
    """The data needed to judge a claim are absent from the tables."""


@dataclass(frozen=True)
class Finding:
    """What a judge read in the data, the numbers behind it and the rows they came from."""

    outcome: str  # one of JUDGED, or NOT_COMPARABLE
    evidence: str
    rows: tuple[pd.DataFrame, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """One claim, where the paper makes it, the verdict and the numbers behind it.

    ``basis``: why the data cannot judge it (scale, substitution, missing runs), empty when
    they can; ``points_to``: the outcome on the data of an indicative verdict.
    """

    claim: str
    source: str
    verdict: str
    evidence: str
    basis: tuple[str, ...] = ()
    points_to: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim as the paper states it and the judge that reads it off the tables."""

    text: str
    source: str
    judge: Callable[[Tables], Finding]


def combine(outcomes: Sequence[str]) -> str:
    """One outcome of several parts: any part failing fails, all holding holds."""
    if FAILS in outcomes:
        return FAILS
    return HOLDS if outcomes and all(o == HOLDS for o in outcomes) else NOT_RESOLVED


def decide(interval: tuple[float, float], threshold: float) -> str:
    """Holds when the interval lies above ``threshold``, fails below it, else not resolved."""
    low, high = interval
    if low > threshold:
        return HOLDS
    return FAILS if high < threshold else NOT_RESOLVED


def judge(claim: Claim, tables: Tables) -> Verdict:
    """The gated verdict on one claim."""
    try:
        found = claim.judge(tables)
    except NotComparable as exc:
        return Verdict(claim.text, claim.source, NOT_COMPARABLE, str(exc))
    if found.outcome not in JUDGED:
        return Verdict(claim.text, claim.source, found.outcome, found.evidence)
    basis = tuple(gating.reasons(list(found.rows)))
    if not basis:
        return Verdict(claim.text, claim.source, found.outcome, found.evidence)
    evidence = f"{POINTS_TO[found.outcome]}: {found.evidence}. Cannot judge: {'; '.join(basis)}"
    return Verdict(claim.text, claim.source, INDICATIVE, evidence, basis, found.outcome)


def _slug(text: object) -> str:
    """Lowercase token so that ``EP-Residual``, ``ep_residual`` and ``EP residual`` match."""
    return re.sub(r"[\s_\-]+", "-", str(text)).strip("-").lower()


def _table(tables: Tables, name: str) -> pd.DataFrame:
    """A table by name, or NotComparable when the run did not produce it."""
    df = tables.get(name)
    if df is None or df.empty:
        raise NotComparable(f"no {name} data")
    return df


@dataclass(frozen=True)
class Cell:
    """One summary-table row as a claim uses it."""

    mean: float
    std: float
    n: int
    run_id: str
    row: pd.DataFrame

    @property
    def summary(self) -> tuple[float, float, int]:
        return self.mean, self.std, self.n


def _cell(df: pd.DataFrame, row: str, method: Callable[[str], bool], dataset: str) -> Cell:
    """The row whose label and method match, with its best-epoch test mean, std and n."""
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
    first = hit.iloc[0]
    std = float(first["test_best_std"]) if pd.notna(first["test_best_std"]) else math.nan
    rid = str(first.get("run_id", f"{row}/{dataset}"))
    return Cell(float(first["test_best_mean"]), std, int(first["n"]), rid, hit.iloc[:1])


def _is(name: str) -> Callable[[str], bool]:
    """Method matcher: exactly ``name`` (``ep`` is not ``ep-residual``)."""
    return lambda method: method == name


def _has(token: str) -> Callable[[str], bool]:
    """Method matcher: a variant naming ``token`` (``ep-agt-(p=0.2)``)."""
    return lambda method: token in method


def _difference(a: Cell | Sequence[float], b: Cell | Sequence[float], threshold: float):
    """(outcome, text) of mean(a) − mean(b) against ``threshold`` by its 95 % Welch interval."""
    if isinstance(a, Cell) and isinstance(b, Cell):
        test = stats.welch(*a.summary, *b.summary)
        diff = a.mean - b.mean
    else:
        test = stats.welch_samples(a, b)
        diff = float(np.mean(a) - np.mean(b))
    if test is None:
        return NOT_RESOLVED, f"Δ {diff:+.2f} (needs ≥ 2 runs with a spread on each side)"
    low, high = test.interval()
    outcome = decide((low, high), threshold)
    return outcome, f"Δ {diff:+.2f}, 95 % CI [{low:+.2f}, {high:+.2f}], p = {test.p:.2g}"


def ep_matches_bp(tables: Tables) -> Finding:
    """EP no worse than BP by more than 0.5 points (95 % CI), each distinct MNIST pair once."""
    pairs = [("table1", "2HL-512"), ("table1", "3HL-512"), ("table1", "Conv")]
    pairs += [("table2", "5-symm"), ("table2", "Conv")]
    notes, outcomes, rows, seen = [], [], [], {}
    for name, row in pairs:
        try:
            df = _table(tables, name)
            ep, bp = _cell(df, row, _is("ep"), "mnist"), _cell(df, row, _is("bp"), "mnist")
        except NotComparable:
            continue
        key = (ep.run_id, bp.run_id)
        if key in seen:
            notes.append(f"{name} {row}: the same runs as {seen[key]}, counted once")
            continue
        seen[key] = f"{name} {row}"
        outcome, text = _difference(ep, bp, -MATCH_POINTS)
        outcomes.append(outcome)
        rows += [ep.row, bp.row]
        notes.append(f"{name} {row}: EP {ep.mean:.2f} vs BP {bp.mean:.2f} ({text})")
    if not outcomes:
        raise NotComparable("no EP/BP pair on MNIST in table1/table2")
    return Finding(combine(outcomes), "; ".join(notes), tuple(rows))


def residual_rescues_depth(tables: Tables) -> Finding:
    """10-symm EP-Residual gains ≥ half the published gain over EP (+5 MNIST, +9.56 CIFAR)."""
    df = _table(tables, "table2")
    notes, outcomes, rows = [], [], []
    for dataset, published in (("mnist", 5.0), ("cifar10", 9.56)):
        try:
            residual = _cell(df, "10-symm", _has("residual"), dataset)
            plain = _cell(df, "10-symm", _is("ep"), dataset)
        except NotComparable:
            continue
        outcome, text = _difference(residual, plain, published / 2)
        outcomes.append(outcome)
        rows += [residual.row, plain.row]
        notes.append(
            f"{dataset}: {residual.mean:.2f} vs {plain.mean:.2f} (gain {text}; "
            f"needs > {published / 2:.2f})"
        )
    if not outcomes:
        raise NotComparable("no 10-symm EP / EP-Residual pair in table2")
    if len(outcomes) == 1:
        notes.append("only one of the paper's two datasets has results")
        outcomes.append(NOT_RESOLVED)
    return Finding(combine(outcomes), "; ".join(notes), tuple(rows))


def agt_beats_fa(tables: Tables) -> Finding:
    """10-asymm EP-AGT above FA on MNIST: the 95 % interval of the difference above 0."""
    df = _table(tables, "table2")
    agt = _cell(df, "10-asymm", _has("agt"), "mnist")
    fa = _cell(df, "10-asymm", _is("fa"), "mnist")
    outcome, text = _difference(agt, fa, 0.0)
    return Finding(outcome, f"AGT {agt.mean:.2f} vs FA {fa.mean:.2f} ({text})", (agt.row, fa.row))


def _seed_values(text: object) -> list[float]:
    """Per-seed values of a ``seeds`` / ``test_best_seeds`` JSON cell (null = no value)."""
    if not isinstance(text, str) or not text:
        return []
    return [math.nan if v is None else float(v) for v in json.loads(text).values()]


def optimal_beta_grows(tables: Tables) -> Finding:
    """Table S1: the best β per depth grows with depth, in ≥ 95 % of bootstrap draws over seeds.

    Grows: never falls from one depth to the next, and ends above where it starts.
    """
    df = _table(tables, "tableS1").dropna(subset=["test_best_mean"])
    if "test_best_seeds" not in df.columns:
        raise NotComparable("tableS1.csv has no per-seed accuracies (test_best_seeds)")
    df = df.sort_values(["depth", "beta"])
    depths = [d for d, sub in df.groupby("depth") if sub["beta"].nunique() >= 2]
    if len(depths) < 2:
        raise NotComparable("Table S1 needs two depths with two β each")
    df = df[df["depth"].isin(depths)]
    groups = [_seed_values(v) for v in df["test_best_seeds"]]
    if any(not g for g in groups):
        raise NotComparable("a Table S1 cell has no finished run")
    betas = [df.loc[df["depth"] == d, "beta"].to_numpy(float) for d in depths]
    bounds = np.cumsum([0] + [len(b) for b in betas])

    def best(means: np.ndarray) -> np.ndarray:
        """Best β per depth (last axis) of cell means (last axis: cells in table order)."""
        picks = [
            b[np.argmax(means[..., i:j], axis=-1)]
            for b, i, j in zip(betas, bounds, bounds[1:], strict=False)
        ]
        return np.stack(picks, axis=-1)

    observed = best(np.array([np.nanmean(g) for g in groups]))
    draws = best(np.stack([np.nanmean(d, axis=1) for d in stats.resamples(groups)], axis=1))
    steps = np.diff(draws, axis=1)
    share = float(np.mean((steps >= 0).all(axis=1) & (draws[:, -1] > draws[:, 0])))
    agree = np.isclose(draws, observed).mean(axis=0)
    per_depth = [
        f"L{depth:g}: {observed[k]:g} ({agree[k]:.0%} of draws)" for k, depth in enumerate(depths)
    ]
    outcome = NOT_RESOLVED
    if share >= BOOTSTRAP_DECIDES:
        outcome = HOLDS
    elif share <= 1 - BOOTSTRAP_DECIDES:
        outcome = FAILS
    text = f"best β by depth: {', '.join(per_depth)}; it grows in {share:.0%} of bootstrap draws"
    return Finding(outcome, text, (df,))


def _fig5_series(df: pd.DataFrame, feedback: str, phase: str, metric: str):
    """(β per cell, per-seed values per cell) of one Fig. 5 series; no convergence = inf."""
    pick = (df["feedback"] == feedback) & (df["phase"] == phase)
    rows = df[pick & (df["metric"] == metric)].sort_values("beta")
    values = [_seed_values(v) for v in rows["seeds"]]
    if metric == "conv_time":  # a seed whose samples never converged is the slowest there is
        values = [[math.inf if math.isnan(v) else v for v in g] for g in values]
    return rows["beta"].to_numpy(float), values, rows


def _rank_trend(betas: np.ndarray, groups: list[list[float]]) -> tuple[float, float, float]:
    """Spearman ρ of value against β over every run, and its bootstrap 95 % interval."""
    x = np.concatenate([np.full(len(g), b) for b, g in zip(betas, groups, strict=True)])
    observed = stats.spearman(x, np.concatenate(groups))
    draws = np.concatenate(stats.resamples(groups), axis=1)
    low, high = stats.percentile_interval(stats.spearman(np.broadcast_to(x, draws.shape), draws))
    return observed, low, high


def small_beta_stabilises(tables: Tables) -> Finding:
    """Fig. 5: FTMLE and convergence time rise with β over all β (rank correlation > 0).

    Convergence time counts a seed with no converged sample as never converging (the slowest
    rank); the converged fraction's own rank correlation is reported beside it.
    """
    df = _table(tables, "fig5")
    if "seeds" not in df.columns:
        raise NotComparable("fig5.csv has no per-seed values (seeds)")
    if df["beta"].nunique() < 3:
        raise NotComparable("Fig. 5 needs three β values or more for a trend")
    notes, outcomes = [], []
    for (feedback, phase), _ in df.groupby(["feedback", "phase"], sort=False):
        for metric in ("ftmle", "conv_time", "conv_frac"):
            betas, groups, rows = _fig5_series(df, feedback, phase, metric)
            if len(betas) < 3 or any(not g for g in groups):
                continue
            rho, low, high = _rank_trend(betas, groups)
            text = f"{feedback}/{phase} {metric}: ρ = {rho:+.2f} [{low:+.2f}, {high:+.2f}]"
            if metric == "conv_frac":
                notes.append(text + " (shown)")
                continue
            outcomes.append(NOT_RESOLVED if math.isnan(rho) else decide((low, high), 0.0))
            notes.append(text)
    if not outcomes:
        raise NotComparable("Fig. 5 lacks per-seed FTMLE and convergence time")
    return Finding(combine(outcomes), "; ".join(notes), (df,))


def _best_per_run(df: pd.DataFrame) -> list[float]:
    """Each seed's best-epoch test accuracy from the per-epoch ``seeds`` column of Fig. 6."""
    best: dict[str, float] = {}
    for text in df["seeds"]:
        for seed, value in json.loads(text).items():
            if value is not None:
                best[seed] = max(best.get(seed, -math.inf), float(value))
    return list(best.values())


def ten_steps_suffice(tables: Tables) -> Finding:
    """Fig. 6a–d: at β=0.01 T=10 matches T=100; at β=4 even T=100 stays below 95 % (per run)."""
    df = _table(tables, "fig6")
    if "seeds" not in df.columns:
        raise NotComparable("fig6.csv has no per-seed accuracies (seeds)")
    sweep = df[df["panel"] == "T-sweep"]
    small, large = sweep[np.isclose(sweep["beta"], 0.01)], sweep[np.isclose(sweep["beta"], 4)]
    if small["T"].nunique() < 2 or large.empty:
        raise NotComparable("Fig. 6 needs a T sweep at β=0.01 and a run at β=4")
    few, many = small["T"].min(), small["T"].max()
    a = _best_per_run(small[small["T"] == few])
    b = _best_per_run(small[small["T"] == many])
    first, text = _difference(a, b, -MATCH_POINTS)
    top = large[large["T"] == large["T"].max()]
    best = _best_per_run(top)
    mean, std = stats.mean_std(best)
    if len(best) < 2 or math.isnan(std):
        second, bound = NOT_RESOLVED, "needs ≥ 2 runs"
    else:
        half = stats.t_critical(len(best) - 1) * std / math.sqrt(len(best))
        second = decide((95 - mean - half, 95 - mean + half), 0.0)
        bound = f"95 % CI [{mean - half:.2f}, {mean + half:.2f}]"
    evidence = (
        f"β=0.01: T={few:g} {np.mean(a):.2f} vs T={many:g} {np.mean(b):.2f} ({text}); "
        f"β=4, T={top['T'].iloc[0]:g}: best epoch {mean:.2f} ± {std:.2f} over {len(best)} runs "
        f"({bound}, needs < 95)"
    )
    return Finding(combine([first, second]), evidence, (small, top))


def faster_than_pep(tables: Tables) -> Finding:
    """Table 1: per family, P-EP over FRE-RNN EP, by the wall clock per run where P-EP ran on the
    same device (``table1_pep``), else by relaxation steps per sample (frernn.speed)."""
    table1, pep = _table(tables, "table1"), tables.get(speed.PEP_TABLE)
    table = speed.comparison(table1, pep)
    ok, evidence = speed.verdict(table)
    return Finding(HOLDS if ok else FAILS, evidence, tuple(speed.basis_rows(table1, pep, table)))


CLAIMS: tuple[Claim, ...] = (
    Claim("EP ≈ BP on MNIST", "Tables 1, 2", ep_matches_bp),
    Claim(
        "Residual connections rescue depth (10-symm +5 MNIST, +9 CIFAR-10)",
        "Table 2",
        residual_rescues_depth,
    ),
    Claim("AGT beats FA at depth 10 on MNIST", "Table 2", agt_beats_fa),
    Claim("Optimal β grows with depth", "Table S1", optimal_beta_grows),
    Claim("Small β cuts convergence time and FTMLE", "Fig. 5", small_beta_stabilises),
    Claim(
        "T=10 suffices at β=0.01; at β=4 even T=100 stays below 95 %",
        "Fig. 6a–d",
        ten_steps_suffice,
    ),
    Claim("EP is ≥10× faster than P-EP", "Table 1", faster_than_pep),
)


def evaluate(tables: Tables, claims: Sequence[Claim] = CLAIMS) -> list[Verdict]:
    """One gated verdict per claim."""
    return [judge(claim, tables) for claim in claims]
