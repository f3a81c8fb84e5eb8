"""runs.csv and the CSV behind every table and figure, from the finished runs' metrics."""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from frernn import experiments, gating, stats
from frernn.errors import FrernnError
from frernn.io import atomic_write
from frernn.models.graph import LayerGraph

log = logging.getLogger(__name__)

DYNAMICS_METRICS = ("sr", "ftmle", "mle", "conv_time", "conv_frac")
PAPER_VALUES = ("test_mean", "test_std", "train", "wall_seconds")
REFERENCE_SCALE = "paper_reference"  # the config's experiments with no scale overrides
AGREES, DIFFERS = "agrees", "differs"
NOT_COMPARABLE, NOT_JUDGED = "not comparable", "not judged"
AGREE_T = 2.0  # |Welch t| up to this: the reproduced mean agrees with the published one


def reference_plan(config: dict[str, Any]) -> experiments.Plan:
    """The config's experiments at the paper's settings: no scale spec, no thinning."""
    paper = copy.deepcopy(config)
    paper["scales"] = {**paper["scales"], REFERENCE_SCALE: {}}
    paper["scale"] = REFERENCE_SCALE
    return experiments.build_plan(paper)


def _cell_key(cell: experiments.Cell) -> tuple[Any, ...]:
    return cell.block, cell.row, cell.paper_dataset, cell.grid


class Results:
    """The finished runs of a plan under one results directory (one scale, never mixed).

    ``reference`` (see :func:`reference_plan`) tells which runs are at paper scale.
    """

    def __init__(
        self,
        plan: experiments.Plan,
        root: str | Path,
        reference: experiments.Plan | None = None,
    ) -> None:
        self.plan, self.root, self.reference = plan, Path(root), reference
        cells = reference.cells.values() if reference else []
        self._paper_cells = {_cell_key(c): c for block in cells for c in block}

    def path(self, rid: str, seed: int, name: str) -> Path:
        return self.root / self.plan.run_dir(rid, seed) / name

    def metrics(self, rid: str, seed: int) -> dict[str, Any] | None:
        """metrics.json of one job, None while it is not finished."""
        path = self.path(rid, seed, "metrics.json")
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FrernnError(f"{path} is not valid JSON ({exc.msg})") from None
        scale = data["spec"].get("scale")
        if scale != self.plan.scale:
            raise FrernnError(
                f"{path} was trained at scale {scale!r}, not {self.plan.scale!r}: "
                "aggregation never mixes scales"
            )
        return data

    def seeds(self, rid: str) -> tuple[dict[int, dict[str, Any]], list[str]]:
        """Finished metrics per seed, and the names of the missing jobs."""
        found, missing = {}, []
        for seed in self.plan.seeds:
            data = self.metrics(rid, seed)
            if data is None:
                missing.append(f"{rid}/seed{seed}")
            else:
                found[seed] = data
        if missing:
            log.warning("missing runs (not averaged): %s", ", ".join(missing))
        return found, missing

    def fidelity(self, cell: experiments.Cell) -> dict[str, Any]:
        """``paper_scale``, ``scale_fraction`` and ``scale_note`` of one cell's run."""
        paper = self._paper_cells.get(_cell_key(cell))
        if paper is None:
            note = "no paper-scale reference" if self.reference is None else "not a paper cell"
            return {"paper_scale": False, "scale_fraction": math.nan, "scale_note": note}
        ours, theirs = self.plan.runs[cell.run_id].spec, self.reference.runs[paper.run_id].spec
        flat_ours, flat_paper = _flatten(ours), _flatten(theirs)
        notes = [
            f"{key} {_shown(flat_ours.get(key))} (paper {_shown(flat_paper.get(key))})"
            for key in sorted(set(flat_ours) | set(flat_paper))
            if key != "scale" and flat_ours.get(key) != flat_paper.get(key)
        ]
        shown, full = len(self.plan.cells[cell.block]), len(self.reference.cells[cell.block])
        if shown < full:
            notes.append(f"{shown} of {full} configurations of the sweep")
        sizes = zip(experiments._sizes(ours)[:2], experiments._sizes(theirs)[:2], strict=True)
        fractions = [ours["train"]["epochs"] / theirs["train"]["epochs"]]
        fractions += [a / b for a, b in sizes]
        return {
            "paper_scale": not notes,
            "scale_fraction": min(1.0, *fractions),
            "scale_note": "; ".join(notes),
        }


def _shown(value: Any) -> str:
    """A spec value as a note shows it (``None`` = the whole dataset / the default)."""
    return "all" if value is None else str(value)


