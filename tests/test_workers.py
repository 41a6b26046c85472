"""A team's Prefect setup on localhost: a Prefect server, prefect.yaml deployed to a process work pool, and two
workers, each in its own clone, sharing only a git remote (a bare repository), a DVC remote (a directory), the
MLflow tracking server and the Prefect API.

The base run is the suite's tiny pipeline (`repro`): its outputs are pushed to the DVC remote and its dvc.lock to
git, as a team would after a run. Then the nightly deployment runs on a worker, and a 2-point sweep runs one point
on each worker at the same time, re-running only what its override touches; the points' experiments meet in
`dvc exp show` and in MLflow."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import BIN, sh
from tests.servers import free_port, started, wait_http

GRID = {"ldm.guidance_scale": [1.5, 2.5]}  # neither is the base run's value (2.0, or 3.0 after test_pipeline)
HEARTBEAT_S = 30  # Prefect's shortest heartbeat interval: a flow run on a dead machine is Crashed after 2 missed
# the dead-machine test's point: a GAN long enough to be killed mid-stage, its training state shared every 2,048 images
LONG_GAN = {"gan.train_images": 24576, "gan.checkpoint_every_images": 2048, "gan.fid_every_images": 12288}


@dataclass
class Team:
    publisher: Path  # the clone that pushed the base run and starts sweeps
    clones: dict[str, Path]  # worker name -> its own clone
    env: dict[str, str]  # what every machine shares: PREFECT_API_URL, MLFLOW_TRACKING_URI
    logs: Path
    workers: dict[str, subprocess.Popen]  # worker name -> its process (the test of a dead machine kills one)


def uncached_outputs(root: Path) -> list[str]:
    """dvc.yaml's outputs with `cache: false` (metrics, plots, reports)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
    return [path for stage in stages for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])
            if isinstance(out, dict) for path, opts in out.items() if (opts or {}).get("cache") is False]


@pytest.fixture(scope="module")
def team(repro: tuple[Path, dict[str, str], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    root, env = repro[0], dict(repro[1])
    tmp = tmp_path_factory.mktemp("team")
    logs = tmp / "logs"
    logs.mkdir()
    origin, remote, publisher = tmp / "origin.git", tmp / "dvc-remote", tmp / "publisher"
    # the base run, published: its outputs to the DVC remote, its dvc.lock and the remote's config to git
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp, env)
    sh(["git", "clone", "-q", str(root), str(publisher)], tmp, env)
    # the run as it stands (other tests may have changed its params and re-run), with what DVC does not cache:
    # in git, by DVC's convention
    for path in ("params.yaml", "dvc.lock", *uncached_outputs(root)):
        (publisher / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, publisher / path)
    sh(["dvc", "remote", "add", "-d", "storage", str(remote)], publisher, env)  # absolute: DVC keeps it as given
    sh(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], publisher, env)
    sh(["dvc", "push", "-q"], publisher, env)
    sh(["dvc", "cache", "dir", "--local", "--unset"], publisher, env)
    sh(["git", "add", "params.yaml", "dvc.lock", ".dvc/config", *uncached_outputs(root)], publisher, env)
    sh(["git", "commit", "-q", "-m", "base run: dvc.lock; DVC remote"], publisher, env)
    sh(["git", "remote", "set-url", "origin", str(origin)], publisher, env)
    sh(["git", "push", "-q", "origin", "main"], publisher, env)
    clones = {name: tmp / f"clone-{name}" for name in ("a", "b")}
    for clone in clones.values():
        sh(["git", "clone", "-q", str(origin), str(clone)], tmp, env)

    port = free_port()
    shared = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(tmp / "prefect"),
              "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    shared.pop("GENLAB_CLONE", None)
    with contextlib.ExitStack() as running:  # stopped in reverse: the workers, then the server
        server_log = logs / "server.log"
        server = running.enter_context(started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                "--port", str(port), "--analytics-off"], server_log, shared))
        wait_http(f"http://127.0.0.1:{port}/api/health", server, server_log)
        # what `make deploy` runs
        sh([str(BIN / "prefect"), "work-pool", "create", "genlab", "--type", "process"], publisher, shared)
        sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], publisher, shared)
        sh([str(BIN / "python"), "flows/crashed_runs.py", "--heartbeat", str(HEARTBEAT_S), "--missed", "2"],
           publisher, shared)
        workers = {name: running.enter_context(started(  # what `make worker` runs, in each clone
            [str(BIN / "prefect"), "worker", "start", "--pool", "genlab", "--type", "process", "--limit", "1",
             "--name", f"worker-{name}"], logs / f"worker-{name}.log",
            {**shared, "GENLAB_CLONE": str(clone), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}, cwd=clone,
            grace=5))  # an idle worker's graceful stop took the whole 30 s; nothing of it is under test
            for name, clone in clones.items()}
        yield Team(publisher, clones, shared, logs, workers)


