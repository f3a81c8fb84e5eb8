"""``frernn status``: what the runs of a workflow target have done so far, read from their
run directories (safe while the workflow runs; no torch)."""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from frernn import experiments
from frernn.errors import FrernnError
from frernn.spec import deep_merge, parse_override

STATES = ("finished", "running", "failed", "not started")
FAILURE = re.compile(r"error|traceback|killed|stopped|exception", re.IGNORECASE)


@dataclass(frozen=True)
class RunState:
    """One (configuration, seed) job as its directory shows it."""

    run_id: str
    run_dir: str
    state: str
    epochs_done: int
    epochs: int
    detail: str = ""


def _epochs_done(run_dir: Path) -> int:
    """Finished epochs as history.csv (rewritten after every epoch) records them."""
    history = run_dir / "history.csv"
    if not history.is_file():
        return 0
    return max(0, len(history.read_text().strip().splitlines()) - 1)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def run_state(results: Path, rid: str, rel: str, epochs: int) -> RunState:
    """Finished (metrics.json), failed (log ends in an error), running (started: log,
    history or checkpoint, no error; a killed job looks the same) or not started."""
    run_dir = results / rel
    log, done = run_dir / "train.log", _epochs_done(run_dir)
    if (run_dir / "metrics.json").is_file():
        return RunState(rid, rel, "finished", epochs, epochs)
    if log.is_file():
        tail = _last_line(log)
        if FAILURE.search(tail):
            return RunState(rid, rel, "failed", done, epochs, tail)
        age = _age(time.time() - log.stat().st_mtime)
        detail = f"epoch {done}/{epochs}, log written {age} ago"
        return RunState(rid, rel, "running", done, epochs, detail)
    if (run_dir / "checkpoint.pt").is_file() or done:
        return RunState(rid, rel, "running", done, epochs, f"epoch {done}/{epochs} (no log)")
    return RunState(rid, rel, "not started", 0, epochs)


def target_states(plan: experiments.Plan, target: str, results: Path) -> list[RunState]:
    """The state of every job behind ``target``."""
    if target not in plan.targets():
        raise FrernnError(f"unknown target {target!r} (one of: {', '.join(plan.targets())})")
    states = []
    for rid in plan.run_ids(target):
        epochs = plan.run(rid).spec["train"]["epochs"]
        for seed in plan.seeds:
            states.append(run_state(results, rid, plan.run_dir(rid, seed), epochs))
    return states


def seconds_left(plan: experiments.Plan, states: list[RunState], device: str) -> float:
    """Cost-model time of the epochs not yet finished, one job after another on ``device``."""
    estimate = experiments.cpu_seconds if device == "cpu" else experiments.gpu_seconds
    total = 0.0
    for state in states:
        if state.state != "finished":
            total += estimate(plan.run(state.run_id).spec) * (1 - state.epochs_done / state.epochs)
    return total


def load_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The workflow config (JSON or YAML) with ``key=value`` overrides, as ``--config`` gives
    them to Snakemake."""
    parse = json.loads if path.suffix == ".json" else yaml.safe_load  # YAML reads 1e-06 as text
    try:
        config = parse(path.read_text())
    except FileNotFoundError:
        raise FrernnError(f"config file not found: {path}") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise FrernnError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise FrernnError(f"{path}: the workflow config must be a mapping")
    for assignment in overrides:
        config = deep_merge(config, parse_override(assignment))
    return config


def report(plan: experiments.Plan, targets: list[str], results: Path, device: str) -> str:
    """The status text: one table row per target, then each running and failed run."""
    header = f"{'target':<14}{'runs':>6}" + "".join(f"{s:>13}" for s in STATES) + "    left"
    rows, listed = [header], {}
    for target in targets:
        states = target_states(plan, target, results)
        counts = [sum(s.state == name for s in states) for name in STATES]
        left = seconds_left(plan, states, device)
        row = f"{target:<14}{len(states):>6}" + "".join(f"{c:>13}" for c in counts)
        rows.append(f"{row}    {'-' if not left else '~' + _age(left)}")
        listed.update({s.run_dir: s for s in states if s.state in ("running", "failed")})
    for name in ("running", "failed"):
        runs = [s for s in listed.values() if s.state == name]
        if runs:
            rows += ["", f"{name}:"] + [f"  {s.run_dir}: {s.detail}" for s in runs]
    scope = f"scale {plan.scale}" + (f", substitute {plan.substitute}" if plan.substitute else "")
    rows += [
        "",
        f"{scope}; results in {results}; left: cost-model training time, one {device} job at a "
        "time, start-up excluded (--device cpu|gpu)",
    ]
    return "\n".join(rows)


def _command(args: argparse.Namespace) -> int:
    config_file = args.config
    if config_file is None:
        recorded = args.results / "workflow_config.json"
        config_file = recorded if recorded.is_file() else Path("config.yaml")
    config = load_config(config_file, args.set)
    plan = experiments.build_plan(config)
    targets = [args.target] if args.target else plan.targets(default_only=True)[:-1]
    device = args.device or ("gpu" if config.get("device") == "cuda" else "cpu")
    print(report(plan, targets, args.results, device))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn status [TARGET] [--config FILE] [--set key=value ...] [--results DIR]``."""
    p = subparsers.add_parser("status")
    p.add_argument(
        "target", nargs="?", help="a target (runs, table1, fig4, ...); default: all of them"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="workflow config (default: RESULTS/workflow_config.json, else config.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override as given to snakemake --config, e.g. scale=quick (repeatable)",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="default: results")
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        help="cost model of the time left (default: gpu when the config says cuda, else cpu)",
    )
    p.set_defaults(func=_command)