def _finite(value: Any) -> bool:
    """A finite number (a loss written as NaN, null or inf is not)."""
    return value is not None and math.isfinite(float(value))


def _by_seed(values: dict[int, float | None]) -> str:
    """Per-seed values as JSON text ``{"0": 97.1, ...}`` (null: no value)."""
    clean = {
        str(k): None if v is None or not math.isfinite(v) else round(float(v), 6)
        for k, v in sorted(values.items())
    }
    return json.dumps(clean)


def _key(value: Any) -> str:
    """Comparable text of a table key (``1`` and ``1.0`` match)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float):
        return "" if math.isnan(value) else f"{float(value):g}"
    return str(value)


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'ep': {'beta': 0.1}}`` -> ``{'ep.beta': 0.1}`` (lists as JSON text)."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = json.dumps(value) if isinstance(value, list) else value
    return flat


def published(block: str) -> pd.DataFrame | None:
    """The paper's numbers for a block (``frernn/published/<block>.csv``), if it has any."""
    resource = resources.files("frernn").joinpath("published", f"{block}.csv")
    if not resource.is_file():
        return None
    return pd.read_csv(io.StringIO(resource.read_text()), dtype=str, keep_default_na=False)


def runs_table(results: Results) -> pd.DataFrame:
    """One tidy row per finished (configuration, seed) job of the plan."""
    plan = results.plan
    used_by: dict[str, list[experiments.Cell]] = {}
    for cells in plan.cells.values():
        for cell in cells:
            used_by.setdefault(cell.run_id, []).append(cell)
    rows = []
    for rid, run in plan.runs.items():
        for seed, m in results.seeds(rid)[0].items():
            versions = m.get("versions", {})
            rows.append(
                {
                    "experiment": run.owner,
                    "run_id": rid,
                    "seed": seed,
                    "scale": plan.scale,
                    "dataset": m["dataset"],
                    "substitute": bool(plan.substitute),
                    "method": run.spec["method"],
                    "label": used_by[rid][0].row,
                    "targets": ";".join(dict.fromkeys(c.block for c in used_by[rid])),
                    **{k: m[k] for k in ("test_acc_best", "test_acc_final", "train_acc_best")},
                    "diverged": bool(m["diverged"]),
                    "wall_seconds": m["wall_seconds"],
                    "device": m["device"],
                    "torch_version": versions.get("torch"),
                    "frernn_version": versions.get("frernn"),
                    **_flatten(m["spec"]),
                }
            )
    return pd.DataFrame(rows)


def _paper_row(paper: pd.DataFrame | None, keys: dict[str, Any]) -> dict[str, float]:
    """The published values whose key columns match ``keys`` (empty dict if none)."""
    if paper is None:
        return {}
    columns = [c for c in paper.columns if c in keys]
    hit = paper[paper["cited"] != "true"] if "cited" in paper else paper
    for c in columns:
        hit = hit[hit[c] == _key(keys[c])]
    if hit.empty:
        return {}
    return {
        k: float(v) if v != "" else math.nan for k, v in hit.iloc[0][list(PAPER_VALUES)].items()
    }


def _compare(
    ours: tuple[float, float, int], paper: dict[str, float], basis: list[str]
) -> dict[str, Any]:
    """Paper columns beside ours; at paper scale also Welch's test of the two means.

    ``basis``: why our numbers cannot be compared (:func:`frernn.gating.data_reasons`); then the
    published value is carried without a difference or a verdict.
    """
    out = {f"paper_{k}": paper.get(k, math.nan) for k in PAPER_VALUES}
    test = {"se_diff": math.nan, "t": math.nan, "df": math.nan, "p": math.nan}
    judged = {"diff": math.nan, **test, "comparison": "", "comparison_note": ""}
    if math.isnan(out["paper_test_mean"]):
        return {**out, **judged}
    if basis:
        return {**out, **judged, "comparison": NOT_JUDGED, "comparison_note": "; ".join(basis)}
    welch = stats.welch(*ours, out["paper_test_mean"], out["paper_test_std"], stats.PAPER_N)
    judged["diff"] = ours[0] - out["paper_test_mean"]
    if welch is None:
        judged |= {
            "comparison": NOT_COMPARABLE,
            "comparison_note": "needs ≥ 2 runs and a std on each side",
        }
    else:
        judged |= {"se_diff": welch.se, "t": welch.t, "df": welch.df, "p": welch.p}
        judged["comparison"] = AGREES if abs(welch.t) <= AGREE_T else DIFFERS
    return {**out, **judged}


def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    """``{prefix_mean, prefix_std}`` of ``values``."""
    mean, std = stats.mean_std(values)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


