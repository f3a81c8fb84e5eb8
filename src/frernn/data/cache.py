"""The tensor cache: each split's decoded uint8 images and labels as one torch file, keyed by
the md5 of the dataset's files, so jobs skip torchvision's parsing. Built once under a lock;
written by atomic rename, so a reader never sees half a file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from frernn.data import catalog, files, locations
from frernn.data.readers import read_split
from frernn.errors import FrernnError
from frernn.io import atomic_write

log = logging.getLogger(__name__)

CACHE_FILES = {True: "frernn-train-tensors.pt", False: "frernn-test-tensors.pt"}
LOCK_FILE = ".frernn-tensors.lock"

Split = tuple[torch.Tensor, torch.Tensor]


def _valid(path: Path, digests: dict[str, str]) -> Split | None:
    """The split cached in ``path`` if it was built from files with ``digests``."""
    try:
        saved = torch.load(path, weights_only=True)
        if saved["md5"] == digests:
            return saved["x"], saved["y"]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception as exc:  # noqa: BLE001 - an unreadable cache is ignored, then rebuilt
        log.warning("ignoring unreadable tensor cache %s (%s)", path, files.one_line(exc))
    return None


def _cached(folder: Path, train: bool, digests: dict[str, str]) -> Split | None:
    """The first valid cache of the split among the places of ``folder``."""
    for place in locations.places(folder):
        split = _valid(place / CACHE_FILES[train], digests)
        if split is not None:
            return split
    return None


def _build(name: str, data_dir: Path, train: bool, digests: dict[str, str], place: Path) -> Split:
    """Read the split through torchvision and cache it in ``place``."""
    path = place / CACHE_FILES[train]
    log.info("building tensor cache %s", path)
    x, y = read_split(name, data_dir, train)
    try:
        with files.writing(path):
            atomic_write(path, lambda tmp: torch.save({"md5": digests, "x": x, "y": y}, tmp))
    except RuntimeError as exc:  # torch.save reports a failed write (a full disk) this way
        raise FrernnError(f"cannot write {path}: disk full? ({files.one_line(exc)})") from exc
    return x, y


def splits(name: str, data_dir: Path, digests: dict[str, str]) -> dict[bool, Split]:
    """Both splits of ``name`` (keyed by ``train``) from the cache; what is missing, stale or
    unreadable is built by one process while the others wait, then read by all."""
    folder = Path(data_dir) / catalog.source(name).folder
    found = {train: _cached(folder, train, digests) for train in CACHE_FILES}
    if all(split is not None for split in found.values()):
        return found
    place = locations.writable_place(folder, "tensor cache")
    with files.locked(place / LOCK_FILE):
        for train, split in found.items():
            if split is None:
                found[train] = _cached(folder, train, digests) or _build(
                    name, data_dir, train, digests, place
                )
    return found
