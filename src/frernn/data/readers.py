"""Reading one split of an installed dataset through torchvision's own reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from frernn.data import catalog, files
from frernn.errors import FrernnError


def read_split(name: str, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 (N, C, H, W) images and int64 labels, checked against the catalog."""
    src = catalog.source(name)
    folder = data_dir / src.folder
    try:
        with files.reading(folder):
            ds = src.reader()(root=data_dir, train=train, download=False)
    except (
        RuntimeError,
        ValueError,
        TypeError,
        AssertionError,
        EOFError,
        KeyError,
        pickle.PickleError,
    ) as exc:
        raise FrernnError(
            f"{folder}: torchvision cannot read {name} ({files.one_line(exc)})"
        ) from exc
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    labels_ok = len(y) == len(x) > 0 and 0 <= int(y.min()) <= int(y.max()) < src.info.n_classes
    if tuple(x.shape[1:]) != src.info.shape or not labels_ok:
        raise FrernnError(
            f"{folder}: {name} {'train' if train else 'test'} split has images "
            f"{tuple(x.shape)} and {len(y)} labels, not {src.info.shape} images with labels "
            f"0..{src.info.n_classes - 1}"
        )
    return x.contiguous(), y
