"""Shared and read-only data directories: the record and tensor cache go to the user's cache
directory, the dataset step builds the cache once, concurrent loads never rebuild it, and each
OS error on a data or output path is one line naming the path.

Permissions mean nothing to root, so the permission cases run ``frernn`` as user ``nobody``:
in a private mount namespace where the directories on the way to this interpreter, the venv
and the checkout are made searchable (without touching them), then ``setpriv`` to uid 65534.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAKE_TRAIN, REPO, run_snakemake, workflow_copy, write_fake_dataset

from frernn import cli, data
from frernn.data import cache, files, locations

pytestmark = pytest.mark.usefixtures("own_cache_dir")
NOBODY = 65534
FRERNN = ("-m", "frernn.cli")
SPEC = {
    "dataset": "mnist",
    "model": {"depth": 1, "width": 16},
    "ep": {"T": 5, "K": 3},
    "train": {"epochs": 1, "batch_size": 100, "train_subset": 300, "test_subset": 100},
}


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its inode, mtime (ns) and mode: what a write would change."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRERNN_CACHE_DIR", "/scratch/me/frernn")
    assert data.cache_root() == Path("/scratch/me/frernn")
    monkeypatch.delenv("FRERNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert data.cache_root() == Path("/var/cache/me/frernn")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", "/home/me")
    assert data.cache_root() == Path("/home/me/.cache/frernn")
    place = locations.user_place(Path("/srv/data/MNIST/raw"))
    assert place.parent == Path("/home/me/.cache/frernn/datasets")
    assert place.name.startswith("MNIST-raw-")
    assert locations.user_place(Path("/srv/other/MNIST/raw")) != place


def test_dataset_step_builds_the_cache_that_loads_only_read(
    fake_data_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["data", "fetch", "mnist", "--data-dir", str(fake_data_dir)]) == 0
    assert "mnist: ready in" in capsys.readouterr().out
    folder = fake_data_dir / "MNIST" / "raw"
    assert all((folder / file).is_file() for file in cache.CACHE_FILES.values())
    before = _snapshot(fake_data_dir)
    with caplog.at_level(logging.INFO):
        loaded = [data.load("mnist", fake_data_dir, train_subset=100) for _ in range(2)]
    assert _snapshot(fake_data_dir) == before  # same inodes and mtimes: read, never rewritten
    assert not [r for r in caplog.records if "building tensor cache" in r.message]
    assert torch.equal(loaded[0].train_x, loaded[1].train_x)


def test_the_workflow_dataset_rule_builds_the_tensor_cache(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    cwd = workflow_copy(tmp_path / "wf")
    config = ["--config", "device=cpu", f"data_dir={fake_data_dir}"]
    proc = run_snakemake(cwd, "--cores", "1", *config, "--", "results/data/mnist.ready")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = fake_data_dir / "MNIST" / "raw"
    assert all((folder / file).is_file() for file in cache.CACHE_FILES.values())
    log = (cwd / "results" / "logs" / "data" / "mnist.log").read_text()
    assert log.count("building tensor cache") == 2 and "mnist: ready in" in log


def test_a_stale_cache_is_rebuilt_from_the_new_files(fake_data_dir: Path, tmp_path: Path) -> None:
    first = data.load("mnist", fake_data_dir)
    checksums = write_fake_dataset("mnist", tmp_path / "src", seed=1)
    data.import_dir("mnist", tmp_path / "src", fake_data_dir, checksums=checksums)
    second = data.load("mnist", fake_data_dir)
    data.import_dir("mnist", tmp_path / "src", tmp_path / "fresh", checksums=checksums)
    assert not torch.equal(first.train_x, second.train_x)
    assert torch.equal(second.train_x, data.load("mnist", tmp_path / "fresh").train_x)


def test_concurrent_loads_build_the_cache_once(
    fake_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three loaders start while the build lock is held: all wait, then exactly one builds each
    split and the others read what it wrote. (The loaders are threads: each opens the lock file
    itself, and flock excludes separate opens exactly as it excludes processes.)"""
    lock = fake_data_dir / "MNIST" / "raw" / cache.LOCK_FILE
    results: list[data.Data] = []
    caplog.set_level(logging.INFO)
    with files.locked(lock):
        loaders = [
            threading.Thread(target=lambda: results.append(data.load("mnist", fake_data_dir)))
            for _ in range(3)
        ]
        for loader in loaders:
            loader.start()
        deadline = time.monotonic() + 60
        while sum("waiting for" in r.message for r in caplog.records) < 3:
            assert time.monotonic() < deadline, "the loaders did not wait for the lock"
            time.sleep(0.05)
    for loader in loaders:
        loader.join(60)
    builds = [r.message for r in caplog.records if "building tensor cache" in r.message]
    assert len(builds) == 2 and {Path(b.split()[-1]).name for b in builds} == set(
        cache.CACHE_FILES.values()
    )
    assert len(results) == 3 and len(results[0].train_x) == FAKE_TRAIN
    assert all(torch.equal(r.train_x, results[0].train_x) for r in results)


# ---- as an unprivileged user ---------------------------------------------------------------


