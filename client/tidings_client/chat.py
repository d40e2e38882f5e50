"""A small terminal chat on the SDK, for trying Tidings in two terminals.

``python3 -m tidings chat alice --to bob`` in one terminal and ``python3 -m tidings chat bob
--to alice`` in another (or ``tidings-chat --url URL --token TOKEN --to bob``). A line of text
is sent to the current conversation; ``/help`` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

from tidings_client.client import TidingsClient
from tidings_client.errors import TidingsError
from tidings_client.models import (
    ConnectionState,
    ConversationChange,
    ErrorEvent,
    Event,
    MessageEvent,
    Presence,
    Receipt,
    Typing,
)

HELP = """commands:
  /to USER              talk to USER (a direct conversation)
  /group TITLE USER...  create a group with these users and talk there
  /open CONVERSATION    talk in a conversation you are in
  /add USER...          add users to the current group
  /leave                leave the current group
  /history [N]          the last N messages here (default 20)
  /inbox                your conversations, with unread counts
  /away, /online        set your presence
  /quit                 leave the chat (Ctrl-D too)
anything else is sent to the current conversation"""


def _clock(ts: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts / 1000)) if ts else "--:--:--"


class Chat:
    """The chat's state and commands; ``say`` prints a line."""

    def __init__(self, client: TidingsClient, say: Callable[[str], None]) -> None:
        self.client = client
        self.say = say
        self.current: str | None = None

    def on_event(self, event: Event) -> None:
        me = self.client.user_id
        if isinstance(event, MessageEvent):
            m = event.message
            where = "" if m.conversation_id == self.current else f" ({m.conversation_id})"
            self.say(f"[{_clock(m.ts)}]{where} {m.sender_id}: {m.body}")
            if m.conversation_id == self.current and m.sender_id != me:
                self.client._spawn(self._read(m.conversation_id, m.message_id))
        elif isinstance(event, Typing) and event.conversation_id == self.current:
            self.say(
                f"* {event.user_id} is typing…" if event.state == "start" else f"* {event.user_id} stopped"
            )
        elif isinstance(event, Receipt) and event.user_id != me and event.conversation_id == self.current:
            self.say(
                f"* {event.user_id} {'read' if event.status == 'read' else 'got'} up to {event.message_id}"
            )
        elif isinstance(event, Presence):
            self.say(f"* {event.user_id} is {event.state}")
        elif isinstance(event, ConversationChange):
            c = event.conversation
            self.say(f"* conversation {c.conversation_id} ({c.title or c.kind}) {event.event}")
        elif isinstance(event, ConnectionState):
            if event.state == "connected":
                self.say(f"* connected to {event.url}")
            else:
                retry = f", again in {event.retry_in_s:.1f}s" if event.retry_in_s is not None else ""
                self.say(f"* disconnected ({event.reason}{retry})")
        elif isinstance(event, ErrorEvent):
            self.say(f"! {event.code}: {event.message}")

    async def _read(self, cid: str, mid: str) -> None:
        try:
            await self.client.mark_read(cid, mid)
        except TidingsError as exc:
            self.say(f"! read receipt: {exc.code}")

    async def switch(self, cid: str, peer: str | None = None) -> None:
        self.current = cid
        await self.client.view(cid)
        if peer is not None:
            await self.client.watch([peer])
        self.say(f"* now in {cid}")
        await self.history(10)

    async def history(self, n: int) -> None:
        if self.current is None:
            self.say("! no conversation: /to USER first")
            return
        page = await self.client.history(self.current, limit=n)
        for m in page.messages:
            self.say(f"[{_clock(m.ts)}] {m.sender_id}: {m.body}")
        if page.messages and page.messages[-1].sender_id != self.client.user_id:
            await self._read(self.current, page.messages[-1].message_id)

    async def handle(self, line: str) -> bool:
        """Run one input line; False to quit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            if self.current is None:
                self.say("! no conversation: /to USER first (/help)")
                return True
            message = await self.client.send(self.current, line)
            self.say(f"[{_clock(message.ts)}] {message.sender_id}: {message.body} ✓")
            return True
        command, *args = line.split()
        if command in ("/quit", "/exit"):
            return False
        if command == "/help":
            self.say(HELP)
        elif command == "/to" and len(args) == 1:
            conversation = await self.client.open_direct(args[0])
            await self.switch(conversation.conversation_id, args[0])
        elif command == "/group" and args:
            group = await self.client.create_group(args[0], args[1:])
            await self.switch(group.conversation_id)
        elif command == "/open" and len(args) == 1:
            await self.switch(args[0])
        elif command == "/add" and args and self.current:
            added = await self.client.add_members(self.current, args)
            self.say(f"* added {', '.join(m.user_id for m in added) or 'nobody new'}")
        elif command == "/leave" and self.current:
            await self.client.leave(self.current)
            self.say(f"* left {self.current}")
            self.current = None
        elif command == "/history":
            await self.history(int(args[0]) if args else 20)
        elif command == "/inbox":
            async for c in self.client.iter_conversations():
                preview = c.last_message.preview if c.last_message else ""
                self.say(f"  {c.conversation_id}  {c.title or ''}  unread {c.unread_count}  {preview or ''}")
        elif command in ("/away", "/online"):
            await self.client.set_presence(command[1:])
        else:
            self.say(f"! unknown or incomplete command {command} (/help)")
        return True


async def run_chat(url: str, token: str, *, to: str | None = None, conversation: str | None = None) -> None:
    """Run the chat on stdin/stdout until ``/quit`` or end of input."""

    def say(text: str) -> None:
        print(text, flush=True)

    client = TidingsClient(url, token)
    chat = Chat(client, say)
    client.on()(chat.on_event)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with client:
        say(f"* signed in as {client.user_id} on device {client.device_id}; /help for commands")
        if to is not None:
            await chat.handle(f"/to {to}")
        elif conversation is not None:
            await chat.switch(conversation)
        while True:
            raw = await reader.readline()
            if not raw:
                break
            try:
                if not await chat.handle(raw.decode("utf-8", errors="replace")):
                    break
            except TidingsError as exc:
                say(f"! {exc.code}: {exc.message}")
            except ValueError as exc:
                say(f"! {exc}")
    say("* bye")


def main(argv: list[str] | None = None) -> None:
    """The ``tidings-chat`` console script."""
    parser = argparse.ArgumentParser(prog="tidings-chat", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8787", help="the gateway's base URL")
    parser.add_argument("--token", required=True, help="the device's token (python3 -m tidings token USER)")
    parser.add_argument("--to", help="start in the direct conversation with this user")
    parser.add_argument("--conversation", help="start in this conversation")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_chat(args.url, args.token, to=args.to, conversation=args.conversation))
    except KeyboardInterrupt:
        pass
    except TidingsError as exc:
        sys.exit(f"tidings-chat: {exc.code}: {exc.message}")


if __name__ == "__main__":
    main()
