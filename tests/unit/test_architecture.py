"""The layers' rules, stated by folder (STYLE.md rule 2, docs/architecture.md "Layers"):

- every package keeps its drivers in ``adapters/``: nothing outside an ``adapters/`` folder
  imports a database or network driver or an imaging library; the frameworks stay in the
  package that is their edge (Faust in ``streams/``, Sanic and websockets in ``query_api/``);
- read models never import the write side (``projections/`` never imports ``commands``);
- ``events/`` imports nothing of ours, ``archive/`` only ``events``;
- the gateway (``query_api/``) does not import ``archive``: the cold-history reader is a port
  the shell injects;
- the gateway's route modules (the HTTP blueprints ``*_api.py`` and the WebSocket handler
  table ``ws.py``) do not import the write side (``commands``): they call the services of
  ``query_api/services.py``, which do;
- nothing imports the shell (``tidings/``): it is the top floor, owning every composition root.

A new module is covered by the folder it lands in; no list of files to keep up to date.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("events", "commands", "projections", "streams", "query_api", "archive")

DRIVERS = frozenset(
    {
        "redis",
        "cassandra",
        "aiokafka",
        "kafka",
        "aiobotocore",
        "botocore",
        "boto3",
        "PIL",
        "av",
        "tantivy",
        "httpx",
        "aiohttp",
        "pywebpush",
        "websockets",
    }
)
FRAMEWORKS = frozenset({"sanic", "sanic_ext", "faust", "mode"})
# What each package may import outside its adapters: its own framework (the package is that
# framework's edge), and for the archive its file format and query engine (in-process libraries
# over local files, no server).
EDGE = {
    "streams": frozenset({"faust", "mode"}),
    "query_api": frozenset({"sanic", "sanic_ext", "websockets"}),
}


def imports(source: str) -> set[str]:
    """The top-level names of the absolute imports in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def is_route_module(relative: Path) -> bool:
    """A module of the gateway's routes: an HTTP blueprint or the WebSocket handler table."""
    name = relative.name
    return relative.parts[0] == "query_api" and (name.endswith("_api.py") or name == "ws.py")


def violations(relative: Path, source: str) -> list[str]:
    """Every rule ``source``, the module at ``relative`` (to the repository), breaks."""
    package, in_adapters = relative.parts[0], "adapters" in relative.parts[1:-1]
    names = imports(source)
    found: list[str] = []
    if not in_adapters:
        for name in sorted(names & (DRIVERS | FRAMEWORKS) - EDGE.get(package, frozenset())):
            found.append(f"{relative} imports {name} outside an adapters/ folder")
    if package == "projections" and "commands" in names:
        found.append(f"{relative}: a read model imports the write side (commands)")
    if package == "events" and names & {*PRODUCT, "tidings"} - {"events"}:
        found.append(f"{relative}: events imports {sorted(names & {*PRODUCT, 'tidings'} - {'events'})}")
    if package == "archive" and names & {*PRODUCT, "tidings"} - {"events", "archive"}:
        found.append(f"{relative}: the archive depends on {sorted(names & {*PRODUCT, 'tidings'})}")
    if package == "query_api" and "archive" in names:
        found.append(f"{relative}: the gateway imports the archive (inject it as a port)")
    if is_route_module(relative) and "commands" in names:
        found.append(f"{relative}: a route module imports the write side (go through query_api/services.py)")
    if "tidings" in names:
        found.append(f"{relative} imports the shell (tidings)")
    return found


def product_modules() -> Iterator[Path]:
    for package in PRODUCT:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(product_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_keeps_the_layer_rules(path: Path) -> None:
    relative = path.relative_to(ROOT)
    assert violations(relative, path.read_text()) == []


@pytest.mark.parametrize(
    ("relative", "source", "broken"),
    [
        ("commands/handlers.py", "import redis\n", "imports redis outside an adapters/ folder"),
        ("commands/model.py", "from cassandra.cluster import Session\n", "imports cassandra outside"),
        ("projections/inbox.py", "from aiokafka import AIOKafkaProducer\n", "imports aiokafka outside"),
        ("projections/inbox.py", "from commands.ports import EventLog\n", "imports the write side"),
        ("query_api/ws.py", "from redis.asyncio import Redis\n", "imports redis outside"),
        ("query_api/ws.py", "import faust\n", "imports faust outside"),
        ("streams/projector.py", "import sanic\n", "imports sanic outside"),
        ("archive/job.py", "from projections.adapters.cql import Cql\n", "the archive depends on"),
        ("events/catalogue.py", "from commands import model\n", "events imports"),
        ("commands/direct.py", "from tidings.settings import Settings\n", "imports the shell"),
        ("query_api/app.py", "from tidings import telemetry\n", "imports the shell"),
        ("query_api/sync_api.py", "import archive.reader\n", "the gateway imports the archive"),
        ("query_api/keys_api.py", "from commands.keys import claim_keys\n", "a route module imports"),
        ("query_api/push_api.py", "from commands import push\n", "a route module imports the write side"),
        ("query_api/ws.py", "import commands.membership\n", "a route module imports the write side"),
        ("query_api/new_api.py", "from commands.to_device import ToDevice\n", "a route module imports"),
    ],
)
def test_the_rules_catch_a_module_that_breaks_them(relative: str, source: str, broken: str) -> None:
    assert any(broken in v for v in violations(Path(relative), source))


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("commands/adapters/redis_locks.py", "from redis.asyncio import Redis\n"),
        ("projections/adapters/cql.py", "from cassandra.cluster import Session\n"),
        ("streams/app.py", "import faust\n"),
        ("query_api/ws.py", "from sanic import Websocket\n"),
        ("archive/tables.py", "import pyarrow\nimport duckdb\n"),
        ("commands/direct.py", "from projections.views import DeviceKeys\n"),
        ("query_api/services.py", "from commands.keys import claim_keys\n"),
        ("query_api/presence.py", "from commands.presence import Beat\n"),
    ],
)
def test_what_the_rules_allow(relative: str, source: str) -> None:
    assert violations(Path(relative), source) == []
