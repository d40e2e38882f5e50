"""Tidings' own processes as children of another: which command runs each role, how one is
started and stopped, and the waits until the gateway answers and the workers read.

``tidings up``, the end-to-end and fault systems of the tests and the benchmarks' system all
start the gateway and the workers through here, so they start, stop and wait for them the
same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

# role -> arguments of `python -m tidings`; the workers run split by role.
ROLES: dict[str, list[str]] = {
    "deliver": ["worker", "--role", "deliver"],
    "persist": ["worker", "--role", "persist"],
    "notify": ["worker", "--role", "notify"],
    "push": ["worker", "--role", "push"],
    "search": ["worker", "--role", "search"],
    "gateway": ["gateway"],
}


class Exited(RuntimeError):
    """A child ended while it was being waited for."""

    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"{name} exited with {returncode}")
        self.name = name
        self.returncode = returncode


def role_of(name: str) -> str:
    """``gateway2`` and ``persist2`` (a second process of a role) run their role's command."""
    return name.rstrip("0123456789")


def spawn(name: str, env: Mapping[str, str], *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the process of role ``role_of(name)`` with exactly ``env``; its output goes to
    ``log`` (appended) or to this process's own."""
    command = [sys.executable, "-m", "tidings", *ROLES[role_of(name)]]
    if log is None:
        return subprocess.Popen(command, cwd=ROOT, env=dict(env))
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=out, stderr=out)


def stop(children: Iterable[subprocess.Popen[bytes]], *, timeout_s: float = 20) -> None:
    """SIGTERM to every child (a background job may ignore SIGINT; both stop them cleanly),
    then SIGKILL to those still running after ``timeout_s``."""
    children = list(children)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _raise_if_exited(children: Mapping[str, subprocess.Popen[bytes]]) -> None:
    for name, child in children.items():
        if child.poll() is not None:
            raise Exited(name, child.returncode)


def wait_ready(url: str, children: Mapping[str, subprocess.Popen[bytes]], *, timeout_s: float) -> None:
    """Until ``url`` answers 200; ``Exited`` as soon as one of ``children`` ends, and
    ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _raise_if_exited(children)
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready after {timeout_s:.0f}s: {url}")


def wait_reading(
    ports: Mapping[str, int], children: Mapping[str, subprocess.Popen[bytes]], *, timeout_s: float
) -> None:
    """Until each worker's metrics on ``ports`` (name -> port) say every consumer group it is
    in holds its partitions with a read position (``tidings_consumer_ready`` 1, from
    ``streams.adapters.metrics``); ``Exited`` and ``TimeoutError`` as ``wait_ready``. Before
    that, a message sent is stored but may not be pushed live (the delivery group's first
    position is the log's end)."""
    deadline = time.monotonic() + timeout_s
    waiting = {name: (port, "no answer") for name, port in ports.items()}
    while waiting:
        if time.monotonic() > deadline:
            late = ", ".join(
                f"{name} ({why} on 127.0.0.1:{port}/metrics)" for name, (port, why) in sorted(waiting.items())
            )
            raise TimeoutError(f"workers not reading after {timeout_s:.0f}s: {late}")
        _raise_if_exited(children)
        for name, (port, _) in list(waiting.items()):
            reason = _not_reading(port)
            if reason is None:
                del waiting[name]
            else:
                waiting[name] = (port, reason)
        time.sleep(0.2)


def _not_reading(port: int) -> str | None:
    """Why the worker with metrics on ``port`` does not read yet; None once it does."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return "no answer"
    samples = [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tidings_consumer_ready"
        for sample in family.samples
    ]
    if not samples:
        # another process on the port (the worker logs "metrics not served"), or no group yet
        return "no tidings_consumer_ready"
    return None if all(value == 1 for value in samples) else "rebalancing"
