"""Datasets: verified files in torchvision's layout under a data directory, loaded as tensors.

A dataset is *installed* in ``data_dir`` when its files sit where torchvision's readers expect them
(``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``) next to ``frernn-verified.json``, the
md5 of every file's decompressed content, written only after that content matched the checksum
table (``CHECKSUMS``; import and ensure accept another table, which is how tests install fakes).
Every load re-hashes the files against that record, so a file corrupted later is caught.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
MANIFEST = "frernn-verified.json"
SYSTEM_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian packages
DOWNLOAD_ATTEMPTS = 3
RETRY_DELAY_S = 5.0
SUBSET_SEED = 0
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"

# md5 of the decompressed files. MNIST: the widely published digests of the raw IDX files (their
# sizes and the gz digests torchvision checks agree); Fashion-MNIST: computed from Debian's
# dataset-fashion-mnist files (identical to the published raw digests); CIFAR-10: the digests of
# the pickled batches inside the python tarball, as torchvision lists them.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(
        zip(
            _IDX_FILES,
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
            _IDX_FILES,
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
class _Source:
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


_SOURCES = {
    "mnist": _Source(
        DatasetInfo("mnist", (1, 28, 28), 10),
        "MNIST/raw",
        "MNIST",
        "put the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory DIR and run "
        "`frernn data import mnist DIR --data-dir {data_dir}`",
    ),
    "fashion_mnist": _Source(
        DatasetInfo("fashion_mnist", (1, 28, 28), 10),
        "FashionMNIST/raw",
        "FashionMNIST",
        "run `apt-get install dataset-fashion-mnist` (found automatically), or put the four "
        "Fashion-MNIST files in a directory DIR and run "
        "`frernn data import fashion_mnist DIR --data-dir {data_dir}`",
    ),
    "cifar10": _Source(
        DatasetInfo("cifar10", (3, 32, 32), 10),
        _CIFAR_DIR,
        "CIFAR10",
        f"put {_CIFAR_TARBALL} (https://www.cs.toronto.edu/~kriz/cifar.html) in a directory DIR "
        "and run `frernn data import cifar10 DIR --data-dir {data_dir}`",
    ),
}


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise FrernnError(f"unknown dataset {name!r} (choose from {', '.join(DATASET_NAMES)})")
    return _SOURCES[name]


def dataset_info(name: str) -> DatasetInfo:
    """Image shape and class count of ``name``; an unknown name is a FrernnError."""
    return _source(name).info


def default_data_dir() -> Path:
    """``$FRERNN_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("FRERNN_DATA_DIR") or "data")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _reading(origin: Path) -> Iterator[None]:
    """Turn a failure to read or decompress ``origin`` into a one-line FrernnError naming it."""
    try:
        yield
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise FrernnError(f"{origin}: corrupt or truncated ({_one_line(exc)})") from exc


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn a failure to write ``dest`` (disk full, permissions) into a one-line FrernnError."""
    try:
        yield
    except OSError as exc:
        raise FrernnError(f"cannot write {dest}: {exc.strerror or _one_line(exc)}") from exc


def _copy_hashing(reader: BinaryIO, origin: Path, dest: Path) -> str:
    """Stream ``reader`` (the content of ``origin``) into ``dest``; return its md5."""
    digest = hashlib.md5()
    with _writing(dest), dest.open("wb") as out:
        while True:
            with _reading(origin):
                chunk = reader.read(1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
            out.write(chunk)


def _md5(path: Path) -> str:
    with _reading(path), path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


Staged = dict[str, tuple[Path, str]]  # file name -> (where it came from, md5 of its content)


def _stage_idx(name: str, source: Path, staging: Path) -> Staged:
    """Decompress (or copy) the four IDX files of ``source`` into ``staging``."""
    staged = {}
    for file in CHECKSUMS[name]:
        origin = next((p for p in (source / file, source / f"{file}.gz") if p.is_file()), None)
        if origin is None:
            raise FrernnError(f"{source}: neither {file} nor {file}.gz found ({name} import)")
        with _reading(origin), (gzip.open if origin.suffix == ".gz" else open)(origin, "rb") as f:
            staged[file] = (origin, _copy_hashing(f, origin, staging / file))
    return staged


def _stage_cifar(source: Path, staging: Path) -> Staged:
    """Copy the CIFAR-10 batches from an extracted folder or the python tarball into ``staging``."""
    wanted = set(CHECKSUMS["cifar10"])
    for folder in (source, source / _CIFAR_DIR):
        if all((folder / file).is_file() for file in wanted):
            staged = {}
            for file in wanted:
                with _reading(folder / file), (folder / file).open("rb") as f:
                    staged[file] = (folder / file, _copy_hashing(f, folder / file, staging / file))
            return staged
    tarball = source / _CIFAR_TARBALL
    if not tarball.is_file():
        raise FrernnError(f"{source}: neither {_CIFAR_TARBALL} nor the {_CIFAR_DIR} files found")
    staged = {}
    with _reading(tarball), tarfile.open(tarball, mode="r|gz") as tar:
        for member in tar:
            file = member.name.removeprefix(f"{_CIFAR_DIR}/")
            if file in wanted and member.isfile():
                reader = tar.extractfile(member)
                staged[file] = (tarball, _copy_hashing(reader, tarball, staging / file))
    missing = sorted(wanted - set(staged))
    if missing:
        raise FrernnError(f"{tarball}: corrupt or truncated (no {', '.join(missing)} inside)")
    return staged


def _scratch_dir(data_dir: Path, prefix: str) -> Path:
    """A fresh hidden working folder inside ``data_dir`` (same file system: moves are renames)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=data_dir))
    except OSError as exc:
        raise FrernnError(f"cannot write to {data_dir}: {exc.strerror or exc}") from exc


