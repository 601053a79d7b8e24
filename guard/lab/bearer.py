"""
A bearer simulator for the lab and the benchmarks: a loopback TCP proxy that
makes one connection behave like an HF radio or satellite link.

- **Rate**: each direction is paced by its own token bucket in bits per
  second (75 bps to 2 Mbps), so bytes cross no faster than the radio would.
- **Delay**: every byte arrives ``one_way_delay`` seconds after it left the
  bucket (0.25 s to 2.5 s is typical of satellite and HF links).
- **Outages**: during a scheduled outage (or one started on demand) the
  connection is dropped, what was in flight is lost, and new connections are
  refused until it ends.
- **One connection at a time**: a bearer carries one link; a second
  connection while one is up is refused.  For plain S2S, which needs a TCP
  connection per domain pair and direction, ``max_connections`` lets more
  share the bearer (one token bucket per direction for all of them), and
  ``reverse_routes`` carry connections dialled from the far end over the
  same two buckets.
- **Books**: bytes each way (counted as they enter the bearer), connections,
  refusals, drops, and the *turns* (how many times the direction of flow
  changed) before a marker is first seen, so that a benchmark can report the
  round trips a protocol needs before its first stanza.  A turn is counted
  whenever bytes enter in the other direction from the last bytes that
  entered, so two ends that talk at the same moment count turns without
  waiting for each other: the count is an upper bound on round trips.

Everything runs on the reactor it is given; every queue is bounded in bytes
(the side that sends too much is paused, as TCP would pause it) and every
timer sends at most one bucket's worth.

Run it as a process::

    python -m guard.lab.bearer --listen 127.0.31.3:5272 --target 127.0.31.2:5271 \\
        --rate 1200 --delay 1.0 --outage 60:30 --marker '<message' --status bearer.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from twisted.internet import defer, task
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

# The rates and delays the simulator is meant for (a wider value is refused: it would not model a bearer).
MIN_RATE_BITS = 75
MAX_RATE_BITS = 100_000_000
MAX_ONE_WAY_DELAY = 10.0
# How often a paced direction sends: each send carries at most TICK seconds of the rate (at least one byte).
TICK = 0.05
# Bytes a direction holds (waiting for tokens plus in flight) before it pauses its sender; it resumes below half.
DIRECTION_BUFFER_BYTES = 256 * 1024
# The connection to the target must be made within this many seconds, or the dialer is dropped.
CONNECT_TIMEOUT = 10.0
# Turn times kept for the benchmarks (the first ones after each connection matter; the rest are counted only).
TURN_TIMES_KEPT = 256


class TokenBucket:
    """Tokens (bytes) accumulate at ``rate_bits_per_second / 8`` per second up to ``capacity`` bytes."""

    def __init__(self, rate_bits_per_second: float, capacity: int, now: float):
        if rate_bits_per_second <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and a capacity of at least one byte")
        self.bytes_per_second = rate_bits_per_second / 8.0
        self.capacity = capacity
        self._tokens = float(capacity)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.capacity), self._tokens + (now - self._at) * self.bytes_per_second)
            self._at = now

    def take(self, wanted: int, now: float) -> int:
        """Spend and return as many whole tokens as are there, up to ``wanted``."""
        self._refill(now)
        granted = min(wanted, int(self._tokens + 1e-9))  # not a byte lost to rounding
        self._tokens -= granted
        return granted

    def seconds_until(self, wanted: int, now: float) -> float:
        """How long until ``wanted`` tokens (at most the capacity) are there."""
        self._refill(now)
        missing = min(wanted, self.capacity) - self._tokens
        return max(0.0, missing / self.bytes_per_second)


def tick_bytes(rate_bits_per_second: float) -> int:
    """What one send carries at most: one tick's worth of bytes at the rate (at least one byte, at most 64 KiB)."""
    return max(1, min(64 * 1024, int(rate_bits_per_second / 8.0 * TICK)))


def bucket_capacity(rate_bits_per_second: float) -> int:
    """Two sends' worth, so that a timer that fires late loses no tokens (the rate holds on a busy reactor)."""
    return 2 * tick_bytes(rate_bits_per_second)


