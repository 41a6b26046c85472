"""Flow runs whose machine died are marked Crashed: Prefect's own zombie detection, for a self-hosted server.

A flow run started by a worker sends a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (the
worker's setting). When a worker's machine dies, nothing reports the run's end: it would stay Running forever. This
automation (Prefect's recipe, docs.prefect.io/v3/advanced/detect-zombie-flows) marks a run Crashed when it misses
`--missed` heartbeats in a row. A crashed run is re-run with `prefect flow-run retry <id>` (or Retry in the UI): any
worker picks it up, and each training stage resumes from the state its killed run shared on the MLflow tracking server.

    .venv/bin/python flows/crashed_runs.py --heartbeat 60    # what `make deploy` runs; PREFECT_API_URL set

Creating it again replaces the one of the same name, so a changed --heartbeat takes effect.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

NAME = "genlab: crash flow runs that stopped sending heartbeats"
TERMINAL = ("Completed", "Failed", "Cancelled", "Crashed")


def automation(heartbeat: int, missed: int) -> Automation:
    """After a run's heartbeat, expect another (or its end) within `missed` heartbeats; else mark it Crashed."""
    return Automation(
        name=NAME,
        description=f"flow runs sending a heartbeat every {heartbeat} s are marked Crashed after {missed} missed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in TERMINAL)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat * missed),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {heartbeat * missed} s: its machine or worker died")],
    )


def install(heartbeat: int, missed: int = 3) -> Automation:
    """Create the automation, replacing one of the same name."""
    with contextlib.suppress(ValueError):  # ValueError: none yet
        Automation.read(name=NAME).delete()
    return automation(heartbeat, missed).create()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heartbeat", type=int, default=60,
                    help="seconds between heartbeats: the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (at least 30)")
    ap.add_argument("--missed", type=int, default=3, help="heartbeats missed in a row before a run is Crashed")
    args = ap.parse_args()
    if args.heartbeat < 30 or args.missed < 1:
        ap.error(f"--heartbeat {args.heartbeat} --missed {args.missed}: expected --heartbeat >= 30 (Prefect's "
                 "minimum) and --missed >= 1")
    made = install(args.heartbeat, args.missed)
    print(f"automation {made.name!r} ({made.id}): a run is Crashed after {args.heartbeat * args.missed} s "
          "without a heartbeat")


if __name__ == "__main__":
    main()
