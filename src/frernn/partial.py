"""A partial report: aggregate and report whatever runs have finished, naming the others.

Usable while the workflow is still running (it only reads finished metrics.json, which are
written atomically) and after ``snakemake --keep-going`` left failures. It writes under its own
directory (``results/partial/``), never over the strict targets.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pandas as pd

from frernn import aggregate, experiments, figures
from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FINISHED, FAILED, NOT_FINISHED = "finished", "failed", "not finished"
ERROR_MARKS = ("Traceback (most recent call last)", "frernn: error:", "Killed", "Error")
FIGURE_OUTPUTS = {"trajectory": "fig2", "dynamics": "fig5", "curves": "fig6"}


def failed_in_snakemake_logs(workdir: Path) -> set[str]:
    """Outputs of every job a Snakemake log under ``workdir/.snakemake/log`` reports failed."""
    failed = set()
    for path in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log")):
        text = path.read_text(errors="replace")
        for block in re.split(r"\nError in rule ", text)[1:]:
            match = re.search(r"^\s+output: (.+)$", block, re.M)
            if match:
                failed |= {p.strip() for p in match.group(1).split(",")}
    return failed


def _log_error(path: Path) -> str:
    """The last error line of a training log, empty when it shows none."""
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    hits = [line for line in lines if any(mark in line for mark in ERROR_MARKS)]
    return hits[-1] if hits else ""


def job_status(plan: experiments.Plan, results: Path, workdir: Path) -> pd.DataFrame:
    """Every expected (configuration, seed) job: finished, failed (and why) or not finished."""
    failed = failed_in_snakemake_logs(workdir)
    root = results.relative_to(workdir) if results.is_relative_to(workdir) else results
    rows = []
    for rid in plan.run_ids("runs"):
        for seed in plan.seeds:
            run_dir = plan.run_dir(rid, seed)
            metrics = results / run_dir / "metrics.json"
            error = _log_error(results / run_dir / "train.log")
            if metrics.is_file():
                status, detail = FINISHED, ""
            elif f"{root}/{run_dir}/metrics.json" in failed or error:
                status, detail = FAILED, error or "Snakemake reports the job failed"
            else:
                status, detail = NOT_FINISHED, ""
            rows.append(
                {
                    "experiment": plan.run(rid).owner,
                    "run": f"{rid}/seed{seed}",
                    "status": status,
                    "detail": detail,
                    "scale": plan.scale,
                }
            )
    return pd.DataFrame(rows, columns=["experiment", "run", "status", "detail", "scale"])


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _draw(name: str, csv: Path, out: Path) -> None:
    """Figure ``name`` from its partial CSV; one that cannot be drawn yet is logged, skipped."""
    try:
        fig = figures.draw(name, figures.load(name, csv))
    except (FrernnError, KeyError, ValueError) as exc:
        log.warning("figure %s not drawn from partial data: %s", name, exc)
        return
    figures.save(fig, out / "figures" / f"{name}.pdf", out / "figures" / f"{name}.png")


def write(config: dict, results: Path, out: Path, workdir: Path) -> pd.DataFrame:
    """Aggregate every default target from the finished runs into ``out``; the job status."""
    from frernn import report

    plan = experiments.build_plan(config)
    reference = aggregate.reference_plan(config)
    for target in plan.targets(default_only=True):
        frame = aggregate.build(target, plan, results, reference)
        path = out / f"{target}.csv"
        if frame.empty:
            path.unlink(missing_ok=True)
            continue
        _write_csv(path, frame)
        if target in report.FIGURES:
            _draw(target, path, out)
    status = job_status(plan, results, workdir)
    _write_csv(out / "status.csv", status)
    atomic_write_text(out / "report.html", report.build(out, status))
    return status


def run_cli(args: argparse.Namespace) -> int:
    """``frernn report partial``: write RESULTS/partial/ and say how far the runs are."""
    out = args.out or args.results / "partial"
    status = write(aggregate.load_config(args.config), args.results, out, args.workdir)
    counts = status["status"].value_counts()
    log.info(
        "partial report %s: %d finished, %d failed, %d not finished",
        out / "report.html",
        counts.get(FINISHED, 0),
        counts.get(FAILED, 0),
        counts.get(NOT_FINISHED, 0),
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """The ``partial`` sub-command of ``frernn report``."""
    page = commands.add_parser("partial", help="aggregate and report whatever has finished")
    page.add_argument("--config", type=Path, required=True, help="workflow config (YAML/JSON)")
    page.add_argument("--results", type=Path, default=Path("results"))
    page.add_argument("--out", type=Path, help="default: RESULTS/partial")
    page.add_argument(
        "--workdir", type=Path, default=Path("."), help="where .snakemake/log is (default: .)"
    )
    page.set_defaults(func=run_cli)
