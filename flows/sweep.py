"""Sweeps across machines: a grid of params overrides, each point a `dvc exp run -S ...` on whichever Prefect worker
picks it up.

Each worker works in its own clone of the project (`GENLAB_CLONE`, see prefect.yaml) and shares only the git remote,
the DVC remote, the MLflow tracking server and the Prefect API. A point checks out the sweep's base commit, pulls
the base run's outputs from the DVC remote (so only the stages the overrides touch re-run), runs the experiment and
pushes it (`dvc exp push`: the experiment's git ref and its outputs), so the results of all points meet in
`dvc exp show` (after `dvc exp pull`) and in `genlab compare` (MLflow).

    .venv/bin/python flows/sweep.py '{"ldm.guidance_scale": [1.5, 3.0]}'      # with PREFECT_API_URL set

The sweep itself runs where it is started (it only submits and waits, so it takes no worker's slot); the points
run on the workers. How many at once: the `point` deployment's concurrency limit (prefect.yaml) and each worker's
`--limit`. The sweep exits 0 when every point completed, and prints one JSON line per point.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

# flows/ is on sys.path: Prefect adds a flow file's folder, and so does `python flows/…`
from pipeline import default_remote, sh
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment

ROOT = Path(__file__).resolve().parents[1]  # the worker's clone: the flow's code is loaded from it
POINT_DEPLOYMENT = "genlab-sweep-point/point"


def points(grid: dict[str, list]) -> list[dict[str, object]]:
    """The grid's cartesian product, in a stable order: {"a": [1, 2], "b": [3]} -> [{a: 1, b: 3}, {a: 2, b: 3}]."""
    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ValueError(f"grid {grid!r}: expected a non-empty list of values for each params key")
    keys = sorted(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(overrides: dict[str, object]) -> str:
    """A DVC experiment name from the overrides: letters, digits and '-' only (`ldm.guidance_scale=2.0` ->
    `ldm-guidance-scale-2-0`)."""
    text = "-".join(f"{k}-{v}" for k, v in sorted(overrides.items()))
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100]


@task(task_run_name="dvc exp run {name}")
def run_point(root: str, base_rev: str, overrides: dict[str, object], name: str) -> dict:
    """In this worker's clone: the base commit, the base outputs from the DVC remote, the experiment, its push."""
    logger = get_run_logger()
    here = Path(root)
    sh(["git", "fetch", "-q", "origin"], here)
    sh(["git", "checkout", "-q", "--force", base_rev], here)
    if default_remote(root):  # as the pipeline flow: outputs missing there are recomputed, a failing remote stops
        pulled = sh(["dvc", "pull", "--allow-missing"], here)
        logger.info("dvc pull (base outputs): %s", (pulled.stdout.strip().splitlines() or ["done"])[-1])
    sets = [arg for k, v in overrides.items() for arg in ("-S", f"{k}={json.dumps(v)}")]
    out = sh(["dvc", "exp", "run", "-n", name, *sets], here).stdout
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    logger.info("experiment %s ran %s", name, ", ".join(ran) or "nothing")
    sh(["dvc", "exp", "push", "origin", name], here)  # its git ref, and its outputs to the default DVC remote
    result = {"experiment": name, "worker_clone": root, "stages_run": ", ".join(ran),
              "overrides": json.dumps(overrides)}
    create_table_artifact(key="genlab-sweep-point", table=[result], description=f"sweep point {name}")
    return result


@flow(name="genlab-sweep-point", flow_run_name="{name}")
def sweep_point(overrides: dict[str, object], base_rev: str, name: str) -> dict:
    """One point of a sweep, on the worker that picked it up."""
    return run_point(str(ROOT), base_rev, overrides, name)


@flow(name="genlab-sweep")
def sweep(grid: dict[str, list], base_rev: str = "HEAD") -> list[dict]:
    """Submit one `point` flow run per grid point (workers run them, as many at once as the limits allow), wait
    for all, and publish their results as a table artifact. `base_rev`: the commit every point starts from (resolved
    in this clone, so every worker uses the same one)."""
    logger = get_run_logger()
    rev = sh(["git", "rev-parse", base_rev], ROOT).stdout.strip()
    todo = points(grid)
    logger.info("%d points from %s at %s", len(todo), grid, rev[:12])
    runs = [run_deployment(POINT_DEPLOYMENT, parameters={"overrides": p, "base_rev": rev, "name": point_name(p)},
                           timeout=0, as_subflow=True) for p in todo]
    results = [{"point": r.name, "flow_run_id": str(r.id), "state": wait_final(r.id).state.name, **point_result(r.id)}
               for r in runs]
    create_table_artifact(key="genlab-sweep", table=results, description=f"sweep over {grid} from {rev[:12]}")
    failed = [r["point"] for r in results if r["state"] != "Completed"]
    if failed:
        raise RuntimeError(f"sweep points not completed: {', '.join(failed)}")
    return results


def point_result(flow_run_id: object) -> dict:
    """What a point's flow run published (its `genlab-sweep-point` table artifact), or {} if it published nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        mine = ArtifactFilter(key=ArtifactFilterKey(any_=["genlab-sweep-point"]),
                              flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        found = client.read_artifacts(artifact_filter=mine)
    if not found:
        return {}
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return rows[0] if rows else {}


def wait_final(flow_run_id: object, poll: float = 2.0) -> object:
    """The flow run once it is final (completed, failed, crashed or cancelled)."""
    import time

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a sweep of genlab experiments on the Prefect workers.")
    parser.add_argument("grid", help='JSON: params key -> list of values, e.g. \'{"ldm.guidance_scale": [1.5, 3.0]}\'')
    parser.add_argument("--base-rev", default="HEAD", help="commit every point starts from (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        grid = json.loads(args.grid)
        points(grid)
    except ValueError as e:
        print(f"genlab: error: sweep grid: {e}", file=sys.stderr)
        return 2
    try:
        results = sweep(grid, args.base_rev)
    except RuntimeError as e:
        print(f"genlab: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
