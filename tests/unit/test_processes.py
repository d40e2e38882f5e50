"""``tidings.processes``: waiting notices a child that ended, and stopping ends even a child
that ignores SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tidings import processes

NOWHERE = "http://127.0.0.1:9/readyz"  # the discard port: nothing answers


def _python(code: str, **options: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **options)  # type: ignore[call-overload]


def test_waiting_fails_as_soon_as_a_child_exits() -> None:
    child = _python("raise SystemExit(3)")
    started = time.monotonic()
    with pytest.raises(processes.Exited) as raised:
        processes.wait_ready(NOWHERE, {"gateway": child}, timeout_s=30)
    assert (raised.value.name, raised.value.returncode) == ("gateway", 3)
    assert time.monotonic() - started < 10


def test_waiting_times_out_while_children_run() -> None:
    child = _python("import time; time.sleep(30)")
    try:
        with pytest.raises(TimeoutError):
            processes.wait_ready(NOWHERE, {"gateway": child}, timeout_s=0.5)
    finally:
        processes.stop([child], timeout_s=5)
    assert child.returncode is not None


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    stubborn = _python(
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)",
        stdout=subprocess.PIPE,
    )
    polite = _python("import time; time.sleep(60)")
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"  # ignoring now
    processes.stop([stubborn, polite], timeout_s=1)
    stubborn.stdout.close()
    assert stubborn.returncode == -9 and polite.returncode == -15


def test_a_second_process_of_a_role_runs_the_roles_command() -> None:
    assert processes.role_of("gateway2") == "gateway"
    assert processes.ROLES[processes.role_of("persist2")] == ["worker", "--role", "persist"]
