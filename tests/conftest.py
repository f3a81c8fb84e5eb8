"""Shared fixtures: small datasets in the real on-disk formats (IDX, CIFAR-10 pickle batches)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from frernn import data

FAKE_TRAIN, FAKE_TEST = 500, 200
_SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32, 3)}


def fake_images(name: str, n: int, train: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (N, H, W[, 3]) and balanced labels: each class is a blocky prototype
    plus noise, so a small net learns it within an epoch or two."""
    shape = _SHAPES[name]
    protos_rng = np.random.default_rng([seed, data.DATASET_NAMES.index(name)])
    coarse = protos_rng.integers(0, 256, (10, shape[0] // 4, shape[1] // 4, *shape[2:]))
    prototypes = np.kron(coarse, np.ones((1, 4, 4, *[1] * (len(shape) - 2))))
    rng = np.random.default_rng([seed, data.DATASET_NAMES.index(name), int(train) + 1])
    labels = rng.permutation(np.arange(n) % 10)
    noise = rng.integers(0, 256, (n, *shape))
    images = (0.7 * prototypes[labels] + 0.3 * noise).astype(np.uint8)
    return images, labels.astype(np.uint8)


def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0x08, ndim), big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def _cifar_batch(label: str, x: np.ndarray, y: np.ndarray) -> bytes:
    """A pickled CIFAR-10 batch: rows of 3072 bytes (R, G, B planes), labels as a list."""
    batch = {
        "batch_label": label,
        "labels": [int(v) for v in y],
        "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
        "filenames": [f"{label}_{i}.png" for i in range(len(x))],
    }
    return pickle.dumps(batch, protocol=2)


def _original_files(name: str, n_train: int, n_test: int, seed: int) -> dict[str, bytes]:
    """Each original file of ``name`` (decompressed) by its file name."""
    train, test = (fake_images(name, n, t, seed) for n, t in ((n_train, True), (n_test, False)))
    if name != "cifar10":
        return {
            f"{prefix}-{kind}": _idx(array)
            for prefix, (x, y) in (("train", train), ("t10k", test))
            for kind, array in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y))
        }
    splits = [
        (f"data_batch_{i + 1}", train, index)
        for i, index in enumerate(np.array_split(np.arange(n_train), 5))
    ]
    splits.append(("test_batch", test, np.arange(n_test)))
    files = {file: _cifar_batch(file, x[index], y[index]) for file, (x, y), index in splits}
    meta = {"label_names": [f"class{c}" for c in range(10)], "num_vis": 3072}
    files["batches.meta"] = pickle.dumps(meta, protocol=2)
    return files


def write_fake_dataset(
    name: str,
    directory: Path,
    n_train: int = FAKE_TRAIN,
    n_test: int = FAKE_TEST,
    compressed: bool = True,
    seed: int = 0,
) -> dict[str, str]:
    """Write ``name``'s original files into ``directory`` (MNIST-like: IDX, ``.gz`` when
    ``compressed``; CIFAR-10: the python tarball, or the extracted ``cifar-10-batches-py``);
    return the md5 of each file's decompressed content (a checksum table for frernn.data)."""
    files = _original_files(name, n_train, n_test, seed)
    directory.mkdir(parents=True, exist_ok=True)
    if name == "cifar10" and compressed:
        with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as tar:
            for file, content in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{file}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    elif name == "cifar10":
        (directory / "cifar-10-batches-py").mkdir(exist_ok=True)
        for file, content in files.items():
            (directory / "cifar-10-batches-py" / file).write_bytes(content)
    else:
        for file, content in files.items():
            if compressed:
                (directory / f"{file}.gz").write_bytes(gzip.compress(content, mtime=0))
            else:
                (directory / file).write_bytes(content)
    return {file: hashlib.md5(content).hexdigest() for file, content in files.items()}


@pytest.fixture(scope="session")
def _fake_data_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake-data")
    for name in data.DATASET_NAMES:
        checksums = write_fake_dataset(name, root / "originals" / name)
        data.import_dir(name, root / "originals" / name, root / "data", checksums=checksums)
    return root / "data"


@pytest.fixture
def fake_data_dir(_fake_data_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data dir holding fake MNIST, Fashion-MNIST and CIFAR-10 (FAKE_TRAIN/FAKE_TEST
    images each, from ``fake_images``) installed by ``frernn.data.import_dir``."""
    return Path(shutil.copytree(_fake_data_template, tmp_path_factory.mktemp("data") / "data"))


@pytest.fixture
def own_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh FRERNN_CACHE_DIR for one test, so nothing reaches the user's real cache."""
    cache_dir = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FRERNN_CACHE_DIR", str(cache_dir))
    return cache_dir


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Fashion-MNIST (Debian package dataset-fashion-mnist) imported into a data dir."""
    data_dir = tmp_path_factory.mktemp("fmnist")
    data.ensure("fashion_mnist", data_dir, download=False)
    return data_dir


REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "notebooks", "slurm")
SMOKE_CONFIG = ["--config", "scale=smoke", "dataset_substitute=fashion_mnist"]


def workflow_copy(dest: Path) -> Path:
    """The checkout's workflow files in ``dest`` (src/ linked: the config schema refers to it)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / "src").symlink_to(REPO / "src")
    return dest


def run_snakemake(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    """Run this interpreter's snakemake in ``cwd`` with the venv's commands first on PATH."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    command = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole default target at smoke scale on Fashion-MNIST, run once per test session, with
    the seeds of each configuration in one job (``pack=seeds``, as ``make quick`` runs)."""
    cwd = workflow_copy(tmp_path_factory.mktemp("smoke"))
    args = ["--cores", "2", *SMOKE_CONFIG, f"data_dir={cwd / 'data'}", "pack=seeds"]
    proc = run_snakemake(cwd, *args, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return cwd


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, as training jobs do on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
