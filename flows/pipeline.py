"""The genlab pipeline as a Prefect flow: the same DAG as `dvc repro`, run through DVC.

The stage order comes from dvc.yaml through DVC's own API, and each stage runs as
`dvc repro --single-item <stage>`, so the flow and `dvc repro` share the lock, the cache and the
skip logic. Each stage is a Prefect task with retries. With a default DVC remote (a team's shared store)
the flow pulls the outputs other machines pushed before the stages run, and pushes its own after. One
MLflow run per flow run is the parent of the stage runs (its id reaches them through
GENLAB_PARENT_RUN_ID). The comparison table is published as Prefect artifacts.

    python flows/pipeline.py                              # run once
    python flows/pipeline.py --serve --cron "0 3 * * *"  # serve on a schedule

Serving needs a Prefect server with its scheduler (an ephemeral one schedules nothing): the one
PREFECT_API_URL names, or else a local `prefect server start` that --serve runs as a child process
on 127.0.0.1 for as long as it serves.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

import httpx
import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from genlab.preflight import unreachable
from genlab.tracking import parent_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc and the genlab CLI live here


def stage_order(root: Path) -> list[str]:
    """dvc.yaml's stages in dependency order (ties broken by their order in dvc.yaml)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = [s for s in graph.nodes if isinstance(s, PipelineStage)]
        position = {s: i for i, s in enumerate(stages)}
        ordered = nx.lexicographical_topological_sort(graph.subgraph(stages).reverse(),
                                                      key=lambda s: position[s])
        return [s.name for s in ordered]


