"""Device choice for a training job: Snakemake counts GPUs (``--resources gpu=N``) but assigns
none, so each job claims a free slot of one with an exclusive lock file (``$FRERNN_GPU_SLOTS``
slots per GPU, default 1: a GPU to itself)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from frernn.errors import FrernnError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
LOCK_DIR_ENV = "FRERNN_GPU_LOCK_DIR"
SLOTS_ENV = "FRERNN_GPU_SLOTS"


def resolve_device(requested: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (cuda when a GPU is visible) → ``cpu`` or ``cuda``."""
    if requested not in DEVICES:
        raise FrernnError(f"unknown device {requested!r}: expected one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if requested == "cuda" and not available:
        raise FrernnError(
            "CUDA requested but no GPU is visible (check the driver and CUDA_VISIBLE_DEVICES, "
            "or use --device cpu)"
        )
    return requested


def default_lock_dir() -> Path:
    """``$FRERNN_GPU_LOCK_DIR``, else a per-user directory in the machine's temp dir."""
    return Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"frernn-gpu-{os.getuid()}"
    )


def lock_names(n_devices: int, env: Mapping[str, str] = os.environ) -> list[str]:
    """One lock name per visible device, after its CUDA_VISIBLE_DEVICES entry when set, so jobs
    seeing different subsets of the machine's GPUs still agree on which physical GPU is taken."""
    entries = [e.strip() for e in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    ids = entries[:n_devices] if len(entries) >= n_devices else [str(k) for k in range(n_devices)]
    return [f"gpu{re.sub(r'[^A-Za-z0-9_-]', '_', i)}.lock" for i in ids]


def slots_per_gpu(env: Mapping[str, str] = os.environ) -> int:
    """How many jobs may share one GPU: ``$FRERNN_GPU_SLOTS``, default 1."""
    value = env.get(SLOTS_ENV, "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise FrernnError(f"{SLOTS_ENV}={value!r}: expected a whole number of at least 1")
    return int(value)


def slot_locks(
    n_devices: int, slots: int, env: Mapping[str, str] = os.environ
) -> list[tuple[int, str]]:
    """(device index, lock name) of every slot, first slot 0 of each GPU, then slot 1 of each...
    (so jobs spread over the GPUs before sharing one); slot 0 is the GPU's plain lock."""
    names = lock_names(n_devices, env)
    return [
        (index, name if k == 0 else name.replace(".lock", f".slot{k}.lock"))
        for k in range(slots)
        for index, name in enumerate(names)
    ]


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _claim_first_free(lock_dir: Path, slots: list[tuple[int, str]]) -> tuple[int, str, int] | None:
    """(device index, lock name, locked fd) of the first free slot, or None when all are taken."""
    for index, name in slots:
        fd = _try_lock(lock_dir / name)
        if fd is not None:
            return index, name, fd
    return None


@contextmanager
def claim_gpu(n_devices: int, lock_dir: Path, poll_s: float = 1.0, slots: int = 1) -> Iterator[int]:
    """Hold the first free of ``slots`` slots on each of ``n_devices`` GPUs (waiting while all
    are taken); yield the index of its GPU.

    The flock is released on exit, and by the kernel if the process dies."""
    if n_devices < 1:
        raise FrernnError("no GPU to claim: torch sees 0 CUDA devices")
    lock_dir.mkdir(parents=True, exist_ok=True)
    candidates = slot_locks(n_devices, slots)
    waited = False
    while (claimed := _claim_first_free(lock_dir, candidates)) is None:
        if not waited:
            log.info("all %d GPU slots are taken (locks in %s); waiting", len(candidates), lock_dir)
            waited = True
        time.sleep(poll_s)
    index, name, fd = claimed
    log.info("bound to GPU %d (%s)", index, lock_dir / name)
    try:
        yield index
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def job_device(requested: str, lock_dir: Path | None = None) -> Iterator[str]:
    """The torch device of this job for the duration of the block: ``cpu``, or ``cuda:k`` for a
    GPU slot claimed by lock file (``$FRERNN_GPU_SLOTS`` per GPU); inside a Slurm GPU allocation
    (already isolated) ``cuda:0``."""
    device = resolve_device(requested)
    if device == "cpu":
        yield "cpu"
    elif "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ:
        yield "cuda:0"
    else:
        lock_dir = lock_dir or default_lock_dir()
        n_devices, slots = torch.cuda.device_count(), slots_per_gpu()
        with claim_gpu(n_devices, lock_dir, slots=slots) as index:
            yield f"cuda:{index}"
