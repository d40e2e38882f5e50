"""End-to-end encryption for the SDK (the ``e2ee`` extra: ``pip install './client[e2ee]'``):
Olm and Megolm by vodozemac. ``TidingsClient.enable_e2ee()`` turns it on; ``docs/e2ee.md`` has
the key flows, the storage and the rotation rules."""

from tidings_client.e2ee.keystore import SCRYPT_N, FileKeyStore, KeyStore, MemoryKeyStore, derive_pickle_key
from tidings_client.e2ee.machine import (
    ALGORITHM,
    E2EE,
    TO_DEVICE_TYPE,
    DecryptionError,
    DeviceKeys,
    E2EEError,
    KeyServer,
    MissingRoomKey,
    WrongPassphrase,
)

__all__ = [
    "ALGORITHM",
    "E2EE",
    "SCRYPT_N",
    "TO_DEVICE_TYPE",
    "DecryptionError",
    "DeviceKeys",
    "E2EEError",
    "FileKeyStore",
    "KeyServer",
    "KeyStore",
    "MemoryKeyStore",
    "MissingRoomKey",
    "WrongPassphrase",
    "derive_pickle_key",
]
