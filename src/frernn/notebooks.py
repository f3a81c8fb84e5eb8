"""Executing a parameterised notebook with papermill under the project's own kernel, plus HTML."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pandas as pd
import papermill
from jupyter_client.kernelspec import NoSuchKernel
from nbconvert import HTMLExporter

from frernn import claims, experiments, speed, tables
from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_text

KERNEL_NAME = "frernn"
CHECKOUT_FILES = ("Snakefile", "config.yaml")  # what marks the root of a workflow checkout
_CITED = re.compile(r"\b(Tables?|Figs?\.)\s*((?:S?\d+[a-z–-]*(?:,\s*)?)+)")


def repo_root(start: str | Path | None = None) -> Path:
    """The workflow checkout a notebook belongs to: the nearest folder above ``start`` (default:
    the working directory) holding Snakefile and config.yaml, else the one holding frernn."""
    here = Path(start or os.getcwd()).resolve()
    package = Path(__file__).resolve().parent
    for folder in [here, *here.parents, *package.parents]:
        if all((folder / name).is_file() for name in CHECKOUT_FILES):
            return folder
    raise FrernnError(f"no workflow checkout (Snakefile and config.yaml) above {here}")


def at_root(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the checkout (Jupyter from notebooks/)."""
    path = Path(path)
    return path if path.is_absolute() else repo_root() / path


def cited_pages(source: str) -> set[str]:
    """Pages a claim's source cites: ``Tables 1, 2`` -> table1, table2; ``Fig. 6a–d`` -> fig6."""
    names = set()
    for kind, numbers in _CITED.findall(source):
        prefix = "table" if kind.startswith("Table") else "fig"
        names |= {prefix + number for number in re.findall(r"S?\d+", numbers)}
    return names


def claim_inputs(name: str) -> list[str]:
    """The pages whose data the claims about page ``name`` are judged on."""
    cited = [cited_pages(claim.source) for claim in claims.CLAIMS]
    return sorted(set().union(*(pages for pages in cited if name in pages)))


def reruns(name: str, results: str | Path = "results") -> list[Path]:
    """CSVs outside the default target that page ``name`` shows once they exist (Table 1: the
    P-EP re-run)."""
    names = [speed.PEP_TABLE] if name == "table1" else []
    return [p for p in (Path(results) / f"{n}.csv" for n in names) if p.is_file()]


def with_reruns(data: pd.DataFrame, name: str, results: str | Path, scale: str) -> pd.DataFrame:
    """Page ``name``'s summary table with the rows of its re-runs appended (see :func:`reruns`)."""
    paths = reruns(name, at_root(results))
    extra = [tables.read_csv(p, tables.SUMMARY_COLUMNS, scale) for p in paths]
    return pd.concat([data, *extra], ignore_index=True) if extra else data


def verdicts(name: str, results: str | Path, scale: str) -> pd.DataFrame:
    """The claims module's verdicts about page ``name`` (gated by scale and statistics); a CSV
    not aggregated (yet) makes the claims that need it not comparable."""
    results = at_root(results)
    paths = [results / f"{page}.csv" for page in claim_inputs(name)] + reruns(name, results)
    frames = {p.stem: tables.read_csv(p, scale=scale) for p in paths if p.is_file()}
    rows = [
        {"claim": v.claim, "where": v.source, "verdict": v.verdict, "evidence": v.evidence}
        for v in claims.evaluate(frames)
        if name in cited_pages(v.source)
    ]
    return pd.DataFrame(rows, columns=["claim", "where", "verdict", "evidence"])


def parameters(
    page: experiments.Page, results: str | Path, scale: str, dataset: str | None
) -> dict[str, str]:
    """Papermill parameters of a page's notebook, its outputs under ``results``."""
    r, name = str(results), page.name
    values = {
        "csv_path": f"{r}/{name}.csv",
        "table_path": f"{r}/tables/{name}.html",
        "pdf_path": f"{r}/figures/{name}.pdf",
        "png_path": f"{r}/figures/{name}.png",
        "results_dir": r,
        "scale": scale,
        "dataset": dataset or "",
    }
    if page.generic:
        values |= {
            "epochs_path": f"{r}/epochs/{name}.csv",
            "name": name,
            "description": page.description,
        }
    return values


def install_kernel(prefix: str | Path) -> Path:
    """Install kernelspec ``frernn`` (this interpreter) under ``prefix``; return its kernel.json."""
    from ipykernel.kernelspec import install

    path = install(
        kernel_name=KERNEL_NAME,
        display_name=f"frernn ({sys.prefix})",
        prefix=str(Path(prefix).resolve()),
    )
    return Path(path) / "kernel.json"


@contextmanager
def kernels_under(prefix: str | Path | None) -> Iterator[None]:
    """Make kernelspecs installed under ``prefix`` visible to Jupyter for the duration."""
    if prefix is None:
        yield
        return
    old = os.environ.get("JUPYTER_PATH")
    share = str(Path(prefix).resolve() / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, old) if p)
    try:
        yield
    finally:
        if old is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = old


def execute(
    notebook: str | Path,
    executed: str | Path,
    html: str | Path,
    parameters: Mapping[str, object],
    log: str | Path,
    kernel_prefix: str | Path | None = None,
) -> None:
    """Run ``notebook`` into ``log`` (kept if it fails), then publish it and its HTML atomically."""
    notebook, log = Path(notebook), Path(log)
    if not notebook.is_file():
        raise FrernnError(f"missing notebook {notebook}")
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with kernels_under(kernel_prefix):
            papermill.execute_notebook(
                str(notebook),
                str(log),
                parameters=dict(parameters),
                kernel_name=KERNEL_NAME,
                progress_bar=False,
                cwd=os.getcwd(),
            )
    except papermill.PapermillExecutionError as exc:
        raise FrernnError(
            f"notebook {notebook} failed: {exc.ename}: {exc.evalue} "
            f"(executed notebook kept at {log})"
        ) from None
    except NoSuchKernel:
        raise FrernnError(
            f"no Jupyter kernel named {KERNEL_NAME}: run `frernn report kernel --prefix DIR` "
            "and pass --kernel-prefix DIR"
        ) from None
    nb = nbformat.read(log, as_version=4)
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "frernn",
        "language": "python",
    }
    atomic_write(executed, lambda tmp: nbformat.write(nb, str(tmp)))
    body, _ = HTMLExporter().from_notebook_node(nb)
    atomic_write_text(html, body)
