"""results/report.html: every table and figure, the run's provenance and the claim verdicts."""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path

import pandas as pd

from frernn import claims, experiments, gating, notebooks, partial, speed, tables
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
VERDICT_STYLES = {  # only a verdict at paper scale is coloured; the others are neutral greys
    claims.HOLDS: "background:#009E73",
    claims.FAILS: "background:#D55E00",
    claims.NOT_RESOLVED: "background:#777",
    claims.NOT_COMPARABLE: "background:#777",
    claims.INDICATIVE: "background:#eee; color:#333; border:1px dashed #777",
}
CLAIMS_LEGEND = (
    "A claim gets a verdict (coloured green or orange) only when every number it uses "
    "comes from paper-scale runs (the paper's run spec: epochs, data sizes, every setting) on "
    "the paper's datasets with every seed finished; <i>not resolved</i>: such data, but the 95 % "
    "interval (Welch for differences, a bootstrap over seeds for argmax and rank trends) "
    "straddles the threshold. Otherwise the verdict is <i>indicative</i>: what the data point "
    "to, and why they cannot judge it. <i>Not comparable</i>: the numbers are absent or "
    "incommensurable."
)
TABLES_LEGEND = (
    "Tables: reproduced = best-epoch test % ± std over seeds, the paper's statistic; published "
    "= the paper's mean ± std over 5 runs. Δ = reproduced − published with Welch's t and its "
    "two-sided p, given only at paper scale on the paper's dataset: green when |t| ≤ 2, "
    "orange otherwise; 'not comparable' when a side has fewer than 2 runs. Diverged "
    "= runs whose loss became non-finite or whose final epoch is &gt; 5 points below their best. "
    "cos(update, BP) = per-layer cosine between the run's update and the "
    "autograd BP gradient of the feed-forward twin on the run's first training batch, at "
    "initialisation and after training, mean ± std over seeds."
)
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


def _banner(runs: pd.DataFrame, scale: str, frames: dict[str, pd.DataFrame]) -> str:
    """Provenance: scale (and what differs from the paper's), data, devices, versions, compute."""
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
    shown = [f for f in frames.values() if "paper_scale" in f.columns]
    below = gating.scale_reason(pd.concat(shown, ignore_index=True)) if shown else None
    items["scale"] += f" — {html.escape(below)}" if below else " — the paper's run specs"
    return "<br>".join(f"<b>{k}</b>: {v}" for k, v in items.items())


def _claims_html(verdicts: list[claims.Verdict]) -> str:
    """The verdict table, one badge per claim (coloured only where the claim was judged)."""
    rows = "".join(
        f"<tr><td>{html.escape(v.claim)}</td><td>{html.escape(v.source)}</td>"
        f"<td><span class='verdict' style='{VERDICT_STYLES[v.verdict]}'>"
        f"{html.escape(v.verdict)}</span></td><td>{html.escape(v.evidence)}</td></tr>"
        for v in verdicts
    )
    head = "<tr><th>claim</th><th>where</th><th>verdict</th><th>evidence</th></tr>"
    return f"<table>{head}{rows}</table>"


def _speed_html(frames: dict[str, pd.DataFrame], scale: str) -> str:
    """FRE-RNN EP vs P-EP per Table 1 family: time per epoch and per run, steps per sample."""
    table = speed.comparison(frames.get("table1"), frames.get(speed.PEP_TABLE))
    if speed.PEP_TABLE in frames:
        status = (
            f"P-EP re-run here ({speed.PEP_TABLE}, {html.escape(scale)} scale): ratios are "
            "P-EP over FRE-RNN EP, wall clock only where both ran on the same device. "
            "P-EP at its published protocol (SGD, batch 20) and protocol-matched (the FRE-RNN "
            "row's optimiser and batch size) separate the algorithm from the protocol."
        )
    else:
        status = (
            "P-EP has not been re-run here (<code>snakemake results/table1_pep.csv</code>; cost "
            "in README): the same-machine wall clock is not comparable, the verdict falls back "
            "to relaxation steps per sample."
        )
    context = (
        "Published ratio = P-EP's cited 2019 wall clock over the paper's FRE-RNN time: other "
        "hardware and batch size, context only."
    )
    return (
        "<h2 id='pep-speed'>FRE-RNN EP vs P-EP on the same machine (Table 1 families)</h2>"
        f"<p>{status} {context}</p>" + speed.render(table).to_html()
    )


def _link(results: Path, name: str) -> str:
    """A relative link to the executed notebook's HTML, when it exists."""
    page = results / "notebooks" / f"{name}.html"
    return f" <a href='notebooks/{name}.html'>(notebook)</a>" if page.is_file() else ""


