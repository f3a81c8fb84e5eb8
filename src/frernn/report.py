"""results/report.html: every table and figure, the run's provenance and the claim verdicts."""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path

import pandas as pd

from frernn import claims, experiments, notebooks, tables
from frernn.aggregate import load_config
from frernn.errors import FrernnError
from frernn.io import atomic_write_text

RUN_COLUMNS = (
    "experiment",
    "run_id",
    "seed",
    "scale",
    "dataset",
    "substitute",
    "wall_seconds",
    "device",
    "torch_version",
    "frernn_version",
)
VERDICT_COLOURS = {claims.HOLDS: "#009E73", claims.FAILS: "#D55E00", claims.NOT_COMPARABLE: "#777"}
CSS = """
body { font-family: system-ui, sans-serif; max-width: 78rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: left; vertical-align: top; }
.banner { background: #eef4fa; border-left: 6px solid #0072B2; padding: 0.6rem 1rem; }
.verdict { color: white; padding: 0.1rem 0.45rem; border-radius: 0.3rem; white-space: nowrap; }
figure { margin: 0 0 2rem; } figure img { max-width: 100%; }
"""


def _distinct(runs: pd.DataFrame, column: str) -> str:
    """The distinct non-empty values of a runs.csv column, comma-separated."""
    values = sorted({str(v) for v in runs[column].dropna() if str(v)})
    return ", ".join(values) or "—"


def scale_of(runs: pd.DataFrame) -> str:
    """The one scale of every run (aggregation never mixes scales)."""
    scales = sorted({str(s) for s in runs["scale"].dropna()})
    if len(scales) != 1:
        raise FrernnError(f"runs.csv holds scales {scales}; a report covers exactly one scale")
    return scales[0]


def compute_time(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs and wall clock per experiment (a run shared by two targets counts once) and total."""
    unique = runs.drop_duplicates(["experiment", "run_id", "seed"])
    per = unique.groupby("experiment", sort=False)["wall_seconds"].agg(["count", "sum", "mean"])
    per.loc["total"] = [len(unique), unique["wall_seconds"].sum(), unique["wall_seconds"].mean()]
    return pd.DataFrame(
        {
            "runs": per["count"].astype(int),
            "compute (h:mm:ss)": per["sum"].map(tables.fmt_duration),
            "mean per run": per["mean"].map(tables.fmt_duration),
        }
    )


def _banner(runs: pd.DataFrame, scale: str) -> str:
    """Provenance: scale, datasets and substitution, devices, versions, total compute."""
    substitute = tables.substitute_of(runs)
    data = _distinct(runs, "dataset")
    if substitute:
        data += (
            f" — <b>substituted</b>: every experiment ran on {html.escape(substitute)}; "
            "tables carry no paper comparison"
        )
    total = tables.fmt_duration(
        runs.drop_duplicates(["experiment", "run_id", "seed"])["wall_seconds"].sum()
    )
    items = {
        "scale": html.escape(scale),
        "dataset": data,
        "device": html.escape(_distinct(runs, "device")),
        "versions": html.escape(
            f"torch {_distinct(runs, 'torch_version')}, frernn {_distinct(runs, 'frernn_version')}"
        ),
        "runs": str(len(runs)),
        "total compute": total,
    }
    return "<br>".join(f"<b>{k}</b>: {v}" for k, v in items.items())


def _claims_html(verdicts: list[claims.Verdict]) -> str:
    """The verdict table, one coloured badge per claim."""
    rows = "".join(
        f"<tr><td>{html.escape(v.claim)}</td><td>{html.escape(v.source)}</td>"
        f"<td><span class='verdict' style='background:{VERDICT_COLOURS[v.verdict]}'>"
        f"{html.escape(v.verdict)}</span></td><td>{html.escape(v.evidence)}</td></tr>"
        for v in verdicts
    )
    head = "<tr><th>claim</th><th>where</th><th>verdict</th><th>evidence</th></tr>"
    return f"<table>{head}{rows}</table>"


def _link(results: Path, name: str) -> str:
    """A relative link to the executed notebook's HTML, when it exists."""
    page = results / "notebooks" / f"{name}.html"
    return f" <a href='notebooks/{name}.html'>(notebook)</a>" if page.is_file() else ""


def _image(path: Path) -> str:
    """A PNG embedded as base64 so the page stands alone."""
    if not path.is_file() or path.stat().st_size == 0:
        raise FrernnError(f"missing figure {path}: run the notebook that draws it")
    return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def _fragment(path: Path) -> str:
    """The table a page's notebook wrote (an HTML fragment)."""
    if not path.is_file():
        raise FrernnError(f"missing table {path}: run the notebook that writes it")
    return path.read_text()


def _section(results: Path, page: experiments.Page, scale: str) -> str:
    """One page of the config: heading, its notebook's table, its figure."""
    title = f"{page.name}: {page.description}"
    image = _image(results / "figures" / f"{page.name}.png")
    caption = f"{page.name} at scale {scale}; error bars and bands: ±1 std over seeds"
    return (
        f"<section id='{page.name}'><h2>{html.escape(title)}{_link(results, page.name)}</h2>"
        f"{_fragment(results / 'tables' / f'{page.name}.html')}"
        f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure></section>"
    )


def build(results: str | Path, config: str | Path | None = None) -> str:
    """The report page for the results directory ``results`` and the workflow config that made
    it (default: ``results/workflow_config.json``): one section per page of the config."""
    results = Path(results)
    pages = experiments.build_plan(load_config(config or results / "workflow_config.json")).pages()
    runs = tables.read_csv(results / "runs.csv", RUN_COLUMNS)
    scale = scale_of(runs)
    frames = {p.name: tables.read_csv(results / f"{p.name}.csv", scale=scale) for p in pages}
    verdicts = claims.evaluate(frames, scale)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>FRE-RNN reproduction ({html.escape(scale)})</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Toward Practical Equilibrium Propagation (FRE-RNN): reproduction report</h1>",
        f"<p class='banner'>{_banner(runs, scale)}</p>",
        "<h2>Claims (SPEC §7)</h2>",
        _claims_html(verdicts),
        "<h2>Compute time per experiment</h2>",
        compute_time(runs).to_html(),
        "<p>Tables: reproduced = best-epoch test % ± std over seeds (train % in brackets), "
        "the paper's statistic; Δ = reproduced − published, shaded green within 2 std, "
        "orange outside; diverged = runs with a non-finite loss or a final epoch &gt;5 points "
        "below their best.</p>",
        *(_section(results, page, scale) for page in pages),
        "</body></html>",
    ]
    return "\n".join(parts)


