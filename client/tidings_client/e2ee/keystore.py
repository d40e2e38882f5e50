"""Where a device keeps its end-to-end encryption state: pickled by vodozemac with a 32-byte
key derived from a passphrase (Scrypt, from ``cryptography``), in a file or in memory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SCRYPT_N = 2**15
"""Scrypt's cost (``n``; ``r=8, p=1``): about 0.1 s and 32 MiB once per opening."""


def derive_pickle_key(passphrase: str, salt: bytes, *, n: int = SCRYPT_N) -> bytes:
    """The 32-byte key vodozemac pickles with, from ``passphrase`` (Scrypt, ``r=8, p=1``)."""
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode("utf-8"))


class KeyStore(Protocol):
    """Keeps the device's pickled crypto state (one opaque text). Implement it over your storage."""

    async def load(self) -> str | None:
        """The stored state, or ``None`` for a device without one."""
        ...

    async def save(self, state: str) -> None:
        """Replace the stored state (called after every change of it)."""
        ...


class MemoryKeyStore:
    """The state lives as long as this object (tests; a device that forgets its keys on exit)."""

    def __init__(self, state: str | None = None) -> None:
        self.state = state

    async def load(self) -> str | None:
        return self.state

    async def save(self, state: str) -> None:
        self.state = state


class FileKeyStore:
    """The state in a file readable by its owner only (``0600``), written atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def load(self) -> str | None:
        def read() -> str | None:
            try:
                return self.path.read_text() or None
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def save(self, state: str) -> None:
        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(state)
            os.replace(tmp, self.path)

        await asyncio.to_thread(write)
