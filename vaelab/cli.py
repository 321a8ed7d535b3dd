"""What every stage script shares: argument parsing, and user errors as one line."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .config import ParamsError, UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `dvc queue kill`, `kill`): unwinds like Ctrl-C, so the MLflow
    run is marked FAILED and the last checkpoint is kept."""


class Orphaned(Terminated):
    """The `dvc` process that started this stage died (`kill -TERM` of dvc alone, what
    `timeout dvc repro` sends): stop as on SIGTERM rather than go on writing into the repo
    with nobody to record the result."""


# A stop (SIGTERM, Ctrl-C, the dvc parent gone) raised in the middle of a write to MLflow's
# sqlite store can leave that write's transaction open: the database then stays locked, the
# run cannot be marked FAILED ("database is locked") and stays RUNNING. Writes to the store
# hold such a stop until they end (`stops_held`); the signal handlers of `run` defer it.
_held = 0
_pending: list[BaseException] = []


@contextmanager
def stops_held():
    """A stop that arrives inside the block is raised when the block ends. Only the main
    thread counts: Python runs signal handlers there, and other threads' writes (MLflow's
    system metrics) cannot be interrupted by them."""
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            stop = _pending.pop()
            _pending.clear()
            raise stop


def _stop(exc: BaseException) -> None:
    """Raise `exc` now, or when the store write that is under way ends."""
    if _held:
        _pending.append(exc)
        return
    raise exc


# The shells DVC may run a stage's command through: with SHELL unset DVC uses /bin/sh, and
# dash (Debian's /bin/sh) forks the command rather than exec it, so the stage's parent is
# then the shell, which outlives a killed dvc.
_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "busybox"})


def _runner():
    """The process that ran this one: the parent, or, when that is a shell, the shell's own
    nearest non-shell ancestor (dvc)."""
    import psutil

    proc = psutil.Process().parent()
    while proc is not None and proc.name() in _SHELLS:
        proc = proc.parent()
    return proc


def watch_parent(on_death, interval: float = 1.0):
    """Call `on_death()` from a daemon thread once the process that ran this one is gone
    (dvc, also through a `sh -c` in between), unless the returned event is set first.
    Polling works on every POSIX system, unlike Linux's PR_SET_PDEATHSIG, which also fires
    when merely the parent's thread that started us ends, and which a shell in between hides."""
    import threading

    import psutil

    runner, stop = _runner(), threading.Event()

    def gone() -> bool:
        try:  # is_running() compares start times, so a reused pid does not pass for it
            return not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def watch():
        while runner is not None and not stop.wait(interval):  # None: nothing to watch
            if gone():
                on_death()
                return

    threading.Thread(target=watch, name="watch-dvc-parent", daemon=True).start()
    return stop


# The environment, not the code, is at fault: one line naming the file and the fix.
_OS_FIXES = {
    errno.ENOSPC: "free some disk space and rerun",
    errno.EDQUOT: "free some space within your quota and rerun",
    errno.EROFS: "the file system is read-only: run from a writable copy",
    errno.EACCES: "make it writable (or run from a writable copy)",
    errno.EPERM: "make it writable, e.g. undo `chattr +i`",
    errno.EIO: "the device reports an I/O error: check the disk",
}


def restore_hint(dvc_yaml: str | Path = "dvc.yaml") -> str:
    """How to get back the outputs DVC removed before running this stage, when DVC runs it
    in the user's workspace (DVC_STAGE set; not a `--temp` or queued experiment, which runs
    in a copy and leaves the workspace alone): `dvc checkout <stage>` for the cached outs,
    `git checkout -- <files>` for the git-kept metrics (dvc.yaml's `cache: false`)."""
    stage = os.environ.get("DVC_STAGE")
    root = os.environ.get("DVC_ROOT")
    if not stage or not root or Path(root).resolve() != Path.cwd().resolve():
        return ""
    name, _, key = stage.partition("@")
    try:
        import yaml

        spec = yaml.safe_load(Path(dvc_yaml).read_text())["stages"][name]
    except Exception:  # noqa: BLE001 - only a hint: never hide the error being reported
        return f"; DVC removed this stage's previous outputs: `dvc checkout {stage}` restores them"
    spec = spec.get("do", spec)
    git = []
    for out in [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
        if isinstance(out, dict):
            [(path, opts)] = out.items()
            if (opts or {}).get("cache") is False:
                git.append(path.replace("${key}", key))
    return (f"; DVC removed this stage's previous outputs: `dvc checkout {stage}`"
            + (f" and `git checkout -- {' '.join(git)}` restore them" if git else " restores them"))


@contextmanager
def _stops():
    """SIGTERM, Ctrl-C and the death of the dvc process that ran this stage raise
    Terminated, KeyboardInterrupt and Orphaned in the main thread, held while the MLflow
    store is written (`stops_held`); the previous handlers come back afterwards."""
    orphaned = []

    def terminate(signum, frame):
        _stop(Orphaned() if orphaned else Terminated())

    def interrupt(signum, frame):
        _stop(KeyboardInterrupt())

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:  # e.g. under nohup or `&`: stay deaf to Ctrl-C
        signal.signal(signal.SIGINT, interrupt)
    watcher = None
    if os.environ.get("DVC_STAGE"):  # not for a script run by hand, e.g. under nohup
        watcher = watch_parent(lambda: (orphaned.append(True),
                                        os.kill(os.getpid(), signal.SIGTERM)))
    try:
        yield
    finally:
        if watcher is not None:
            watcher.set()
        signal.signal(signal.SIGTERM, previous)  # for callers other than a stage's __main__
        if previous_int is not None:  # None: set from outside Python, not ours to restore
            signal.signal(signal.SIGINT, previous_int)


def run(main, stage: str) -> None:
    """Call main(); a UserError becomes `<stage>: error: <message>` and exit status 2, an
    OSError of the environment (full disk, read-only or immutable file) one line and exit
    status 1, Ctrl-C exit status 130, SIGTERM 143 (also when DVC's process that started the
    stage dies). Anything else is a bug and keeps its traceback. Under `dvc repro`, the
    line also says how to get back the outputs DVC removed before the stage ran."""
    restore = restore_hint()
    with _stops():
        try:
            main()
        except UserError as e:
            print(f"{stage}: error: {e}{restore}", file=sys.stderr)
            sys.exit(2)
        except Orphaned:
            print(f"{stage}: stopped: the dvc process that ran it is gone; a training's MLflow "
                  "run is marked FAILED and its checkpoint kept: rerun `dvc repro` to resume"
                  + restore, file=sys.stderr)
            sys.exit(143)
        except Terminated:
            print(f"{stage}: terminated (SIGTERM); a training's MLflow run is marked FAILED "
                  "and its checkpoint kept: rerun `dvc repro` to resume" + restore,
                  file=sys.stderr)
            sys.exit(143)
        except KeyboardInterrupt:
            print(f"{stage}: interrupted; rerun `dvc repro` to resume from the last checkpoint"
                  + restore, file=sys.stderr)
            sys.exit(130)
        except OSError as e:
            if e.errno not in _OS_FIXES:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            print(f"{stage}: error: {e.strerror or e}{where}; {_OS_FIXES[e.errno]}{restore}",
                  file=sys.stderr)
            sys.exit(1)
        except Exception:
            if not restore:
                raise
            import traceback

            traceback.print_exc()  # a bug: its traceback, then how to get the outputs back
            print(f"{stage}: error: unexpected failure{restore}", file=sys.stderr)
            sys.exit(1)


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