@dataclass
class BearerBooks:
    """What crossed the bearer; ``forward`` is from the dialer toward the target, ``back`` the reverse."""

    bytes_forward: int = 0
    bytes_back: int = 0
    connections: int = 0
    refused_busy: int = 0
    refused_outage: int = 0
    dropped_by_outage: int = 0
    outages_begun: int = 0
    turns: int = 0  # since the bearer last came up (its first connection after none)
    turns_before_marker: int | None = None
    seconds_to_marker: float | None = None  # from the connection to the marker's arrival at the far end
    connected_at: float | None = None
    turn_times: list[float] = field(default_factory=list)  # seconds after the connection, the first ones

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class ShapedDirection:
    """
    One direction of the bearer: bytes enter with ``send``, leave the token
    bucket at the rate, and reach ``deliver`` ``delay`` seconds later, in order.
    ``finish`` queues the end of the stream behind the bytes; ``on_end`` hears it
    when it arrives.  Past ``buffer_bytes`` held, ``pause`` is called (once);
    ``resume`` when it falls below half.
    """

    def __init__(self, clock, rate_bits_per_second: float, delay: float, deliver: Callable[[bytes], None],
                 on_end: Callable[[], None], on_leave: Callable[[int], None],
                 pause: Callable[[], None], resume: Callable[[], None], buffer_bytes: int = DIRECTION_BUFFER_BYTES,
                 bucket: TokenBucket | None = None):
        """``bucket``: the token bucket this direction spends (shared by every connection of the bearer that
        goes the same way); by default one of its own."""
        self.clock = clock
        self.delay = delay
        self.bucket = bucket or TokenBucket(rate_bits_per_second, bucket_capacity(rate_bits_per_second), clock.seconds())
        self.send_bytes = tick_bytes(rate_bits_per_second)
        self._deliver, self._on_end, self._on_leave = deliver, on_end, on_leave
        self._pause, self._resume = pause, resume
        self.buffer_bytes = buffer_bytes
        self._waiting = bytearray()  # not yet through the bucket
        self._ending = False  # the end of stream waits behind _waiting
        self._in_flight: deque[tuple[float, bytes | None]] = deque()  # (arrival time, bytes or None: the end)
        self._in_flight_bytes = 0
        self.paused = False
        self._pace_call = None
        self._arrival_call = None
        self.closed = False

    @property
    def held_bytes(self) -> int:
        return len(self._waiting) + self._in_flight_bytes

    def send(self, data: bytes) -> None:
        if self.closed or self._ending or not data:
            return
        self._waiting += data
        if not self.paused and self.held_bytes > self.buffer_bytes:
            self.paused = True
            self._pause()
        self._pace()

    def finish(self) -> None:
        """The sender closed: the end of the stream follows the bytes already sent."""
        if self.closed or self._ending:
            return
        self._ending = True
        self._pace()

    def cut(self) -> None:
        """An outage: everything held is lost and no more is delivered."""
        self.closed = True
        self._waiting.clear()
        self._in_flight.clear()
        self._in_flight_bytes = 0
        for call in (self._pace_call, self._arrival_call):
            if call is not None and call.active():
                call.cancel()
        self._pace_call = self._arrival_call = None

    def _pace(self) -> None:
        """Let through what the bucket allows now (one bucket's worth at most), then wait for more tokens."""
        if self.closed or self._pace_call is not None:
            return
        now = self.clock.seconds()
        if self._waiting:
            granted = self.bucket.take(min(len(self._waiting), self.send_bytes), now)
            if granted:
                chunk = bytes(self._waiting[:granted])
                del self._waiting[:granted]
                self._on_leave(granted)
                self._in_flight.append((now + self.delay, chunk))
                self._in_flight_bytes += granted
                self._schedule_arrival()
        if not self._waiting and self._ending:
            self._ending = False
            self._in_flight.append((now + self.delay, None))
            self._schedule_arrival()
            return
        if self._waiting:
            wait = self.bucket.seconds_until(min(len(self._waiting), self.send_bytes), now)
            self._pace_call = self.clock.callLater(wait, self._paced)

    def _paced(self) -> None:
        self._pace_call = None
        self._pace()

    def _schedule_arrival(self) -> None:
        if self._arrival_call is None and self._in_flight:
            due = self._in_flight[0][0]
            self._arrival_call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._arrive)

    def _arrive(self) -> None:
        """Deliver every chunk whose time has come (bounded by what is in flight), then wait for the next."""
        self._arrival_call = None
        now = self.clock.seconds()
        while self._in_flight and self._in_flight[0][0] <= now and not self.closed:
            _, chunk = self._in_flight.popleft()
            if chunk is None:
                self.closed = True
                self._on_end()
                return
            self._in_flight_bytes -= len(chunk)
            self._deliver(chunk)
        if self.paused and self.held_bytes <= self.buffer_bytes // 2:
            self.paused = False
            self._resume()
        self._schedule_arrival()