def output_tail(proc: subprocess.CompletedProcess, lines: int = 20) -> str:
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def sh(args: list[str], root: str | Path, **env: str) -> subprocess.CompletedProcess:
    """`args` in `root`, the venv's bin first on PATH (dvc, git), `env` added; a failure raises RuntimeError with the
    command, its exit status and the last lines of its output."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    proc = subprocess.run(args, cwd=root, env=full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}) in {root}:\n{output_tail(proc)}")
    return proc


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc repro {stage}")
def run_stage(stage: str, root: str, parent_run_id: str) -> str:
    """`dvc repro --single-item <stage>`; returns "ran" or "skipped" (DVC found it up to date)."""
    proc = sh(["dvc", "repro", "--single-item", stage], root, GENLAB_PARENT_RUN_ID=parent_run_id)
    status = "skipped" if "didn't change, skipping" in proc.stdout else "ran"
    get_run_logger().info("stage %s %s\n%s", stage, status, output_tail(proc))
    return status


def default_remote(root: str) -> str | None:
    """The project's default DVC remote, or None (`dvc remote default` prints nothing or fails without one)."""
    proc = subprocess.run([str(BIN / "dvc"), "remote", "default"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc {command}")
def dvc_sync(command: str, root: str) -> None:
    """With a default DVC remote (the team's shared store): `pull` the outputs other machines pushed before the
    stages run, so only what changed re-runs here; `push` this run's outputs after, for the others."""
    proc = sh(["dvc", command] + (["--allow-missing"] if command == "pull" else []), root)
    get_run_logger().info("dvc %s: %s", command, (proc.stdout.strip().splitlines() or ["done"])[-1])


def publish_comparison(root: Path) -> None:
    md, table = root / "reports" / "comparison.md", root / "reports" / "comparison.csv"
    if not table.is_file():
        return
    with table.open() as f:
        rows = list(csv.DictReader(f))
    create_table_artifact(key="genlab-comparison", table=rows, description="FID/KID/precision/recall by family")
    report = root / "reports" / "report.html"
    create_markdown_artifact(key="genlab-comparison-report",
                             markdown=md.read_text() + f"\n\nFull report (self-contained HTML): `{report}`\n",
                             description="genlab comparison report")
    if report.is_file():
        create_link_artifact(key="genlab-html-report", link=report.resolve().as_uri(), link_text="genlab report",
                             description="self-contained HTML report of this run")


@flow(name="genlab-pipeline")
def pipeline(root: str = str(ROOT)) -> dict[str, str]:
    """Run every dvc.yaml stage in order; returns {stage: "ran" | "skipped"}."""
    logger = get_run_logger()
    order = stage_order(Path(root))
    logger.info("stages (from dvc.yaml): %s", ", ".join(order))
    results: dict[str, str] = {}
    remote = default_remote(root)
    if remote:
        dvc_sync("pull", root)
    with parent_run(Path(root), "prefect: genlab-pipeline", {"genlab.orchestrator": "prefect"}) as parent_id:
        for stage in order:
            results[stage] = run_stage(stage, root, parent_id)
    if remote:
        dvc_sync("push", root)
    publish_comparison(Path(root))
    return results


def fail(message: str) -> NoReturn:
    print(f"genlab: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def say(message: str) -> None:
    print(f"genlab: {message}", flush=True)


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens on it on 127.0.0.1, else a port the OS picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_reachable(api_url: str, timeout: float = 5.0) -> None:
    """Any HTTP answer from `<api_url>/health` will do (auth is Prefect's business); no answer stops here."""
    reason = unreachable(api_url, timeout)
    if reason is not None:
        fail(f"PREFECT_API_URL {api_url} is unreachable ({reason}); "
             "start that server, or unset PREFECT_API_URL to serve with a local one")


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the child's process group (it leads one), SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave the server behind
    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    proc.wait()


@contextmanager
def local_server(port: int, timeout: float) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1:`port` as a child process; yields its API URL, stops it on exit."""
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    log = home / "genlab-server.log"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    with log.open("w") as out:  # its own session: Ctrl-C reaches serve, which then stops the server in order
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                last = " ".join(log.read_text().strip().split("\n\n")[-1].split()) or "no output"  # unwrapped
                fail(f"`prefect server start` exited with status {proc.returncode}: {last} (log: {log})")
            try:
                if httpx.get(f"{base}/api/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                fail(f"the local Prefect server did not answer at {base}/api/health within {timeout:.0f} s "
                     f"(log: {log})")
            time.sleep(0.5)
        say(f"Prefect server started at {base} (UI; API {base}/api; PREFECT_HOME {home}; log {log})")
        yield f"{base}/api"
    finally:
        stop(proc)
    say("Prefect server stopped")


def serve(name: str, cron: str, port: int | None, server_timeout: float) -> None:
    """Serve `pipeline` on `cron` against PREFECT_API_URL when set, else against a local child server."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # until serve installs its own handler: unwind, so the server is stopped

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    # one run at a time (runs share DVC's lock); a run that comes due meanwhile starts when this one ends
    deployment = {"name": name, "cron": cron, "parameters": {"root": str(ROOT)}, "limit": 1}
    if (api_url := PREFECT_API_URL.value()):
        check_reachable(api_url)
        say(f"serving on the Prefect server at {api_url} (PREFECT_API_URL)")
        pipeline.serve(**deployment)
        return
    if port is None and (port := free_port(4200)) != 4200:
        say(f"port 4200 is taken (another Prefect server? PREFECT_API_URL=http://127.0.0.1:4200/api serves on it); "
            f"starting a local server on port {port}")
    with (local_server(port, server_timeout) as api_url,
          temporary_settings(updates={PREFECT_API_URL: api_url})):  # this process and the flow runs it starts
        pipeline.serve(**deployment)


@contextmanager
def ephemeral_startup_timeout(seconds: float) -> Iterator[None]:
    """Wait `seconds` for the ephemeral server a run without PREFECT_API_URL starts, unless the user set Prefect's own
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: Prefect's default, 20 s, was too short on a 2-core machine
    running 4.6x slower than its usual (a large matmul at 36 GFLOP/s, not 169), and the run died in a traceback."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: int(seconds)}):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run or serve the genlab Prefect flow.")
    parser.add_argument("--serve", action="store_true", help="serve the flow as a scheduled deployment")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule when serving (default: %(default)s)")
    parser.add_argument("--name", default="genlab-nightly", help="deployment name when serving")
    parser.add_argument("--port", type=int, default=None,
                        help="port of the local Prefect server when PREFECT_API_URL is unset (default: 4200 if free)")
    parser.add_argument("--server-timeout", type=float, default=120.0,
                        help="seconds to wait for the local Prefect server (--serve) or the ephemeral one (a run "
                             "without PREFECT_API_URL) to answer (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.serve:
        with suppress(KeyboardInterrupt):
            serve(args.name, args.cron, args.port, args.server_timeout)
    else:
        with ephemeral_startup_timeout(args.server_timeout):
            print(pipeline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
