"""flows/pipeline.py's command line: a run without PREFECT_API_URL starts an ephemeral Prefect server, and waits
--server-timeout for it (Prefect's own default, 20 s, was too short on a slow 2-core machine) unless the user set
Prefect's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from tests.conftest import REPO


@pytest.fixture
def flow_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "flows"))
    sys.modules.pop("pipeline", None)
    import pipeline

    # the flow itself stands in as what it sees: the ephemeral server's start-up timeout while it runs
    monkeypatch.setattr(pipeline, "pipeline", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value)
    return pipeline


def test_a_run_waits_server_timeout_for_its_ephemeral_server(flow_module: ModuleType, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    before = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    assert flow_module.main([]) == 0
    assert capsys.readouterr().out.strip() == "120"
    assert flow_module.main(["--server-timeout", "300"]) == 0
    assert capsys.readouterr().out.strip() == "300"
    assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == before  # only for the run


def test_the_users_own_prefect_setting_wins(flow_module: ModuleType, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 45}):  # what Prefect read
        assert flow_module.main(["--server-timeout", "300"]) == 0
    assert capsys.readouterr().out.strip() == "45"
