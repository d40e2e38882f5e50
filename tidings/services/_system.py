"""Debian packages the launcher needs: a JDK 17, Maven and redis-server; for the cluster profile,
HAProxy; and for the test suite, Debian's chromium (the web client's browser tests drive it:
never a downloaded browser) and promtool (``prometheus``: the alert rules' checks)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from tidings.services._common import Echo, ServiceError, java17


def missing_packages(*, browser: bool = False, promtool: bool = False, haproxy: bool = False) -> list[str]:
    """Debian package names for whatever is not installed yet (``browser``: chromium too;
    ``promtool``: Debian's prometheus, which ships it; ``haproxy``: the cluster's load balancer)."""
    missing = []
    if java17() is None:  # any other JDK on PATH will not do for Cassandra 5.0
        missing.append("openjdk-17-jre-headless")
    if shutil.which("mvn") is None:
        missing.append("maven")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if browser and shutil.which("chromium") is None:
        missing.append("chromium")
    if promtool and shutil.which("promtool") is None:
        missing.append("prometheus")
    if haproxy and shutil.which("haproxy") is None:
        missing.append("haproxy")
    return missing


def ensure_system_packages(
    *, echo: Echo = print, browser: bool = False, promtool: bool = False, haproxy: bool = False
) -> None:
    """Install missing packages with apt-get when root; otherwise exit saying what to run."""
    extras = {"browser": browser, "promtool": promtool, "haproxy": haproxy}
    missing = missing_packages(**extras)
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise SystemExit(
            f"missing system packages: {', '.join(missing)}. Run:\n"
            f"  sudo apt-get update && sudo {shlex.join(install)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], install):
        echo(f"$ {shlex.join(argv)}")
        result = subprocess.run(argv, env=env, check=False)
        if result.returncode != 0:
            raise ServiceError(f"`{shlex.join(argv)}` failed with exit code {result.returncode}")
    still = missing_packages(**extras)
    if still:
        raise ServiceError(f"still missing after apt-get install: {', '.join(still)}")