def _parameters(pairs: list[str]) -> dict[str, str]:
    """``key=value`` command-line pairs as a mapping."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FrernnError(f"notebook parameter {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def _cmd_html(args: argparse.Namespace) -> None:
    out = args.out or args.results / "report.html"
    atomic_write_text(out, build(args.results, args.config))


def _cmd_notebook(args: argparse.Namespace) -> None:
    notebooks.execute(
        args.notebook, args.out, args.html, _parameters(args.param), args.log, args.kernel_prefix
    )


def _cmd_kernel(args: argparse.Namespace) -> None:
    print(notebooks.install_kernel(args.prefix))


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn report html|notebook|kernel``: the report page, one notebook, the kernelspec."""
    parser = subparsers.add_parser("report", help="notebooks and results/report.html")
    commands = parser.add_subparsers(dest="report_command", required=True)
    page = commands.add_parser("html", help="write the report page from a results directory")
    page.add_argument("--results", type=Path, default=Path("results"))
    page.add_argument("--out", type=Path, help="default: RESULTS/report.html")
    page.add_argument("--config", type=Path, help="default: RESULTS/workflow_config.json")
    page.set_defaults(func=_cmd_html)
    run = commands.add_parser("notebook", help="execute a parameterised notebook with papermill")
    run.add_argument("notebook", type=Path)
    run.add_argument("--out", type=Path, required=True, help="the executed notebook")
    run.add_argument("--html", type=Path, required=True, help="its HTML rendering")
    run.add_argument("--log", type=Path, required=True, help="executed copy kept if it fails")
    run.add_argument("--kernel-prefix", type=Path, help="where `report kernel` installed it")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.set_defaults(func=_cmd_notebook)
    kernel = commands.add_parser("kernel", help="install the kernelspec 'frernn' for this Python")
    kernel.add_argument("--prefix", type=Path, required=True)
    kernel.set_defaults(func=_cmd_kernel)