def import_dir(
    name: str, source: Path, data_dir: Path, checksums: Mapping[str, str] | None = None
) -> None:
    """Install ``name`` from a directory of its original files (IDX gz or raw; CIFAR-10's python
    tarball or extracted batches), verified by the md5 of the decompressed content; all or nothing.
    """
    src, source, data_dir = _source(name), Path(source), Path(data_dir)
    expected = checksums if checksums is not None else CHECKSUMS[name]
    if not source.is_dir():
        raise FrernnError(f"{source}: no such directory (expected the original {name} files)")
    staging = _scratch_dir(data_dir, f".import-{name}-")
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
    """Move verified files into place; the manifest goes last, so it only ever describes them."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)
        for file in digests:
            os.replace(staging / file, folder / file)
    except OSError as exc:
        raise FrernnError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    atomic_write_json(folder / MANIFEST, {"dataset": name, "md5": digests})


def _recorded(folder: Path) -> dict[str, str] | None:
    """The md5s of the manifest in ``folder``; None if absent or unreadable."""
    try:
        record = json.loads((folder / MANIFEST).read_text())["md5"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) and record else None


def _problem(name: str, data_dir: Path, checksums: Mapping[str, str] | None) -> str | None:
    """Why ``name`` is not usable in ``data_dir`` (None: installed and verified just now).
    Files without a manifest (e.g. left by torchvision) are checked against the table."""
    folder = data_dir / _source(name).folder
    recorded = _recorded(folder)
    expected = recorded or (checksums if checksums is not None else CHECKSUMS[name])
    for file, md5 in expected.items():
        if not (folder / file).is_file():
            return f"{folder / file} is missing"
        if _md5(folder / file) != md5:
            return f"{folder / file} fails its checksum: corrupt, truncated or modified"
    if not recorded:
        with contextlib.suppress(FrernnError):  # a read-only data dir stays usable
            atomic_write_json(folder / MANIFEST, {"dataset": name, "md5": dict(expected)})
    return None


def ensure(
    name: str,
    data_dir: Path,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> None:
    """Make ``name`` available and verified in ``data_dir``: already there, else from the
    Debian package's files, else downloaded by torchvision (with retries) when ``download``."""
    src, data_dir = _source(name), Path(data_dir)
    problem = _problem(name, data_dir, checksums)
    if problem is None:
        return
    system = SYSTEM_DIRS.get(name)
    if system is not None and system.is_dir():
        log.info("%s: %s; importing %s", name, problem, system)
        import_dir(name, system, data_dir, checksums)
    elif download:
        _download(name, data_dir, checksums)
    else:
        raise FrernnError(
            f"{name} is not available in {data_dir} ({problem}); run `frernn data fetch {name} "
            f"--data-dir {data_dir}` with internet, or offline: "
            + src.offline.format(data_dir=data_dir)
        )


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(name: str, data_dir: Path, checksums: Mapping[str, str] | None) -> None:
    """Let torchvision download (checksummed) into a scratch dir, then import from there."""
    src = _source(name)
    scratch = _scratch_dir(data_dir, f".download-{name}-")
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                with _socket_timeout(60):
                    src.downloader()(root=scratch, train=True, download=True)
                break
            except (RuntimeError, OSError, EOFError, tarfile.TarError) as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise FrernnError(
                        f"cannot download {name} ({_one_line(exc)}); without network: "
                        + src.offline.format(data_dir=data_dir)
                    ) from exc
                log.warning("download of %s failed (%s); retrying", name, _one_line(exc))
                time.sleep(RETRY_DELAY_S * attempt)
        import_dir(name, scratch / src.folder, data_dir, checksums)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Data:
    """A whole dataset as tensors on one device: x float32 (N, C, H, W), y int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo


def _read(name: str, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 (N, C, H, W) and int64 labels, through torchvision's reader."""
    src = _source(name)
    try:
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
            f"{data_dir / src.folder}: torchvision cannot read {name} ({_one_line(exc)})"
        ) from exc
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    labels_ok = len(y) == len(x) > 0 and 0 <= int(y.min()) <= int(y.max()) < src.info.n_classes
    if tuple(x.shape[1:]) != src.info.shape or not labels_ok:
        raise FrernnError(
            f"{data_dir / src.folder}: {name} {'train' if train else 'test'} split has images "
            f"{tuple(x.shape)} and {len(y)} labels, not {src.info.shape} images with labels "
            f"0..{src.info.n_classes - 1}"
        )
    return x.contiguous(), y


