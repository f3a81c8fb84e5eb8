"""runs.csv and the CSV behind every table and figure, from the finished runs' metrics."""

from __future__ import annotations

import argparse
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

from frernn import experiments
from frernn.errors import FrernnError
from frernn.io import atomic_write
from frernn.models.graph import LayerGraph

log = logging.getLogger(__name__)

DYNAMICS_METRICS = ("sr", "ftmle", "mle", "conv_time", "conv_frac")
PAPER_VALUES = ("test_mean", "test_std", "train", "wall_seconds")


class Results:
    """The finished runs of a plan under one results directory (one scale, never mixed)."""

    def __init__(self, plan: experiments.Plan, root: str | Path) -> None:
        self.plan, self.root = plan, Path(root)

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


def _stat(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); NaN where undefined."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean()) if arr.size else math.nan
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


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


def _compare(ours_mean: float, ours_std: float, paper: dict[str, float]) -> dict[str, Any]:
    """Paper columns, our difference, and |diff| <= 2 x the larger of both std."""
    out = {f"paper_{k}": paper.get(k, math.nan) for k in PAPER_VALUES}
    diff = ours_mean - out["paper_test_mean"]
    sds = [s for s in (out["paper_test_std"], ours_std) if not math.isnan(s)]
    within = None if math.isnan(diff) or not sds else bool(abs(diff) <= 2 * max(sds))
    return {**out, "diff": diff, "within_2sd": within}


def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    """``{prefix_mean, prefix_std}`` of ``values``."""
    mean, std = _stat(values)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


def _cited_rows(paper: pd.DataFrame, block: str, scale: str) -> list[dict[str, Any]]:
    """Rows the paper cites from other work (Table 1's P-EP): paper columns only, n = 0."""
    rows = []
    for _, cited in paper[paper["cited"] == "true"].iterrows():
        values = {f"paper_{k}": float(cited[k]) if cited[k] else math.nan for k in PAPER_VALUES}
        head = {"table": block, "row": cited["row"], "method": cited["method"]}
        where = {"dataset": cited["dataset"], "paper_dataset": cited["dataset"]}
        rows.append({**head, **where, "substitute": False, "scale": scale, **values, "n": 0})
    return rows


def summary_table(results: Results, block: str) -> pd.DataFrame:
    """One row per configuration: mean/std of best and final accuracy, paper comparison."""
    plan = results.plan
    cells = plan.cells[block]
    paper = None if plan.substitute else published(block)
    grid_columns = list(dict.fromkeys(k for c in cells for k, _ in c.grid))
    rows = []
    for cell in cells:
        found, missing = results.seeds(cell.run_id)
        runs = list(found.values())
        test_best = _stat([m["test_acc_best"] for m in runs])
        grid = dict(cell.grid)
        keys = {"row": cell.row, "dataset": cell.paper_dataset, **grid}
        rows.append(
            {
                "table": block,
                "row": cell.row,
                "method": cell.method,
                "dataset": plan.runs[cell.run_id].spec["dataset"],
                "paper_dataset": cell.paper_dataset,
                "substitute": bool(plan.substitute),
                "scale": plan.scale,
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
                "wall_seconds_mean": _stat([m["wall_seconds"] for m in runs])[0],
                **_compare(*test_best, _paper_row(paper, keys)),
            }
        )
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


def dynamics_table(results: Results, block: str) -> pd.DataFrame:
    """SR, FTMLE, MLE, convergence before/after training and the final test error (Fig. 5)."""
    rows = []
    for cell in results.plan.cells[block]:
        spec = results.plan.runs[cell.run_id].spec
        found, _ = results.seeds(cell.run_id)
        values: dict[tuple[str, str], list[float]] = {}
        for seed, metrics in found.items():
            path = results.path(cell.run_id, seed, "dynamics.json")
            if not path.exists():
                raise FrernnError(
                    f"{path} is missing: was the run trained with diagnostics.dynamics?"
                )
            dynamics = json.loads(path.read_text())
            for phase in ("before", "after"):
                for metric in DYNAMICS_METRICS:
                    if metric in (dynamics.get(phase) or {}):  # diverged: no "after" values
                        values.setdefault((phase, metric), []).append(dynamics[phase][metric])
            values.setdefault(("after", "test_err"), []).append(100 - metrics["test_acc_best"])
        head = {"feedback": spec["model"]["feedback"], "beta": spec["ep"]["beta"]}
        for (phase, metric), vals in values.items():
            mean, std = _stat(vals)
            rows.append(
                {**head, "phase": phase, "metric": metric, "mean": mean, "std": std, "n": len(vals)}
            )
    return pd.DataFrame(rows)


def _per_epoch(results: Results, rid: str) -> list[dict[str, float]]:
    """Test accuracy per epoch of one configuration: mean, std and count over finished seeds."""
    per_epoch: dict[int, list[float]] = {}
    for metrics in results.seeds(rid)[0].values():
        for epoch in metrics["epochs"]:
            per_epoch.setdefault(epoch["epoch"], []).append(epoch["test_acc"])
    rows = []
    for epoch, accs in sorted(per_epoch.items()):
        mean, std = _stat(accs)
        rows.append({"epoch": epoch, "test_acc_mean": mean, "test_acc_std": std, "n": len(accs)})
    return rows


def curves_table(results: Results, block: str) -> pd.DataFrame:
    """Test accuracy per epoch, mean and std over seeds, one panel per row label (Fig. 6)."""
    rows = []
    for cell in results.plan.cells[block]:
        spec = results.plan.runs[cell.run_id].spec
        head = {"panel": cell.row, "depth": spec["model"]["depth"], "T": spec["ep"]["T"]}
        head |= {"K": spec["ep"]["K"], "beta": spec["ep"]["beta"]}
        rows += [{**head, **epoch} for epoch in _per_epoch(results, cell.run_id)]
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
        rows += [{**head, **epoch} for epoch in _per_epoch(results, cell.run_id)]
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
    target: str, plan: experiments.Plan, root: str | Path, epochs: bool = False
) -> pd.DataFrame:
    """The frame behind ``results/<target>.csv`` (``epochs``: its accuracy per epoch)."""
    results = Results(plan, root)
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
    plan = experiments.build_plan(load_config(args.config))
    frame = build(args.target, plan, args.results, args.epochs)
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
