"""Datasets: verified files in torchvision's layout under a data directory, loaded as tensors.

A dataset is *installed* in ``data_dir`` when its files sit where torchvision's readers expect them
(``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``) with a record of the md5 of every
file's decompressed content (``frernn-verified.json``), written only after that content matched
the checksum table (``CHECKSUMS``; import and ensure accept another table, which is how tests
install fakes). Every load re-hashes the files against that record, so later damage is caught.
The record and the decoded-tensor cache sit beside the files, or in the user's cache directory
(``$FRERNN_CACHE_DIR``) when the data directory is not writable.

One module per concern: ``catalog`` (names, shapes, checksums), ``files`` (OS errors as one
line), ``locations`` (where records and caches go), ``manifest``, ``install`` (offline import),
``download``, ``availability`` (``ensure``), ``readers`` (torchvision), ``cache`` (tensor
cache), ``loading`` (tensors on a device), ``batches`` and ``cli`` (``frernn data``).
"""

from frernn.data.availability import ensure
from frernn.data.batches import batches
from frernn.data.catalog import (
    CHECKSUMS,
    DATASET_NAMES,
    DatasetInfo,
    dataset_info,
    default_data_dir,
)
from frernn.data.cli import register_cli
from frernn.data.install import import_dir
from frernn.data.loading import Data, load, prepare
from frernn.data.locations import cache_root
from frernn.data.manifest import MANIFEST

__all__ = [
    "CHECKSUMS",
    "DATASET_NAMES",
    "MANIFEST",
    "Data",
    "DatasetInfo",
    "batches",
    "cache_root",
    "dataset_info",
    "default_data_dir",
    "ensure",
    "import_dir",
    "load",
    "prepare",
    "register_cli",
]
