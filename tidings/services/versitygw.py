"""The media object store: versitygw (Apache-2.0, Go), an S3 gateway over a local folder.

It is built once with ``go install`` into ``settings.cache_dir / "go" / "versitygw-<version>"``
(its own GOPATH, module and build caches there, never in the repository); a marker file says the
build finished, so later starts reuse the binary. Objects live under
``settings.state_dir / "s3" / "data"`` (each bucket a folder), served on loopback only with the
root credentials from settings. The bucket itself is created by ``tidings migrate``.

Why versitygw: it checks SigV4 signatures of presigned URLs itself (a tampered or expired URL is
refused by the store), which the media tests rely on; moto does not.
Measured here: ``go install`` 1 min 32 s the first time (2 cores, cold module cache), 84 MB
binary; port open in well under a second; ~60 MB RSS.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
from pathlib import Path

from tidings.services import _process
from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError

VERSION = "v1.8.0"
MODULE = "github.com/versity/versitygw/cmd/versitygw"
MARKER = ".built"
# Where Go's own installer puts it, for shells whose PATH does not name it (CI, sudo).
_GO_PLACES = (Path("/usr/local/go/bin/go"), Path.home() / "go" / "bin" / "go")


def build_dir(cache_dir: Path) -> Path:
    return cache_dir / "go" / f"versitygw-{VERSION}"


def binary_path(cache_dir: Path) -> Path:
    return build_dir(cache_dir) / "bin" / "versitygw"


def ensure_binary(cache_dir: Path, *, echo: Echo = print) -> Path:
    """The versitygw binary, built with ``go install`` first if no finished build is cached."""
    home = build_dir(cache_dir)
    binary = binary_path(cache_dir)
    if (home / MARKER).is_file() and binary.is_file():
        return binary
    with _process.locked(home.parent / ".lock"):
        if (home / MARKER).is_file() and binary.is_file():
            return binary
        go = shutil.which("go") or next((str(p) for p in _GO_PLACES if p.is_file()), None)
        if go is None:
            raise ServiceError("go not found: install Go (https://go.dev/doc/install) to build versitygw")
        echo(f"building versitygw {VERSION} with go install into {home} (first time only, ~1-2 min)")
        started = time.monotonic()
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "GOPATH": str(home / "gopath"),
            "GOBIN": str(binary.parent),
            "GOMODCACHE": str(home / "gopath" / "pkg" / "mod"),
            "GOCACHE": str(home / "build-cache"),
            # Module cache files writable, so that the cache folder can simply be deleted.
            "GOFLAGS": "-modcacherw",
        }
        result = subprocess.run(
            [go, "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not binary.is_file():
            output = (result.stdout + result.stderr).strip()
            raise ServiceError(
                f"go install {MODULE}@{VERSION} failed (exit {result.returncode})\n{output[-4000:]}"
            )
        (home / MARKER).write_text(f"{VERSION}\n")
        echo(f"built versitygw in {time.monotonic() - started:.1f} s")
        return binary


def s3_answering(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an S3 server answers HTTP on ``host:port`` (an unsigned request gets an S3 error)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read(4096)
    except OSError:
        return False
    finally:
        conn.close()
    # An S3 server refuses the anonymous listing with an XML error (AccessDenied); anything that
    # is not XML is some other server on the port.
    return response.status in (200, 403) and b"<" in body


class S3Store(Service):
    name = "s3"
    ready_timeout_s = 30.0

    @property
    def host(self) -> str:
        return self.settings.s3_host

    @property
    def port(self) -> int:
        return self.settings.s3_port

    def answering(self) -> bool:
        return s3_answering(self.host, self.port)

    def log_files(self) -> list[Path]:
        return [self.dir / "versitygw.log"]

    def prepare(self, echo: Echo) -> None:
        super().prepare(echo)
        ensure_binary(self.settings.cache_dir, echo=echo)

    def launch(self, echo: Echo) -> int:
        binary = binary_path(self.settings.cache_dir)
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            "--port",
            f"{self.host}:{self.port}",
            "--region",
            self.settings.s3_region,
            "--quiet",
            "posix",
            str(data),
        ]
        env = {
            "ROOT_ACCESS_KEY": self.settings.s3_access_key,
            "ROOT_SECRET_KEY": self.settings.s3_secret_key.get_secret_value(),
        }
        echo(f"starting versitygw on {self.host}:{self.port}")
        pid = _process.spawn(argv, cwd=self.dir, log=self.dir / "versitygw.log", env=env)
        self.write_pid(self.pid_file, pid)
        return pid
