"""What every stage script shares: argument parsing, and user errors as one line."""
from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import time
from contextlib import contextmanager

from .config import ParamsError, UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `dvc queue kill`, `kill`): unwinds like Ctrl-C, so the MLflow
    run is marked FAILED and the last checkpoint is kept."""


def _terminate(signum, frame):
    raise Terminated


# The environment, not the code, is at fault: one line naming the file and the fix.
_OS_FIXES = {
    errno.ENOSPC: "free some disk space and rerun",
    errno.EDQUOT: "free some space within your quota and rerun",
    errno.EROFS: "the file system is read-only: run from a writable copy",
    errno.EACCES: "make it writable (or run from a writable copy)",
    errno.EPERM: "make it writable, e.g. undo `chattr +i`",
    errno.EIO: "the device reports an I/O error: check the disk",
}


def run(main, stage: str) -> None:
    """Call main(); a UserError becomes `<stage>: error: <message>` and exit status 2, an
    OSError of the environment (full disk, read-only or immutable file) one line and exit
    status 1, Ctrl-C exit status 130, SIGTERM 143. Anything else is a bug and keeps its
    traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            main()
        except UserError as e:
            print(f"{stage}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except Terminated:
            print(f"{stage}: terminated (SIGTERM); a training's MLflow run is marked FAILED "
                  "and its checkpoint kept: rerun `dvc repro` to resume", file=sys.stderr)
            sys.exit(143)
        except KeyboardInterrupt:
            print(f"{stage}: interrupted; rerun `dvc repro` to resume from the last checkpoint",
                  file=sys.stderr)
            sys.exit(130)
        except OSError as e:
            if e.errno not in _OS_FIXES:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            print(f"{stage}: error: {e.strerror or e}{where}; {_OS_FIXES[e.errno]}",
                  file=sys.stderr)
            sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)  # for callers other than a stage's __main__


def available_bytes() -> int | None:
    """Memory available now, for refusing settings that cannot fit; None where psutil
    cannot tell."""
    import psutil

    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


@contextmanager
def heartbeat(stage: str, what: str, expected_s: float, every_s: float = 30.0):
    """A line every `every_s` seconds while a long computation runs (DVC users watch the
    terminal; one model's L_k can take minutes), with the expected time."""
    stop = threading.Event()
    tic = time.perf_counter()

    def beat():
        while not stop.wait(every_s):
            print(f"{stage}: {what}: still computing, {time.perf_counter() - tic:.0f}s so far "
                  f"(L_k and prior sampling alone: about {expected_s:.0f}s on 2 CPU cores)",
                  flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def model_names(params, names: list[str] | None) -> list[str]:
    if not names:
        return list(params.models)
    for n in names:
        if n not in params.models:
            raise ParamsError(f"{params.path}: models.{n}: no such model; "
                              f"defined: {', '.join(params.models)}")
    return names

