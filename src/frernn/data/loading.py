"""A verified dataset as tensors on a device, with the same subsets for every seed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from frernn.data import cache, catalog
from frernn.data.availability import ensure
from frernn.errors import FrernnError

log = logging.getLogger(__name__)

SUBSET_SEED = 0
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)


@dataclass
class Data:
    """A whole dataset as tensors on one device: x float32 (N, C, H, W), y int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: catalog.DatasetInfo


def _subset(n_total: int, n: int | None, what: str) -> torch.Tensor | None:
    """Indices of a deterministic subset (fixed-seed permutation, first n); None for all."""
    if n is None:
        return None
    if n < 1:
        raise FrernnError(f"{what} must be a positive number of images, got {n}")
    if n > n_total:
        log.warning("%s=%d exceeds the %d images available; using all", what, n, n_total)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return order[:n]


def prepare(
    name: str,
    data_dir: Path,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> None:
    """Make ``name`` available and verified (``ensure``) and build its tensor cache: the
    dataset step, run once before training jobs, which then only read."""
    cache.splits(name, Path(data_dir), ensure(name, data_dir, download, checksums))


def load(
    name: str,
    data_dir: Path,
    device: str | torch.device = "cpu",
    normalize: bool = False,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Data:
    """The verified dataset as tensors on ``device``: pixels in [0, 1], or with ``normalize``
    CIFAR-10's mean/std normalisation; subsets are the same for every seed."""
    info, data_dir = catalog.dataset_info(name), Path(data_dir)
    if normalize and name != "cifar10":
        raise FrernnError(f"normalize applies to cifar10 only, not {name}")
    splits = cache.splits(name, data_dir, ensure(name, data_dir, download=False))
    tensors = []
    for train, n in ((True, train_subset), (False, test_subset)):
        x, y = splits[train]
        index = _subset(len(y), n, "train_subset" if train else "test_subset")
        if index is not None:
            x, y = x[index], y[index]
        x = x.to(device).float().div_(255)
        if normalize:
            mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        tensors += [x, y.to(device)]
    return Data(*tensors, info=info)