def _image(path: Path) -> str:
    """A PNG embedded as base64 so the page stands alone."""
    if not path.is_file() or path.stat().st_size == 0:
        raise FrernnError(f"missing figure {path}: run the notebook that draws it")
    return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def _progress_html(status: pd.DataFrame) -> str:
    """A partial report's progress: counts, then every failed and unfinished run by name."""
    counts = status["status"].value_counts()
    parts = [
        "<h2 id='progress'>Progress (partial report)</h2>",
        f"<p class='banner'>{counts.get('finished', 0)} of {len(status)} runs finished, "
        f"<b>{counts.get('failed', 0)} failed</b>, {counts.get('not finished', 0)} not finished "
        "(running, queued or not started). Tables average the finished runs only; the strict "
        "targets stay unbuilt until every run has finished.</p>",
    ]
    for state, title in (("failed", "Failed runs"), ("not finished", "Runs not finished")):
        rows = status[status["status"] == state]
        if not rows.empty:
            table = rows[["experiment", "run", "detail"]].to_html(index=False)
            parts.append(f"<details open><summary>{title} ({len(rows)})</summary>{table}</details>")
    return "\n".join(parts)


def _fragment(path: Path) -> str:
    """The table a page's notebook wrote (an HTML fragment)."""
    if not path.is_file():
        raise FrernnError(f"missing table {path}: run the notebook that writes it")
    return path.read_text()


def _drawn(results: Path, page: experiments.Page, caption: str, frame: pd.DataFrame | None) -> str:
    """A page's table and figure as its notebook wrote them; in a partial report (``frame``:
    the page's partial data), a note where the page has no finished run yet or its notebook
    could not draw the partial data."""
    table, png = results / "tables" / f"{page.name}.html", results / "figures" / f"{page.name}.png"
    is_partial = frame is not None
    if is_partial and not partial.has_finished(frame):
        return "<p>Not drawn: no finished run yet.</p>"
    if is_partial and not (table.is_file() and png.is_file()):
        return (
            "<p>Not drawn from the partial data: its executed notebook is kept at "
            f"logs/notebooks/{html.escape(page.name)}.ipynb.</p>"
        )
    figure = f"<figure>{_image(png)}<figcaption>{html.escape(caption)}</figcaption></figure>"
    return _fragment(table) + figure


def _section(
    results: Path, page: experiments.Page, scale: str, partial_data: pd.DataFrame | None
) -> str:
    """One page of the config: heading, its notebook's table, its figure."""
    title = f"{page.name}: {page.description}"
    caption = f"{page.name} at scale {scale}; error bars and bands: ±1 std over seeds"
    return (
        f"<section id='{page.name}'><h2>{html.escape(title)}{_link(results, page.name)}</h2>"
        f"{_drawn(results, page, caption, partial_data)}</section>"
    )


def _frames(
    results: Path, pages: list[experiments.Page], scale: str, is_partial: bool
) -> dict[str, pd.DataFrame]:
    """The pages' CSVs and the P-EP re-run once it exists; in a partial report an absent CSV is
    left out. Summary tables are checked for their columns (the other pages' notebooks check)."""
    frames = {}
    for name, output in [(p.name, p.output) for p in pages] + [(speed.PEP_TABLE, "table")]:
        path = results / f"{name}.csv"
        if (is_partial or name == speed.PEP_TABLE) and not path.is_file():
            continue
        columns = tables.SUMMARY_COLUMNS if output == "table" else ()
        frames[name] = tables.read_csv(path, columns, scale)
    return frames


def build(
    results: str | Path,
    config: str | Path | dict | None = None,
    status: pd.DataFrame | None = None,
) -> str:
    """The report page for the results directory ``results`` and the workflow config that made
    it (a path or the config itself; default: ``results/workflow_config.json``): one section
    per page of the config.

    ``status`` (:func:`frernn.partial.job_status`) makes it a partial report: pages with no
    finished run are noted as such instead of being an error.
    """
    results, is_partial = Path(results), status is not None
    if not isinstance(config, dict):
        config = load_config(config or results / "workflow_config.json")
    pages = experiments.build_plan(config).pages()
    if is_partial and not (results / "runs.csv").is_file():
        scale, runs = str(status["scale"].iloc[0]), None
    else:
        runs = tables.read_csv(results / "runs.csv", RUN_COLUMNS)
        scale = scale_of(runs)
    frames = _frames(results, pages, scale, is_partial)
    verdicts = claims.evaluate(frames)
    title = "reproduction report" + (" (partial)" if is_partial else "")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>FRE-RNN {title} ({html.escape(scale)})</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Toward Practical Equilibrium Propagation (FRE-RNN): {title}</h1>",
    ]
    if runs is not None:
        parts.append(f"<p class='banner'>{_banner(runs, scale, frames)}</p>")
    if is_partial:
        parts.append(_progress_html(status))
    parts += ["<h2>Claims</h2>", f"<p>{CLAIMS_LEGEND}</p>", _claims_html(verdicts)]
    parts.append(_speed_html(frames, scale))
    if runs is not None:
        parts += ["<h2>Compute time per experiment</h2>", compute_time(runs).to_html()]
    parts.append(f"<p>{TABLES_LEGEND}</p>")
    for page in pages:
        data = frames.get(page.name, pd.DataFrame()) if is_partial else None
        parts.append(_section(results, page, scale, data))
    parts.append("</body></html>")
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
    partial.register(commands)
    kernel = commands.add_parser("kernel", help="install the kernelspec 'frernn' for this Python")
    kernel.add_argument("--prefix", type=Path, required=True)
    kernel.set_defaults(func=_cmd_kernel)
