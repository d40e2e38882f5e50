"""``TidingsClient``: one device of one user, over the WebSocket and the HTTP API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import json
import logging
import random
import ssl
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

import httpx

from tidings_client.backoff import Backoff
from tidings_client.errors import ClientClosed, TidingsError, Unauthorized, Unavailable, error_for
from tidings_client.media import MediaApi
from tidings_client.models import (
    ConnectionState,
    Conversation,
    ConversationChange,
    ErrorEvent,
    Event,
    HistoryPage,
    Media,
    Member,
    Message,
    MessageEvent,
    Page,
    Presence,
    Receipt,
    Typing,
    Watermarks,
)
from tidings_client.push import PushApi
from tidings_client.store import CursorStore, MemoryCursorStore
from tidings_client.transport import (
    Connector,
    HandshakeRejected,
    Transport,
    TransportClosed,
    websockets_connect,
)

if TYPE_CHECKING:
    from tidings_client.e2ee import E2EE, KeyServer, KeyStore

log = logging.getLogger("tidings_client")

E = TypeVar("E")
Callback = Callable[[Any], Awaitable[None] | None]
WireTap = Callable[[str, dict[str, Any]], None]

_CLOSED = object()
_ALL_EVENTS: tuple[type, ...] = (
    MessageEvent,
    Receipt,
    Typing,
    Presence,
    ConversationChange,
    ConnectionState,
    ErrorEvent,
)


def direct_conversation_id(a: str, b: str) -> str:
    """The id of the direct conversation of ``a`` and ``b``: ``dm:`` and the two ids in byte order."""
    first, second = sorted((a, b), key=lambda s: s.encode())
    return f"dm:{first}:{second}"


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without checking its signature (the server checks it)."""
    try:
        payload = token.split(".")[1]
        return cast(dict[str, Any], json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError) as exc:
        raise ValueError("the token is not a JWT") from exc


class _Seen:
    """The message ids already handed to the app (the newest ``capacity`` of them)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, message_id: str) -> bool:
        """True if ``message_id`` is new (and now remembered)."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids


@dataclass
class _Outgoing:
    client_msg_id: str
    frame: dict[str, Any]
    future: asyncio.Future[Message]
    sent_on: int = -1  # the connection number it was last sent on
    attempts: int = 0
    unavailable: int = 0  # `unavailable` answers so far (each retry waits longer)
    media: Media | None = None
    plain: dict[str, Any] | None = None  # the plaintext of an encrypted send


