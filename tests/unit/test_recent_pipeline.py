"""What ``RedisCacheAndPush`` puts in its pipeline per event. On one instance: one script call per
message that caches it and routes its pushes to the recipients' gateways, and plain publishes on
group shards. On a Redis Cluster (a real, unconnected ``ClusterPipeline``): the script only
caches, and every push is a sharded SPUBLISH of its own."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

from events import MessageSent
from projections.adapters.recent import _cache, _route
from projections.delivery import Push, routed, unrouted
from tests.factories import message_sent, receipt_recorded


class RecordingPipe:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def execute_command(self, command: str, *args: Any) -> None:
        self.calls.append((command.lower(), *args))

    def publish(self, channel: str, payload: bytes) -> None:
        self.calls.append(("publish", channel, payload))


def _message() -> MessageSent:
    return message_sent(7, conversation_id="dm:a:b", sender_id="a", client_msg_id="c", body="hi", ts=1)


def test_on_a_cluster_the_script_only_caches_and_each_push_is_a_sharded_publish() -> None:
    pipe = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 1)]).pipeline()  # never connects
    pushes = [Push("deliver:user:a", b"mframe"), Push("deliver:user:b", b"mframe")]
    _cache(_message(), pipe, 50, "sha", pushes)
    receipt = receipt_recorded(7, conversation_id="dm:a:b", user_id="b", device_id="d", status="read", ts=1)
    _cache(receipt, pipe, 50, "sha", [Push("deliver:user:a", b"mreceipt")])
    calls = [c.args for c in pipe._execution_strategy._command_queue]  # type: ignore[attr-defined]
    assert [c[0] for c in calls] == ["EVALSHA", "SPUBLISH", "SPUBLISH", "SPUBLISH"]
    # the script takes the member, the size and the TTL only: no payload, no channel
    [(_, sha, nkeys, key, member, size, ttl)] = calls[:1]
    assert (sha, nkeys, key, size, ttl) == ("sha", 1, "recent:dm:a:b", 50, 7 * 24 * 3600)
    assert member.startswith(b"00000000000000000007|")
    assert calls[1:] == [
        ("SPUBLISH", "deliver:user:a", b"mframe"),
        ("SPUBLISH", "deliver:user:b", b"mframe"),
        ("SPUBLISH", "deliver:user:a", b"mreceipt"),
    ]


# --- single instance: pushes routed to gateways (projections.delivery) ---------------------


def test_a_message_is_cached_and_routed_by_one_script_call_with_its_recipients_route_keys() -> None:
    pipe = RecordingPipe()
    pushes = [Push("deliver:user:a", b"mframe"), Push("deliver:user:b", b"mframe")]
    _route(_message(), pipe, "sha", pushes, 1000)  # type: ignore[arg-type]
    [(op, sha, nkeys, *rest)] = pipe.calls
    assert (op, sha, nkeys) == ("evalsha", "sha", 3)
    assert rest[:3] == ["recent:dm:a:b", "route:a", "route:b"]
    flag, member, payload, now = rest[3:]
    assert (flag, payload, now) == (1, b"mframe", 1000)
    assert member.startswith(b"00000000000000000007|")


def test_pushes_keep_their_order_a_shard_publish_between_two_routed_runs() -> None:
    # MembersAdded: the others hear "updated" on the group's shard first, then the newcomers
    # their "joined"; MemberRemoved: "left" to the one removed, then "updated" to the rest.
    pipe = RecordingPipe()
    receipt = receipt_recorded(7, conversation_id="g1", user_id="b", device_id="d", status="read", ts=1)
    pushes = [
        Push("deliver:user:x", b"-left"),
        Push("deliver:groups:3", b"mupdated"),
        Push("deliver:user:y", b"+joined"),
        Push("deliver:user:z", b"+joined"),
        Push("deliver:user:a", b"mother"),
    ]
    _route(receipt, pipe, "sha", pushes, 5)  # type: ignore[arg-type]
    assert [c[0] for c in pipe.calls] == ["evalsha", "publish", "evalsha", "evalsha"]
    first, shard, joined, other = pipe.calls
    assert first[2:] == (1, "route:x", 0, b"", b"-left", 5)
    assert shard == ("publish", "deliver:groups:3", b"mupdated")
    assert joined[2:] == (2, "route:y", "route:z", 0, b"", b"+joined", 5)
    assert other[2:] == (1, "route:a", 0, b"", b"mother", 5)


def test_a_large_groups_message_is_cached_by_the_script_then_published_on_its_shard() -> None:
    pipe = RecordingPipe()
    _route(_message(), pipe, "sha", [Push("deliver:groups:1", b"mframe")], 9)  # type: ignore[arg-type]
    [cache, shard] = pipe.calls
    assert cache[:5] == ("evalsha", "sha", 1, "recent:dm:a:b", 1) and cache[-1] == 9  # no recipient
    assert shard == ("publish", "deliver:groups:1", b"mframe")


def test_routed_payloads_name_the_recipients_before_the_user_channel_payload() -> None:
    data = routed(["alice", "b.o-b@x"], b"+g1\0{}")
    assert data == b"alice,b.o-b@x\0+g1\0{}"
    assert unrouted(data) == (["alice", "b.o-b@x"], b"+g1\0{}")
