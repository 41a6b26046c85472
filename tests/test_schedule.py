"""The scheduled path: `flows/pipeline.py --serve` starts its own Prefect server (no PREFECT_API_URL),
the server's scheduler creates a run from the cron schedule, the served runner runs it against the
project, and stopping serve leaves no process behind."""

from __future__ import annotations

import datetime
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import REPO, hermetic_env
from tests.servers import free_port

DEPLOYMENT = "genlab-schedule-test"
RUN_DEADLINE_S = 240  # server start-up + the next minute boundary + the runner's poll + a flow run of skips


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text().splitlines()[-n:])


def wait_for_logs(client: SyncPrefectClient, run: FlowRun, last: str, deadline_s: float = 60) -> list[str]:
    """The run's log messages once one starts with `last` (bounded). The flow's process sends its logs in
    batches from a background worker, so a run can read Completed before its last lines are stored; CI saw it."""
    start = time.monotonic()
    while True:
        logs = [e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
        if any(m.startswith(last) for m in logs) or time.monotonic() - start > deadline_s:
            return logs
        time.sleep(1)


def wait_for_scheduled_run(client: SyncPrefectClient, serve: subprocess.Popen, log: Path, start: float) -> FlowRun:
    """The first flow run of the deployment that the schedule created, once it is final (bounded)."""
    deployment = DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT]))
    while True:
        assert serve.poll() is None, f"serve exited ({serve.returncode}):\n{tail(log)}"
        assert time.monotonic() - start < RUN_DEADLINE_S, f"no scheduled run completed in time:\n{tail(log)}"
        if "is being served" in log.read_text():
            runs = [r for r in client.read_flow_runs(deployment_filter=deployment) if r.auto_scheduled]
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if final:
                return min(final, key=lambda r: r.expected_start_time)
        time.sleep(2)


@pytest.mark.slow  # 124 s: up to a minute to the next cron boundary, then the flow
def test_cron_schedule_triggers_a_completed_run(repro: tuple[Path, dict[str, str], str], tmp_path: Path) -> None:
    root, env = repro[0], repro[1]
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**env,
           "PREFECT_HOME": str(tmp_path / "prefect"),  # a fresh server database
           # the flow's MLflow parent run goes to a store of its own: the shared project's store stays as
           # test_pipeline.py expects it
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           # the server's scheduler looks for new deployments every 5 s instead of 60, the runner polls every 2 s
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "serve.log"
    start = time.monotonic()
    with log.open("w") as out:  # the test project's own copy of the flow: its ROOT is the project
        serve = subprocess.Popen([sys.executable, "flows/pipeline.py", "--serve", "--cron", "* * * * *",
                                  "--name", DEPLOYMENT, "--port", str(port)],
                                 cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            run = wait_for_scheduled_run(client, serve, log, start)
            states = client.read_flow_run_states(run.id)
            logs = wait_for_logs(client, run, "stage evaluate ")
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["genlab-comparison"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            deployment = client.read_deployment(run.deployment_id)
        elapsed = time.monotonic() - start
        print(f"scheduled run {run.name} completed {elapsed:.0f} s after serve started")

        # served by a server that --serve started itself, not an ephemeral one that schedules nothing
        text = log.read_text()
        assert f"Prefect server started at http://127.0.0.1:{port}" in text and "Cannot schedule" not in text
        # created by the server's scheduler from the deployment's cron schedule (a manual run is neither
        # auto-scheduled nor created by a schedule), at a minute boundary, and Scheduled before it ran
        assert run.state.is_completed(), f"{run.state}\n{tail(log)}"
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "* * * * *"
        assert run.auto_scheduled and run.created_by.type == "SCHEDULE" and run.created_by.id == schedule.id
        assert run.expected_start_time.second == 0 and run.expected_start_time.microsecond == 0
        assert states[0].is_scheduled() and states[0].state_details.scheduled_time == run.expected_start_time
        assert run.start_time >= run.expected_start_time - datetime.timedelta(seconds=1)
        # it ran the pipeline on the test project (up to date: every stage re-checked, skipped by DVC)
        assert run.parameters == {"root": str(root)}
        assert any(m.startswith("stages (from dvc.yaml): prepare") for m in logs)
        assert any(m.startswith("stage evaluate ") for m in logs), [m.split("\n")[0] for m in logs]
        assert len(artifacts) == 1 and artifacts[0].type == "table"
        assert {"ldm", "gan"} <= {row["family"] for row in json.loads(artifacts[0].data)}
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        parent = mlflow.search_runs(experiment_names=["genlab"], output_format="list")
        assert any(r.data.tags.get("genlab.orchestrator") == "prefect" and r.info.status == "FINISHED" for r in parent)

        # stopping serve (SIGTERM, as a supervisor would) stops the server it started: no process left
        family = psutil.Process(serve.pid).children(recursive=True)
        assert any("server" in p.cmdline() and str(port) in p.cmdline() for p in family)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0, tail(log)
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
        assert "Prefect server stopped" in log.read_text()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    finally:
        if serve.poll() is None:  # a failed assertion above: do not leave serve or its server behind
            for p in [*psutil.Process(serve.pid).children(recursive=True), psutil.Process(serve.pid)]:
                p.kill()
            serve.wait()


def test_unreachable_prefect_api_url_is_one_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**hermetic_env(tmp_path), "PREFECT_API_URL": url}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "flows" / "pipeline.py"), "--serve", "--cron", "* * * * *"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30  # mostly imports; no retries, no waiting for a server
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"genlab: error: PREFECT_API_URL {url} is unreachable")
