"""``python3 -m tidings chat USER``: the terminal chat on the SDK, driven through its stdin and
read on its stdout, talking with an SDK client over the running system."""

from __future__ import annotations

import asyncio
import sys

from tidings_client import MessageEvent, Receipt, TidingsClient, direct_conversation_id

from tests.e2e.conftest import ROOT, System, user


async def _line_with(stdout: asyncio.StreamReader, text: str, seen: list[str], timeout: float = 30) -> str:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            raw = await stdout.readline()
            if not raw:
                raise AssertionError(f"the chat ended before {text!r}: {seen}")
            line = raw.decode().rstrip("\n")
            seen.append(line)
            if text in line:
                return line


async def test_the_terminal_chat_talks_with_an_sdk_client(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with TidingsClient(system.http, system.token(bob, "sdk"), heartbeat_s=1.0) as b:
        messages, receipts = b.events(MessageEvent), b.events(Receipt)
        chat = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidings",
            "chat",
            alice,
            "--to",
            bob,
            "--url",
            system.http,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert chat.stdin is not None and chat.stdout is not None
        seen: list[str] = []
        try:
            await _line_with(chat.stdout, f"* now in {cid}", seen, timeout=60)
            chat.stdin.write(b"hello from the terminal\n")
            await chat.stdin.drain()
            got = (await messages.next(timeout=20)).message
            assert (got.sender_id, got.conversation_id, got.body) == (alice, cid, "hello from the terminal")
            await _line_with(chat.stdout, "hello from the terminal ✓", seen)
            answer = await b.send(cid, "hi terminal")
            await _line_with(chat.stdout, f"{bob}: hi terminal", seen)
            # The chat marks what it shows as read.
            read = await receipts.next(timeout=20)
            while read.user_id != alice:  # bob's own watermark moves with his send
                read = await receipts.next(timeout=20)
            assert (read.user_id, read.message_id, read.status) == (alice, answer.message_id, "read")
            chat.stdin.write(b"/quit\n")
            await chat.stdin.drain()
            await _line_with(chat.stdout, "* bye", seen)
            assert await asyncio.wait_for(chat.wait(), 20) == 0
        finally:
            if chat.returncode is None:
                chat.kill()
                await chat.wait()
