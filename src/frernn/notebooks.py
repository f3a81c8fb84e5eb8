"""Executing a parameterised notebook with papermill under the project's own kernel, plus HTML."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import nbformat
import papermill
from jupyter_client.kernelspec import NoSuchKernel
from nbconvert import HTMLExporter

from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_text

KERNEL_NAME = "frernn"


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
