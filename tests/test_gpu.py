"""GPU binding with fake device counts: concurrent claimants, waiting, release on death, errors."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from frernn import gpu
from frernn.errors import FrernnError

HOLDER = """
import sys
from pathlib import Path
from frernn.gpu import claim_gpu
with claim_gpu(int(sys.argv[1]), Path(sys.argv[2]), poll_s=0.02) as index:
    print(index, flush=True)
    sys.stdin.read()
"""


def _holder(n_devices: int, lock_dir: Path, **env: str) -> subprocess.Popen[str]:
    """A process that claims a GPU, prints its index and holds it until its stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(n_devices), str(lock_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _claimed(proc: subprocess.Popen[str], timeout: float) -> int | None:
    """The index a holder printed within ``timeout`` seconds, or None if it printed nothing."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return int(proc.stdout.readline()) if ready else None


def _locked(path: Path) -> bool:
    """Whether some other open file description holds an exclusive flock on ``path``."""
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Holder processes started by a test, killed afterwards whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_processes_get_distinct_gpus_and_a_surplus_one_waits(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Four processes race for three GPUs: three get 0, 1, 2; the fourth waits for a release."""
    procs.extend(_holder(3, tmp_path) for _ in range(4))
    held: dict[int, subprocess.Popen[str]] = {}
    while len(held) < 3:
        ready, _, _ = select.select([p.stdout for p in procs if p not in held.values()], [], [], 60)
        assert ready, f"only {sorted(held)} claimed within 60 s"
        proc = next(p for p in procs if p.stdout is ready[0])
        held[int(ready[0].readline())] = proc
    assert sorted(held) == [0, 1, 2]
    (waiting,) = (p for p in procs if p not in held.values())
    assert _claimed(waiting, timeout=1) is None
    assert held[1].stdin is not None
    held[1].stdin.close()
    assert held[1].wait(timeout=30) == 0
    assert _claimed(waiting, timeout=30) == 1


def test_threads_claiming_at_once_get_distinct_gpus(tmp_path: Path) -> None:
    """Four threads of one process holding at the same time get four different devices."""
    barrier = threading.Barrier(4)
    got: list[int] = []

    def worker() -> None:
        with gpu.claim_gpu(4, tmp_path, poll_s=0.01) as index:
            got.append(index)
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == [0, 1, 2, 3]
    assert not any(_locked(tmp_path / f"gpu{k}.lock") for k in range(4))


def test_lock_of_a_killed_holder_is_released(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL leaves no chance to clean up, yet the GPU becomes free again."""
    holder = _holder(1, tmp_path)
    procs.append(holder)
    assert _claimed(holder, timeout=60) == 0
    assert _locked(tmp_path / "gpu0.lock")
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert not _locked(tmp_path / "gpu0.lock")
    with gpu.claim_gpu(1, tmp_path, poll_s=0.01) as index:
        assert index == 0
        assert _locked(tmp_path / "gpu0.lock")


def test_locks_follow_physical_ids_from_cuda_visible_devices(
    tmp_path: Path, procs: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job seeing only GPU 2 and one seeing GPUs 2,3 do not both take physical GPU 2."""
    holder = _holder(1, tmp_path, CUDA_VISIBLE_DEVICES="2")
    procs.append(holder)
    assert _claimed(holder, timeout=60) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpu.claim_gpu(2, tmp_path, poll_s=0.01) as index:
        assert index == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu2.lock", "gpu3.lock"]


def test_lock_names_sanitise_uuids_and_fall_back_to_indices() -> None:
    """UUID entries become safe file names; too few entries mean plain indices."""
    env = {"CUDA_VISIBLE_DEVICES": "GPU-8a/1,MIG-3"}
    assert gpu.lock_names(2, env) == ["gpuGPU-8a_1.lock", "gpuMIG-3.lock"]
    assert gpu.lock_names(3, env) == ["gpu0.lock", "gpu1.lock", "gpu2.lock"]
    assert gpu.lock_names(2, {}) == ["gpu0.lock", "gpu1.lock"]


def test_claim_without_devices_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FrernnError, match="0 CUDA devices"):
        with gpu.claim_gpu(0, tmp_path):
            pass


def test_resolve_device_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` falls back to the CPU; asking for CUDA without a GPU is a one-line error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.resolve_device("auto") == "cpu"
    assert gpu.resolve_device("cpu") == "cpu"
    with pytest.raises(FrernnError, match="^CUDA requested but no GPU is visible") as err:
        gpu.resolve_device("cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(FrernnError, match="unknown device 'gpu'"):
        gpu.resolve_device("gpu")


def test_resolve_device_with_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.resolve_device("auto") == "cuda"
    assert gpu.resolve_device("cuda") == "cuda"
    assert gpu.resolve_device("cpu") == "cpu"


@pytest.fixture
def two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports two CUDA devices; no Slurm allocation, no CUDA_VISIBLE_DEVICES."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for var in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("two_fake_gpus")
def test_job_device_binds_local_jobs_to_distinct_gpus(tmp_path: Path) -> None:
    with gpu.job_device("auto", tmp_path) as first, gpu.job_device("cuda", tmp_path) as second:
        assert (first, second) == ("cuda:0", "cuda:1")
        assert _locked(tmp_path / "gpu0.lock") and _locked(tmp_path / "gpu1.lock")
    with gpu.job_device("cpu", tmp_path) as device:
        assert device == "cpu"


@pytest.mark.usefixtures("two_fake_gpus")
def test_job_device_in_a_slurm_allocation_takes_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm already isolated the allocated GPU: device 0, no lock file."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu.job_device("cuda", tmp_path / "locks") as device:
        assert device == "cuda:0"
    assert not (tmp_path / "locks").exists()


def test_default_lock_dir_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path))
    assert gpu.default_lock_dir() == tmp_path
    monkeypatch.delenv(gpu.LOCK_DIR_ENV)
    assert gpu.default_lock_dir().name == f"frernn-gpu-{os.getuid()}"


def test_slot_locks_spread_jobs_over_gpus_before_sharing_one() -> None:
    """Slot 0 of every GPU comes first; slot 0 keeps the plain lock of a GPU to itself."""
    assert gpu.slot_locks(2, 3, {}) == [
        (0, "gpu0.lock"),
        (1, "gpu1.lock"),
        (0, "gpu0.slot1.lock"),
        (1, "gpu1.slot1.lock"),
        (0, "gpu0.slot2.lock"),
        (1, "gpu1.slot2.lock"),
    ]
    assert gpu.slot_locks(1, 2, {"CUDA_VISIBLE_DEVICES": "3"}) == [
        (0, "gpu3.lock"),
        (0, "gpu3.slot1.lock"),
    ]


def test_k_slots_let_k_jobs_share_a_gpu_and_the_next_one_wait(tmp_path: Path) -> None:
    """Two GPUs x two slots: four holders at once (two per GPU); a fifth waits for a release."""
    release, got, fifth = threading.Event(), [], []
    four = threading.Barrier(5)

    def holder() -> None:
        with gpu.claim_gpu(2, tmp_path, poll_s=0.01, slots=2) as index:
            got.append(index)
            four.wait(timeout=30)
            release.wait(timeout=30)

    def late() -> None:
        with gpu.claim_gpu(2, tmp_path, poll_s=0.01, slots=2) as index:
            fifth.append(index)

    threads = [threading.Thread(target=holder) for _ in range(4)]
    for t in threads:
        t.start()
    four.wait(timeout=30)
    assert sorted(got) == [0, 0, 1, 1]
    waiting = threading.Thread(target=late)
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive() and fifth == []
    release.set()
    waiting.join(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert fifth in ([0], [1])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gpu0.lock", "gpu0.slot1.lock", "gpu1.lock", "gpu1.slot1.lock"]


@pytest.mark.usefixtures("two_fake_gpus")
def test_job_device_takes_the_slot_count_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FRERNN_GPU_SLOTS=2 (set by the workflow's gpu_slots): four local jobs on two GPUs."""
    monkeypatch.setenv(gpu.SLOTS_ENV, "2")
    with (
        gpu.job_device("cuda", tmp_path) as a,
        gpu.job_device("cuda", tmp_path) as b,
        gpu.job_device("cuda", tmp_path) as c,
        gpu.job_device("cuda", tmp_path) as d,
    ):
        assert (a, b, c, d) == ("cuda:0", "cuda:1", "cuda:0", "cuda:1")
        assert _locked(tmp_path / "gpu1.slot1.lock")
    monkeypatch.setenv(gpu.SLOTS_ENV, "0")
    with pytest.raises(FrernnError, match="FRERNN_GPU_SLOTS='0': expected a whole number"):
        with gpu.job_device("cuda", tmp_path):
            pass
    monkeypatch.delenv(gpu.SLOTS_ENV)
    assert gpu.slots_per_gpu() == 1
