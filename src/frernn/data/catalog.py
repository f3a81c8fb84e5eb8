"""The datasets frernn knows: shape and classes, where their files sit, their checksums."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from frernn.errors import FrernnError

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
SYSTEM_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian packages

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_DIR = "cifar-10-batches-py"

# md5 of the decompressed files. MNIST: the widely published digests of the raw IDX files (their
# sizes and the gz digests torchvision checks agree); Fashion-MNIST: computed from Debian's
# dataset-fashion-mnist files (identical to the published raw digests); CIFAR-10: the digests of
# the pickled batches inside the python tarball, as torchvision lists them.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(
        zip(
            IDX_FILES,
            (
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
            strict=True,
        )
    ),
    "fashion_mnist": dict(
        zip(
            IDX_FILES,
            (
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
            strict=True,
        )
    ),
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: image shape (C, H, W) and class count."""

    name: str
    shape: tuple[int, int, int]
    n_classes: int


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live under the data dir, which torchvision classes read and
    download them, and how to obtain them without network (a template of ``data_dir``)."""

    info: DatasetInfo
    folder: str
    torchvision_class: str
    offline: str

    def downloader(self) -> type:
        """The torchvision dataset class (imported on demand: it costs a second per job)."""
        from torchvision import datasets

        return getattr(datasets, self.torchvision_class)

    def reader(self) -> type:
        """The downloader class, minus CIFAR-10's own md5 pass (frernn verified the files)."""
        cls = self.downloader()
        if self.torchvision_class != "CIFAR10":
            return cls
        unchecked = {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        }
        return type("VerifiedCIFAR10", (cls,), unchecked)


SOURCES = {
    "mnist": Source(
        DatasetInfo("mnist", (1, 28, 28), 10),
        "MNIST/raw",
        "MNIST",
        "put the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory DIR and run "
        "`frernn data import mnist DIR --data-dir {data_dir}`",
    ),
    "fashion_mnist": Source(
        DatasetInfo("fashion_mnist", (1, 28, 28), 10),
        "FashionMNIST/raw",
        "FashionMNIST",
        "run `apt-get install dataset-fashion-mnist` (found automatically), or put the four "
        "Fashion-MNIST files in a directory DIR and run "
        "`frernn data import fashion_mnist DIR --data-dir {data_dir}`",
    ),
    "cifar10": Source(
        DatasetInfo("cifar10", (3, 32, 32), 10),
        CIFAR_DIR,
        "CIFAR10",
        f"put {CIFAR_TARBALL} (https://www.cs.toronto.edu/~kriz/cifar.html) in a directory DIR "
        "and run `frernn data import cifar10 DIR --data-dir {data_dir}`",
    ),
}


def source(name: str) -> Source:
    """The source of ``name``; an unknown name is a FrernnError."""
    if name not in SOURCES:
        raise FrernnError(f"unknown dataset {name!r} (choose from {', '.join(DATASET_NAMES)})")
    return SOURCES[name]


def dataset_info(name: str) -> DatasetInfo:
    """Image shape and class count of ``name``; an unknown name is a FrernnError."""
    return source(name).info


def default_data_dir() -> Path:
    """``$FRERNN_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("FRERNN_DATA_DIR") or "data")
