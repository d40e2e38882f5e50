"""What the read models answer with: the shapes that the write side's checks and the gateway's
queries read back (a device's keys, an upload, a stored object's listing, a user's presence).
Plain values: the projections fill them from their stores, the command side only reads them."""

from __future__ import annotations

from dataclasses import dataclass

from events import PresenceState


@dataclass(frozen=True)
class DeviceKeys:
    user_id: str
    device_id: str
    identity_key: str
    signing_key: str
    signature: str


@dataclass(frozen=True)
class MediaRow:
    """One upload as the read model knows it."""

    media_id: str
    uploader_id: str
    object_key: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    created_ts: int
    processed: bool = False
    thumbnail_key: str | None = None
    shared_key: str | None = None
    location_removed: bool = False
    deleted: bool = False

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    def public(self) -> dict[str, object]:
        """The protocol's media object."""
        out: dict[str, object] = {
            "media_id": self.media_id,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "thumbnail": self.thumbnail_key is not None,
        }
        if self.width is not None and self.height is not None:
            out["width"], out["height"] = self.width, self.height
        return out


@dataclass(frozen=True)
class MediaListing:
    media_id: str
    created_ts: int
    deleted: bool
    keys: tuple[str, ...]  # its object, thumbnail and shared copy


@dataclass(frozen=True)
class PresenceView:
    user_id: str
    state: PresenceState
    last_seen: int | None  # ms; only when offline
    at: int = 0  # µs, when this state began (orders it against transitions)
