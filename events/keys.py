"""Every Redis key and channel name Tidings uses, built here and nowhere else."""

from __future__ import annotations

import zlib


def recent(conversation_id: str) -> str:
    """Sorted set of the conversation's newest messages (the hot tier)."""
    return f"recent:{conversation_id}"


def idempotency(sender_id: str, client_msg_id: str) -> str:
    """The send recorded for ``(sender, client_msg_id)``, kept for the idempotency window."""
    return f"idem:{sender_id}:{client_msg_id}"


def user_channel(user_id: str) -> str:
    """Pub/sub channel carrying frames for every connected device of a user."""
    return f"deliver:user:{user_id}"


def gateway_channel(gateway_id: int) -> str:
    """Pub/sub channel of one gateway process (named by its leased worker id): the deliver
    stage publishes here, once per gateway, the pushes for the users it holds sockets of."""
    return f"deliver:gw:{gateway_id}"


def route(user_id: str) -> str:
    """Sorted set of the gateways holding a user's sockets (worker ids), scored by the expiry
    (ms) each gateway keeps pushing forward while it holds them."""
    return f"route:{user_id}"


def to_device(user_id: str, device_id: str) -> str:
    """Stream of the to-device messages waiting for one device (E2EE), bounded and expiring."""
    return f"todevice:{user_id}:{device_id}"


def device_lists(user_id: str) -> str:
    """Stream of the users whose device lists changed, for the user's devices to sync (E2EE),
    bounded and expiring."""
    return f"devicelists:{user_id}"


def snowflake_lease(worker_id: int) -> str:
    """Lease on a Snowflake worker id, held by one live process at a time."""
    return f"snowflake:worker:{worker_id}"


def lock(name: str) -> str:
    """A short lease serializing one kind of change across gateway processes."""
    return f"lock:{name}"


def group_shard_channel(shard: int) -> str:
    """Pub/sub channel carrying messages of large groups; every gateway listens to all shards
    and forwards to its local members, so joining a group needs no new subscription."""
    return f"deliver:groups:{shard}"


def encryption_channel() -> str:
    """Pub/sub channel on which the gateway that turns a direct chat's encryption on names the
    conversation to every other gateway, so their flag caches know it at once."""
    return "encryption:enabled"


def rate_limit(kind: str, user_id: str) -> str:
    """A user's token bucket for one kind of request, shared by every gateway process."""
    return f"rate:{kind}:{user_id}"


# Presence. The script (commands/adapters/redis_scripts.py PRESENCE) updates many users' keys
# and the reaper's index in one call, so on a Redis Cluster they must share a slot: users are
# spread over PRESENCE_SHARDS shards, each with its own index, and every key of a shard carries
# the hash tag ``{p<shard>}``. A sweep makes one call per shard it touches (few, and pipelined).
PRESENCE_SHARDS = 16


def presence_shard(user_id: str) -> int:
    """The presence shard of a user: stable across processes (CRC-32, not ``hash()``)."""
    return zlib.crc32(user_id.encode()) % PRESENCE_SHARDS


def _presence(user_id: str) -> str:
    return f"presence:{{p{presence_shard(user_id)}}}:{user_id}"


def presence_online(user_id: str) -> str:
    """Sorted set: the user's connections that are ``online``, scored by expiry (ms)."""
    return f"{_presence(user_id)}:online"


def presence_away(user_id: str) -> str:
    """Sorted set: the user's connections that asked for ``away``, scored by expiry (ms)."""
    return f"{_presence(user_id)}:away"


def presence_closed(user_id: str) -> str:
    """Sorted set: the user's connections that closed, kept for a TTL, scored by expiry (ms)."""
    return f"{_presence(user_id)}:closed"


def presence_info(user_id: str) -> str:
    """Hash: the last announced ``state``, its time ``at`` (µs), ``seen`` (last activity, ms)
    and ``last_seen`` (ms, set when the user went offline)."""
    return _presence(user_id)


def presence_live(shard: int) -> str:
    """Sorted set of one shard's users who may be online, scored by their latest connection
    expiry: the reaper finds here the users whose last device went silent."""
    return f"presence:{{p{shard}}}:live"


def presence_channel(user_id: str) -> str:
    """Pub/sub channel of a user's presence changes, subscribed by gateways with a watcher."""
    return f"deliver:presence:{user_id}"


def media_upload(media_id: str) -> str:
    """A presigned upload handed out and not completed yet (JSON, expires with the URL)."""
    return f"media:upload:{media_id}"


def media_bytes(user_id: str, day: int) -> str:
    """Bytes a user uploaded on one UTC day (days since the epoch), shared by every gateway."""
    return f"media:bytes:{user_id}:{day}"


def push_sent(user_id: str, device_id: str) -> str:
    """Sorted set of the message ids already notified to a device (scored by message time): a
    notification job read again after a crash is not notified twice."""
    return f"push:sent:{{{user_id}}}:{device_id}"