def _unsearchable_ancestors(paths: list[Path]) -> dict[Path, set[str]]:
    """Each directory on the way to ``paths`` that others may not search, with the names of
    its children those paths go through."""
    blocked: dict[Path, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(1, len(parts) - 1):
            folder = Path(*parts[:depth])
            if not folder.stat().st_mode & stat.S_IXOTH:
                blocked.setdefault(folder, set()).add(parts[depth])
    return blocked


def _namespace_script(blocked: dict[Path, set[str]], stage: Path) -> str:
    """Shell lines that, in a private mount namespace, put a searchable tmpfs over each blocked
    directory (outermost first) holding bind mounts of the children that are needed."""
    lines = ["set -e"]
    for n, folder in enumerate(sorted(blocked, key=lambda p: len(p.parts))):
        for child in sorted(blocked[folder]):
            keep = stage / f"{n}-{child}"
            lines += [f"mkdir -p {shlex.quote(str(keep))}"]
            lines += [f"mount --bind {shlex.quote(str(folder / child))} {shlex.quote(str(keep))}"]
        lines += [f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(folder))}"]
        for child in sorted(blocked[folder]):
            keep, target = stage / f"{n}-{child}", folder / child
            lines += [f"mkdir {shlex.quote(str(target))}"]
            lines += [f"mount --move {shlex.quote(str(keep))} {shlex.quote(str(target))}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def shared_root() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp dirs are root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="frernn-shared-"))
    root.chmod(0o755)
    yield root
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def as_nobody(shared_root: Path):
    """Run ``python ARGS`` as user nobody with environment ``env``, after the shell lines
    ``mounts`` (run as root in the namespace); return the finished process."""
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root (the tests run as root here)")
    needed = [Path(sys.executable), Path(sys.base_prefix), Path(sys.prefix), REPO / "src"]
    stage = shared_root / "mount-stage"
    setup = _namespace_script(_unsearchable_ancestors(needed), stage)

    def run(
        *args: str, env: dict[str, str], mounts: str = "", timeout: int = 300
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, *args]
        environment = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
            "PYTHONPATH": str(REPO / "src"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HOME": "/nonexistent",
            **env,
        }
        switch = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        as_user = shlex.join([*switch, "env", "-i", *_assign(environment), *command])
        script = f"{setup}\n{mounts}\nexec {as_user}"
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=shared_root,
        )

    return run


