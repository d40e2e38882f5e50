"""Pid files, detached spawning, ownership checks and stopping, for processes we started.

A pid is trusted only while ``/proc/<pid>`` shows it is still ours (its command line mentions the
service's state folder, or it runs in that folder): pids are recycled, and a stale pid file must
never make us signal a stranger.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from tidings.services._common import ServiceError


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping it if it is our own child)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: the usual case, since `up` and `down` are separate commands
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3, after the parenthesised command name (which may itself contain spaces).
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def is_ours(pid: int, service_dir: Path) -> bool:
    """Whether live ``pid`` is a process started for ``service_dir``."""
    if not is_alive(pid):
        return False
    marker = str(service_dir.resolve())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return marker in cmdline or cwd == marker


def owned_pid(pid_file: Path, service_dir: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive and ours; else None (file removed)."""
    pid = read_pid(pid_file)
    if pid is not None and is_ours(pid, service_dir):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def spawn(argv: Sequence[str], *, cwd: Path, log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` in its own session with output appended to ``log``; return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A marker between runs, so that a log tail in an error shows where this run begins.
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} started by tidings ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # outlives `up`, and Ctrl-C in the terminal does not reach it
        )
    # Detached on purpose: keep the handle for this process's lifetime, so that Python does not
    # warn that it is "still running" when the handle would otherwise be collected.
    _SPAWNED[proc.pid] = proc
    return proc.pid


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def stop(pid: int, service_dir: Path, *, grace_s: float = 30.0) -> float:
    """SIGTERM ``pid``, wait up to ``grace_s``, then SIGKILL; return the seconds it took."""
    started = time.monotonic()
    if not is_ours(pid, service_dir):
        return 0.0
    _signal(pid, signal.SIGTERM)
    while time.monotonic() - started < grace_s:
        if not is_alive(pid):
            return time.monotonic() - started
        time.sleep(0.1)
    if is_ours(pid, service_dir):
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(pid):
        if time.monotonic() > deadline:
            raise ServiceError(f"pid {pid} survived SIGKILL")
        time.sleep(0.1)
    return time.monotonic() - started


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """``sig`` to ``pid``; nothing when it has exited meanwhile. Check ownership first."""
    _signal(pid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # it exited between the check and the signal
        os.kill(pid, sig)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Serialise `up`/`down` of one service across processes (e.g. the CLI and a test run)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of ``path``, labelled, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"--- {path}: (missing)"
    body = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path}:\n{body}"
