"""KIP-227 fetch sessions, the client's half (``streams.adapters.kafka_fetch_session``): what a
request names and how an answer moves the session, by Kafka's rules (``FetchSession.scala``,
the Java client's ``FetchSessionHandler``). The broker's side is tested against the real Kafka
(tests/integration/test_kafka_fetch_session.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.protocol.fetch import FetchRequest_v4, FetchRequest_v11, FetchResponse_v11
from aiokafka.structs import TopicPartition

from streams.adapters.kafka_fetch_session import FetchSession, SessionFetchRequest, SessionReplies

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
MAX = 1048576


def _request(session: FetchSession, partitions: list[tuple[TopicPartition, int]]) -> SessionFetchRequest:
    return session.request(
        partitions, MAX, max_wait_ms=500, min_bytes=1, max_bytes=52428800, isolation_level=0, rack_id=""
    )


def _sent(request: SessionFetchRequest) -> Any:
    """What goes on the wire (v11), decoded again."""
    return FetchRequest_v11.decode(request.build(FetchRequest_v11).encode())


def _named(struct: Any) -> dict[TopicPartition, int]:
    return {TopicPartition(t, p[0]): p[2] for t, parts in struct.topics for p in parts}


def _answer(session: FetchSession, request: SessionFetchRequest, *, session_id: int, error: int = 0) -> None:
    session.answered(request, SimpleNamespace(error_code=error, session_id=session_id))


def test_the_first_request_is_full_and_asks_for_a_session() -> None:
    session = FetchSession()
    request = _request(session, [(A0, 5), (A1, 7), (B0, 0)])
    struct = _sent(request)
    assert (struct.session_id, struct.session_epoch) == (0, 0)
    assert _named(struct) == {A0: 5, A1: 7, B0: 0}
    assert struct.forgotten_topics_data == []
    # aiokafka checks the answer against the full view
    assert {TopicPartition(t, p): o for t, parts in request.topics for p, o, _ in parts} == {
        A0: 5,
        A1: 7,
        B0: 0,
    }


def test_in_a_session_only_moved_partitions_are_named_and_dropped_ones_forgotten() -> None:
    session = FetchSession()
    first = _request(session, [(A0, 5), (A1, 7), (B0, 0)])
    _sent(first)
    _answer(session, first, session_id=42)
    assert (session.session_id, session.epoch) == (42, 1)

    # A0 brought records (its position moved); B0 was paused (not fetched now).
    second = _request(session, [(A0, 9), (A1, 7)])
    struct = _sent(second)
    assert (struct.session_id, struct.session_epoch) == (42, 1)
    assert _named(struct) == {A0: 9}
    assert [(t, list(p)) for t, p in struct.forgotten_topics_data] == [("b", [0])]
    assert {TopicPartition(t, p): o for t, parts in second.topics for p, o, _ in parts} == {A0: 9, A1: 7}
    _answer(session, second, session_id=42)
    assert session.epoch == 2

    # Nothing moved: an empty request in the session; B0 back (resumed): named again.
    third = _request(session, [(A0, 9), (A1, 7), (B0, 0)])
    struct = _sent(third)
    assert (struct.session_id, struct.session_epoch) == (42, 2)
    assert _named(struct) == {B0: 0} and struct.forgotten_topics_data == []


@pytest.mark.parametrize("error", [70, 71])  # FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH
def test_an_error_answer_ends_the_session_and_the_next_request_is_full(error: int) -> None:
    session = FetchSession()
    first = _request(session, [(A0, 5), (A1, 7)])
    _sent(first)
    _answer(session, first, session_id=42)
    second = _request(session, [(A0, 6), (A1, 7)])
    _sent(second)
    _answer(session, second, session_id=0, error=error)
    struct = _sent(_request(session, [(A0, 6), (A1, 7)]))
    assert (struct.session_id, struct.session_epoch) == (0, 0)
    assert _named(struct) == {A0: 6, A1: 7}


def test_a_broker_that_keeps_no_session_gets_full_requests() -> None:
    session = FetchSession()
    first = _request(session, [(A0, 5)])
    _sent(first)
    _answer(session, first, session_id=0)  # its session cache is full
    struct = _sent(_request(session, [(A0, 5)]))
    assert (struct.session_id, struct.session_epoch) == (0, 0) and _named(struct) == {A0: 5}


def test_the_epoch_wraps_to_one() -> None:
    session = FetchSession()
    session.session_id, session.epoch = 42, 2**31 - 1
    request = _request(session, [(A0, 5)])
    _sent(request)
    _answer(session, request, session_id=42)
    assert session.epoch == 1


def test_an_old_broker_gets_full_requests_without_a_session() -> None:
    session = FetchSession()
    request = _request(session, [(A0, 5), (B0, 1)])
    struct = request.build(FetchRequest_v4)
    assert {(t, p[0], p[1]) for t, parts in struct.topics for p in parts} == {("a", 0, 5), ("b", 0, 1)}
    assert session.supported is False
    _answer(session, request, session_id=0)
    assert (session.session_id, session.epoch) == (0, 0)


class _Client:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cluster = "the cluster"

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        request.build(FetchRequest_v11)
        return self.outcome


async def test_the_client_hands_answers_and_failures_to_the_session() -> None:
    session = FetchSession()
    response = FetchResponse_v11(0, 0, 42, [])
    replies = SessionReplies(_Client(response))
    assert replies.cluster == "the cluster"  # the rest is aiokafka's client
    assert await replies.send(1, _request(session, [(A0, 5)])) is response
    assert (session.session_id, session.epoch) == (42, 1)

    replies = SessionReplies(_Client(TimeoutError()))
    with pytest.raises(TimeoutError):
        await replies.send(1, _request(session, [(A0, 6)]))
    assert (session.session_id, session.epoch, session.partitions) == (0, 0, {})
