"""A lean WebSocket path inside Sanic: frames in and out without a task, a future or a lock
per frame, and little state per idle socket.

Sanic's ``WebsocketImplProtocol`` keeps, per socket, a frame assembler (a queue, two events,
two locks), three more locks, three futures and an auto-closer task, and hands every inbound
message over through a new task, a future and ``asyncio.wait`` (about 136 µs per frame here);
a reply goes through a mutex and an awaited ``send``. ``LeanWebSocketProtocol`` (given to
Sanic as its protocol class) builds a ``LeanWebsocket`` instead, which keeps the same
``websockets`` sans-I/O ``ServerProtocol`` for framing and the close handshake, and:

- gives each complete inbound message to the socket's ``dispatch`` function at once, from
  ``data_received``. ``dispatch`` handles what needs no I/O on the spot (a ``ping`` frame, an
  invalid frame) and returns a coroutine for the rest; while such a coroutine runs, later
  messages wait in a small queue behind it, so frames of a connection are still handled in the
  order sent, and reading pauses when that queue is full (backpressure on the client);
- writes outgoing frames (and pongs, and close frames) straight to the transport; a frame is
  queued only while the transport's buffer is above its high-water mark, and the queue is
  flushed from ``resume_writing`` (see ``query_api.connection``);
- closes with 1007 when a text message is not UTF-8, and with 1009 (the ``websockets``
  parser) when a message exceeds the size limit;
- ends the TCP connection itself after a close: at once when the handshake completes,
  ``close_timeout`` seconds after its own close frame otherwise (a peer that stopped reading).

The route handler still runs as Sanic's websocket handler: it awaits ``closed`` and then
unregisters the socket.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger(__name__)

Dispatch = Callable[[str | bytes], Coroutine[Any, Any, None] | None]

OPEN, CLOSED = State.OPEN, State.CLOSED
CLOSE_INVALID_DATA, CLOSE_INTERNAL_ERROR = 1007, 1011
# Messages waiting behind one being handled; past this, reading pauses until they are handled.
INBOUND_PAUSE, INBOUND_RESUME = 32, 8
# Pongs and close echoes bypass a connection's bounded backlog; a peer that sends pings and
# never reads would grow the transport's buffer without end, so past this we stop reading it
# until it reads (TCP backpressure: its own sends then stall).
WRITE_BUFFER_READ_LIMIT = 256 * 1024
_DATA = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


class LeanWebsocket:
    __slots__ = (
        "_abort_timer",
        "_chunks",
        "_dispatch",
        "_handling",
        "_inbound",
        "_paused_for_writes",
        "_reading_paused",
        "close_timeout",
        "closed",
        "heard",
        "io_proto",
        "loop",
        "on_writable",
        "ws_proto",
    )

    def __init__(self, ws_proto: ServerProtocol, io_proto: WebSocketProtocol, close_timeout: float) -> None:
        self.ws_proto = ws_proto
        self.io_proto = io_proto
        self.loop = io_proto.loop
        self.close_timeout = close_timeout
        # Resolved once the socket stops being open (either side closed, or the TCP
        # connection was lost): the route handler waits for it, then unregisters.
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.heard = time.monotonic()  # any frame from the peer (presence heartbeats)
        self.on_writable: Callable[[], None] | None = None
        self._dispatch: Dispatch | None = None
        self._inbound: collections.deque[str | bytes] | None = None
        self._handling: asyncio.Task[None] | None = None
        self._chunks: list[bytes] | None = None  # a fragmented message being received
        self._reading_paused = False  # too many messages wait to be handled
        self._paused_for_writes = False  # the peer does not read what we send
        self._abort_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ what the application uses

    @property
    def subprotocol(self) -> None:
        return None

    @property
    def writable(self) -> bool:
        """Open, and the transport is not holding more than its high-water mark."""
        return self.ws_proto.state is OPEN and self.io_proto._can_write.is_set()

    def write_text(self, payload: bytes) -> bool:
        """Send a text frame whose payload is ``payload`` (UTF-8 JSON); False when closed."""
        if self.ws_proto.state is not OPEN:
            return False
        self.ws_proto.send_text(payload)
        self._write_out()
        return True

    def serve(self, dispatch: Dispatch) -> None:
        """Start handing inbound messages to ``dispatch`` (those that came meanwhile first)."""
        self._dispatch = dispatch
        if self._inbound and self._handling is None:
            self._handling = self.loop.create_task(self._handle_queued(None))

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting (also for a peer that stopped reading:
        the close frame goes behind whatever is buffered, and the connection is aborted if the
        peer has not answered within ``close_timeout``)."""
        if self.ws_proto.state is OPEN:
            self.ws_proto.send_close(code, reason)
            self._write_out()
            self._stop_reading_data()
        self._arm_abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Sanic's ``ws.close`` (the handler's end, and the server's shutdown)."""
        self.close_now(code, reason)

    async def send(self, message: str | bytes) -> None:
        """For code written against Sanic's interface; the gateway uses ``write_text``."""
        if isinstance(message, str):
            message = message.encode()
        self.write_text(message)

    # ---------------------------------------------------------- what Sanic's protocol calls

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        self.ws_proto.receive_data(data)
        events = self.ws_proto.events_received()
        self._write_out()  # pongs, close echoes, a close after a protocol error
        for event in events:
            if isinstance(event, Frame) and event.opcode in _DATA and not self._message(event):
                return
        self._settle_state()
        transport = self.io_proto.transport
        if (
            transport is not None
            and not self._paused_for_writes
            and transport.get_write_buffer_size() > WRITE_BUFFER_READ_LIMIT
        ):
            self._paused_for_writes = True
            transport.pause_reading()

    def _message(self, frame: Frame) -> bool:
        """Assemble a data frame into a message and hand it on; False if that closed the socket."""
        if not frame.fin:
            if self._chunks is None:
                # The first byte says whether the message is text or binary.
                self._chunks = [b"t" if frame.opcode is Opcode.TEXT else b"b"]
            self._chunks.append(bytes(frame.data))
            return True
        if self._chunks is not None:
            text = self._chunks[0] == b"t"
            payload = b"".join([*self._chunks[1:], frame.data])
            self._chunks = None
        else:
            text = frame.opcode is Opcode.TEXT
            payload = bytes(frame.data)
        if not text:
            self._received(payload)
            return True
        try:
            message = payload.decode()
        except UnicodeDecodeError:
            self.close_now(CLOSE_INVALID_DATA, "text frame is not valid UTF-8")
            return False
        self._received(message)
        return True

    def eof_received(self) -> bool:
        self.ws_proto.receive_eof()
        self._write_out()
        self._settle_state()
        return False  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.ws_proto.state is not CLOSED:
            self.ws_proto.fail(1006)
            self.ws_proto.state = CLOSED
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self._inbound = None
        if not self.closed.done():
            self.closed.set_result(None)

    def end_connection(self, code: int = 1000, reason: str = "") -> None:
        """Sanic's: the handler ended or was cancelled (shutdown), or the HTTP side closed."""
        self.close_now(code, reason)

    def fail_connection(self, code: int = 1006, reason: str = "") -> None:
        if code == 1006:
            self._abort()
        else:
            self.close_now(code, reason)

    def writing_resumed(self) -> None:
        if self._paused_for_writes:
            self._paused_for_writes = False
            self._resume_reading()
        if self.on_writable is not None:
            self.on_writable()

    # ----------------------------------------------------------------------- inside

    def _received(self, message: str | bytes) -> None:
        if self._handling is None and self._dispatch is not None:
            try:
                pending = self._dispatch(message)
            except Exception:  # noqa: BLE001 - logged by _failed, and the socket closed with 1011
                self._failed()
                return
            if pending is not None:
                self._handling = self.loop.create_task(self._handle_queued(pending))
            return
        if self._inbound is None:
            self._inbound = collections.deque()
        self._inbound.append(message)
        if len(self._inbound) >= INBOUND_PAUSE and not self._reading_paused:
            self._reading_paused = True
            self.io_proto.transport.pause_reading()  # type: ignore[union-attr]

    async def _handle_queued(self, first: Coroutine[Any, Any, None] | None) -> None:
        """Run ``first``, then every message that arrived meanwhile, in order."""
        try:
            if first is not None:
                await first
            while self._inbound and self.ws_proto.state is OPEN:
                message = self._inbound.popleft()
                if self._reading_paused and len(self._inbound) <= INBOUND_RESUME:
                    self._reading_paused = False
                    self._resume_reading()
                assert self._dispatch is not None
                pending = self._dispatch(message)
                if pending is not None:
                    await pending
        except Exception:  # noqa: BLE001 - logged by _failed, and the socket closed with 1011
            self._failed()
        finally:
            self._handling = None
            if not self._inbound:
                self._inbound = None

    def _resume_reading(self) -> None:
        transport = self.io_proto.transport
        if transport is not None and not self._reading_paused and not self._paused_for_writes:
            transport.resume_reading()

    def _failed(self) -> None:
        # A bug, not the client's doing: logged, and the socket ends as Sanic would end it.
        log.exception("WebSocket frame handler failed")
        self.close_now(CLOSE_INTERNAL_ERROR, "internal error")

    def _write_out(self) -> None:
        transport = self.io_proto.transport
        for data in self.ws_proto.data_to_send():
            if transport is None or transport.is_closing():
                return
            if data:
                transport.write(data)
            else:
                # The handshake is over (or failed) on our side: a server ends the TCP
                # connection first. close() sends what is buffered, then closes.
                transport.close()
                self._arm_abort()

    def _settle_state(self) -> None:
        if self.ws_proto.state is not OPEN:
            self._stop_reading_data()
            if not self.closed.done():
                self.closed.set_result(None)

    def _stop_reading_data(self) -> None:
        """Messages received after a close are not handled."""
        self._inbound = None
        if not self.closed.done():
            self.closed.set_result(None)

    def _arm_abort(self) -> None:
        if self._abort_timer is None and not self.closed_tcp:
            self._abort_timer = self.loop.call_later(self.close_timeout, self._abort)

    @property
    def closed_tcp(self) -> bool:
        transport = self.io_proto.transport
        return transport is None or self.io_proto.conn_info is None or self.io_proto.conn_info.lost

    def _abort(self) -> None:
        self._abort_timer = None
        if self.io_proto.transport is not None:
            self.io_proto.transport.abort()


