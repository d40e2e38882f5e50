"""Fixtures of the fault suite: service instances of its own, started (and stopped) here, and
one running system over them shared by the scenarios, which run one after another.

Run by ``python3 -m tidings faults`` (it sets ``TIDINGS_RUN_FAULTS=1``; without it this folder
is not collected, see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.load import Report, recorder, summarize
from tests.faults.system import FaultSystem, fault_settings
from tidings.settings import Settings

FANOUT_THRESHOLD = 4
REPORTS: list[Report] = []
REPORT_FILE = (
    Path(os.environ.get("TIDINGS_FAULTS_REPORT", "")) if os.environ.get("TIDINGS_FAULTS_REPORT") else None
)


@pytest.fixture(scope="session")
def fault_services() -> Iterator[Settings]:
    from tidings import services as launcher
    from tidings.migrate import migrate

    settings = fault_settings()
    statuses = launcher.up(settings)
    ours = [s.name for s in statuses if s.started_by_us]
    try:
        asyncio.run(migrate(settings, echo=lambda _: None))
        yield settings
    finally:
        # Scenarios restart services; whatever was ours at the start is stopped at the end,
        # what somebody else had running is left running.
        if ours:
            launcher.down(settings, only=ours)


@pytest.fixture(scope="session")
def fault_system(fault_services: Settings) -> Iterator[FaultSystem]:
    # Beside the suite's service state rather than in pytest's temp folder, which keeps only
    # the last three runs of anyone on the machine: the process logs outlive the run.
    logs = fault_services.state_dir.parent / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"fault suite process logs: {logs}")
    system = FaultSystem(fault_services, logs, fanout_threshold=FANOUT_THRESHOLD)
    with system.running(FaultSystem.STARTED):
        yield system


@pytest.fixture
def record() -> Callable[[Report], None]:
    return recorder(REPORTS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summarize(terminalreporter, "fault suite figures", REPORTS, REPORT_FILE)