def _alignment(results: Results, rid: str, seeds: list[int]) -> dict[str, float]:
    """``align_<before|after>_<layer>_{mean,std}`` over the seeds' alignment.json, if measured."""
    if not results.plan.runs[rid].spec["diagnostics"]["alignment"]:
        return {}
    values: dict[str, list[float]] = {}
    for seed in seeds:
        path = results.path(rid, seed, "alignment.json")
        if not path.exists():
            raise FrernnError(f"{path} is missing: was the run trained with diagnostics.alignment?")
        measured = json.loads(path.read_text())
        for phase in ("before", "after"):
            for layer, cosine in (measured.get(phase) or {}).items():
                if cosine is not None:
                    values.setdefault(f"align_{phase}_{layer}", []).append(cosine)
    return {k: v for key, vals in values.items() for k, v in _stats(key, vals).items()}


def _timing(spec: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per epoch (mean over seeds), relaxation steps per training sample and devices."""
    relaxed = spec["method"] in experiments.RELAXED
    return {
        "epoch_seconds_mean": stats.mean_std(
            [m["wall_seconds"] / max(len(m["epochs"]), 1) for m in runs]
        )[0],
        "steps_per_sample": spec["ep"]["T"] + spec["ep"]["K"] if relaxed else math.nan,
        "devices": ";".join(sorted({str(m["device"]) for m in runs})),
    }


def _cited_rows(paper: pd.DataFrame, block: str, scale: str) -> list[dict[str, Any]]:
    """Rows the paper cites from other work (Table 1's P-EP): paper columns only, n = 0."""
    rows = []
    for _, cited in paper[paper["cited"] == "true"].iterrows():
        values = {f"paper_{k}": float(cited[k]) if cited[k] else math.nan for k in PAPER_VALUES}
        head = {"table": block, "row": cited["row"], "method": cited["method"]}
        where = {"dataset": cited["dataset"], "paper_dataset": cited["dataset"]}
        rows.append({**head, **where, "substitute": False, "scale": scale, **values, "n": 0})
    return rows


def _shared(plan: experiments.Plan, cell: experiments.Cell) -> str:
    """Other blocks whose cells use this cell's runs (``;``-separated)."""
    blocks = (b for b, cells in plan.cells.items() for c in cells if c.run_id == cell.run_id)
    return ";".join(b for b in dict.fromkeys(blocks) if b != cell.block)


def _basis(results: Results, cell: experiments.Cell) -> dict[str, Any]:
    """Where a row's runs ran: trained and paper dataset, substitution, scale."""
    plan = results.plan
    return {
        "dataset": plan.runs[cell.run_id].spec["dataset"],
        "paper_dataset": cell.paper_dataset,
        "substitute": bool(plan.substitute),
        "scale": plan.scale,
    }


def summary_table(results: Results, block: str) -> pd.DataFrame:
    """One row per configuration: mean/std of best and final accuracy, paper comparison."""
    plan = results.plan
    cells = plan.cells[block]
    paper = published(block)
    grid_columns = list(dict.fromkeys(k for c in cells for k, _ in c.grid))
    rows = []
    for cell in cells:
        found, missing = results.seeds(cell.run_id)
        runs = list(found.values())
        test_best = stats.mean_std([m["test_acc_best"] for m in runs])
        grid = dict(cell.grid)
        keys = {"row": cell.row, "dataset": cell.paper_dataset, **grid}
        spec = plan.runs[cell.run_id].spec
        row = {
            "table": block,
            "row": cell.row,
            "method": cell.method,
            **_basis(results, cell),
            "run_id": cell.run_id,
            **{c: grid.get(c) for c in grid_columns},
            "n": len(runs),
            "n_expected": len(plan.seeds),
            "missing": ";".join(missing),
            "test_best_mean": test_best[0],
            "test_best_std": test_best[1],
            **_stats("test_final", [m["test_acc_final"] for m in runs]),
            **_stats("train_best", [m["train_acc_best"] for m in runs]),
            "diverged": sum(bool(m["diverged"]) for m in runs),
            "wall_seconds_mean": stats.mean_std([m["wall_seconds"] for m in runs])[0],
            **_timing(spec, runs),
            "test_best_seeds": _by_seed({s: m["test_acc_best"] for s, m in found.items()}),
            "train_acc": spec["train"].get("train_acc", "running"),
            "shared_with": _shared(plan, cell),
            **results.fidelity(cell),
            **_alignment(results, cell.run_id, list(found)),
        }
        reasons = gating.data_reasons(pd.DataFrame([row]))
        rows.append(row | _compare((*test_best, len(runs)), _paper_row(paper, keys), reasons))
    if paper is not None and "cited" in paper:
        rows += _cited_rows(paper, block, plan.scale)
    frame = pd.DataFrame(rows)
    frame["n_expected"] = frame["n_expected"].fillna(0).astype(int)
    return frame


def trajectory_table(results: Results, block: str) -> pd.DataFrame:
    """Free-phase activity and one-step change of test sample 0, lowest finished seed."""
    frames = []
    for cell in results.plan.cells[block]:
        found, _ = results.seeds(cell.run_id)
        if not found:
            continue
        seed = min(found)
        path = results.path(cell.run_id, seed, "trajectory.npz")
        if not path.exists():
            raise FrernnError(
                f"{path} is missing: was the run trained with diagnostics.trajectory?"
            )
        with np.load(path) as npz:
            states, changes = npz["states"], npz["changes"]
        steps, neurons = np.indices(states.shape)
        frames.append(
            pd.DataFrame(
                {
                    "config": cell.row,
                    "seed": seed,
                    "step": steps.ravel() + 1,
                    "neuron": neurons.ravel(),
                    "activity": states.ravel(),
                    "change": changes.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _seed_basis(results: Results, cell: experiments.Cell, found: dict, missing: list) -> dict:
    """Columns of a per-configuration figure row saying what its numbers stand on."""
    return {
        **_basis(results, cell),
        "n_runs": len(found),
        "n_expected": len(results.plan.seeds),
        "missing": ";".join(missing),
        "diverged_seeds": ";".join(str(s) for s, m in sorted(found.items()) if m["diverged"]),
        **results.fidelity(cell),
    }


def _dynamics(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FrernnError(f"{path} is missing: was the run trained with diagnostics.dynamics?")
    return json.loads(path.read_text())


def dynamics_table(results: Results, block: str) -> pd.DataFrame:
    """SR, FTMLE, MLE, convergence before/after training and the final test error (Fig. 5).

    Per (phase, metric): mean and std over the seeds that have a value, ``n`` of them, the
    per-seed values (``seeds``, JSON) and ``n_none``: seeds whose convergence time is missing
    because none of their samples converged (their ``conv_frac`` is 0), counted, not dropped.
    """
    rows = []
    for cell in results.plan.cells[block]:
        spec = results.plan.runs[cell.run_id].spec
        found, missing = results.seeds(cell.run_id)
        values: dict[tuple[str, str], dict[int, float | None]] = {}
        for seed, metrics in found.items():
            dynamics = _dynamics(results.path(cell.run_id, seed, "dynamics.json"))
            for phase in ("before", "after"):
                for metric in DYNAMICS_METRICS:
                    if metric in (dynamics.get(phase) or {}):  # diverged: no "after" values
                        values.setdefault((phase, metric), {})[seed] = dynamics[phase][metric]
            values.setdefault(("after", "test_err"), {})[seed] = 100 - metrics["test_acc_best"]
        head = {"feedback": spec["model"]["feedback"], "beta": spec["ep"]["beta"]}
        basis = _seed_basis(results, cell, found, missing)
        for (phase, metric), by_seed in values.items():
            present = [v for v in by_seed.values() if v is not None and math.isfinite(v)]
            mean, std = stats.mean_std(present)
            rows.append(
                {
                    **head,
                    "phase": phase,
                    "metric": metric,
                    "mean": mean,
                    "std": std,
                    "n": len(present),
                    "n_none": len(by_seed) - len(present),
                    "seeds": _by_seed(by_seed),
                    **basis,
                }
            )
    return pd.DataFrame(rows)


def _per_epoch(found: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Test accuracy per epoch over the finished seeds ``found``: mean, std, count, the seeds
    that diverged in that epoch (loss non-finite; a diverged run keeps its last epoch) and
    each seed's accuracy (``seeds``, JSON)."""
    per_epoch: dict[int, dict[int, float]] = {}
    broke: dict[int, int] = {}
    for seed, metrics in found.items():
        for epoch in metrics["epochs"]:
            per_epoch.setdefault(epoch["epoch"], {})[seed] = epoch["test_acc"]
            if not _finite(epoch.get("loss")):
                broke[epoch["epoch"]] = broke.get(epoch["epoch"], 0) + 1
    rows = []
    for epoch, accs in sorted(per_epoch.items()):
        mean, std = stats.mean_std(list(accs.values()))
        rows.append(
            {
                "epoch": epoch,
                "test_acc_mean": mean,
                "test_acc_std": std,
                "n": len(accs),
                "diverged": broke.get(epoch, 0),
                "seeds": _by_seed(accs),
            }
        )
    return rows


def curves_table(results: Results, block: str) -> pd.DataFrame:
    """Test accuracy per epoch over seeds, one panel per row label (Fig. 6).

    A run whose loss turned non-finite keeps its last epoch (loss NaN): ``diverged`` counts
    the seeds that diverged in that epoch; ``seeds`` holds each seed's accuracy (JSON).
    """
    rows = []
    for cell in results.plan.cells[block]:
        spec = results.plan.runs[cell.run_id].spec
        found, missing = results.seeds(cell.run_id)
        head = {"panel": cell.row, "depth": spec["model"]["depth"], "T": spec["ep"]["T"]}
        head |= {"K": spec["ep"]["K"], "beta": spec["ep"]["beta"]}
        basis = _seed_basis(results, cell, found, missing)
        rows += [{**head, **epoch, **basis} for epoch in _per_epoch(found)]
    return pd.DataFrame(rows)


def epochs_table(results: Results, block: str) -> pd.DataFrame:
    """Test accuracy per epoch of every configuration of a block (the generic notebook's)."""
    cells = results.plan.cells[block]
    grid_columns = list(dict.fromkeys(k for c in cells for k, _ in c.grid))
    rows = []
    for cell in cells:
        grid = dict(cell.grid)
        head = {"table": block, "row": cell.row, "method": cell.method}
        head |= {"paper_dataset": cell.paper_dataset, "run_id": cell.run_id}
        head |= {c: grid.get(c) for c in grid_columns}
        rows += [{**head, **epoch} for epoch in _per_epoch(results.seeds(cell.run_id)[0])]
    return pd.DataFrame(rows)


def graphs_table(graphs: dict[str, Any]) -> pd.DataFrame:
    """Edges of the residual net and of one AGT sample (Fig. 3): 0 = input, L+1 = readout."""
    depth = graphs.get("depth", 10)
    generator = torch.Generator().manual_seed(graphs.get("agt_seed", 0))
    p = graphs.get("agt_p", 0.2)
    built = {
        "residual": LayerGraph.residual(depth),
        f"AGT P={p:g}": LayerGraph.agt(depth, p, generator),
    }
    rows = []
    for name, graph in built.items():
        rows.append({"graph": name, "src": 0, "dst": 1, "kind": "input"})
        for src, dst in sorted(graph.edges):
            rows.append(
                {
                    "graph": name,
                    "src": src,
                    "dst": dst,
                    "kind": "forward" if src < dst else "feedback",
                }
            )
        rows.append({"graph": name, "src": depth, "dst": depth + 1, "kind": "readout"})
    return pd.DataFrame(rows)


WRITERS = {
    "table": summary_table,
    "trajectory": trajectory_table,
    "dynamics": dynamics_table,
    "curves": curves_table,
}


def build(
    target: str,
    plan: experiments.Plan,
    root: str | Path,
    reference: experiments.Plan | None = None,
    epochs: bool = False,
) -> pd.DataFrame:
    """The frame behind ``results/<target>.csv`` (``reference``: see :func:`reference_plan`;
    ``epochs``: a block's accuracy per epoch instead)."""
    results = Results(plan, root, reference)
    if epochs:
        if target not in plan.blocks:
            raise FrernnError(f"--epochs needs an experiment block, not {target!r}")
        return epochs_table(results, target)
    if target == "runs":
        return runs_table(results)
    if target == "fig3":
        return graphs_table(plan.graphs)
    if target not in plan.blocks:
        raise FrernnError(f"unknown target {target!r} (one of: {', '.join(plan.targets())})")
    return WRITERS[plan.blocks[target]["output"]](results, target)


def load_config(path: str | Path) -> dict[str, Any]:
    """The workflow config (results/workflow_config.json or a config.yaml)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FrernnError(f"config file not found: {path}") from None
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = experiments.build_plan(config)
    frame = build(args.target, plan, args.results, reference_plan(config), args.epochs)
    atomic_write(args.out, lambda tmp: frame.to_csv(tmp, index=False))
    log.info("wrote %s (%d rows)", args.out, len(frame))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn aggregate TARGET --config FILE --out CSV [--results DIR]``."""
    parser = subparsers.add_parser("aggregate", help="write runs.csv or one table/figure CSV")
    parser.add_argument("target", help="runs, fig3 or an experiment block of the config")
    parser.add_argument("--config", required=True, help="workflow config (YAML or JSON)")
    parser.add_argument("--results", default="results", help="results directory (default: results)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument(
        "--epochs", action="store_true", help="test accuracy per epoch of a block's configurations"
    )
    parser.set_defaults(func=_run)
