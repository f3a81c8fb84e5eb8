"""Claim verdicts on hand-made tables: holds, does not hold, not comparable."""

from __future__ import annotations

import pandas as pd
import pytest
from contract_csvs import figure_data, summary_tables

from frernn import claims


def _row(row: str, method: str, mean: float, std: float = 0.1, dataset: str = "mnist") -> dict:
    return {
        "row": row,
        "method": method,
        "dataset": dataset,
        "substitute": "",
        "n": 5,
        "test_best_mean": mean,
        "test_best_std": std,
    }


def _verdicts(tables: dict[str, pd.DataFrame], scale: str = "quick") -> dict[str, claims.Verdict]:
    return {v.claim: v for v in claims.evaluate(tables, scale)}


def _find(verdicts: dict[str, claims.Verdict], start: str) -> claims.Verdict:
    return next(v for claim, v in verdicts.items() if claim.startswith(start))


def test_one_claim_holds_one_fails_one_not_comparable() -> None:
    table2 = pd.DataFrame(
        [
            _row("5-symm", "BP", 97.7),
            _row("5-symm", "EP", 97.6),
            _row("10-asymm", "FA", 94.5, 0.3),
            _row("10-asymm", "EP-AGT (P=0.2)", 93.0, 0.2),
        ]
    )
    verdicts = _verdicts({"table2": table2})
    assert _find(verdicts, "EP ≈ BP").verdict == claims.HOLDS
    assert "EP 97.60 vs BP 97.70" in _find(verdicts, "EP ≈ BP").evidence
    assert _find(verdicts, "AGT beats FA").verdict == claims.FAILS
    assert "Δ -1.50" in _find(verdicts, "AGT beats FA").evidence
    residual = _find(verdicts, "Residual")
    assert residual.verdict == claims.NOT_COMPARABLE
    assert "10-symm" in residual.evidence
    assert _find(verdicts, "T=10").verdict == claims.NOT_COMPARABLE
    assert len(verdicts) == len(claims.CLAIMS)


def test_ep_far_below_bp_fails_and_labels_in_other_styles_match() -> None:
    table1 = pd.DataFrame([_row("2HL-512 EP", "ep", 95.0), _row("2HL-512 BP", "bp", 98.3)])
    assert _find(_verdicts({"table1": table1}), "EP ≈ BP").verdict == claims.FAILS


def test_residual_gain_judged_per_dataset() -> None:
    rows = [_row("10-symm", "EP", 92.5), _row("10-symm", "EP-Residual", 97.5)]
    rows += [
        _row("10-symm", "EP", 34.9, dataset="cifar10"),
        _row("10-symm", "ep_residual", 37.0, dataset="cifar10"),
    ]
    verdict = _find(_verdicts({"table2": pd.DataFrame(rows)}), "Residual")
    assert verdict.verdict == claims.FAILS  # +5.0 on MNIST but only +2.1 on CIFAR-10 (needs 4.78)
    assert "gain +5.00" in verdict.evidence and "gain +2.10" in verdict.evidence


def test_contract_tables_shaped_like_the_paper_hold() -> None:
    tables = summary_tables("quick", "") | figure_data()
    verdicts = _verdicts(tables)
    for start in ("EP ≈ BP", "Residual", "AGT beats FA", "Optimal β", "Small β", "T=10"):
        assert _find(verdicts, start).verdict == claims.HOLDS, _find(verdicts, start)
    assert "L2: 0.001, L3: 0.01, L5: 0.1, L10: 0.1" in _find(verdicts, "Optimal β").evidence
    pep = _find(verdicts, "EP is ≥10×")
    assert (
        pep.verdict == claims.NOT_COMPARABLE and "quick-scale runs cannot judge it" in pep.evidence
    )
    pep = _find(_verdicts(tables, "paper"), "EP is ≥10×")  # P-EP not re-run: steps per sample
    assert pep.verdict == claims.FAILS and "2HL-512: 8.0x by relaxation steps" in pep.evidence


def test_reversed_trends_fail() -> None:
    tables = summary_tables("quick", "") | figure_data()
    s1 = tables["tableS1"].copy()
    s1["test_best_mean"] = s1["test_best_mean"] + 5 * s1["beta"] * (s1["depth"] == 2)
    fig5 = tables["fig5"].copy()
    fig5.loc[fig5["metric"] == "ftmle", "mean"] *= -1
    verdicts = _verdicts({"tableS1": s1, "fig5": fig5})
    assert _find(verdicts, "Optimal β").verdict == claims.FAILS
    assert _find(verdicts, "Small β").verdict == claims.FAILS


def test_no_convergence_at_large_beta_counts_as_slower() -> None:
    fig5 = figure_data()["fig5"]
    assert fig5.query("beta == 4 and metric == 'conv_time'")["mean"].isna().all()
    evidence = _find(_verdicts({"fig5": fig5}), "Small β").evidence
    assert "conv_time: β=0.001 10 vs β=4 inf" in evidence


@pytest.mark.parametrize("scale", ["smoke", "custom"])
def test_below_the_claims_scale_nothing_is_judged(scale: str) -> None:
    tables = summary_tables(scale, "") | figure_data()
    verdicts = claims.evaluate(tables, scale)
    assert {v.verdict for v in verdicts} == {claims.NOT_COMPARABLE}
    computed = {v.claim: v.evidence.split(";")[0] for v in verdicts}
    pep = computed.pop(next(c for c in computed if c.startswith("EP is ≥10×")))
    assert all("computed: holds" in e for e in computed.values())
    assert "computed: does not hold" in pep  # 8x / 7.1x / 7x relaxation steps per sample