def _assign(env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


def _read_only_copy(source: Path, dest: Path) -> Path:
    """``source`` copied to ``dest`` with every folder 555 and every file 444 (owned by root)."""
    shutil.copytree(source, dest)
    for path in sorted(dest.rglob("*"), key=lambda p: -len(p.parts)):
        path.chmod(0o555 if path.is_dir() else 0o444)
    dest.chmod(0o555)
    return dest


def _owned_by_nobody(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, NOBODY, NOBODY)
    return path


def test_read_only_data_dir_trains_as_an_unprivileged_user(
    fake_data_dir: Path, shared_root: Path, as_nobody
) -> None:
    """A verified data directory nobody may write: the dataset step caches the tensors in
    FRERNN_CACHE_DIR, and the training job after it reads that cache without writing."""
    root = shared_root / "train"
    root.mkdir()
    data_dir = _read_only_copy(fake_data_dir, root / "data")
    cache_dir = _owned_by_nobody(root / "cache")
    out = _owned_by_nobody(root / "out")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    env = {"FRERNN_CACHE_DIR": str(cache_dir)}
    data_before = _snapshot(data_dir)

    fetch = as_nobody(*FRERNN, "data", "fetch", "mnist", "--data-dir", str(data_dir), env=env)
    assert fetch.returncode == 0, fetch.stderr
    (place,) = (cache_dir / "datasets").iterdir()
    assert place.name.startswith("MNIST-raw-")
    assert {p.name for p in place.iterdir()} == {*cache.CACHE_FILES.values(), cache.LOCK_FILE}
    assert all(p.stat().st_uid == NOBODY for p in place.iterdir())
    cache_before = _snapshot(cache_dir)

    args = [*FRERNN, "train", str(root / "spec.yaml"), "--out", str(out / "run"), "--data-dir"]
    train = as_nobody(*args, str(data_dir), "--threads", "1", env=env)
    assert train.returncode == 0, train.stderr
    assert (out / "run" / "metrics.json").is_file()
    assert "building tensor cache" not in train.stderr
    assert _snapshot(cache_dir) == cache_before
    assert _snapshot(data_dir) == data_before


def test_read_only_files_without_a_record_are_recorded_in_the_cache_dir(
    fmnist_dir: Path, tmp_path: Path, shared_root: Path, as_nobody
) -> None:
    """The real Fashion-MNIST in torchvision's layout with no record, in a directory nobody may
    write: checked against the table, its record goes to the cache directory."""
    root = shared_root / "unrecorded"
    root.mkdir()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for file in data.CHECKSUMS["fashion_mnist"]:
        shutil.copy(fmnist_dir / "FashionMNIST" / "raw" / file, raw / file)
    data_dir = _read_only_copy(tmp_path / "data", root / "data")
    cache_dir = _owned_by_nobody(root / "cache")
    fetch = as_nobody(
        *FRERNN,
        "data",
        "fetch",
        "fashion_mnist",
        "--data-dir",
        str(data_dir),
        env={"FRERNN_CACHE_DIR": str(cache_dir)},
    )
    assert fetch.returncode == 0, fetch.stderr
    (place,) = (cache_dir / "datasets").iterdir()
    assert (place / data.MANIFEST).is_file()


# Runs as nobody: each case sets the environment, runs ``frernn`` with its stderr and log
# captured (stdout dropped), and reports the exit status and that output (a traceback counts
# as a failure).
ERROR_DRIVER = """
import contextlib, io, json, logging, os, sys, traceback
from frernn import cli
logging.root.setLevel(logging.INFO)
results = []
for case in json.loads(sys.argv[1]):
    for key, value in case["env"].items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    buffer = io.StringIO()
    logging.root.handlers[:] = [logging.StreamHandler(buffer)]
    with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(case["argv"])
        except BaseException:
            rc, buffer = "traceback", io.StringIO(traceback.format_exc())
    results.append({"rc": rc, "stderr": buffer.getvalue()})
print(json.dumps(results))
"""


def test_os_errors_are_one_line_and_a_prepared_shared_dir_needs_no_writes(
    fake_data_dir: Path, shared_root: Path, as_nobody
) -> None:
    """As nobody: each OS error on a data or cache path is one line naming it; a read-only
    data dir whose record and cache an administrator built is used with no cache dir at all."""
    root = shared_root / "errors"
    root.mkdir()
    read_only = _read_only_copy(fake_data_dir, root / "read-only")
    unreadable = _read_only_copy(fake_data_dir, root / "unreadable")
    unreadable_file = unreadable / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    unreadable_file.chmod(0o000)
    unsearchable = _read_only_copy(fake_data_dir, root / "unsearchable")
    (unsearchable / "MNIST" / "raw").chmod(0o700)
    write_fake_dataset("mnist", root / "originals")
    data.prepare("mnist", fake_data_dir)  # the administrator's fetch, with write access
    prepared = _read_only_copy(fake_data_dir, root / "prepared")
    prepared_before = _snapshot(prepared)
    cache_dir = _owned_by_nobody(root / "cache")
    (root / "a-file").write_text("not a directory")
    full = root / "full"  # a 64 KiB file system, mounted in the namespace: too small for a cache
    full.mkdir()
    mounts = f"mount -t tmpfs -o size=64k,uid={NOBODY},gid={NOBODY} tmpfs {shlex.quote(str(full))}"
    no_cache = {"FRERNN_CACHE_DIR": None, "XDG_CACHE_HOME": None}
    fetch = ["data", "fetch", "mnist", "--data-dir"]
    cases = [  # (environment, argv, what the one line must say)
        (
            no_cache,
            [*fetch, str(read_only)],
            f"nowhere to write the tensor cache of {read_only}/MNIST/raw ({read_only}/MNIST/raw:"
            " Permission denied; /nonexistent/.cache/frernn/datasets/MNIST-raw-",
        ),
        (
            {"FRERNN_CACHE_DIR": str(root / "a-file")},
            [*fetch, str(read_only)],
            f"{root}/a-file/datasets/MNIST-raw-",
        ),
        (
            {"FRERNN_CACHE_DIR": str(full)},
            [*fetch, str(read_only)],
            f"cannot write {full}/datasets/MNIST-raw-",  # then: frernn-train-tensors.pt: disk full?
        ),
        (
            {"FRERNN_CACHE_DIR": str(cache_dir)},
            [*fetch, str(unreadable)],
            f"cannot read {unreadable_file}: Permission denied",
        ),
        (
            {"FRERNN_CACHE_DIR": str(cache_dir)},
            [*fetch, str(unsearchable)],
            f"cannot read {unsearchable}/MNIST/raw/train-images-idx3-ubyte: Permission denied",
        ),
        (
            {"FRERNN_CACHE_DIR": str(cache_dir)},
            ["data", "import", "mnist", str(root / "originals"), "--data-dir", str(read_only)],
            f"cannot write to {read_only}: Permission denied",
        ),
    ]
    runs = [{"env": env, "argv": argv} for env, argv, _ in cases]
    runs.append({"env": no_cache, "argv": [*fetch, str(prepared)]})
    proc = as_nobody("-c", ERROR_DRIVER, json.dumps(runs), env={}, mounts=mounts)
    assert proc.returncode == 0, proc.stderr
    *results, shared = json.loads(proc.stdout)
    assert shared["rc"] == 0 and "building" not in shared["stderr"], shared["stderr"]
    assert _snapshot(prepared) == prepared_before
    for (_, argv, message), result in zip(cases, results, strict=True):
        *logged, error = result["stderr"].splitlines()
        assert result["rc"] == 2 and error.startswith("frernn: error: "), (argv, result)
        assert message in error, (argv, result)
        assert not [line for line in logged if "Traceback" in line or "error" in line[:20]]
    assert list(cache_dir.iterdir()) == []