def _client(team: Team):  # noqa: ANN202
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = contextlib.ExitStack()
    stack.enter_context(temporary_settings(updates={PREFECT_API_URL: team.env["PREFECT_API_URL"]}))
    client = stack.enter_context(get_client(sync_client=True))
    return stack, client


def test_nightly_deployment_runs_on_a_worker_in_its_clone(team: Team) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tests.test_schedule import wait_for_logs

    out = sh([str(BIN / "prefect"), "deployment", "run", "genlab-pipeline/nightly", "--watch",
              "--watch-timeout", "600"], team.publisher, team.env, check=False)
    stack, client = _client(team)
    with stack:
        [run] = [r for r in client.read_flow_runs() if not r.state.is_scheduled()]  # the cron's next runs wait
        logs = wait_for_logs(client, run, "stage evaluate ")
        artifacts = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
        deployment = client.read_deployment(run.deployment_id)
    assert run.state.is_completed(), f"{out.stdout[-2000:]}{out.stderr[-2000:]}"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    # it ran in one worker's clone, with the base outputs pulled from the DVC remote: every stage up to date
    ran_in = [c for c in team.clones.values() if (c / "models" / "ldm" / "model.safetensors").is_file()]
    assert len(ran_in) == 1
    assert any(m.startswith("dvc pull: ") for m in logs)
    for stage in ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan", "evaluate"):
        assert any(m.startswith(f"stage {stage} skipped") for m in logs), stage
    assert {"genlab-comparison", "genlab-comparison-report"} <= artifacts


def test_sweep_runs_one_point_per_worker_at_once(team: Team) -> None:
    proc = subprocess.run([str(BIN / "python"), "flows/sweep.py", json.dumps(GRID)], cwd=team.publisher,
                          env=team.env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-1500:] for p in team.logs.glob("worker-*.log"))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{logs}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(r["overrides"]) for r in results] == [{"ldm.guidance_scale": v} for v in GRID[
        "ldm.guidance_scale"]]
    assert {r["state"] for r in results} == {"Completed"}
    assert {r["worker_clone"] for r in results} == {str(c) for c in team.clones.values()}  # one per worker
    for r in results:  # the base outputs came from the DVC remote: only what the override touches re-ran
        assert r["stages_run"] == "sample_ldm, evaluate", r
    stack, client = _client(team)
    with stack:
        runs = [client.read_flow_run(r["flow_run_id"]) for r in results]
    a, b = sorted(runs, key=lambda r: r.start_time)
    assert b.start_time < a.end_time  # the two points ran at the same time (concurrency limit 2, one per worker)

    # the points' experiments meet in `dvc exp show`, in any clone, through the git remote
    names = [r["experiment"] for r in results]
    for name in names:
        sh(["dvc", "exp", "pull", "origin", name], team.publisher, team.env)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], team.publisher, team.env).stdout)
    exps = {rev["name"]: rev for base in shown for exp in (base.get("experiments") or []) for rev in exp["revs"]}
    assert set(names) <= set(exps)
    for name, value in zip(names, GRID["ldm.guidance_scale"], strict=True):
        params = exps[name]["data"]["params"]["params.yaml"]["data"]
        assert params["ldm"]["guidance_scale"] == value

    # and in MLflow: each point's evaluate run, with its guidance scale, on the shared tracking server
    mlflow.set_tracking_uri(team.env["MLFLOW_TRACKING_URI"])
    evaluated = mlflow.search_runs(experiment_names=["genlab"], filter_string="tags.`genlab.stage` = 'evaluate'",
                                   output_format="list")
    scales = {r.data.metrics.get("ldm_guidance_scale") for r in evaluated}
    assert set(GRID["ldm.guidance_scale"]) <= scales, scales


