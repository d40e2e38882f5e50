"""Which Cassandra keyspace holds the live read models.

``TIDINGS_CASSANDRA_KEYSPACE`` names the base keyspace. ``tidings replay`` rebuilds into
``<base>_r<N>``; ``tidings replay switch`` then writes the pointer file
``<state_dir>/keyspaces/<base>.active`` naming it, and every runnable started by the CLI
(gateway, worker, migrate, prune) reads the pointer at start-up. No pointer: the base keyspace.
"""

from __future__ import annotations

import re
from pathlib import Path

from tidings.settings import Settings

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


def pointer_path(settings: Settings) -> Path:
    return settings.state_dir / "keyspaces" / f"{settings.cassandra_keyspace}.active"


def active_keyspace(settings: Settings) -> str:
    try:
        name = pointer_path(settings).read_text().strip()
    except FileNotFoundError:
        return settings.cassandra_keyspace
    if not _NAME.fullmatch(name):
        raise SystemExit(f"{pointer_path(settings)} does not name a keyspace: {name!r}")
    return name


def with_active_keyspace(settings: Settings) -> Settings:
    """``settings`` with ``cassandra_keyspace`` set to the live keyspace."""
    active = active_keyspace(settings)
    if active == settings.cassandra_keyspace:
        return settings
    return settings.model_copy(update={"cassandra_keyspace": active})


def write_pointer(settings: Settings, keyspace: str) -> Path:
    from archive.manifest import write_atomic

    if not _NAME.fullmatch(keyspace):
        raise ValueError(f"not a keyspace name: {keyspace!r}")
    path = pointer_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{keyspace}\n".encode())
    return path
