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

from frernn import aggregate, experiments, notebooks
from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FINISHED, FAILED, NOT_FINISHED = "finished", "failed", "not finished"
ERROR_MARKS = ("Traceback (most recent call last)", "frernn: error:", "Killed", "Error")


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


def has_finished(frame: pd.DataFrame) -> bool:
    """A page's data has a finished run: rows, and where it counts seeds, one counted."""
    if frame.empty or "n" not in frame:
        return not frame.empty
    return bool((pd.to_numeric(frame["n"], errors="coerce") > 0).any())


def _draw(
    page: experiments.Page, plan: experiments.Plan, out: Path, workdir: Path, kernel: Path | None
) -> None:
    """Page ``page`` drawn by its notebook from the partial CSVs under ``out``; a notebook that
    cannot draw partial data yet is logged and skipped (its executed copy kept in out/logs)."""
    notebook = notebooks.repo_root(workdir) / "notebooks" / f"{page.notebook}.ipynb"
    executed = out / "notebooks" / f"{page.name}.ipynb"
    drawn = notebooks.parameters(page, out.resolve(), plan.scale, plan.substitute)
    stale = [Path(drawn[k]) for k in ("table_path", "pdf_path", "png_path")]
    for path in [*stale, executed, executed.with_suffix(".html")]:  # none of an earlier call
        path.unlink(missing_ok=True)
    try:
        notebooks.execute(
            notebook,
            executed,
            executed.with_suffix(".html"),
            drawn,
            out / "logs" / "notebooks" / f"{page.name}.ipynb",
            kernel,
        )
    except FrernnError as exc:
        log.warning("page %s not drawn from partial data: %s", page.name, exc)


def write(
    config: dict, results: Path, out: Path, workdir: Path, kernel: Path | None = None
) -> pd.DataFrame:
    """Aggregate every default target from the finished runs into ``out`` and draw each page
    that has data with its notebook (kernel under ``kernel``); the job status."""
    from frernn import report

    plan = experiments.build_plan(config)
    reference = aggregate.reference_plan(config)
    frames = {}
    for target in plan.targets(default_only=True):
        frames[target] = aggregate.build(target, plan, results, reference)
        path = out / f"{target}.csv"
        if frames[target].empty:
            path.unlink(missing_ok=True)
            continue
        _write_csv(path, frames[target])
    for page in plan.pages():
        if not has_finished(frames[page.name]):
            continue
        if page.generic:
            epochs = aggregate.build(page.name, plan, results, reference, epochs=True)
            _write_csv(out / "epochs" / f"{page.name}.csv", epochs)
        _draw(page, plan, out, workdir, kernel)
    status = job_status(plan, results, workdir)
    _write_csv(out / "status.csv", status)
    atomic_write_text(out / "report.html", report.build(out, config, status))
    return status


def run_cli(args: argparse.Namespace) -> int:
    """``frernn report partial``: write RESULTS/partial/ and say how far the runs are."""
    out = args.out or args.results / "partial"
    config = aggregate.load_config(args.config)
    status = write(config, args.results, out, args.workdir, args.kernel_prefix)
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
    page.add_argument("--kernel-prefix", type=Path, help="where `report kernel` installed it")
    page.set_defaults(func=run_cli)
