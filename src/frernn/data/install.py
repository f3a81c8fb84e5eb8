"""Installing a dataset from a directory of its original files: decompress into a scratch
folder, check every file's md5, then move them into place with the record last."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from frernn.data import catalog, files, manifest
from frernn.errors import FrernnError

log = logging.getLogger(__name__)

Staged = dict[str, tuple[Path, str]]  # file name -> (where it came from, md5 of its content)


def _stage_idx(name: str, source: Path, staging: Path) -> Staged:
    """Decompress (or copy) the four IDX files of ``source`` into ``staging``."""
    staged = {}
    for file in catalog.CHECKSUMS[name]:
        candidates = (source / file, source / f"{file}.gz")
        origin = next((p for p in candidates if files.is_file(p)), None)
        if origin is None:
            raise FrernnError(f"{source}: neither {file} nor {file}.gz found ({name} import)")
        opener = gzip.open if origin.suffix == ".gz" else open
        with files.reading(origin), opener(origin, "rb") as f:
            staged[file] = (origin, files.copy_hashing(f, origin, staging / file))
    return staged


def _stage_cifar(source: Path, staging: Path) -> Staged:
    """Copy the CIFAR-10 batches from an extracted folder or the python tarball into ``staging``."""
    wanted = set(catalog.CHECKSUMS["cifar10"])
    for folder in (source, source / catalog.CIFAR_DIR):
        if all(files.is_file(folder / file) for file in wanted):
            staged = {}
            for file in wanted:
                with files.reading(folder / file), (folder / file).open("rb") as f:
                    staged[file] = (
                        folder / file,
                        files.copy_hashing(f, folder / file, staging / file),
                    )
            return staged
    tarball = source / catalog.CIFAR_TARBALL
    if not files.is_file(tarball):
        raise FrernnError(
            f"{source}: neither {catalog.CIFAR_TARBALL} nor the {catalog.CIFAR_DIR} files found"
        )
    staged = {}
    with files.reading(tarball), tarfile.open(tarball, mode="r|gz") as tar:
        for member in tar:
            file = member.name.removeprefix(f"{catalog.CIFAR_DIR}/")
            if file in wanted and member.isfile():
                reader = tar.extractfile(member)
                staged[file] = (tarball, files.copy_hashing(reader, tarball, staging / file))
    missing = sorted(wanted - set(staged))
    if missing:
        raise FrernnError(f"{tarball}: corrupt or truncated (no {', '.join(missing)} inside)")
    return staged


def import_dir(
    name: str, source: Path, data_dir: Path, checksums: Mapping[str, str] | None = None
) -> None:
    """Install ``name`` from a directory of its original files (IDX gz or raw; CIFAR-10's python
    tarball or extracted batches), verified by the md5 of the decompressed content; all or nothing.
    """
    src, source, data_dir = catalog.source(name), Path(source), Path(data_dir)
    expected = checksums if checksums is not None else catalog.CHECKSUMS[name]
    if not source.is_dir():
        raise FrernnError(f"{source}: no such directory (expected the original {name} files)")
    staging = files.scratch_dir(data_dir, f".import-{name}-")
    try:
        if name == "cifar10":
            staged = _stage_cifar(source, staging)
        else:
            staged = _stage_idx(name, source, staging)
        for file, (origin, md5) in staged.items():
            if md5 != expected[file]:
                raise FrernnError(
                    f"{origin}: checksum mismatch for {name} {file} (md5 of the content {md5}, "
                    f"expected {expected[file]}): corrupt, truncated or not the original file"
                )
        _install(name, staging, data_dir / src.folder, {f: md5 for f, (_, md5) in staged.items()})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s installed in %s (from %s)", name, data_dir / src.folder, source)


def _install(name: str, staging: Path, folder: Path, digests: dict[str, str]) -> None:
    """Move verified files into place; the record goes last, so it only ever describes them."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / manifest.MANIFEST).unlink(missing_ok=True)
        for file in digests:
            os.replace(staging / file, folder / file)
    except OSError as exc:
        raise FrernnError(f"cannot write to {folder}: {files.reason(exc)}") from exc
    manifest.write(folder / manifest.MANIFEST, name, digests)
