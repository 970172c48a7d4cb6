"""The HTTP layer of ``guard serve``: uvicorn's h11 protocol with the limits uvicorn lacks.

uvicorn bounds the idle time between two requests (``timeout_keep_alive``) and, with h11, the size
of a request's head (``h11_max_incomplete_event_size``), but not the time a client takes to send a
request: ``timeout_keep_alive`` is reset by every byte, so headers sent a byte a second hold a
connection for ever, and enough such connections exhaust the process's file descriptors (and with
them SQL, Redis and the spool). ``protocol_class(limits)`` adds, per connection:

- a **header deadline**: the request line and headers must be complete within ``header_timeout_s``
  of the connection opening (or of the previous response, on a kept-alive connection); past it
  the client gets ``408`` and the connection is closed;
- a **header size** limit (h11's incomplete-event limit, answered ``431`` rather than uvicorn's
  generic 400), so a 150 MB header costs one read, not seconds of the event loop;
- a **body deadline**: the body must have arrived ``body_timeout_s`` (+ a short grace, so a route
  that reads its body answers its own 408 first) after the headers, for every route, whether or
  not the route reads its body; past it the connection is closed;
- a **connection cap**: past ``max_connections`` open connections, the one that has waited longest
  for its headers is closed to make room (so half-sent requests cannot lock others out), else the
  one whose body has been arriving longest, else (every connection holds a whole request) the new
  one is refused.

The guard serves no WebSockets, so ``guard serve`` runs uvicorn with ``ws="none"``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from guard.settings import Settings

log = logging.getLogger("guard.http")

BODY_GRACE_S = 2.0
"""The body deadline of the HTTP layer is GUARD_BODY_TIMEOUT_S plus this: a route that reads its
body with ``guard.body.read_body`` answers its own 408 first."""

FD_RESERVE = 128
"""File descriptors kept free for everything but client connections (SQL, Redis, spool, models)."""


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered so that the open connections leave ``FD_RESERVE`` descriptors free.
    Raises this process's soft RLIMIT_NOFILE to its hard limit first (what servers commonly do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, min(wanted, soft - FD_RESERVE))


def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Connection(h11.Connection):
    """An h11 connection that tells its protocol when a request's head and its end are parsed,
    and remembers the status h11 suggests for a protocol error (431 for a head over the limit)."""

    def __init__(self, owner: GuardProtocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.owner = owner
        self.max_head_bytes = max_incomplete_event_size
        self.error_status = 400

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            raise
        if isinstance(event, h11.Request):
            # h11's limit holds back only a head that is still incomplete: one that arrives
            # whole in a single read is measured here.
            size = len(event.method) + len(event.target) + 12
            size += sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
            if size > self.max_head_bytes:
                self.error_status = 431
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            self.owner.head_received()
        elif isinstance(event, h11.EndOfMessage):
            self.owner.body_received()
        return event


class GuardProtocol(H11Protocol):
    """uvicorn's h11 protocol with the header and body deadlines and the connection cap above.
    ``protocol_class`` makes one subclass per server, holding its limits and its waiting list."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    waiting: ClassVar[dict[GuardProtocol, None]] = {}
    """Connections waiting for a request's head, oldest first (a dict keeps insertion order)."""
    receiving: ClassVar[dict[GuardProtocol, None]] = {}
    """Connections whose request body is still arriving, oldest first."""
    cap_hits: ClassVar[int] = 0
    last_warning: ClassVar[float] = float("-inf")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn: _Connection = _Connection(self, self.limits.max_header_bytes)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_started = False  # a byte of the awaited request has arrived

    # The head: from the connection (or the last response) to the end of the headers.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            victim = next(iter(self.waiting), None) or next(iter(self.receiving), None)
            self._warn_full(refused=victim is None)
            if victim is None:  # every connection is busy with a whole request: refuse this one
                self.connections.discard(self)
                transport.abort()
                return
            victim.close_for_room()
        self._await_head()

    def _warn_full(self, *, refused: bool) -> None:
        """Log that the cap was reached, at most once a minute (an attack is thousands of times)."""
        cls = type(self)
        now = self.loop.time()
        cls.cap_hits += 1
        if now - cls.last_warning >= 60.0:
            cls.last_warning = now
            what = "refused a new connection" if refused else "closed the slowest to send its request"
            log.warning(
                "%d client connections open (GUARD_MAX_CONNECTIONS=%d): %s (%d times so far)",
                len(self.connections) - 1,
                self.limits.max_connections,
                what,
                cls.cap_hits,
            )

    def _await_head(self) -> None:
        self._head_started = False
        self.waiting.pop(self, None)
        self.waiting[self] = None
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def head_received(self) -> None:
        self.waiting.pop(self, None)
        self._disarm()
        if self.conn.their_state is h11.SEND_BODY:
            self.receiving[self] = None
            self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_timed_out)

    def body_received(self) -> None:
        self.receiving.pop(self, None)
        self._disarm()
        if self.conn.our_state is h11.DONE:  # answered before its body ended: the next head is awaited
            self._await_head()

    def data_received(self, data: bytes) -> None:
        if self in self.waiting:
            self._head_started = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing() and self.conn.their_state is h11.DONE:
            # Kept alive: uvicorn's keep-alive timeout closes it if idle, and the next head has a
            # deadline (armed first: super() may parse a pipelined head at once). A body still
            # arriving keeps its own deadline.
            self._await_head()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def close_for_room(self) -> None:
        """Close this connection, still sending its request, to make room (the cap was reached)."""
        self._forget()
        self.transport.abort()

    def _forget(self) -> None:
        self.waiting.pop(self, None)
        self.receiving.pop(self, None)
        self._disarm()

    def _head_timed_out(self) -> None:
        self._deadline = None
        self.waiting.pop(self, None)
        if self.transport.is_closing():
            return
        if self._head_started:
            secs = f"{self.limits.header_timeout_s:g}"
            text = f"The request headers did not arrive within {secs}s (GUARD_HEADER_TIMEOUT_S).\n"
            self.transport.write(_raw_response(408, "Request Timeout", text))
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        self.receiving.pop(self, None)
        if self.transport.is_closing():
            return
        log.debug("a request body did not arrive in time: closing the connection")
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app's later sends are dropped: this answer stands
            secs = f"{self.limits.body_timeout_s:g}"
            text = f"The request body did not arrive within {secs}s (GUARD_BODY_TIMEOUT_S).\n"
            self.transport.write(_raw_response(408, "Request Timeout", text))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.conn.error_status == 431:
            self._forget()
            limit = self.limits.max_header_bytes
            text = f"The request headers are over the limit of {limit} bytes (GUARD_MAX_HEADER_BYTES).\n"
            self.transport.write(_raw_response(431, "Request Header Fields Too Large", text))
            self.transport.close()
            return
        super().send_400_response(msg)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocol_class(limits: HttpLimits) -> type[GuardProtocol]:
    """A protocol class for one server: its limits and its own list of waiting connections."""

    class GuardServerProtocol(GuardProtocol):
        pass

    GuardServerProtocol.limits = limits
    GuardServerProtocol.waiting = {}
    GuardServerProtocol.receiving = {}
    GuardServerProtocol.cap_hits = 0
    return GuardServerProtocol


class WorkerProtocol(GuardProtocol):
    """The protocol of a ``guard serve --workers N`` worker, named by import path
    (``WORKER_PROTOCOL``): its app factory (``guard.app.serve_app``) sets its limits from the
    settings the app reads (:func:`configure_worker`). One per worker process."""

    waiting: ClassVar[dict[GuardProtocol, None]] = {}
    receiving: ClassVar[dict[GuardProtocol, None]] = {}


WORKER_PROTOCOL = f"{__name__}:WorkerProtocol"


def configure_worker(limits: HttpLimits) -> None:
    WorkerProtocol.limits = limits


def http_limits(settings: Settings) -> HttpLimits:
    """The HTTP layer's limits from the settings (the connection cap fitted to the descriptor limit)."""
    return HttpLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=connection_cap(settings.max_connections),
    )


__all__ = [
    "BODY_GRACE_S",
    "WORKER_PROTOCOL",
    "GuardProtocol",
    "HttpLimits",
    "WorkerProtocol",
    "configure_worker",
    "connection_cap",
    "http_limits",
    "protocol_class",
]
