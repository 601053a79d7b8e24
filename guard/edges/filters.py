"""
A byte filter chain per stream, in and out, as Prosody's ``util/filters``:
where TLS hands bytes to the parser (``incoming``) and where the serialiser
hands bytes to TLS (``outgoing``), an ordered list of filters runs.

A filter is a callable taking the bytes and returning them (possibly
changed), or ``None`` to hold them back silently (the chain stops there), or
raising ``Refused`` to close the stream with the stream error it names.
Filters run by priority, highest first; filters of equal priority run in the
order they were added.  Later capabilities (compression) plug in as one more
filter pair.

Two filters ship here: ``ByteCount`` (bytes in and out per stream, for the
management page) and ``RateBudget`` (the inbound byte budget: a peer over it
is throttled, and closed when it stays over it past the grace).
"""

from __future__ import annotations

from typing import Callable, Optional

from guard.core.ratelimit import ByteBudget

IN = "in"
OUT = "out"

# Priorities of the filters the guard installs: counting sees the bytes as they
# are on the wire (first in, last out); the rate budget spends wire bytes too.
COUNTING_PRIORITY = 1000
RATE_PRIORITY = 900

ByteFilter = Callable[[bytes], Optional[bytes]]


class Refused(Exception):
    """A filter refuses the bytes: the stream closes with ``condition`` and the guard's own ``text``."""

    def __init__(self, condition: str, text: str):
        super().__init__(condition, text)
        self.condition = condition
        self.text = text


class FilterChain:
    """The filters of one stream, in each direction, ordered by priority."""

    def __init__(self):
        self._chains: dict[str, list[tuple[int, int, ByteFilter]]] = {IN: [], OUT: []}
        self._added = 0

    def add(self, direction: str, byte_filter: ByteFilter, priority: int = 0) -> None:
        """Insert ``byte_filter`` in the ``direction`` ("in" or "out") chain; higher priorities run first."""
        chain = self._chains[direction]
        self._added += 1
        chain.append((-priority, self._added, byte_filter))
        chain.sort(key=lambda entry: entry[:2])

    def remove(self, direction: str, byte_filter: ByteFilter) -> None:
        """Take ``byte_filter`` out of the ``direction`` chain (nothing happens if it is not there)."""
        self._chains[direction] = [entry for entry in self._chains[direction] if entry[2] != byte_filter]

    def filters(self, direction: str) -> list[ByteFilter]:
        """The filters of ``direction`` in the order they run."""
        return [entry[2] for entry in self._chains[direction]]

    def incoming(self, data: bytes) -> bytes | None:
        """Run the bytes TLS read through the "in" chain: what the parser gets, or None."""
        return self._run(IN, data)

    def outgoing(self, data: bytes) -> bytes | None:
        """Run the serialised bytes through the "out" chain: what TLS gets, or None."""
        return self._run(OUT, data)

    def _run(self, direction: str, data: bytes) -> bytes | None:
        for _, _, byte_filter in self._chains[direction]:
            data = byte_filter(data)
            if data is None:
                return None
        return data


class ByteCount:
    """Counts the bytes of one stream as they are on the wire, in and out."""

    def __init__(self):
        self.bytes_in = 0
        self.bytes_out = 0

    def install(self, chain: FilterChain) -> "ByteCount":
        chain.add(IN, self.count_in, COUNTING_PRIORITY)
        chain.add(OUT, self.count_out, -COUNTING_PRIORITY)
        return self

    def count_in(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        return data

    def count_out(self, data: bytes) -> bytes:
        self.bytes_out += len(data)
        return data

    def describe(self) -> dict:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


class RateBudget:
    """
    The inbound byte budget of one stream: within ``rate``/``burst`` bytes
    pass; over it, the stream is held (``hold("rate")``) until the budget
    allows more; a peer that stays over it for longer than ``grace`` seconds
    is refused.  ``stream`` is what the filter acts on: ``hold``, ``release``
    and ``schedule`` (a named timer on the stream's clock).
    """

    def __init__(self, stream, clock, rate: float, burst: float, grace: float):
        self.stream = stream
        self.clock = clock
        self.grace = grace
        self.budget = ByteBudget(rate, burst, clock.seconds())
        self.throttled_since: float | None = None

    def install(self, chain: FilterChain) -> "RateBudget":
        chain.add(IN, self, RATE_PRIORITY)
        return self

    def __call__(self, data: bytes) -> bytes:
        now = self.clock.seconds()
        wait = self.budget.spend(now, len(data))
        if wait <= 0:
            self.throttled_since = None
            return data
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > self.grace:
            raise Refused("policy-violation", "sending faster than the rate limit allows")
        self.stream.hold("rate")
        self.stream.schedule("rate", wait, self.stream.release, "rate")
        return data
