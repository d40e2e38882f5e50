"""Real Olm keys for tests, made by vodozemac (what a real client sends): a device's identity and
signing keys with the signature over the identity key, and signed one-time and fallback keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import vodozemac


class DeviceKeysBody(TypedDict):
    identity_key: str
    signing_key: str
    signature: str


@dataclass
class Device:
    account: Any = field(default_factory=vodozemac.Account)
    uploaded: list[dict[str, str]] = field(default_factory=list)

    @property
    def identity_key(self) -> str:
        return str(self.account.curve25519_key.to_base64())

    @property
    def signing_key(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def sign(self, text: str) -> str:
        return str(self.account.sign(text.encode()).to_base64())

    def device_keys(self) -> DeviceKeysBody:
        """The body of ``PUT /v1/keys/device``."""
        return {
            "identity_key": self.identity_key,
            "signing_key": self.signing_key,
            "signature": self.sign(self.identity_key),
        }

    def one_time_keys(self, n: int) -> list[dict[str, str]]:
        """``n`` new signed one-time keys, marked published (the next call makes new ones), and
        kept in ``uploaded``."""
        self.account.generate_one_time_keys(n)
        keys = [
            {"key_id": key_id, "key": key.to_base64(), "signature": self.sign(key.to_base64())}
            for key_id, key in sorted(self.account.one_time_keys.items())
        ]
        self.account.mark_keys_as_published()
        self.uploaded += keys
        return keys

    def fallback_key(self) -> dict[str, str]:
        self.account.generate_fallback_key()
        ((key_id, key),) = self.account.fallback_key.items()
        return {"key_id": key_id, "key": key.to_base64(), "signature": self.sign(key.to_base64())}


@dataclass
class Megolm:
    """A sender device's Megolm (group) session, and what a send of an encrypted message is."""

    device_id: str
    session: Any = field(default_factory=vodozemac.GroupSession)

    def send_body(self, plaintext: str, client_msg_id: str) -> dict[str, str]:
        """The body of ``POST .../messages`` (or the fields of a ``send`` frame) carrying
        ``plaintext`` encrypted with the session."""
        return {
            "client_msg_id": client_msg_id,
            "kind": "encrypted",
            "ciphertext": self.session.encrypt(plaintext.encode()).to_base64(),
            "algorithm": "megolm.v1",
            "session_id": self.session.session_id,
            "sender_device": self.device_id,
        }

    def reader(self) -> Any:
        """An inbound session for a recipient (the room key a real client shares over Olm): it
        reads the messages encrypted after it was made."""
        return vodozemac.InboundGroupSession(self.session.session_key)


def decrypt(inbound: Any, ciphertext: str) -> str:
    return bytes(inbound.decrypt(vodozemac.MegolmMessage.from_base64(ciphertext)).plaintext).decode()
