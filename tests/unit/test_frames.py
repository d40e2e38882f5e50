import orjson
import pytest

from projections.wire import FrameError, PingFrame, SendFrame, parse_frame

LIMIT = 64 * 1024


def _error(raw: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_frame(raw, LIMIT)
    return info.value


def test_send_frame_parses_and_ignores_unknown_fields() -> None:
    ref, frame = parse_frame(
        orjson.dumps(
            {
                "type": "send",
                "ref": "r1",
                "client_msg_id": "c",
                "conversation_id": "dm:a:b",
                "body": "hi",
                "future_field": 1,
            }
        ).decode(),
        LIMIT,
    )
    assert ref == "r1" and isinstance(frame, SendFrame) and frame.body == "hi"
    assert isinstance(parse_frame('{"type":"ping"}', LIMIT)[1], PingFrame)


@pytest.mark.parametrize(
    ("raw", "code", "ref"),
    [
        ("{", "invalid", None),
        ("[1, 2]", "invalid", None),
        ('"just a string"', "invalid", None),
        (b'{"type": "ping"}', "invalid", None),
        ('{"type": "ping", "ref": 5}', "invalid", None),
        ('{"ref": "r", "no_type": 1}', "invalid", "r"),
        ('{"type": "launch", "ref": "r"}', "invalid", "r"),
        ('{"type": "receipt", "ref": "r"}', "invalid", "r"),
        ('{"type": "send", "ref": "r", "conversation_id": "dm:a:b"}', "invalid", "r"),
        ('{"type": "send", "ref": "r", "client_msg_id": "", "conversation_id": "x"}', "invalid", "r"),
        ('{"type": "send", "ref": "r", "client_msg_id": 5, "conversation_id": "x"}', "invalid", "r"),
        (
            '{"type": "send", "ref": "r", "client_msg_id": "c", "conversation_id": "x", "kind": "gif"}',
            "invalid",
            "r",
        ),
        (
            '{"type": "send", "ref": "r", "client_msg_id": "c", "conversation_id": "x", "body": [1]}',
            "invalid",
            "r",
        ),
        ("[" * 100_000 + "]" * 100_000, "too_large", None),
        ('{"type": "ping", "pad": "' + "é" * 40_000 + '"}', "too_large", None),
    ],
)
def test_bad_frames_get_their_code_and_best_ref(raw: str | bytes, code: str, ref: str | None) -> None:
    error = _error(raw)
    assert (error.error.code, error.ref) == (code, ref)


def test_deep_nesting_within_size_is_invalid_not_a_crash() -> None:
    error = _error("[" * 10_000 + "]" * 10_000)
    assert error.error.code == "invalid"


def test_a_type_that_is_not_a_string_is_invalid_not_a_crash() -> None:
    # Found by the fuzz tests: `["send"] in NOT_YET` raised TypeError (unhashable), which
    # escaped the socket's handler and closed the socket.
    import pytest

    from projections.wire import FrameError, parse_frame

    for raw in ('{"type": ["send"], "ref": "r"}', '{"type": {"a": 1}, "ref": "r"}'):
        with pytest.raises(FrameError) as info:
            parse_frame(raw, 65536)
        assert info.value.error.code == "invalid" and info.value.ref == "r"
