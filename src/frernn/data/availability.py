"""Making a dataset available and verified: already installed, else from a system package's
files, else downloaded."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from frernn.data import catalog, manifest
from frernn.data.download import download_and_import
from frernn.data.install import import_dir
from frernn.errors import FrernnError

log = logging.getLogger(__name__)


def ensure(
    name: str,
    data_dir: Path,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Make ``name`` available and verified in ``data_dir`` (already there, else the Debian
    package's files, else torchvision's download when ``download``); return the md5 of each
    file. Every call re-hashes the files against their record, so later damage is caught;
    files without a record (e.g. left by torchvision) are checked against the table."""
    src, data_dir = catalog.source(name), Path(data_dir)
    folder = data_dir / src.folder
    recorded = manifest.recorded(folder)
    expected = recorded or dict(checksums if checksums is not None else catalog.CHECKSUMS[name])
    problem = manifest.problem(folder, expected)
    if problem is None:
        if not recorded:
            manifest.record(name, folder, expected)
        return expected
    system = catalog.SYSTEM_DIRS.get(name)
    if system is not None and system.is_dir():
        log.info("%s: %s; importing %s", name, problem, system)
        import_dir(name, system, data_dir, checksums)
    elif download:
        log.info("%s: %s; downloading", name, problem)
        download_and_import(name, data_dir, checksums)
    else:
        raise FrernnError(
            f"{name} is not available in {data_dir} ({problem}); run `frernn data fetch {name} "
            f"--data-dir {data_dir}` with internet, or offline: "
            + src.offline.format(data_dir=data_dir)
        )
    return manifest.recorded(folder)