def kill_machine(worker: subprocess.Popen) -> None:
    """What a machine's death does to a worker: it and every process it started (the flow run, DVC, the stage) die
    at once, and nothing reports to Prefect."""
    tree = psutil.Process(worker.pid)
    for proc in [tree, *tree.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    worker.wait()


def gan_runs(team: Team) -> list:
    mlflow.set_tracking_uri(team.env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["genlab"], output_format="list", filter_string=(
        f"tags.`genlab.stage` = 'train_gan' and params.`cfg.train_images` = '{LONG_GAN['gan.train_images']}'"))


@pytest.mark.slow
def test_a_dead_workers_run_is_crashed_and_resumes_on_another_worker(team: Team) -> None:
    """A worker's machine dies mid-stage: the flow run is marked Crashed (its heartbeats stopped), `prefect flow-run
    retry` runs it again on the other worker, whose stage resumes from the training state the dead one shared on the
    tracking server, in the same MLflow run, and ends with the same bytes as a run never interrupted."""
    from prefect.deployments import run_deployment

    rev = sh(["git", "rev-parse", "HEAD"], team.publisher, team.env).stdout.strip()
    stack, client = _client(team)
    with stack:
        submitted = run_deployment("genlab-sweep-point/point", timeout=0, parameters={
            "overrides": LONG_GAN, "base_rev": rev, "name": "long-gan"})
        deadline = time.monotonic() + 600
        while not any(r.data.tags.get("genlab.train_state.train_gan") for r in gan_runs(team)):  # a shared state
            assert time.monotonic() < deadline, "no shared GAN training state in time"
            time.sleep(0.5)
        [first] = [c for c in team.clones.values() if (c / "checkpoints" / "train_gan.pt").is_file()]
        dead = next(n for n, c in team.clones.items() if c == first)
        kill_machine(team.workers[dead])
        [killed_run] = gan_runs(team)

        while (run := client.read_flow_run(submitted.id)).state.type.value != "CRASHED":
            assert not run.state.is_final(), f"the dead worker's run ended {run.state.type.value}, not CRASHED"
            assert time.monotonic() < deadline, "the dead worker's run was not marked Crashed in time"
            time.sleep(2)
        assert "no heartbeat" in run.state.message
        sh([str(BIN / "prefect"), "flow-run", "retry", str(submitted.id)], team.publisher, team.env)
        while not (run := client.read_flow_run(submitted.id)).state.is_final() or run.state.is_crashed():
            assert time.monotonic() < deadline, "the retried run did not finish in time"
            time.sleep(2)
    assert run.state.is_completed(), run.state.message
    alive = next(c for n, c in team.clones.items() if n != dead)
    # one MLflow run for the stage, continued on the other machine; its shared state dropped once it finished
    [resumed] = gan_runs(team)
    assert resumed.info.run_id == killed_run.info.run_id
    assert resumed.info.status == "FINISHED" and resumed.data.tags["genlab.resumes"] == "1"
    assert "genlab.train_state.train_gan" not in resumed.data.tags
    assert not MlflowClient().list_artifacts(resumed.info.run_id, "train_state")
    steps = [m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, "loss_d")]
    assert steps == sorted(set(steps)) and steps[-1] == LONG_GAN["gan.train_images"]  # each step logged once
    state = json.loads((alive / "metrics" / "train_gan.json").read_text())
    assert state["images_seen"] == LONG_GAN["gan.train_images"]

    # the reproducibility guarantee across machines: the same bytes as the stage run start to end in one process
    sh(["dvc", "pull", "-q", "--allow-missing"], team.publisher, team.env)
    sets = [arg for k, v in LONG_GAN.items() for arg in ("-S", f"{k}={v}")]
    sh(["dvc", "exp", "run", "train_gan", *sets], team.publisher, team.env)
    for name in ("model.safetensors", "train_state.pt"):
        assert (alive / "models" / "gan" / name).read_bytes() == (team.publisher / "models" / "gan" / name
                                                                   ).read_bytes(), name
