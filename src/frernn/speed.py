"""FRE-RNN EP against P-EP per Table 1 family: time per epoch and per run on the same machine,
relaxation steps per sample, and the verdict on "EP is >= 10x faster than P-EP"."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SPEEDUP = 10.0
FAMILIES = {  # family: (FRE-RNN EP row, P-EP at its published protocol, P-EP protocol-matched)
    "2HL-512": ("2HL-512 EP", "2HL-512 P-EP", "2HL-512 P-EP matched"),
    "3HL-512": ("3HL-512 EP", "3HL-512 P-EP", "3HL-512 P-EP matched"),
    "Conv": ("Conv EP", "Conv P-EP", "Conv P-EP matched"),
}
PAPER_STEPS = {"2HL-512": (15, 120), "3HL-512": (28, 200), "Conv": (30, 210)}  # (EP, P-EP)
PAPER_WALL = {"2HL-512": (76, 6960), "3HL-512": (131, 30420), "Conv": (748, 32280)}  # seconds
NOT_COMPARABLE = "not comparable"
PEP_TABLE = "table1_pep"  # the P-EP re-run block (outside the default target)


@dataclass(frozen=True)
class Timing:
    """Finished seeds of one row: mean seconds per epoch and per run, steps/sample, devices."""

    n: int
    epoch_s: float
    run_s: float
    steps: int | None
    devices: frozenset[str]


def timing(table: pd.DataFrame | None, label: str) -> Timing:
    """The timing of row ``label`` of an aggregated summary table (n = 0 when none finished)."""
    rows = None if table is None or "row" not in table else table[table["row"] == label]
    if rows is None or rows.empty or not rows["n"].iloc[0] > 0:
        return Timing(0, math.nan, math.nan, None, frozenset())
    row = rows.iloc[0]
    steps = row.get("steps_per_sample", math.nan)
    return Timing(
        int(row["n"]),
        float(row.get("epoch_seconds_mean", math.nan)),
        float(row.get("wall_seconds_mean", math.nan)),
        None if pd.isna(steps) else int(steps),
        frozenset(str(row.get("devices", "")).split(";")) - {"", "nan"},
    )


def _ratio(slow: float, fast: float) -> float:
    return slow / fast if fast > 0 and not math.isnan(slow) else math.nan


def _x(value: float) -> str:
    """``8.0x``, or "not comparable" for a missing ratio (never "nan x")."""
    return NOT_COMPARABLE if math.isnan(value) else f"{value:.1f}x"


def comparison(table1: pd.DataFrame | None, table1_pep: pd.DataFrame | None) -> pd.DataFrame:
    """One row per family: both sides' seconds per epoch and per run, their ratios (P-EP over
    FRE-RNN EP, same machine only), steps per sample and the published wall-clock ratio."""
    rows = []
    for family, (ep_row, pep_row, matched_row) in FAMILIES.items():
        ep = timing(table1, ep_row)
        pep, matched = timing(table1_pep, pep_row), timing(table1_pep, matched_row)
        same = bool(ep.n and pep.n and ep.devices == pep.devices and len(ep.devices) == 1)
        same_matched = bool(ep.n and matched.n and ep.devices == matched.devices)
        ep_steps, pep_steps = (
            ep.steps or PAPER_STEPS[family][0],
            pep.steps or PAPER_STEPS[family][1],
        )
        rows.append(
            {
                "family": family,
                "device": ", ".join(sorted(ep.devices | pep.devices)) or "",
                "same_machine": same,
                "n_ep": ep.n,
                "n_pep": pep.n,
                "ep_epoch_s": ep.epoch_s,
                "pep_epoch_s": pep.epoch_s,
                "epoch_ratio": _ratio(pep.epoch_s, ep.epoch_s) if same else math.nan,
                "matched_epoch_s": matched.epoch_s,
                "matched_epoch_ratio": (
                    _ratio(matched.epoch_s, ep.epoch_s) if same_matched else math.nan
                ),
                "ep_run_s": ep.run_s,
                "pep_run_s": pep.run_s,
                "run_ratio": _ratio(pep.run_s, ep.run_s) if same else math.nan,
                "ep_steps": ep_steps,
                "pep_steps": pep_steps,
                "steps_ratio": pep_steps / ep_steps,
                "published_ratio": PAPER_WALL[family][1] / PAPER_WALL[family][0],
            }
        )
    return pd.DataFrame(rows)


def verdict(table: pd.DataFrame) -> tuple[bool, str]:
    """(holds, evidence): per family the same-machine run-time ratio where P-EP was re-run here,
    else the hardware-free ratio of relaxation steps per sample; the claim needs >= 10x in all."""
    ok, notes = True, []
    for _, row in table.iterrows():
        if row["same_machine"]:
            measured, basis = row["run_ratio"], "wall clock per run on this machine"
            extra = f"; per epoch {_x(row['epoch_ratio'])}"
            extra += f", protocol-matched P-EP {_x(row['matched_epoch_ratio'])} per epoch"
        else:
            measured, basis = row["steps_ratio"], "relaxation steps per sample"
            extra = f"; same-machine wall clock {NOT_COMPARABLE} (P-EP not re-run here)"
        ok &= measured >= SPEEDUP
        notes.append(
            f"{row['family']}: {_x(measured)} by {basis} ({row['pep_steps']:.0f} vs "
            f"{row['ep_steps']:.0f} steps{extra}; published times {row['published_ratio']:.0f}x, "
            "other hardware and batch size, context only)"
        )
    return ok, "; ".join(notes)


def basis_rows(
    table1: pd.DataFrame | None, table1_pep: pd.DataFrame | None, table: pd.DataFrame
) -> list[pd.DataFrame]:
    """The summary rows each family's verdict rests on: the FRE-RNN EP row (its steps), and the
    P-EP row where the wall clock is compared."""
    rows = []
    for _, family in table.iterrows():
        ep_row, pep_row, _ = FAMILIES[family["family"]]
        if table1 is not None and "row" in table1:
            rows.append(table1[table1["row"] == ep_row])
        if family["same_machine"]:
            rows.append(table1_pep[table1_pep["row"] == pep_row])
    return [r for r in rows if not r.empty]


def render(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the report shows it: durations and ratios as text."""
    from frernn.tables import fmt_duration

    def duration(value: float) -> str:
        if math.isnan(value):
            return "—"
        return f"{value:.1f} s" if value < 60 else fmt_duration(value)

    shown = pd.DataFrame(
        {
            "device": table["device"].replace("", "—"),
            "seeds EP / P-EP": [
                f"{a} / {b}" for a, b in zip(table["n_ep"], table["n_pep"], strict=True)
            ],
            "EP s/epoch": table["ep_epoch_s"].map(duration),
            "P-EP s/epoch": table["pep_epoch_s"].map(duration),
            "ratio / epoch": table["epoch_ratio"].map(_x),
            "P-EP matched s/epoch": table["matched_epoch_s"].map(duration),
            "matched ratio / epoch": table["matched_epoch_ratio"].map(_x),
            "EP per run": table["ep_run_s"].map(duration),
            "P-EP per run": table["pep_run_s"].map(duration),
            "ratio / run": table["run_ratio"].map(_x),
            "steps/sample EP / P-EP": [
                f"{a:.0f} / {b:.0f}"
                for a, b in zip(table["ep_steps"], table["pep_steps"], strict=True)
            ],
            "ratio / steps": table["steps_ratio"].map(_x),
            "published ratio (context)": table["published_ratio"].map(_x),
        }
    )
    shown.index = table["family"]
    return shown
