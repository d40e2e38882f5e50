"""Where the sync cursor is kept between connections (and, with a file, between runs)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol


class CursorStore(Protocol):
    """Keeps this device's last ``/v1/sync`` cursor. Implement it over your app's storage."""

    async def load(self) -> str | None:
        """The stored cursor, or ``None`` for a device that never synced."""
        ...

    async def save(self, cursor: str) -> None:
        """Store ``cursor`` (called after each sync page has been handed to the app)."""
        ...


class MemoryCursorStore:
    """The default: the cursor lives as long as the client object."""

    def __init__(self, cursor: str | None = None) -> None:
        self.cursor = cursor

    async def load(self) -> str | None:
        return self.cursor

    async def save(self, cursor: str) -> None:
        self.cursor = cursor


class FileCursorStore:
    """The cursor in a file (written atomically), so a restarted app resumes where it stopped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def load(self) -> str | None:
        def read() -> str | None:
            try:
                return self.path.read_text().strip() or None
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def save(self, cursor: str) -> None:
        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(cursor)
            os.replace(tmp, self.path)

        await asyncio.to_thread(write)
