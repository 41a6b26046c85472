"""The team's servers, real and local: a throw-away PostgreSQL cluster (pytest-postgresql's executor, on the
installed binaries) and an MLflow tracking server on it with a proxied artifact store.

PostgreSQL refuses to run as root, and tests run as root here (and in CI): the executor gets a `pg_ctl` wrapper that
runs the real one as the `postgres` OS user (`runuser`), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def pg_ctl() -> str | None:
    """The newest installed PostgreSQL's pg_ctl (Debian keeps it off PATH, under /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    return found[-1] if found else shutil.which("pg_ctl")


def free_port() -> int:
    """A port nothing listens on (the OS's pick, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
            grace: float = 30) -> Iterator[subprocess.Popen]:
    """`cmd` as a process group of its own, its output in `log`; stopped on exit (SIGTERM, SIGKILL after `grace`
    seconds)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until `url` answers 200; fails with the end of `log` if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[object]:
    """A running PostgreSQL cluster on 127.0.0.1 (user `postgres`, trust auth), removed afterwards: the executor."""
    from pytest_postgresql.executors.proc import PostgreSQLExecutor

    real = pg_ctl()
    assert real, "no PostgreSQL: apt-get install postgresql (`make test` does)"
    base = Path(tempfile.mkdtemp(prefix="genlab-pg-"))
    executable = real
    if os.geteuid() == 0:  # as the postgres OS user, in a directory it owns
        shutil.chown(base, "postgres", "postgres")
        wrapper = base / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- "{real}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        executable = str(wrapper)
    proc = PostgreSQLExecutor(executable=executable, host="127.0.0.1", port=free_port(), datadir=str(base / "data"),
                              unixsocketdir=str(base), logfile=str(base / "postgres.log"), startparams="-w",
                              dbname="genlab", user="postgres")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on `backend_uri` with its artifacts proxied to `artifacts`; yields its http URI."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
           str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with started(cmd, log, env) as server:
        wait_http(f"{uri}/health", server, log, timeout=90)
        yield uri
