"""Server jars from Maven Central, resolved once into the cache folder (never the repository).

Each server gets its own lib folder: Kafka and Cassandra bring clashing logging backends and
Jackson/netty versions, so they never share a classpath. Maven keeps its own cache in ``~/.m2``.
A lib folder counts as complete only once its marker file exists; anything else is redone.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tidings.services._common import Echo, ServiceError
from tidings.services._process import locked

_POMS = Path(__file__).resolve().parent / "poms"
_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
MARKER = ".resolved"


@dataclass(frozen=True)
class JarSet:
    name: str
    version: str
    pom: str
    # Fewer jars than this means Maven silently dropped the transitive closure (an "invalid
    # POM" warning), which would only show up later as a ClassNotFoundException.
    min_jars: int


KAFKA = JarSet("kafka", "4.2.1", "kafka.xml", min_jars=40)
CASSANDRA = JarSet("cassandra", "5.0.8", "cassandra.xml", min_jars=90)


def lib_dir(jars: JarSet, cache_dir: Path) -> Path:
    return cache_dir / "jars" / f"{jars.name}-{jars.version}"


def ensure_jars(jars: JarSet, cache_dir: Path, *, echo: Echo = print) -> Path:
    """The lib folder of ``jars``, resolving it with Maven first if it is not complete."""
    lib = lib_dir(jars, cache_dir)
    if (lib / MARKER).is_file():
        return lib
    # One Maven at a time, across threads and processes: they share ~/.m2 and the cache folder.
    with locked(lib.parent / ".lock"):
        if (lib / MARKER).is_file():
            return lib
        return _resolve(jars, lib, echo)


def _resolve(jars: JarSet, lib: Path, echo: Echo) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: apt-get install maven")
    echo(f"resolving {jars.name} {jars.version} jars with Maven into {lib} (first time only)")
    started = time.monotonic()
    work = lib.with_name(f".{lib.name}.work")
    staging = lib.with_name(f".{lib.name}.partial")
    for leftover in (work, staging):
        shutil.rmtree(leftover, ignore_errors=True)
    work.mkdir(parents=True)
    # Maven runs on a copy of the POM so that it never writes anything next to the package.
    shutil.copyfile(_POMS / jars.pom, work / "pom.xml")
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(work / "pom.xml"),
        _PLUGIN,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    count = len(list(staging.glob("*.jar"))) if staging.is_dir() else 0
    if result.returncode != 0 or count < jars.min_jars:
        raise ServiceError(
            f"Maven could not resolve {jars.name} {jars.version} (exit {result.returncode}, "
            f"{count} jars, expected >= {jars.min_jars}): {' '.join(argv)}\n{output[-4000:]}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    shutil.rmtree(work, ignore_errors=True)
    (lib / MARKER).write_text(f"{count} jars\n")
    echo(f"resolved {count} {jars.name} jars in {time.monotonic() - started:.1f} s")
    return lib


def find_jar(lib: Path, prefix: str) -> Path:
    """The single jar in ``lib`` whose name starts with ``prefix-`` (e.g. ``jamm``)."""
    matches = sorted(lib.glob(f"{prefix}-[0-9]*.jar"))
    if not matches:
        raise ServiceError(f"no {prefix}-*.jar in {lib}; delete {lib} to resolve it again")
    return matches[-1]
