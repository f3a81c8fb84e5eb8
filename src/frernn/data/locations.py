"""Where a dataset folder's verification record and tensor cache live: beside its files, or,
when that folder is not writable (a shared, read-only data directory), in the user's cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from frernn.data import files
from frernn.errors import FrernnError


def cache_root() -> Path:
    """``$FRERNN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/frernn``, else ``~/.cache/frernn``."""
    if os.environ.get("FRERNN_CACHE_DIR"):
        return Path(os.environ["FRERNN_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "frernn"


def user_place(folder: Path) -> Path:
    """The folder under the cache root that stands for ``folder`` (one per real path)."""
    real = Path(os.path.realpath(folder))
    key = hashlib.sha256(str(real).encode()).hexdigest()[:16]
    return cache_root() / "datasets" / f"{'-'.join(real.parts[-2:])}-{key}"


def places(folder: Path) -> tuple[Path, Path]:
    """Where the record and cache of ``folder`` are looked for, in this order."""
    return folder, user_place(folder)


def writable_place(folder: Path, what: str) -> Path:
    """The first of ``places(folder)`` where files can be created; else a FrernnError naming
    each place and why it cannot be written."""
    refusals = []
    for place in places(folder):
        why = files.why_not_writable(place)
        if why is None:
            return place
        refusals.append(f"{place}: {why}")
    raise FrernnError(
        f"nowhere to write the {what} of {folder} ({'; '.join(refusals)}); "
        "set FRERNN_CACHE_DIR to a writable directory"
    )
