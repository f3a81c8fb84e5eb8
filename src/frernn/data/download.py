"""Installing a dataset by torchvision's checksummed download (with retries) and an import."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from frernn.data import catalog, files
from frernn.data.install import import_dir
from frernn.errors import FrernnError

log = logging.getLogger(__name__)

DOWNLOAD_ATTEMPTS = 3
RETRY_DELAY_S = 5.0


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_and_import(name: str, data_dir: Path, checksums: Mapping[str, str] | None) -> None:
    """Let torchvision download (checksummed) into a scratch dir, then import from there."""
    src = catalog.source(name)
    scratch = files.scratch_dir(data_dir, f".download-{name}-")
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                with _socket_timeout(60):
                    src.downloader()(root=scratch, train=True, download=True)
                break
            except (RuntimeError, OSError, EOFError, tarfile.TarError) as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise FrernnError(
                        f"cannot download {name} ({files.one_line(exc)}); without network: "
                        + src.offline.format(data_dir=data_dir)
                    ) from exc
                log.warning("download of %s failed (%s); retrying", name, files.one_line(exc))
                time.sleep(RETRY_DELAY_S * attempt)
        import_dir(name, scratch / src.folder, data_dir, checksums)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
