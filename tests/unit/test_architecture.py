"""Domain code imports no framework or driver (STYLE.md rule 2)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"sanic", "faust", "redis", "cassandra", "aiokafka", "mode"}
DOMAIN = [
    *sorted((ROOT / "events").glob("*.py")),
    ROOT / "commands" / "model.py",
    ROOT / "commands" / "handlers.py",
    ROOT / "commands" / "ports.py",
    ROOT / "commands" / "memory.py",
    ROOT / "commands" / "media.py",
    ROOT / "commands" / "media_checks.py",
    ROOT / "commands" / "media_gc.py",
    ROOT / "commands" / "images.py",
    ROOT / "projections" / "wire.py",
    ROOT / "projections" / "delivery.py",
    ROOT / "projections" / "history.py",
    ROOT / "streams" / "projector.py",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_module_imports_no_framework(path: Path) -> None:
    assert not _imports(path) & FORBIDDEN


def test_events_import_nothing_of_ours() -> None:
    ours = {"commands", "projections", "streams", "query_api", "archive", "tidings"}
    for path in (ROOT / "events").glob("*.py"):
        assert not _imports(path) & ours, path


# The archive reads the log through one adapter; the rest of it (tables, manifest, job,
# compaction, readers) is plain Python over pyarrow and DuckDB, and depends only on events.
ARCHIVE_ADAPTERS = {"kafka_source.py"}


@pytest.mark.parametrize("path", sorted((ROOT / "archive").glob("*.py")), ids=lambda p: p.name)
def test_archive_depends_only_on_events(path: Path) -> None:
    names = _imports(path)
    assert not names & {"commands", "projections", "streams", "query_api", "tidings"}
    if path.name not in ARCHIVE_ADAPTERS:
        assert not names & FORBIDDEN


@pytest.mark.parametrize("path", sorted((ROOT / "streams").glob("*.py")), ids=lambda p: p.name)
def test_streams_do_not_import_the_shell(path: Path) -> None:
    assert "tidings" not in _imports(path)
