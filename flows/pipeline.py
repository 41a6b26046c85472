"""The genlab pipeline as a Prefect flow: the same DAG as `dvc repro`, run through DVC.

The stage order comes from dvc.yaml through DVC's own API, and each stage runs as
`dvc repro --single-item <stage>`, so the flow and `dvc repro` share the lock, the cache and the
skip logic. Each stage is a Prefect task with retries. One MLflow run per flow run is the parent of
the stage runs (its id reaches them through GENLAB_PARENT_RUN_ID). The comparison table is published
as Prefect artifacts.

    python flows/pipeline.py                              # run once
    python flows/pipeline.py --serve --cron "0 3 * * *"  # serve on a schedule
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

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


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc repro {stage}")
def run_stage(stage: str, root: str, parent_run_id: str) -> str:
    """`dvc repro --single-item <stage>`; returns "ran" or "skipped" (DVC found it up to date)."""
    logger = get_run_logger()
    env = {**os.environ, "GENLAB_PARENT_RUN_ID": parent_run_id, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "dvc"), "repro", "--single-item", stage], cwd=root, env=env,
                          capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed (exit {proc.returncode}):\n{tail}")
    status = "skipped" if "didn't change, skipping" in proc.stdout else "ran"
    logger.info("stage %s %s\n%s", stage, status, tail)
    return status


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
    with parent_run(Path(root), "prefect: genlab-pipeline", {"genlab.orchestrator": "prefect"}) as parent_id:
        for stage in order:
            results[stage] = run_stage(stage, root, parent_id)
    publish_comparison(Path(root))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run or serve the genlab Prefect flow.")
    parser.add_argument("--serve", action="store_true", help="serve the flow as a scheduled deployment")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule when serving (default: %(default)s)")
    parser.add_argument("--name", default="genlab-nightly", help="deployment name when serving")
    args = parser.parse_args(argv)
    if args.serve:
        pipeline.serve(name=args.name, cron=args.cron)
    else:
        print(pipeline())


if __name__ == "__main__":
    main()
