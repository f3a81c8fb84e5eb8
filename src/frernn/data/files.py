"""File operations on data and cache paths whose every failure is a one-line FrernnError naming
the path: reading, hashing, existence, scratch folders, writability probes and locks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from frernn.errors import FrernnError

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def reason(exc: OSError) -> str:
    """Why an OS call failed, in the system's words (``Permission denied``)."""
    return exc.strerror or one_line(exc)


@contextlib.contextmanager
def reading(origin: Path) -> Iterator[None]:
    """Turn a failure to read or decompress ``origin`` into a one-line FrernnError naming it:
    the system's reason when the OS refused, else corrupt or truncated content."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and the like: the content, not the OS
            raise FrernnError(f"{origin}: corrupt or truncated ({one_line(exc)})") from exc
        raise FrernnError(f"cannot read {exc.filename or origin}: {reason(exc)}") from exc
    except (EOFError, zlib.error, tarfile.TarError) as exc:
        raise FrernnError(f"{origin}: corrupt or truncated ({one_line(exc)})") from exc


@contextlib.contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Turn a failure to write ``dest`` (disk full, permissions) into a one-line FrernnError."""
    try:
        yield
    except OSError as exc:
        raise FrernnError(f"cannot write {dest}: {reason(exc)}") from exc


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a folder on the way that may not be searched is an error."""
    try:
        return path.is_file()
    except OSError as exc:
        raise FrernnError(f"cannot read {path}: {reason(exc)}") from exc


def md5(path: Path) -> str:
    """The md5 of the bytes of ``path``."""
    with reading(path), path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def copy_hashing(reader: BinaryIO, origin: Path, dest: Path) -> str:
    """Stream ``reader`` (the content of ``origin``) into ``dest``; return its md5."""
    digest = hashlib.md5()
    with writing(dest), dest.open("wb") as out:
        while True:
            with reading(origin):
                chunk = reader.read(1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
            out.write(chunk)


def scratch_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden working folder inside ``parent`` (same file system: moves are renames)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise FrernnError(f"cannot write to {parent}: {reason(exc)}") from exc


def why_not_writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder`` (made if missing), else the system's reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".frernn-probe-", dir=folder)
    except OSError as exc:
        return reason(exc)
    os.close(fd)
    os.unlink(probe)
    return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for other processes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
    except OSError as exc:
        raise FrernnError(f"cannot write {path}: {reason(exc)}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another process is building the same files)", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise FrernnError(f"cannot lock {path}: {reason(exc)}") from exc
    try:
        yield
    finally:
        os.close(fd)
