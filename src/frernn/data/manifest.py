"""The verification record (``frernn-verified.json``): the md5 of every file of a dataset
folder, written only after that content matched a checksum table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from frernn.data import files, locations
from frernn.io import atomic_write_json

MANIFEST = "frernn-verified.json"


def _read(path: Path) -> dict[str, str] | None:
    try:
        record = json.loads(path.read_text())["md5"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) and record else None


def recorded(folder: Path) -> dict[str, str] | None:
    """The md5s recorded for ``folder`` (its own record first, then the user's cache); None if
    there is none, or none readable."""
    return next(filter(None, (_read(place / MANIFEST) for place in locations.places(folder))), None)


def write(path: Path, name: str, digests: Mapping[str, str]) -> None:
    """Write the record of ``name``'s ``digests`` to ``path``, atomically."""
    with files.writing(path):
        atomic_write_json(path, {"dataset": name, "md5": dict(digests)})


def record(name: str, folder: Path, digests: Mapping[str, str]) -> None:
    """Record ``digests`` as verified for ``folder``: beside it, else in the user's cache."""
    write(locations.writable_place(folder, "verification record") / MANIFEST, name, digests)


def problem(folder: Path, expected: Mapping[str, str]) -> str | None:
    """Why the files of ``folder`` do not match ``expected`` (None: they all do)."""
    for file, md5 in expected.items():
        if not files.is_file(folder / file):
            return f"{folder / file} is missing"
        if files.md5(folder / file) != md5:
            return f"{folder / file} fails its checksum: corrupt, truncated or modified"
    return None