class EventStream(AsyncIterator[E]):
    """Events of the chosen types, from the moment the stream was made until ``close()`` or the
    client closes. An async iterator; ``await stream.next(timeout)`` for one event."""

    def __init__(self, client: TidingsClient, types: tuple[type, ...]) -> None:
        self._client = client
        self._types = types
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        client._streams.add(self)

    def _offer(self, event: object) -> None:
        if event is _CLOSED or isinstance(event, self._types):
            self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise StopAsyncIteration
        return cast(E, item)

    async def next(self, timeout: float | None = None) -> E:  # noqa: ASYNC109 - a convenience
        """The next event; ``TimeoutError`` after ``timeout`` seconds, ``ClientClosed`` at the end."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ClientClosed("the client is closed") from None

    def close(self) -> None:
        """Stop receiving events into this stream."""
        self._client._streams.discard(self)
        self._queue.put_nowait(_CLOSED)


class TidingsClient:
    """One device of one user.

    ``url`` is the gateway's base URL (``http://host:8787``), or several: on a failure or a
    ``reconnect`` frame the client moves to the next. ``token`` is the device's JWT (or a function
    returning a fresh one, called at each connection).

    The client keeps one WebSocket open: it sends a ``ping`` every ``heartbeat_s`` and treats a
    ``pong`` missing for ``pong_timeout_s`` (default ``heartbeat_s``) as a dead connection; it
    reconnects after losing it (``Backoff``: 1 s doubling to 30 s, full jitter; a ``reconnect``
    frame's ``after_ms`` instead); after each (re)connection it syncs from the stored cursor
    (``cursor_store``), so the events it yields miss nothing, and it drops messages it already
    yielded (by ``message_id``). Follow-up syncs come ``resync_after_s`` after each resume, then
    at doubling gaps up to ``resync_max_gap_s`` until the server's sync has caught up with the
    pushes (at most ``resync_for_s``): a message pushed before the socket was registered is found
    only once the read model behind ``/v1/sync`` has applied it. ``send()`` goes through an
    outbox: unacknowledged sends are sent again, with the same ``client_msg_id``, on the next
    connection.

    ``user_id`` and ``device_id`` are the token's ``sub`` and ``dev`` claims. ``connector`` and
    ``http_transport`` replace the WebSocket and HTTP transports (for tests). ``wire_tap``, if
    given, sees the wire before the client's own handling (for measuring tools such as the fault
    suite: e.g. pushes counted before the dedup): it is called with ``("in", frame)`` for every
    frame received, ``("out", frame)`` for every ``send`` frame transmitted (a resend too) and
    ``("sync", page)`` for every ``/v1/sync`` answer; it must not block or raise.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | Callable[[], str],
        *,
        cursor_store: CursorStore | None = None,
        heartbeat_s: float = 30.0,
        pong_timeout_s: float | None = None,
        backoff: Backoff | None = None,
        typing_refresh_s: float = 3.0,
        typing_idle_s: float = 5.0,
        unavailable_retry_s: float = 1.0,
        unavailable_retry_cap_s: float = 10.0,
        resync_after_s: Sequence[float] = (1.0, 5.0),
        resync_max_gap_s: float = 30.0,
        resync_for_s: float = 120.0,
        http_timeout_s: float = 15.0,
        seen_capacity: int = 100_000,
        key_wait_s: float = 10.0,
        connector: Connector | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        wire_tap: WireTap | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._url_index = 0
        self._token = token
        claims = token_claims(self.token)
        self.user_id: str = str(claims["sub"])
        """The user of the token (claim ``sub``)."""
        self.device_id: str = str(claims.get("dev") or "default")
        """The device of the token (claim ``dev``)."""
        self.cursor_store: CursorStore = cursor_store or MemoryCursorStore()
        self.heartbeat_s = heartbeat_s
        self.pong_timeout_s = heartbeat_s if pong_timeout_s is None else pong_timeout_s
        self.backoff = backoff or Backoff()
        self.typing_refresh_s = typing_refresh_s
        self.typing_idle_s = typing_idle_s
        self.unavailable_retry_s = unavailable_retry_s
        self.unavailable_retry_cap_s = max(unavailable_retry_cap_s, unavailable_retry_s)
        self.resync_after_s = tuple(resync_after_s)
        self.resync_max_gap_s = resync_max_gap_s
        self.resync_for_s = resync_for_s
        self._connector: Connector = connector or websockets_connect
        self._http = httpx.AsyncClient(
            timeout=http_timeout_s, transport=http_transport, verify=_shared_ssl_context()
        )
        self._seen = _Seen(seen_capacity)
        self._outbox: OrderedDict[str, _Outgoing] = OrderedDict()
        self._refs: dict[str, str] = {}  # ref of a send frame -> client_msg_id
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._streams: set[EventStream[Any]] = set()
        self._callbacks: list[tuple[tuple[type, ...], Callback]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ws: Transport | None = None
        self._connection = 0
        self._ready = asyncio.Event()
        self._resuming = False
        self._held: list[Message] = []
        self._reconnect_after: float | None = None
        self._fatal: TidingsError | None = None
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._view: str | None = None
        self._watch: list[str] | None = None
        self._presence: str | None = None
        self._typing: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._sync_lock = asyncio.Lock()
        # While a resume's follow-up syncs run: each message pushed on this connection, with
        # its arrival number, or None once a sync returned it too (see _resync).
        self._live: dict[str, int | None] | None = None
        self._pushes = 0
        self._tap = wire_tap
        self.media = MediaApi(self)
        """Media upload and download (``MediaApi``)."""
        self.push = PushApi(self)
        """Push registration of this device and conversation mutes (``PushApi``)."""
        self.e2ee: E2EE | None = None
        """End-to-end encryption of this device, once ``enable_e2ee()`` was called."""
        self.key_wait_s = key_wait_s
        self._encrypted: dict[str, bool] = {}  # conversation_id -> its encrypted flag
        self._awaiting: dict[str, list[Message]] = {}  # Megolm session_id -> messages without its key

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The current token."""
        return self._token() if callable(self._token) else self._token

    @property
    def url(self) -> str:
        """The gateway base URL in use."""
        return self.urls[self._url_index]

    @property
    def connected(self) -> bool:
        """True while the WebSocket is open and resumed."""
        return self._ready.is_set()

    async def __aenter__(self) -> TidingsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Start the connection and wait until it is open and resumed (the first sync done).
        Raises ``Unauthorized``/``Forbidden`` if the gateway refuses the token, ``Unavailable``
        if no gateway answered within ``timeout`` seconds (the client is then closed)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="tidings-client")
        try:
            await asyncio.wait_for(self.wait_connected(), timeout)
        except TimeoutError:
            await self.close()
            raise Unavailable(f"no gateway answered within {timeout}s: {', '.join(self.urls)}") from None
        except TidingsError:
            await self.close()
            raise

    async def wait_connected(self) -> None:
        """Until the connection is open and resumed (raises the error that stopped the client)."""
        while not self._ready.is_set():
            if self._fatal is not None:
                raise self._fatal
            if self._closing:
                raise ClientClosed("the client is closed")
            waiter = asyncio.create_task(self._ready.wait())
            stopper = asyncio.create_task(self._wakeup.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            self._wakeup.clear()
            if self._fatal is not None:
                raise self._fatal

    async def close(self) -> None:
        """Close the connection; pending ``send()`` calls raise ``ClientClosed``."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        for _, handle in self._typing.values():
            handle.cancel()
        self._typing.clear()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for entry in self._outbox.values():
            if not entry.future.done():
                entry.future.set_exception(ClientClosed("the client closed before the send was acknowledged"))
        self._outbox.clear()
        for task in list(self._tasks):
            task.cancel()
        for stream in list(self._streams):
            stream.close()
        await self._http.aclose()

    # ---- events ---------------------------------------------------------------------------

    def events(self, *types: type[E]) -> EventStream[E]:
        """A stream of the events of ``types`` (all events without types) from now on, e.g.
        ``async for event in client.events(MessageEvent): ...``."""
        return EventStream(self, types or _ALL_EVENTS)

    def on(self, *types: type[E]) -> Callable[[Callable[[E], Awaitable[None] | None]], Callable[[E], Any]]:
        """A decorator registering a callback (plain or ``async``) for events of ``types``:
        ``@client.on(MessageEvent)``. Callbacks run in the order events arrive; an async one
        runs as its own task. An exception in a callback is logged, never hides an event."""

        def register(callback: Callable[[E], Awaitable[None] | None]) -> Callable[[E], Any]:
            self._callbacks.append((types or _ALL_EVENTS, callback))
            return callback

        return register

    def _emit(self, event: Event) -> None:
        for stream in list(self._streams):
            stream._offer(event)
        for types, callback in list(self._callbacks):
            if isinstance(event, types):
                try:
                    result = callback(event)
                except Exception:
                    log.exception("a callback for %s failed", type(event).__name__)
                    continue
                if inspect.isawaitable(result):
                    self._spawn(_log_failure(result, type(event).__name__))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit_messages(self, messages: Iterable[Message]) -> None:
        """New ones only, ascending by ``message_id`` (so per conversation too). A message of
        this client's own outbox that comes back before its ack (pushed to this device, or
        found by a sync) is in the log: it answers that ``send()`` and is not an event."""
        for message in sorted(messages, key=lambda m: m.order_key):
            if message.sender_id == self.user_id and message.client_msg_id in self._outbox:
                entry = self._outbox.pop(message.client_msg_id)
                self._seen.add(message.message_id)
                if not entry.future.done():
                    entry.future.set_result(self._reveal(message, wait=False) or message)
                continue
            if self._seen.add(message.message_id):
                revealed = self._reveal(message, wait=True)
                if revealed is not None:
                    self._emit(MessageEvent(revealed))

    def _reveal(self, message: Message, *, wait: bool) -> Message | None:
        """An encrypted message decrypted (``body`` None and ``decryption_error`` set when it
        cannot be); with ``wait``, one whose room key has not arrived yet waits for it up to
        ``key_wait_s`` (``None`` is returned: it is handed over when the key comes)."""
        if not message.encrypted:
            return message
        if self.e2ee is None:
            return replace(message, decryption_error="end-to-end encryption is not enabled on this client")
        from tidings_client.e2ee import DecryptionError, MissingRoomKey

        try:
            return self.e2ee.decrypt(message)
        except MissingRoomKey as exc:
            if not wait:
                return replace(message, decryption_error=str(exc))
            sid = message.session_id or ""
            self._awaiting.setdefault(sid, []).append(message)
            asyncio.get_running_loop().call_later(
                self.key_wait_s, self._give_up_waiting, sid, message.message_id
            )
            return None
        except DecryptionError as exc:
            log.warning(
                "message %s of %s not decrypted: %s", message.message_id, message.conversation_id, exc
            )
            return replace(message, decryption_error=str(exc))

    def _on_room_key(self, session_id: str) -> None:
        for message in sorted(self._awaiting.pop(session_id, []), key=lambda m: m.order_key):
            revealed = self._reveal(message, wait=False)
            if revealed is not None:
                self._emit(MessageEvent(revealed))

    def _give_up_waiting(self, session_id: str, message_id: str) -> None:
        if self._closing:
            return
        waiting = self._awaiting.get(session_id, [])
        for message in waiting:
            if message.message_id == message_id:
                waiting.remove(message)
                if not waiting:
                    self._awaiting.pop(session_id, None)
                self._emit(MessageEvent(self._reveal(message, wait=False) or message))
                return

    # ---- the connection ---------------------------------------------------------------------

    def _ws_url(self) -> str:
        base = self.url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + "/v1/ws"

    def _next_url(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    async def _run(self) -> None:
        while not self._closing:
            delay: float | None = None
            url = self.url
            code: int | None = None
            reason = ""
            try:
                ws = await self._connector(self._ws_url(), {"Authorization": f"Bearer {self.token}"})
            except HandshakeRejected as exc:
                error = _http_error(exc.status, exc.headers, exc.body)
                if exc.status in (401, 403):
                    self._fatal = error
                    self._wakeup.set()
                    self._fail_outbox(error)
                    self._emit(ConnectionState("disconnected", url, reason=f"refused: {error.code}"))
                    return
                retry_after = getattr(error, "retry_after", None)
                delay = retry_after if retry_after is not None else None
                reason = f"upgrade refused: HTTP {exc.status}"
                self._next_url()
            except (OSError, TimeoutError, TransportClosed, Exception) as exc:  # noqa: BLE001
                # Any failure to open (refused, reset, DNS, a bad handshake): try again later.
                reason = f"connect failed: {type(exc).__name__}"
                self._next_url()
            else:
                code, reason = await self._serve(ws, url)
                if self._fatal is not None:
                    self._emit(ConnectionState("disconnected", url, code=code, reason=reason))
                    return
                if self._reconnect_after is not None:
                    delay = self._reconnect_after
                    reason = "reconnect frame"
                    self._next_url()
            if self._closing:
                return
            if delay is None:
                delay = self.backoff.next_delay()
            self._emit(ConnectionState("disconnected", url, code=code, reason=reason, retry_in_s=delay))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _serve(self, ws: Transport, url: str) -> tuple[int | None, str]:
        """Run one connection until it closes; its close code and why."""
        self._ws = ws
        self._connection += 1
        self._reconnect_after = None
        self._live = {} if self.resync_after_s else None
        reader = asyncio.create_task(self._read(ws))
        reader.add_done_callback(self._reader_ended)
        heart: asyncio.Task[None] | None = None
        resync: asyncio.Task[None] | None = None
        code: int | None = None
        reason = "closed"
        try:
            # Pushes start once the gateway registered the socket: its first reply says so.
            await self._roundtrip(ws, self.pong_timeout_s)
            heart = asyncio.create_task(self._heartbeat(ws))  # also while the resume runs
            await self._restore_state(ws)
            self._resuming = True
            try:
                await self.sync()
            finally:
                self._resuming = False
                held, self._held = self._held, []
                self._emit_messages(held)
            self._ready.set()
            self.backoff.reset()
            self._emit(ConnectionState("connected", url))
            resync = asyncio.create_task(self._resync(ws, asyncio.get_running_loop().time()))
            await self._flush_outbox()
            await reader
        except TransportClosed as exc:
            code, reason = exc.code, f"closed {exc.code}"
        except Unauthorized as exc:
            # The token expired or was revoked while connected (the resume sync said so).
            self._fatal = exc
            self._wakeup.set()
            self._fail_outbox(exc)
            reason = f"refused: {exc.code}"
        except (TimeoutError, TidingsError, httpx.HTTPError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            # A bug here must not end the connection loop: say so loudly, then reconnect.
            log.exception("the connection failed unexpectedly")
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.clear()
            self._ws = None
            for task in (heart, resync):
                if task is not None:
                    task.cancel()
            if not reader.done():
                with contextlib.suppress(Exception):
                    await ws.close()
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if reader.done() and not reader.cancelled() and isinstance(reader.exception(), TransportClosed):
                closed = cast(TransportClosed, reader.exception())
                code, reason = closed.code, reason if reason != "closed" else f"closed {closed.code}"
            for future in self._pongs.values():
                if not future.done():
                    future.cancel()
            self._pongs.clear()
            self._refs.clear()
        return code, reason

    def _reader_ended(self, reader: asyncio.Task[None]) -> None:
        """A closed socket answers the pings waiting on it at once (not after heartbeat_s)."""
        error = None if reader.cancelled() else reader.exception()
        closed = error if isinstance(error, TransportClosed) else TransportClosed(None, "reader ended")
        for future in self._pongs.values():
            if not future.done():
                future.set_exception(closed)
                # Marked retrieved: a heartbeat still waiting gets it raised; one cancelled in the
                # same turn (the connection loop stops it as it sees the close) would otherwise
                # leave asyncio to log "Future exception was never retrieved" for a close that
                # the connection loop already reports.
                future.exception()

    async def _read(self, ws: Transport) -> None:
        while True:
            text = await ws.recv()
            try:
                frame = json.loads(text)
            except ValueError:
                log.warning("a frame that is not JSON: %.200s", text)
                continue
            if not isinstance(frame, dict):
                continue
            if self._tap is not None:
                self._tap("in", frame)
            try:
                self._on_frame(frame)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("a malformed %s frame was ignored (%r): %.200s", frame.get("type"), exc, text)

    async def _roundtrip(self, ws: Transport, timeout: float) -> None:  # noqa: ASYNC109
        """A ``ping`` and its ``pong`` (``TimeoutError`` without one)."""
        ref = f"p{uuid.uuid4().hex[:12]}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[ref] = future
        try:
            await ws.send(json.dumps({"type": "ping", "ref": ref}))
            await asyncio.wait_for(future, timeout)
        finally:
            self._pongs.pop(ref, None)

    async def _heartbeat(self, ws: Transport) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._roundtrip(ws, self.pong_timeout_s)
            except (TimeoutError, asyncio.CancelledError, TransportClosed):
                log.info("no pong within %.1fs: closing the connection", self.pong_timeout_s)
                await ws.close()
                return

    async def _resync(self, ws: Transport, resumed_at: float) -> None:
        """Sync again after a resume until the read model behind ``/v1/sync`` has caught up with
        the pushes. A message pushed before this socket was registered is found by no sync until
        that read model has applied it, which may be long after the push (the server's persist
        worker behind its deliver worker: seconds, tens of seconds in an outage's backlog).

        The follow-ups run ``resync_after_s`` after the resume, then at doubling gaps (up to
        ``resync_max_gap_s``) for as long as the last one was not caught up: it failed, it found
        messages this socket had not pushed (the read model is still handing over what the
        socket missed), or a message pushed on this socket before it began has come back in no
        sync yet (the read model is behind the pushes). At most ``resync_for_s`` after the
        resume."""
        loop = asyncio.get_running_loop()
        delays = sorted(self.resync_after_s)
        if not delays:
            return
        gap = max(delays[-1] - (delays[-2] if len(delays) > 1 else 0.0), 0.01)
        at, caught_up, done = resumed_at, False, 0
        try:
            while True:
                if done < len(delays):
                    at = resumed_at + delays[done]
                elif caught_up or at - resumed_at >= self.resync_for_s:
                    return
                else:
                    gap = min(gap * 2, self.resync_max_gap_s)
                    at = min(at + gap, resumed_at + self.resync_for_s)
                await asyncio.sleep(max(0.0, at - loop.time()))
                if self._ws is not ws:
                    return
                caught_up = await self._follow_up()
                done += 1
        finally:
            if self._ws is ws:
                self._live = None

    async def _follow_up(self) -> bool:
        """One follow-up sync; whether it shows the client caught up (see ``_resync``)."""
        before = self._pushes
        try:
            unpushed = await self._sync()
        except (TidingsError, httpx.HTTPError) as exc:
            log.warning("follow-up sync failed: %s", exc)
            return False
        waiting = any(n is not None and n < before for n in (self._live or {}).values())
        return not unpushed and not waiting

    async def _restore_state(self, ws: Transport) -> None:
        """What lives with a socket (view, watch list, presence) is sent again on a new one."""
        if self._presence is not None:
            await ws.send(json.dumps({"type": "presence", "state": self._presence}))
        if self._view is not None:
            await ws.send(json.dumps({"type": "view", "conversation_id": self._view}))
        if self._watch is not None:
            await ws.send(json.dumps({"type": "watch", "user_ids": self._watch}))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message" and isinstance(frame.get("message"), dict):
            message = Message.from_json(frame["message"])
            if self._live is not None:
                self._live.setdefault(message.message_id, self._pushes)
                self._pushes += 1
            if self._resuming:
                self._held.append(message)
            else:
                self._emit_messages([message])
        elif kind == "ack":
            self._on_ack(frame)
        elif kind == "pong":
            future = self._pongs.get(str(frame.get("ref")))
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "error":
            self._on_error(frame)
        elif kind == "reconnect":
            self._reconnect_after = max(0.0, float(frame.get("after_ms") or 0) / 1000)
        elif kind in ("to_device", "device_list"):
            self._on_e2ee_frame(kind, frame)
        else:
            self._on_event_frame(kind, frame)

    def _on_event_frame(self, kind: Any, frame: dict[str, Any]) -> None:
        """A frame that becomes an event of the app's streams."""
        if kind == "receipt":
            self._emit(Receipt.from_json(frame))
        elif kind == "typing":
            self._emit(Typing(str(frame["conversation_id"]), str(frame["user_id"]), str(frame["state"])))
        elif kind == "presence":
            self._emit(Presence.from_json(frame))
        elif kind == "conversation":
            self._emit(
                ConversationChange(
                    str(frame["event"]), self._note(Conversation.from_json(frame["conversation"]))
                )
            )
        else:
            log.debug("frame of unknown type ignored: %s", kind)

    def _on_e2ee_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if self.e2ee is None:
            log.debug("%s frame ignored: end-to-end encryption is not enabled", kind)
        elif kind == "to_device":
            self._spawn(self.e2ee.receive_to_device(frame))
        else:
            self.e2ee.device_list_changed(str(frame["user_id"]))

    # ---- sending --------------------------------------------------------------------------

    async def send(self, conversation_id: str, body: str, *, client_msg_id: str | None = None) -> Message:
        """Send a text message; returns it once acknowledged (durably in the log).

        The send waits in the outbox while the client is disconnected and is sent again with the
        same ``client_msg_id`` on every new connection until acknowledged, so it is stored once.
        A refusal raises the typed error (``Forbidden``, ``InvalidRequest``, ``TooLarge``,
        ``RateLimited`` with ``retry_after``, ``Conflict``); ``unavailable`` is retried after
        ``unavailable_retry_s``, each further time after twice as long, up to
        ``unavailable_retry_cap_s`` (jittered: half to all of it). Cancelling the call (e.g.
        ``asyncio.wait_for``) takes it out of the outbox: it may or may not have been stored."""
        if self._closing:
            raise ClientClosed("the client is closed")
        if self._fatal is not None:
            raise self._fatal
        cmid = client_msg_id or uuid.uuid4().hex
        frame: dict[str, Any] = {"type": "send", "client_msg_id": cmid, "conversation_id": conversation_id}
        plain: dict[str, Any] | None = None
        if self.e2ee is not None and await self._is_encrypted(conversation_id):
            # Encrypted once: a resend of this client_msg_id carries the same ciphertext.
            plain = {"kind": "text", "body": body}
            frame.update(await self.e2ee.encrypt(conversation_id, plain))
        else:
            frame.update({"kind": "text", "body": body})
        return await self._send_through_outbox(
            _Outgoing(cmid, frame, asyncio.get_running_loop().create_future(), plain=plain)
        )

    async def send_media(
        self,
        conversation_id: str,
        media: Media,
        *,
        caption: str = "",
        kind: str | None = None,
        client_msg_id: str | None = None,
    ) -> Message:
        """Send uploaded media (``client.media.upload(...)``; only its uploader may send it) as a
        message of ``kind`` (by default ``media.message_kind``: ``image``, ``video`` or ``file``)
        with an optional caption. Acknowledged, retried and refused like ``send()``."""
        if self._closing:
            raise ClientClosed("the client is closed")
        if self._fatal is not None:
            raise self._fatal
        cmid = client_msg_id or uuid.uuid4().hex
        frame = {
            "type": "send",
            "client_msg_id": cmid,
            "conversation_id": conversation_id,
            "kind": kind or media.message_kind,
            "body": caption,
            "media_id": media.media_id,
        }
        future = asyncio.get_running_loop().create_future()
        return await self._send_through_outbox(_Outgoing(cmid, frame, future, media=media))

    async def _send_through_outbox(self, entry: _Outgoing) -> Message:
        cmid, conversation_id = entry.client_msg_id, str(entry.frame["conversation_id"])
        self._outbox[cmid] = entry
        await self.stop_typing(conversation_id)  # a sent message ends the typing
        if self._ws is not None and self._ready.is_set():
            await self._transmit(self._ws, entry)
        try:
            return await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            self._outbox.pop(cmid, None)
            raise

    @property
    def pending(self) -> list[str]:
        """``client_msg_id`` of the sends not yet acknowledged, oldest first."""
        return list(self._outbox)

    async def _transmit(self, ws: Transport, entry: _Outgoing) -> None:
        if entry.sent_on == self._connection or entry.future.done():
            return
        entry.sent_on = self._connection
        entry.attempts += 1
        ref = f"s{uuid.uuid4().hex[:12]}"
        self._refs[ref] = entry.client_msg_id
        # If the socket is gone it stays in the outbox and goes again on the next connection.
        frame = {**entry.frame, "ref": ref}
        if self._tap is not None:
            self._tap("out", frame)
        with contextlib.suppress(TransportClosed):
            await ws.send(json.dumps(frame))

    async def _flush_outbox(self) -> None:
        ws = self._ws
        for entry in list(self._outbox.values()):
            if ws is None or ws is not self._ws:
                return
            await self._transmit(ws, entry)

    def _on_ack(self, frame: dict[str, Any]) -> None:
        self._refs.pop(str(frame.get("ref")), None)
        entry = self._outbox.pop(str(frame.get("client_msg_id")), None)
        if entry is None:
            return
        sent = entry.frame
        message = Message(
            message_id=str(frame["message_id"]),
            conversation_id=str(frame.get("conversation_id") or sent["conversation_id"]),
            sender_id=self.user_id,
            client_msg_id=entry.client_msg_id,
            kind=str(entry.plain["kind"] if entry.plain is not None else sent["kind"]),
            body=entry.plain["body"] if entry.plain is not None else sent.get("body"),
            ts=int(frame.get("ts") or 0),
            media=entry.media,
            encrypted=entry.plain is not None,
            ciphertext=sent.get("ciphertext"),
            algorithm=sent.get("algorithm"),
            session_id=sent.get("session_id"),
            sender_device=sent.get("sender_device"),
        )
        # The app has it from send(): a push of it to this device is not an event.
        self._seen.add(message.message_id)
        if not entry.future.done():
            entry.future.set_result(message)

    def _on_error(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        code = str(frame.get("code") or "internal")
        text = str(frame.get("message") or "")
        cmid = self._refs.pop(ref, None) if isinstance(ref, str) else None
        entry = self._outbox.get(cmid) if cmid is not None else None
        if entry is None:
            if isinstance(ref, str) and ref in self._pongs:
                return
            extra = {k: v for k, v in frame.items() if k not in ("type", "code", "message", "ref")}
            self._emit(ErrorEvent(code, text, ref if isinstance(ref, str) else None, extra))
            return
        if code == "unavailable":
            # Nothing was accepted: the same client_msg_id goes again, later each time (every
            # pending send retrying every second loads a gateway just while it is degraded).
            entry.sent_on = -1
            ceiling = min(
                self.unavailable_retry_cap_s, self.unavailable_retry_s * 2.0 ** min(entry.unavailable, 30)
            )
            entry.unavailable += 1
            delay = ceiling * (0.5 + random.random() / 2)
            asyncio.get_running_loop().call_later(delay, self._retry_entry, entry)
            return
        self._outbox.pop(entry.client_msg_id, None)
        retry_after = frame.get("retry_after")
        error = error_for(code, text, retry_after=float(retry_after) if retry_after is not None else None)
        if not entry.future.done():
            entry.future.set_exception(error)

    def _retry_entry(self, entry: _Outgoing) -> None:
        """Send again a send answered ``unavailable`` (if still pending; if disconnected, the next
        connection sends it)."""
        ws = self._ws
        if ws is None or not self._ready.is_set() or self._closing:
            return
        if self._outbox.get(entry.client_msg_id) is entry:
            self._spawn(self._transmit(ws, entry))

    def _fail_outbox(self, error: TidingsError) -> None:
        for entry in self._outbox.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        self._outbox.clear()

    async def _frame(self, frame: dict[str, Any]) -> bool:
        """Send a fire-and-forget frame if connected; whether it went."""
        ws = self._ws
        if ws is None or not self._ready.is_set():
            return False
        try:
            await ws.send(json.dumps(frame))
        except TransportClosed:
            return False
        return True

    # ---- typing, view, presence, watch (WebSocket) ----------------------------------------------

    async def view(self, conversation_id: str | None) -> None:
        """Show ``conversation_id`` on this device (``None``: none): typing there reaches it.
        Kept and sent again after a reconnect."""
        self._view = conversation_id
        await self._frame({"type": "view", "conversation_id": conversation_id})

    async def watch(self, user_ids: Sequence[str]) -> None:
        """Receive ``Presence`` events for these users (≤ 500; replaces the list; ``[]`` stops).
        Their current state comes first. Kept and sent again after a reconnect."""
        self._watch = list(user_ids)
        await self._frame({"type": "watch", "user_ids": self._watch})

    async def set_presence(self, state: str) -> None:
        """``online`` or ``away`` for this device (going offline is closing the client)."""
        if state not in ("online", "away"):
            raise ValueError("state is 'online' or 'away'")
        self._presence = state
        await self._frame({"type": "presence", "state": state})

    async def typing(self, conversation_id: str) -> None:
        """Say the user is typing; call on every keystroke. A ``start`` goes at most every
        ``typing_refresh_s``; ``stop`` goes by itself ``typing_idle_s`` after the last call, or
        when a message is sent to the conversation. Dropped while disconnected (never stored)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        previous = self._typing.pop(conversation_id, None)
        last_start = None
        if previous is not None:
            last_start, handle = previous
            handle.cancel()
        if last_start is None or now - last_start >= self.typing_refresh_s:
            await self._frame({"type": "typing", "conversation_id": conversation_id, "state": "start"})
            last_start = now
        handle = loop.call_later(self.typing_idle_s, lambda: self._spawn(self.stop_typing(conversation_id)))
        self._typing[conversation_id] = (last_start, handle)

    async def stop_typing(self, conversation_id: str) -> None:
        """Say the user stopped typing (if a ``start`` was sent)."""
        if self._stop_typing_local(conversation_id):
            await self._frame({"type": "typing", "conversation_id": conversation_id, "state": "stop"})

    def _stop_typing_local(self, conversation_id: str) -> bool:
        previous = self._typing.pop(conversation_id, None)
        if previous is None:
            return False
        previous[1].cancel()
        return True

    # ---- sync ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Read what this device missed since the stored cursor (every page), hand it to the
        app as events and store the new cursor. The client does this after every connection."""
        await self._sync()

    async def _sync(self) -> bool:
        """``sync()``; whether it found a message this connection had not pushed (while a
        resume's follow-ups watch the pushes)."""
        unpushed = False
        async with self._sync_lock:
            cursor = await self.cursor_store.load()
            while True:
                data = await self._request("GET", "/v1/sync", params={"since": cursor} if cursor else None)
                if self._tap is not None:
                    self._tap("sync", data)
                for change in data.get("conversations") or []:
                    self._emit(
                        ConversationChange(
                            str(change["event"]), self._note(Conversation.from_json(change["conversation"]))
                        )
                    )
                if self.e2ee is not None:
                    # Room keys before the messages they open; handled before the cursor moves
                    # past them (the server then forgets them).
                    for user_id in data.get("device_lists") or []:
                        self.e2ee.device_list_changed(str(user_id))
                    for to_device in data.get("to_device") or []:
                        await self.e2ee.receive_to_device(to_device)
                messages = [Message.from_json(m) for m in data.get("messages") or []]
                if self._live is not None:
                    for message in messages:
                        unpushed = unpushed or message.message_id not in self._live
                        self._live[message.message_id] = None  # pushed (or not): now synced too
                # During a resume, pushes received meanwhile are held back and handed over after
                # the last page (they are newer than what the pages hold, or duplicates).
                self._emit_messages(messages)
                for receipt in data.get("receipts") or []:
                    self._emit(Receipt.from_json(receipt))
                cursor = str(data["cursor"])
                await self.cursor_store.save(cursor)
                if not data.get("has_more"):
                    return unpushed

    # ---- HTTP ---------------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        """One HTTP call (tried on each URL in turn when one cannot be reached); the JSON answer,
        or the typed error."""
        last: Exception | None = None
        for _ in range(len(self.urls)):
            clean = {k: v for k, v in (params or {}).items() if v is not None}
            try:
                response = await self._http.request(
                    method,
                    self.url + path,
                    params=clean or None,
                    json=json_body,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
            except httpx.TransportError as exc:
                last = exc
                self._next_url()
                continue
            if response.status_code >= 400:
                raise _http_error(response.status_code, response.headers, response.content)
            if response.status_code == 204 or not response.content:
                return None
            return response.json()
        raise Unavailable(f"no gateway answered: {last}") from last

    async def open_direct(self, user_id: str, *, encrypted: bool = False) -> Conversation:
        """The direct conversation with ``user_id`` (idempotent; lists it in your inbox);
        ``encrypted`` makes it end-to-end encrypted (for ever, for both sides)."""
        body: dict[str, Any] = {"kind": "direct", "members": [user_id]}
        if encrypted:
            body["encrypted"] = True
        data = await self._request("POST", "/v1/conversations", json_body=body)
        return self._note(Conversation.from_json(data["conversation"]))

    async def create_group(
        self, title: str, members: Sequence[str] = (), *, encrypted: bool = False
    ) -> Conversation:
        """A new group with you as its owner and ``members`` in it (``encrypted``: end-to-end
        encrypted, for ever)."""
        body: dict[str, Any] = {"kind": "group", "title": title, "members": list(members)}
        if encrypted:
            body["encrypted"] = True
        data = await self._request("POST", "/v1/conversations", json_body=body)
        return self._note(Conversation.from_json(data["conversation"]))

    async def conversation(self, conversation_id: str) -> Conversation:
        """One conversation (members only)."""
        data = await self._request("GET", f"/v1/conversations/{_seg(conversation_id)}")
        return self._note(Conversation.from_json(data.get("conversation", data)))

    async def conversations(self, *, limit: int = 50, before: str | None = None) -> Page[Conversation]:
        """A page of the inbox, most recent activity first."""
        data = await self._request("GET", "/v1/conversations", params={"limit": limit, "before": before})
        return Page([self._note(Conversation.from_json(c)) for c in data["conversations"]], data.get("next"))

    def _note(self, conversation: Conversation) -> Conversation:
        """Remember whether a conversation is encrypted (once encrypted, always)."""
        cid = conversation.conversation_id
        self._encrypted[cid] = self._encrypted.get(cid, False) or conversation.encrypted
        return conversation

    async def _is_encrypted(self, conversation_id: str) -> bool:
        # Read once per conversation; a direct chat the other side encrypts later comes as a
        # conversation ``updated`` event (or in sync), which _note() records.
        if conversation_id not in self._encrypted:
            await self.conversation(conversation_id)
        return self._encrypted.get(conversation_id, False)

    async def iter_conversations(self, *, page_size: int = 50) -> AsyncIterator[Conversation]:
        """The whole inbox, page after page."""
        before: str | None = None
        while True:
            page = await self.conversations(limit=page_size, before=before)
            for conversation in page.items:
                yield conversation
            if page.next is None:
                return
            before = page.next

    async def rename(self, conversation_id: str, title: str) -> Conversation:
        """Rename a group (owner or admins)."""
        data = await self._request(
            "PATCH", f"/v1/conversations/{_seg(conversation_id)}", json_body={"title": title}
        )
        return Conversation.from_json(data["conversation"])

    async def members(
        self, conversation_id: str, *, after: str | None = None, limit: int = 500
    ) -> Page[Member]:
        """A page of members in user-id order."""
        data = await self._request(
            "GET",
            f"/v1/conversations/{_seg(conversation_id)}/members",
            params={"after": after, "limit": limit},
        )
        return Page([Member.from_json(m) for m in data["members"]], data.get("next"))

    async def iter_members(self, conversation_id: str, *, page_size: int = 500) -> AsyncIterator[Member]:
        """Every member, page after page."""
        after: str | None = None
        while True:
            page = await self.members(conversation_id, after=after, limit=page_size)
            for member in page.items:
                yield member
            if page.next is None:
                return
            after = page.next

    async def add_members(self, conversation_id: str, user_ids: Sequence[str]) -> list[Member]:
        """Add users to a group (owner or admins); the members actually added."""
        data = await self._request(
            "POST",
            f"/v1/conversations/{_seg(conversation_id)}/members",
            json_body={"user_ids": list(user_ids)},
        )
        return [Member.from_json(m) for m in data["members"]]

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """Remove a member (owner or admins)."""
        await self._request("DELETE", f"/v1/conversations/{_seg(conversation_id)}/members/{_seg(user_id)}")

    async def leave(self, conversation_id: str) -> None:
        """Leave a group (the owner hands ownership over first: ``Conflict`` otherwise)."""
        await self.remove_member(conversation_id, self.user_id)

    async def set_role(self, conversation_id: str, user_id: str, role: str) -> Member:
        """Make a member ``owner``, ``admin`` or ``member`` (the owner only)."""
        data = await self._request(
            "PUT",
            f"/v1/conversations/{_seg(conversation_id)}/members/{_seg(user_id)}",
            json_body={"role": role},
        )
        return Member.from_json(data["member"])

    async def history(
        self, conversation_id: str, *, before: str | None = None, after: str | None = None, limit: int = 50
    ) -> HistoryPage:
        """A page of history, ascending: the newest ``limit`` (older than ``before`` if given), or
        the oldest ``limit`` newer than ``after``."""
        data = await self._request(
            "GET",
            f"/v1/conversations/{_seg(conversation_id)}/messages",
            params={"before": before, "after": after, "limit": limit},
        )
        messages = [Message.from_json(m) for m in data["messages"]]
        return HistoryPage([self._reveal(m, wait=False) or m for m in messages], bool(data["has_more"]))

    async def iter_history(self, conversation_id: str, *, page_size: int = 50) -> AsyncIterator[Message]:
        """The whole history, newest first, paging back to the first message ever sent."""
        before: str | None = None
        while True:
            page = await self.history(conversation_id, before=before, limit=page_size)
            for message in reversed(page.messages):
                yield message
            if not page.has_more or not page.messages:
                return
            before = page.messages[0].message_id

    async def mark_read(self, conversation_id: str, message_id: str) -> None:
        """Move your ``read`` watermark to ``message_id`` (never back; implies delivered)."""
        await self._receipt(conversation_id, message_id, "read")

    async def mark_delivered(self, conversation_id: str, message_id: str) -> None:
        """Move your ``delivered`` watermark to ``message_id`` (never back)."""
        await self._receipt(conversation_id, message_id, "delivered")

    async def _receipt(self, conversation_id: str, message_id: str, status: str) -> None:
        await self._request(
            "POST",
            f"/v1/conversations/{_seg(conversation_id)}/receipts",
            json_body={"message_id": message_id, "status": status},
        )

    async def receipts(self, conversation_id: str) -> list[Watermarks]:
        """Each member's ``delivered`` and ``read`` watermarks (every page)."""
        out: list[Watermarks] = []
        after: str | None = None
        while True:
            data = await self._request(
                "GET", f"/v1/conversations/{_seg(conversation_id)}/receipts", params={"after": after}
            )
            out += [Watermarks.from_json(r) for r in data["receipts"]]
            after = data.get("next")
            if not after:
                return out

    async def presence(self, user_id: str) -> Presence:
        """A user's presence (someone you share a conversation with, or yourself)."""
        return Presence.from_json(await self._request("GET", f"/v1/users/{_seg(user_id)}/presence"))

    # ---- end-to-end encryption ------------------------------------------------------------------

    async def enable_e2ee(
        self,
        passphrase: str,
        store: KeyStore | None = None,
        *,
        key_server: KeyServer | None = None,
        **options: Any,
    ) -> E2EE:
        """Turn on end-to-end encryption for this device (before ``connect()``, so that the first
        sync's room keys and messages are decrypted): its keys come from ``store`` (opened with
        ``passphrase``) or are made and published; then sends to encrypted conversations are
        encrypted, and their messages decrypted, by the client. Needs the ``e2ee`` extra
        (vodozemac). ``options``: ``rotate_after_messages`` (100), ``rotate_after_s`` (a week),
        ``one_time_keys_target`` (50). ``key_server`` replaces this client's HTTP calls to the
        key directory and to-device relay (tests)."""
        from tidings_client.e2ee import E2EE

        server = key_server if key_server is not None else self
        e2ee = await E2EE.open(
            self.user_id, self.device_id, server, passphrase=passphrase, store=store, **options
        )
        e2ee.on_room_key = self._on_room_key
        self.e2ee = e2ee
        return e2ee

    async def e2ee_members(self, conversation_id: str) -> list[str]:
        """The user ids of a conversation's members (every page)."""
        return [m.user_id async for m in self.iter_members(conversation_id)]

    async def e2ee_user_devices(self, user_id: str) -> list[dict[str, Any]]:
        """``GET /v1/keys/users/{user_id}``: the user's devices with published keys."""
        data = await self._request("GET", f"/v1/keys/users/{_seg(user_id)}")
        return list(data["devices"])

    async def e2ee_claim(self, devices: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """``POST /v1/keys/claim``: a one-time (or fallback) key of each ``(user_id, device_id)``."""
        keys: list[dict[str, Any]] = []
        for start in range(0, len(devices), 100):
            body = {"devices": [{"user_id": u, "device_id": d} for u, d in devices[start : start + 100]]}
            keys += (await self._request("POST", "/v1/keys/claim", json_body=body))["keys"]
        return keys

    async def e2ee_send_to_device(self, messages: Sequence[dict[str, str]]) -> None:
        """``POST /v1/to-device`` (≤ 100 messages of ``user_id``, ``device_id``, ``type``, ``ciphertext``)."""
        await self._request("POST", "/v1/to-device", json_body={"messages": list(messages)})

    async def e2ee_put_device_keys(self, body: dict[str, str]) -> None:
        """``PUT /v1/keys/device``: publish this device's identity and signing keys."""
        await self._request("PUT", "/v1/keys/device", json_body=body)

    async def e2ee_delete_device_keys(self) -> None:
        """``DELETE /v1/keys/device``: withdraw this device's keys (its one-time keys too)."""
        await self._request("DELETE", "/v1/keys/device")

    async def e2ee_upload_one_time_keys(self, body: dict[str, Any]) -> int:
        """``POST /v1/keys/one-time``; how many one-time keys the device has on the server."""
        return int((await self._request("POST", "/v1/keys/one-time", json_body=body))["remaining"])

    async def e2ee_one_time_key_count(self) -> int:
        """``GET /v1/keys/count``: this device's one-time keys left on the server."""
        return int((await self._request("GET", "/v1/keys/count"))["remaining"])


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, or SSL_CERT_FILE/SSL_CERT_DIR), made once per
    process: loading the CA bundle costs ~10 ms of CPU, far more on a loaded machine, and every
    client would load it again (the fault suite's 120 clients spent ~35 s on it)."""
    return httpx.create_ssl_context()


def _seg(value: str) -> str:
    return quote(value, safe=":@")


def _http_error(status: int, headers: Any, body: bytes) -> TidingsError:
    code, message = None, ""
    try:
        error = json.loads(body)["error"]
        code, message = error.get("code"), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", errors="replace")
    retry_after = None
    raw = next((v for k, v in dict(headers or {}).items() if str(k).lower() == "retry-after"), None)
    if raw is not None:
        with contextlib.suppress(ValueError):
            retry_after = float(raw)
    return error_for(code, message, status=status, retry_after=retry_after)


async def _log_failure(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("a callback for %s failed", what)