class LeanWebSocketProtocol(WebSocketProtocol):
    """Sanic's HTTP/WebSocket protocol, upgrading to a ``LeanWebsocket``."""

    __slots__ = ()

    async def websocket_handshake(self, request: Any, subprotocols: Sequence[str] | None = None) -> Any:
        from sanic.exceptions import SanicException
        from websockets.datastructures import Headers as WSHeaders
        from websockets.http11 import Request as WSRequest

        ws_proto = ServerProtocol(max_size=self.websocket_max_size, state=OPEN)
        try:
            resp = ws_proto.accept(WSRequest(path=request.path, headers=WSHeaders(request.headers)))
        except Exception as exc:
            raise SanicException("Failed to open a WebSocket connection.", status_code=500) from exc
        if not 100 <= resp.status_code <= 299:
            raise SanicException(bytes(resp.body or b""), resp.status_code)
        head = f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in resp.headers.raw_items()
        )
        await super(WebSocketProtocol, self).send(head.encode() + b"\r\n")
        self.websocket = LeanWebsocket(ws_proto, self, self.websocket_timeout)  # type: ignore[assignment]
        # The HTTP side's receive event is never waited for again.
        self._data_received = None  # type: ignore[assignment]
        return self.websocket

    def resume_writing(self) -> None:
        super().resume_writing()
        websocket = self.websocket
        if isinstance(websocket, LeanWebsocket):
            websocket.writing_resumed()
