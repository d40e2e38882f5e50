"""Types shared by the launcher modules: the status record, the error, and the Java to use."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Echo = Callable[[str], object]

# Cassandra 5.0 installs a SecurityManager at start-up, which JDK 18+ refuses by default and
# JDK 24+ cannot do at all, so a newer `java` on PATH must not win over Debian's 17.
JAVA17 = Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")


class ServiceError(RuntimeError):
    """A local service could not be prepared, started, reached or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    host: str
    port: int
    running: bool
    pid: int | None
    started_by_us: bool  # this call started it (False when it was already running)
    detail: str = ""  # "ready", "not running", "pid 123 alive but not answering", ...


def java17() -> Path | None:
    """Debian's OpenJDK 17 (``java-17-openjdk-<arch>``), preferring amd64, if installed."""
    candidates = [JAVA17, *sorted(JAVA17.parents[2].glob("java-17-openjdk-*/bin/java"))]
    return next((path for path in candidates if path.is_file()), None)


def java_executable() -> str:
    """The JDK 17 binary when installed, else whatever ``java`` is on PATH."""
    pinned = java17()
    if pinned is not None:
        return str(pinned)
    found = shutil.which("java")
    if found is None:
        raise ServiceError("no java found: apt-get install openjdk-17-jre-headless")
    return found


def heap(env_var: str, default: str) -> str:
    """A JVM heap size such as ``512m`` or ``1G`` from ``env_var``, validated loosely."""
    value = os.environ.get(env_var, default).strip()
    digits = value[:-1] if value[-1:].lower() in ("k", "m", "g") else value
    if not digits.isdigit():
        raise ServiceError(f"{env_var}={value!r} is not a JVM heap size such as 512m or 1G")
    return value
