"""Real servers for the tests: a throwaway PostgreSQL cluster and an `mlflow server`.

Both are the team setup of docs/team.md, started on this machine only (a unix socket,
127.0.0.1) and always stopped.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from repo_copy import env_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    """Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


@contextmanager
def postgres():
    """A fresh PostgreSQL cluster listening on a unix socket only (no TCP port to collide
    with); yields the SQLAlchemy URI of its empty database `mlflow`. PostgreSQL refuses to
    run as root, so as root the cluster belongs to Debian's `postgres` user. Skips the test,
    saying why, where PostgreSQL is missing or cannot start."""
    initdb, pg_ctl, createdb = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("createdb")
    if not (initdb and pg_ctl and createdb):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql; "
                    ".ci/run installs it)")
    as_user = {}
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    # /tmp, not pytest's tmp_path: the socket path must stay under 107 bytes, and the
    # postgres user cannot enter root's 0700 pytest folders
    home = Path(tempfile.mkdtemp(prefix="vaelab-pg-"))
    if as_user:
        os.chown(home, as_user["user"], as_user["group"])
    data, log, port = home / "data", home / "server.log", 5432

    def pg(*cmd, timeout=120):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=home,
                              env={**os.environ, "LC_ALL": "C"}, **as_user)

    try:
        out = pg(initdb, "-D", str(data), "-U", "mlflow", "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        if out.returncode != 0:
            pytest.skip(f"PostgreSQL's initdb failed: {(out.stderr or out.stdout).strip()[-300:]}")
        out = pg(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                 f"-k {home} -p {port} -c listen_addresses='' -c fsync=off", "start")
        if out.returncode != 0:
            tail = log.read_text()[-300:] if log.exists() else out.stderr[-300:]
            pytest.skip(f"PostgreSQL did not start: {tail.strip()}")
        try:
            out = pg(createdb, "-h", str(home), "-p", str(port),
                     "-U", "mlflow", "mlflow")
            assert out.returncode == 0, out.stderr
            yield f"postgresql://mlflow@/mlflow?host={home}&port={port}"
        finally:
            pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def mlflow_server(folder: Path, backend_uri: str, workers: int = 1):
    """A real `mlflow server` on 127.0.0.1 with artifacts proxied by the server into
    `folder`/artifacts (the team form of docs/team.md). Yields (uri, stop); always killed."""
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers)],
        # cwd: the server writes files of its own there (a run from the repo root left an
        # empty mlflow.db beside the user's store)
        stdout=log, stderr=subprocess.STDOUT, env=env_for(), start_new_session=True,
        cwd=folder)
    uri = f"http://127.0.0.1:{port}"

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn workers
            proc.wait(timeout=30)

    try:
        deadline = time.monotonic() + 180  # a new PostgreSQL store runs its migrations first
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("mlflow server did not start: "
                                         + (folder / "server.log").read_text()[-2000:])
                time.sleep(0.3)
        yield uri, stop
    finally:
        stop()
        log.close()
