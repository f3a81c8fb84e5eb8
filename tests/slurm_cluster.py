"""Pytest fixture: a real one-node Slurm (munged, slurmctld, slurmd on localhost) for the tests.

The daemons run in the foreground as children of the test process, so teardown stops exactly
them. The config goes to /etc/slurm/slurm.conf (the compiled-in path: the slurm executor's
job step drops SLURM_* variables, SLURM_CONF included, before its nested ``srun``).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = SLURM_CONF.with_name("gres.conf")
FAKE_GPUS = 2
MARKER = "# frernn test cluster: written and removed by tests/slurm_cluster.py"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "srun")
READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster: its scratch directory (logs, state) and client environment."""

    root: Path
    env: dict[str, str]

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a client command against this cluster, failing the test on a non-zero exit."""
        proc = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc


def _which(name: str) -> str | None:
    """Absolute path of a Slurm or munge program (daemons live in /usr/sbin, often off PATH)."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _unavailable() -> str | None:
    """Why this machine cannot host the cluster, or None when it can."""
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurmctld slurmd munge)"
    if os.geteuid() != 0:
        return "the Slurm daemons need root to start (run the tests as root, as CI does)"
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.exists() and MARKER not in conf.read_text():
            return f"{conf} belongs to another Slurm installation; not overwriting it"
    return None


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_hardware() -> str:
    """This machine's CPU topology as ``slurmd -C`` reports it, with 90% of its memory."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, check=True)
    fields = dict(item.split("=", 1) for item in out.stdout.split()[1:] if "=" in item)
    fields.pop("UpTime", None)
    fields["RealMemory"] = str(int(fields["RealMemory"]) * 9 // 10)
    return " ".join(f"{key}={value}" for key, value in fields.items())


def _binary(name: str) -> str:
    """Absolute path of a program that ``_unavailable`` has checked."""
    found = _which(name)
    assert found, name
    return found


def slurm_conf_text(root: Path, munge_socket: Path) -> str:
    """A minimal slurm.conf: node ``localhost`` in a default partition ``debug`` and a second
    one ``other`` (to see partition choice at work); no accounting."""
    return "\n".join(
        [
            MARKER,
            "ClusterName=frernntest",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",
            "DefMemPerCPU=500",
            "GresTypes=gpu",
            f"NodeName=localhost {_node_hardware()} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "PartitionName=other Nodes=localhost Default=NO MaxTime=INFINITE State=UP",
            "",
        ]
    )


def gres_conf_text(root: Path) -> str:
    """Fake GPUs: character devices like /dev/null stand in for /dev/nvidia<k>, so Slurm
    allocates them and sets CUDA_VISIBLE_DEVICES as on a GPU node (nothing opens them)."""
    lines = [MARKER]
    for k in range(FAKE_GPUS):
        os.mknod(root / f"fakegpu{k}", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        lines.append(f"NodeName=localhost Name=gpu File={root / f'fakegpu{k}'}")
    return "\n".join(lines) + "\n"


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a daemon log, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until_idle(cluster: SlurmCluster, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Poll ``sinfo`` until the node is idle; fail with the daemon logs if it never gets there."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    state, dead = "", []
    while time.monotonic() < deadline:
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            break
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"],
            env=cluster.env,
            capture_output=True,
            text=True,
            check=False,
        )
        state = proc.stdout.strip() or proc.stderr.strip()
        if set(state.split()) == {"idle"}:
            return
        time.sleep(1)
    daemon_logs = sorted([*cluster.root.glob("*.log"), *cluster.root.glob("*.out")])
    logs = "\n".join(f"--- {log.name}\n{_tail(log)}" for log in daemon_logs)
    pytest.fail(f"Slurm node never became idle (last sinfo: {state!r}; exited: {dead})\n{logs}")


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop the daemons this fixture started, newest first: SIGTERM, then SIGKILL after 30 s."""
    for proc in reversed(list(procs.values())):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _configure(root: Path) -> dict[str, list[str]]:
    """Write the munge key and the Slurm configs; return each daemon's foreground command."""
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    munge = root / "munge"
    munge.chmod(0o711)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf_text(root, munge / "munge.socket"))
    GRES_CONF.write_text(gres_conf_text(root))
    return {
        "munged": [
            _binary("munged"),
            "--foreground",
            "--force",
            f"--socket={munge / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        "slurmctld": [_binary("slurmctld"), "-D", "-c", "-f", str(SLURM_CONF)],
        "slurmd": [_binary("slurmd"), "-D", "-N", "localhost", "-f", str(SLURM_CONF)],
    }


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on localhost; yield the cluster; stop exactly them."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests, but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o755)
    cluster = SlurmCluster(root=root, env={**os.environ, "SLURM_CONF": str(SLURM_CONF)})
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in _configure(root).items():
            with (root / f"{name}.out").open("wb") as out:
                procs[name] = subprocess.Popen(
                    cmd,
                    env=cluster.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if name == "munged":
                _wait_for(root / "munge" / "munge.socket", procs[name], root / "munged.out")
        _wait_until_idle(cluster, procs)
        yield cluster
        subprocess.run(["scancel", "--full", "--user=root"], env=cluster.env, check=False)
    finally:
        _stop(procs)
        SLURM_CONF.unlink(missing_ok=True)
        GRES_CONF.unlink(missing_ok=True)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until a daemon has created ``path`` (its socket); fail with its log if it dies."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared (daemon exit {proc.poll()}):\n{_tail(log)}")
        time.sleep(0.1)