def _cached_read(name: str, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``_read`` memoised as a tensor file beside the verified files, keyed by their checksums:
    later jobs skip torchvision's import and parsing; a stale or unreadable cache is rebuilt."""
    folder = data_dir / _source(name).folder
    digests = json.loads((folder / MANIFEST).read_text())["md5"]
    cache = folder / f"frernn-{'train' if train else 'test'}-tensors.pt"
    if cache.exists():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved["md5"] == digests:
                return saved["x"], saved["y"]
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.warning("rebuilding unreadable tensor cache %s (%s)", cache, _one_line(exc))
    x, y = _read(name, data_dir, train)
    atomic_write(cache, lambda tmp: torch.save({"md5": digests, "x": x, "y": y}, tmp))
    return x, y


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


def load(
    name: str,
    data_dir: Path,
    device: str | torch.device = "cpu",
    normalize: bool = False,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Data:
    """The verified dataset as tensors on ``device``: pixels in [0, 1], or with ``normalize``
    CIFAR-10's mean/std normalisation (SPEC §3); subsets are the same for every seed."""
    info, data_dir = dataset_info(name), Path(data_dir)
    if normalize and name != "cifar10":
        raise FrernnError(f"normalize applies to cifar10 only, not {name}")
    ensure(name, data_dir, download=False)
    tensors = []
    for train, n in ((True, train_subset), (False, test_subset)):
        x, y = _cached_read(name, data_dir, train)
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


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of minibatches in a fresh order drawn from ``generator`` now (one call per
    epoch); the last partial batch is kept."""
    if batch_size < 1:
        raise FrernnError(f"batch size must be positive, got {batch_size}")
    order = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
    return ((x[index], y[index]) for index in order.split(batch_size))


def _fetch(args: argparse.Namespace) -> int:
    ensure(args.name, args.data_dir, download=True)
    print(f"{args.name}: ready in {args.data_dir}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import_dir(args.name, args.source, args.data_dir)
    print(f"{args.name}: imported from {args.source} into {args.data_dir}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn data fetch NAME`` and ``frernn data import NAME SRC`` (both ``--data-dir D``)."""
    parser = subparsers.add_parser("data", help="fetch or import datasets into the data dir")
    commands = parser.add_subparsers(dest="data_command", required=True)
    fetch = commands.add_parser("fetch", help="make a dataset available (Debian files, download)")
    fetch.set_defaults(func=_fetch)
    imp = commands.add_parser("import", help="install a dataset from a directory of its files")
    imp.set_defaults(func=_import)
    for command in (fetch, imp):
        command.add_argument("name", metavar="NAME", help=" | ".join(DATASET_NAMES))
    imp.add_argument("source", metavar="SRC", type=Path, help="directory with the original files")
    for command in (fetch, imp):
        command.add_argument(
            "--data-dir",
            type=Path,
            default=default_data_dir(),
            help="data directory (default: $FRERNN_DATA_DIR, else ./data)",
        )
