"""Atomic outputs: write to a temporary path beside the target, then rename.

A stage killed at any moment leaves either the old output or the new one, never half a
file; DVC and readers only ever see complete files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(files: list[str | Path], record: dict) -> str:
    """sha256 of the files' bytes and a JSON record, in order: binds a record (a model.json)
    to the files it describes (its weights), so that editing either is seen."""
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps(record, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _named(e: OSError, path: Path) -> OSError:
    """A write into an open file (a full disk) raises OSError without a file name; name the
    output, so the one-line error says which one failed."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or str(e), str(path))
    return e


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Yield a file object; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _named(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary folder; on success it takes the place of `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            # Two renames, not one: a folder cannot be replaced in place. The window in
            # which neither exists is two syscalls wide.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _named(e, path) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Lock:
    """A held lock file; leaving the block removes the file, then releases the lock."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        Path(self.path).unlink(missing_ok=True)
        os.close(self.fd)  # releases the flock


def exclusive_lock(path: str | Path) -> _Lock | None:
    """An exclusive lock on `path` (created if missing) for this process, or None when a
    live process holds it. The kernel releases it when the holder dies, even of SIGKILL,
    so a lock is never stale. Without fcntl (Windows) every call gets the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        return _Lock(path, os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # the previous holder may have removed the file between our open and our lock:
        # then we locked a file nobody else will see, and must lock the new one
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return _Lock(path, fd)
        except FileNotFoundError:
            pass
        os.close(fd)
