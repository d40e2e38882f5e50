"""The authorization matrix: every conversation endpoint and frame, called by the group's owner,
an admin, a member, a removed member, a stranger and a holder of an expired token, and for a
direct chat by a participant and a stranger. Each cell is one expected status (or frame)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets

from events import direct_conversation_id
from tests.e2e.conftest import Client, System, user
from tests.e2e.test_groups import create_group, members_of

ROLES = ("owner", "admin", "member", "removed", "stranger", "expired")
ALLOWED = "allowed"
# action -> the roles allowed to do it (everyone else: 403; an expired token: 401)
GROUP_HTTP: dict[str, tuple[str, ...]] = {
    "GET conversation": ("owner", "admin", "member"),
    "PATCH conversation": ("owner", "admin"),
    "GET members": ("owner", "admin", "member"),
    "POST members": ("owner", "admin"),
    "DELETE member": ("owner", "admin"),
    "PUT member role": ("owner",),
    "POST messages": ("owner", "admin", "member"),
    "GET messages": ("owner", "admin", "member"),
    "POST receipts": ("owner", "admin", "member"),
    "GET receipts": ("owner", "admin", "member"),
    # a user's presence: for those who share a conversation with them
    "GET member presence": ("owner", "admin", "member"),
    # one's own sync: anyone with a valid token
    "GET sync": ("owner", "admin", "member", "removed", "stranger"),
}
FRAMES = ("send", "receipt", "view", "typing", "watch", "presence")
FRAME_ALLOWED = {
    "send": ("owner", "admin", "member"),
    "receipt": ("owner", "admin", "member"),
    "view": ("owner", "admin", "member"),
    "typing": ("owner", "admin", "member"),
    "watch": ("owner", "admin", "member"),  # a group member's presence
    "presence": ("owner", "admin", "member", "removed", "stranger"),  # one's own
}


class Group:
    def __init__(self, system: System) -> None:
        self.system = system
        self.owner, self.admin, self.member, self.removed = (user() for _ in range(4))
        self.stranger = user()
        # One removal target per role, so that each allowed removal has someone to remove.
        self.targets = {role: user() for role in ROLES}
        # and one per role whose role is (re)set, never removed
        self.kept = {role: user() for role in ROLES}
        self.cid = create_group(
            system,
            self.owner,
            [self.admin, self.member, self.removed, *self.targets.values(), *self.kept.values()],
        )
        base = f"/v1/conversations/{self.cid}/members"
        assert (
            system.request("PUT", f"{base}/{self.admin}", user=self.owner, body={"role": "admin"})[0] == 200
        )
        assert system.request("DELETE", f"{base}/{self.removed}", user=self.owner)[0] == 204
        for _ in range(100):  # the membership read model follows the log
            roles = members_of(system, self.cid, self.owner)
            if roles.get(self.admin) == "admin" and self.removed not in roles:
                break
            time.sleep(0.1)
        status, body = system.request(
            "POST",
            f"/v1/conversations/{self.cid}/messages",
            user=self.owner,
            body={"client_msg_id": uuid.uuid4().hex, "body": "matrix"},
        )
        assert status == 202, body
        self.message_id = body["message_id"]

    def who(self, role: str) -> str:
        return {
            "owner": self.owner,
            "admin": self.admin,
            "member": self.member,
            "removed": self.removed,
            "stranger": self.stranger,
            "expired": self.member,
        }[role]

    def token(self, role: str) -> str:
        return self.system.token(self.who(role), ttl_s=-10 if role == "expired" else 3600)


@pytest.fixture(scope="module")
def group(system: System) -> Group:
    return Group(system)


def _http_call(group: Group, action: str, role: str) -> tuple[int, Any]:
    base = f"/v1/conversations/{group.cid}"
    calls: dict[str, tuple[str, str, Any]] = {
        "GET conversation": ("GET", base, None),
        "PATCH conversation": ("PATCH", base, {"title": f"renamed by {role}"}),
        "GET members": ("GET", f"{base}/members", None),
        "POST members": ("POST", f"{base}/members", {"user_ids": [user()]}),
        "DELETE member": ("DELETE", f"{base}/members/{group.targets[role]}", None),
        "PUT member role": ("PUT", f"{base}/members/{group.kept[role]}", {"role": "member"}),
        "POST messages": ("POST", f"{base}/messages", {"client_msg_id": uuid.uuid4().hex, "body": "x"}),
        "GET messages": ("GET", f"{base}/messages", None),
        "POST receipts": ("POST", f"{base}/receipts", {"message_id": group.message_id, "status": "read"}),
        "GET receipts": ("GET", f"{base}/receipts", None),
        "GET member presence": ("GET", f"/v1/users/{group.targets['member']}/presence", None),
        "GET sync": ("GET", "/v1/sync", None),
    }
    method, path, body = calls[action]
    return group.system.request(method, path, body=body, token=group.token(role))


def _expected(allowed: tuple[str, ...], role: str) -> str | int:
    if role == "expired":
        return 401
    return ALLOWED if role in allowed else 403


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(GROUP_HTTP))
def test_group_http_matrix(group: Group, action: str, role: str) -> None:
    status, body = _http_call(group, action, role)
    expected = _expected(GROUP_HTTP[action], role)
    if expected == ALLOWED:
        assert 200 <= status < 300, (action, role, status, body)
    else:
        code = {401: "unauthorized", 403: "forbidden"}[int(expected)]
        assert (status, body["error"]["code"]) == (expected, code), (action, role, body)


def _frame(group: Group, kind: str, ref: str) -> dict[str, Any]:
    cid = group.cid
    return {
        "send": {"type": "send", "ref": ref, "client_msg_id": ref, "conversation_id": cid, "body": "x"},
        "receipt": {
            "type": "receipt",
            "ref": ref,
            "conversation_id": cid,
            "message_id": group.message_id,
            "status": "delivered",
        },
        "view": {"type": "view", "ref": ref, "conversation_id": cid},
        "typing": {"type": "typing", "ref": ref, "conversation_id": cid, "state": "start"},
        "watch": {"type": "watch", "ref": ref, "user_ids": [group.targets["member"]]},
        "presence": {"type": "presence", "ref": ref, "state": "online"},
    }[kind]


async def _outcome(client: Client, frame: dict[str, Any]) -> str:
    """``ack`` or ``error:<code>`` or ``quiet`` (accepted without a reply: a ping behind it is
    answered first)."""
    ref = frame["ref"]
    await client.send(frame)
    await client.send({"type": "ping", "ref": f"p{ref}"})
    while True:
        raw = orjson.loads(await asyncio.wait_for(client.ws.recv(), 10))
        if raw.get("ref") == ref:
            return "ack" if raw["type"] == "ack" else f"error:{raw['code']}"
        if raw == {"type": "pong", "ref": f"p{ref}"}:
            return "quiet"


@pytest.mark.parametrize("role", [r for r in ROLES if r != "expired"])
async def test_group_frame_matrix(system: System, group: Group, role: str) -> None:
    async with system.connect(group.who(role)) as client:
        for kind in FRAMES:
            outcome = await _outcome(client, _frame(group, kind, uuid.uuid4().hex[:12]))
            allowed = role in FRAME_ALLOWED[kind]
            if kind == "send":
                assert outcome == ("ack" if allowed else "error:forbidden"), (kind, role)
            else:
                assert outcome == ("quiet" if allowed else "error:forbidden"), (kind, role)


async def test_an_expired_token_opens_no_socket(group: Group) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(f"{group.system.ws}?token={group.token('expired')}"):
            pass
    assert info.value.response.status_code == 401


DIRECT_CALLS: list[tuple[str, Callable[[str], str], Any]] = [
    ("GET", lambda cid: f"/v1/conversations/{cid}", None),
    ("GET", lambda cid: f"/v1/conversations/{cid}/members", None),
    ("GET", lambda cid: f"/v1/conversations/{cid}/messages", None),
    ("POST", lambda cid: f"/v1/conversations/{cid}/messages", "message"),
    ("GET", lambda cid: f"/v1/conversations/{cid}/receipts", None),
    ("POST", lambda cid: f"/v1/conversations/{cid}/members", {"user_ids": ["someone"]}),
    ("PATCH", lambda cid: f"/v1/conversations/{cid}", {"title": "no"}),
]


@pytest.mark.parametrize(("method", "path", "body"), DIRECT_CALLS)
def test_direct_chat_matrix(system: System, method: str, path: Callable[[str], str], body: Any) -> None:
    alice, bob, eve = user(), user(), user()
    cid = direct_conversation_id(alice, bob)

    def payload() -> Any:
        return {"client_msg_id": uuid.uuid4().hex, "body": "x"} if body == "message" else body

    stranger_status, stranger_body = system.request(method, path(cid), user=eve, body=payload())
    assert (stranger_status, stranger_body["error"]["code"]) == (403, "forbidden")
    expired_status, _ = system.request(
        method, path(cid), token=system.token(alice, ttl_s=-10), body=payload()
    )
    assert expired_status == 401
    status, answer = system.request(method, path(cid), user=alice, body=payload())
    if method in ("GET",) or body == "message":
        assert 200 <= status < 300, answer
    else:  # a direct chat has no members to change and no title
        assert status == 400 and answer["error"]["code"] == "invalid"
