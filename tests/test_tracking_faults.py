"""MLflow unreachable: a stage stops within seconds, before any work, with one line naming the URI.

A closed port (connection refused) and a dead server (accepts connections, never answers) must both fail
fast; MLflow's own client would retry for minutes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from genlab import tracking
from genlab.errors import GenlabError
from genlab.preflight import HTTP_DEFAULTS, PREFLIGHT_TIMEOUT_S, check_tracking
from tests.conftest import BIN, hermetic_env, tiny_params
from tests.servers import free_port

LIMIT_S = 10.0


@pytest.fixture()
def dead_server() -> Iterator[str]:
    """A thread that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture()
def http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the HTTP bounds the preflight sets in this process."""
    for key in HTTP_DEFAULTS:
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)


def run_stage(tmp_path: Path, uri: str, stage: str) -> tuple[subprocess.CompletedProcess, float, Path]:
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = {**hermetic_env(tmp_path), "MLFLOW_TRACKING_URI": uri}
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "genlab"), stage], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, time.perf_counter() - start, root


def assert_one_line_failure(proc: subprocess.CompletedProcess, elapsed: float, root: Path, uri: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("genlab: error: ") and uri in lines[0], proc.stderr[-2000:]
    assert "unreachable" in lines[0] and "Traceback" not in proc.stderr
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"
    assert sorted(p.name for p in root.iterdir()) == ["params.yaml"]  # no data, models, metrics or store


@pytest.mark.parametrize("stage", ["train_evaluator", "prepare"])
def test_closed_port_fails_fast_with_one_line(tmp_path: Path, stage: str) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    proc, elapsed, root = run_stage(tmp_path, uri, stage)
    print(f"closed port, genlab {stage}: exit {proc.returncode} after {elapsed:.2f} s")
    assert_one_line_failure(proc, elapsed, root, uri)
    assert "Connection refused" in proc.stderr


def test_dead_server_fails_fast_with_one_line(tmp_path: Path, dead_server: str) -> None:
    proc, elapsed, root = run_stage(tmp_path, dead_server, "train_evaluator")
    print(f"dead server, genlab train_evaluator: exit {proc.returncode} after {elapsed:.2f} s")
    assert_one_line_failure(proc, elapsed, root, dead_server)
    assert f"no answer within {PREFLIGHT_TIMEOUT_S:g} s" in proc.stderr


def test_flow_parent_run_fails_fast_before_creating_a_run(tmp_path: Path, dead_server: str, http_env: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prefect flow's parent run goes through `tracking.setup`: the same preflight, the same bounds."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_server)
    start = time.perf_counter()
    with pytest.raises(GenlabError, match=f"{dead_server} is unreachable"), tracking.parent_run(tmp_path, "p", {}):
        pytest.fail("the parent run must not start")
    assert time.perf_counter() - start < PREFLIGHT_TIMEOUT_S + 2
    # the stage processes the flow starts inherit bounded HTTP retries and timeouts
    assert {k: os.environ[k] for k in HTTP_DEFAULTS} == HTTP_DEFAULTS


def test_user_settings_for_the_http_client_win(tmp_path: Path, http_env: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    check_tracking(tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_any_http_answer_counts_as_reachable(tmp_path: Path, http_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert check_tracking(tmp_path) == uri
    finally:
        server.shutdown()
        server.server_close()


def test_local_store_directory_is_created_or_refused(tmp_path: Path, http_env: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new' / 'dir' / 'mlflow.db'}")
    check_tracking(tmp_path)
    assert (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("not a directory")
    blocked = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", blocked)
    with pytest.raises(GenlabError, match=f"MLflow tracking store {blocked}: cannot create"):
        check_tracking(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default store, <root>/mlflow.db
    assert check_tracking(tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