class _MarkerWatch:
    """Looks for ``marker`` across the chunk boundaries of one direction."""

    def __init__(self, marker: bytes):
        self.marker = marker
        self._tail = b""

    def end_in(self, chunk: bytes) -> int | None:
        """Where in ``chunk`` the marker's first sighting ends (an offset), or None."""
        window = self._tail + chunk
        found = window.find(self.marker)
        if found >= 0:
            return found + len(self.marker) - len(self._tail)
        self._tail = window[-(len(self.marker) - 1):] if len(self.marker) > 1 else b""
        return None


@dataclass(frozen=True)
class Route:
    """Connections accepted on ``listen`` are carried to ``target``; ``reverse``: dialled from the far end of the
    bearer (its bytes toward the target go the bearer's "back" way)."""

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    reverse: bool = False


class _BearerConnection:
    """One dialer connection and its connection to the target, shaped both ways."""

    def __init__(self, simulator: "BearerSimulator", near: "_NearEnd", route: Route):
        self.simulator = simulator
        self.near = near
        self.route = route
        self.far: _FarEnd | None = None
        clock = simulator.reactor
        # The bearer's directions: "forward" from the main route's dialer toward its target, "back" the other way.
        self.toward_target = "back" if route.reverse else "forward"
        self.toward_dialer = "forward" if route.reverse else "back"
        self.forward = ShapedDirection(clock, simulator.rate, simulator.one_way_delay, self._to_far,
                                       self._end_far, lambda n: self._left(self.toward_target, n),
                                       self._pause_near, self._resume_near,
                                       bucket=simulator.buckets[self.toward_target])
        self.back = ShapedDirection(clock, simulator.rate, simulator.one_way_delay, self._to_near,
                                    self._end_near, lambda n: self._left(self.toward_dialer, n),
                                    self._pause_far, self._resume_far,
                                    bucket=simulator.buckets[self.toward_dialer])
        self._watches = {d: _MarkerWatch(simulator.marker) for d in ("forward", "back")} if simulator.marker else {}
        self._marker_direction: str | None = None
        self._marker_offset = 0  # the marker has left the bucket once this many bytes of its direction have
        self._entered_bytes = {"forward": 0, "back": 0}
        self._left_bytes = {"forward": 0, "back": 0}
        self.finished = False
        self._connect_timeout = None

    # -- bytes entering the bearer --------------------------------------------

    def from_near(self, data: bytes) -> None:
        self._entered(self.toward_target, data)
        self.forward.send(data)

    def from_far(self, data: bytes) -> None:
        self._entered(self.toward_dialer, data)
        self.back.send(data)

    def _entered(self, direction: str, data: bytes) -> None:
        self.simulator.flow(direction)
        books = self.simulator.books
        watch = self._watches.get(direction)
        if watch is not None and books.turns_before_marker is None:
            end = watch.end_in(data)
            if end is not None:
                books.turns_before_marker = books.turns
                self._marker_direction = direction
                self._marker_offset = self._entered_bytes[direction] + end
        self._entered_bytes[direction] += len(data)

    def _left(self, direction: str, count: int) -> None:
        books = self.simulator.books
        if direction == "forward":
            books.bytes_forward += count
        else:
            books.bytes_back += count
        self._left_bytes[direction] += count
        if self._marker_direction == direction and self._left_bytes[direction] >= self._marker_offset:
            # The marker's last byte left the bucket: it arrives a delay later.
            now = self.simulator.reactor.seconds()
            books.seconds_to_marker = round(now + self.simulator.one_way_delay - books.connected_at, 4)
            self._marker_direction = None

    # -- bytes leaving the bearer -----------------------------------------------

    def _to_far(self, data: bytes) -> None:
        if self.far is not None and self.far.transport is not None:
            self.far.transport.write(data)

    def _to_near(self, data: bytes) -> None:
        if self.near.transport is not None:
            self.near.transport.write(data)

    def _end_far(self) -> None:
        if self.far is not None and self.far.transport is not None:
            self.far.transport.loseConnection()
        self._directions_over()

    def _end_near(self) -> None:
        self.near.transport.loseConnection()
        self._directions_over()

    def _pause_near(self) -> None:
        self.near.transport.pauseProducing()

    def _resume_near(self) -> None:
        # Until the target answers, the dialer is not read at all (see far_connected).
        if not self.finished and self.far is not None:
            self.near.transport.resumeProducing()

    def _pause_far(self) -> None:
        if self.far is not None:
            self.far.transport.pauseProducing()

    def _resume_far(self) -> None:
        if self.far is not None and not self.finished:
            self.far.transport.resumeProducing()

    # -- the far end ---------------------------------------------------------------

    def far_connected(self, far: "_FarEnd") -> None:
        if self._connect_timeout is not None and self._connect_timeout.active():
            self._connect_timeout.cancel()
        if self.finished:
            far.transport.abortConnection()
            return
        self.far = far
        if not self.forward.paused:
            self.near.transport.resumeProducing()

    def far_failed(self) -> None:
        self.simulator.log(f"bearer: the target {self.route.target_host}:{self.route.target_port} "
                           "refused the connection")
        self.cut()

    def near_lost(self) -> None:
        self.forward.finish()

    def far_lost(self) -> None:
        self.back.finish()

    def cut(self) -> None:
        """Drop both ends at once; what was in flight is lost."""
        self.finished = True
        self.forward.cut()
        self.back.cut()
        if self._connect_timeout is not None and self._connect_timeout.active():
            self._connect_timeout.cancel()
        for end in (self.near, self.far):
            if end is not None and end.transport is not None:
                end.transport.abortConnection()
        self.simulator.connection_over(self)

    def _directions_over(self) -> None:
        if self.forward.closed and self.back.closed and not self.finished:
            self.finished = True
            self.simulator.connection_over(self)


class _NearEnd(Protocol):
    """The dialer's side of the bearer."""

    def __init__(self, simulator: "BearerSimulator", route: Route):
        self.simulator = simulator
        self.route = route
        self.connection: _BearerConnection | None = None

    def connectionMade(self) -> None:
        self.connection = self.simulator.admit(self, self.route)

    def dataReceived(self, data: bytes) -> None:
        if self.connection is not None and not self.connection.finished:
            self.connection.from_near(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self.connection is not None and not self.connection.finished:
            self.connection.near_lost()


class _FarEnd(Protocol):
    """The bearer's connection to the target."""

    def __init__(self, connection: _BearerConnection):
        self.connection = connection

    def connectionMade(self) -> None:
        self.connection.far_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.connection.finished:
            self.connection.from_far(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.connection.finished:
            self.connection.far_lost()


class _FarFactory(ClientFactory):
    def __init__(self, connection: _BearerConnection):
        self.connection = connection

    def buildProtocol(self, addr):
        return _FarEnd(self.connection)

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.connection.finished:
            self.connection.far_failed()


class _NearFactory(Factory):
    def __init__(self, simulator: "BearerSimulator", route: Route):
        self.simulator = simulator
        self.route = route

    def buildProtocol(self, addr):
        return _NearEnd(self.simulator, self.route)


class BearerSimulator:
    """
    A loopback TCP proxy for ONE connection at a time from ``listen_host:listen_port`` to
    ``target_host:target_port``, paced at ``rate_bits_per_second`` each way, ``one_way_delay``
    seconds late, with ``outages`` as (start, duration) pairs in seconds after ``start()``.
    ``marker``: bytes whose first sighting (either direction) fixes ``books.turns_before_marker``.
    """

    def __init__(self, reactor, listen_host: str, listen_port: int, target_host: str, target_port: int,
                 rate_bits_per_second: float, one_way_delay: float, outages: Sequence[tuple[float, float]] = (),
                 marker: bytes | None = None, log: Callable[[str], None] | None = None, max_connections: int = 1,
                 reverse_routes: Sequence[tuple[str, int, str, int]] = ()):
        if not MIN_RATE_BITS <= rate_bits_per_second <= MAX_RATE_BITS:
            raise ValueError(f"rate {rate_bits_per_second} bit/s is outside {MIN_RATE_BITS}..{MAX_RATE_BITS}")
        if not 0 <= one_way_delay <= MAX_ONE_WAY_DELAY:
            raise ValueError(f"one-way delay {one_way_delay} s is outside 0..{MAX_ONE_WAY_DELAY}")
        for start, duration in outages:
            if start < 0 or duration <= 0:
                raise ValueError(f"outage ({start}, {duration}): start >= 0 and duration > 0 seconds")
        if marker is not None and not marker:
            raise ValueError("an empty marker marks nothing")
        if not 1 <= max_connections <= 64:
            raise ValueError(f"max_connections {max_connections} is outside 1..64")
        self.reactor = reactor
        self.listen_host, self.listen_port = listen_host, listen_port
        self.target_host, self.target_port = target_host, target_port
        self.rate = rate_bits_per_second
        self.one_way_delay = one_way_delay
        self.outages = sorted(outages)
        self.marker = marker
        self.log = log or (lambda text: None)
        self.max_connections = max_connections
        self.routes = [Route(listen_host, listen_port, target_host, target_port),
                       *(Route(*route, reverse=True) for route in reverse_routes)]
        now = reactor.seconds()
        capacity = bucket_capacity(rate_bits_per_second)
        self.buckets = {"forward": TokenBucket(rate_bits_per_second, capacity, now),
                        "back": TokenBucket(rate_bits_per_second, capacity, now)}
        self.books = BearerBooks()
        self.connections: list[_BearerConnection] = []
        self._last_direction: str | None = None
        self._outage_until: float | None = None
        self._calls: list = []
        self._listening: list = []

    @property
    def current(self) -> _BearerConnection | None:
        """The oldest connection carried now, if any."""
        return self.connections[0] if self.connections else None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self):
        """Listen on every route, and schedule the outages; returns the main route's listening port."""
        self._listening = [self.reactor.listenTCP(route.listen_port, _NearFactory(self, route),
                                                  interface=route.listen_host) for route in self.routes]
        for start, duration in self.outages:
            self._calls.append(self.reactor.callLater(start, self.begin_outage, duration))
        return self._listening[0]

    def stop(self):
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        for connection in list(self.connections):
            connection.cut()
        listening, self._listening = self._listening, []
        for port in listening[1:]:
            port.stopListening()
        return listening[0].stopListening() if listening else None

    # -- outages -----------------------------------------------------------------------

    @property
    def in_outage(self) -> bool:
        return self._outage_until is not None and self.reactor.seconds() < self._outage_until

    def begin_outage(self, duration: float) -> None:
        """Drop the connection now and refuse new ones for ``duration`` seconds."""
        self.books.outages_begun += 1
        self._outage_until = max(self._outage_until or 0.0, self.reactor.seconds() + duration)
        self.log(f"bearer: outage for {duration} s")
        for connection in list(self.connections):
            self.books.dropped_by_outage += 1
            connection.cut()
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self.reactor.callLater(duration, self._outage_over))

    def _outage_over(self) -> None:
        if not self.in_outage:
            self._outage_until = None
            self.log("bearer: outage over")

    # -- connections ----------------------------------------------------------------------

    def admit(self, near: _NearEnd, route: Route) -> _BearerConnection | None:
        """A dialer connected: carry it, or refuse it (an outage, or as many connections as the bearer carries)."""
        if self.in_outage:
            self.books.refused_outage += 1
            near.transport.abortConnection()
            return None
        if len(self.connections) >= self.max_connections:
            self.books.refused_busy += 1
            near.transport.abortConnection()
            return None
        self.books.connections += 1
        if not self.connections:  # the bearer comes up: turns count from here
            self.books.turns = 0
            self.books.turn_times = []
            self.books.connected_at = self.reactor.seconds()
            self._last_direction = None
        connection = _BearerConnection(self, near, route)
        self.connections.append(connection)
        near.transport.pauseProducing()  # read nothing until the target answers
        connection._connect_timeout = self.reactor.callLater(CONNECT_TIMEOUT, connection.cut)
        self.reactor.connectTCP(route.target_host, route.target_port, _FarFactory(connection),
                                timeout=CONNECT_TIMEOUT)
        return connection

    def flow(self, direction: str) -> None:
        """Bytes entered the bearer going ``direction``: a turn when the last ones went the other way."""
        books = self.books
        if self._last_direction is not None and direction != self._last_direction:
            books.turns += 1
            if len(books.turn_times) < TURN_TIMES_KEPT:
                books.turn_times.append(round(self.reactor.seconds() - books.connected_at, 4))
        self._last_direction = direction

    def connection_over(self, connection: _BearerConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def status(self) -> dict:
        held = {"held_forward": sum(c.forward.held_bytes if not c.route.reverse else c.back.held_bytes
                                    for c in self.connections),
                "held_back": sum(c.back.held_bytes if not c.route.reverse else c.forward.held_bytes
                                 for c in self.connections)}
        return {"rate_bits_per_second": self.rate, "one_way_delay": self.one_way_delay,
                "connected": len(self.connections), "in_outage": self.in_outage, **held, **self.books.as_dict()}


# -- the program ------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def _outage(text: str) -> tuple[float, float]:
    start, separator, duration = text.partition(":")
    try:
        if not separator:
            raise ValueError
        return float(start), float(duration)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:DURATION in seconds, got {text!r}") from None


def _route(text: str) -> tuple[str, int, str, int]:
    listen, separator, target = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected host:port=host:port, got {text!r}")
    return (*_host_port(listen), *_host_port(target))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m guard.lab.bearer",
        description="Shape one loopback TCP connection like a radio or satellite bearer: rate, delay, outages.")
    parser.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT",
                        help="where the dialling end connects (loopback)")
    parser.add_argument("--target", type=_host_port, required=True, metavar="HOST:PORT",
                        help="where the bearer carries the connection")
    parser.add_argument("--rate", type=float, required=True, metavar="BITS",
                        help=f"bits per second each way ({MIN_RATE_BITS} to {MAX_RATE_BITS})")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="one-way delay (default 0)")
    parser.add_argument("--outage", type=_outage, action="append", default=[], metavar="START:DURATION",
                        help="an outage START seconds after the start, for DURATION seconds (repeatable)")
    parser.add_argument("--max-connections", type=int, default=1, metavar="N",
                        help="connections carried at once, sharing the rate (default 1: one link; plain S2S needs more)")
    parser.add_argument("--reverse-route", type=_route, action="append", default=[], metavar="LISTEN=TARGET",
                        help="also carry connections dialled from the far end, LISTEN host:port to TARGET host:port, "
                             "over the same bearer (its bytes toward TARGET go the back way)")
    parser.add_argument("--signal-outage", type=float, default=None, metavar="SECONDS",
                        help="SIGUSR2 begins an outage of SECONDS (for tests that choose the moment)")
    parser.add_argument("--marker", default=None, help="count turns before these bytes are first seen")
    parser.add_argument("--status", type=Path, default=None, metavar="FILE",
                        help="write the books as JSON to FILE on SIGUSR1, every second and at exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    task.react(_serve, (arguments,))
    return 0


def _serve(reactor, arguments):
    """Shape connections until the process is stopped (task.react gives the reactor; SIGTERM stops it)."""

    simulator = BearerSimulator(
        reactor, *arguments.listen, *arguments.target, arguments.rate, arguments.delay, arguments.outage,
        marker=arguments.marker.encode() if arguments.marker else None, log=lambda text: print(text, flush=True),
        max_connections=arguments.max_connections, reverse_routes=arguments.reverse_route)

    def write_status() -> None:
        if arguments.status is not None:
            temporary = arguments.status.with_suffix(".tmp")
            temporary.write_text(json.dumps(simulator.status(), indent=1))
            os.replace(temporary, arguments.status)

    def every_second() -> None:
        write_status()
        reactor.callLater(1.0, every_second)

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(write_status))
    if arguments.signal_outage is not None:
        signal.signal(signal.SIGUSR2,
                      lambda *_: reactor.callFromThread(simulator.begin_outage, arguments.signal_outage))
    simulator.start()
    reactor.callWhenRunning(every_second)
    print(f"bearer: {arguments.listen[0]}:{arguments.listen[1]} -> {arguments.target[0]}:{arguments.target[1]} "
          f"at {arguments.rate:g} bit/s, {arguments.delay:g} s one way, outages {arguments.outage}", flush=True)
    reactor.addSystemEventTrigger("after", "shutdown", write_status)
    return defer.Deferred()  # never fires: SIGINT or SIGTERM stops the reactor


if __name__ == "__main__":
    sys.exit(main())
