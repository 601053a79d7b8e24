"""
Dialback verification (XEP-0220): asking a side's authoritative server whether
a key a peer presented is genuine, without letting peers make the guard open
connections or hold state without bound.

``PendingVerifications`` decides and does no I/O: it deduplicates requests per
(asking stream, originating domain, receiving domain) and counts what is
pending per stream, per peer address and per side, refusing beyond the caps.
``Verifier`` is the thin part: it owns one verification stream per
authoritative server ((receiving domain, originating domain) on one side),
sends every db:verify for that server on it, each with a deadline on the
injected clock, and closes it when nothing is left to ask.  Every request ends in exactly one ``Answer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class Answer:
    """What the guard tells a peer about its db:result: valid, invalid, or an XEP-0220 error."""

    verdict: str  # "valid", "invalid" or "error"
    condition: str | None = None  # a stanza error condition (RFC 6120 8.3.3) when verdict is "error"
    error_type: str = "cancel"


VALID = Answer("valid")
INVALID = Answer("invalid")
# The errors XEP-0220 names for a db:result the receiving server cannot settle.
UNREACHABLE = Answer("error", "remote-server-not-found")
TIMED_OUT = Answer("error", "remote-server-timeout")
# XEP-0220 2.4: the 'to' of a db:result names no domain this guard serves (the stream stays open).
NOT_SERVED = Answer("error", "item-not-found")
TOO_MANY_HERE = Answer("error", "policy-violation", "wait")
TOO_MANY_ON_SIDE = Answer("error", "resource-constraint", "wait")


def as_answer(value) -> Answer:
    """An Answer from what a check returned (a bare bool means valid or invalid)."""
    if isinstance(value, Answer):
        return value
    return VALID if value is True else INVALID


@dataclass(frozen=True)
class Admitted:
    """The request is new and within every cap: verify it."""


@dataclass(frozen=True)
class Duplicate:
    """The same stream already waits for this pair: the pending answer will settle it."""


@dataclass(frozen=True)
class Refused:
    """Over a cap: the peer gets this error answer."""

    answer: Answer


class PendingVerifications:
    """Counts verifications waiting for an answer and decides whether another one may start."""

    def __init__(self, per_stream: int, per_address: int, per_side: int):
        self.per_stream = per_stream
        self.per_address = per_address
        self.per_side = per_side
        self._pending: dict[tuple[object, str, str], object] = {}  # (stream, originating, receiving) -> address
        self._by_stream: dict[object, int] = {}
        self._by_address: dict[object, int] = {}

    def admit(self, stream, address, originating: str, receiving: str):
        """Admitted, Duplicate or Refused for a db:result from ``stream`` (at ``address``) for the pair."""
        key = (stream, originating, receiving)
        if key in self._pending:
            return Duplicate()
        if self._by_stream.get(stream, 0) >= self.per_stream:
            return Refused(TOO_MANY_HERE)
        if self._by_address.get(address, 0) >= self.per_address:
            return Refused(TOO_MANY_HERE)
        if len(self._pending) >= self.per_side:
            return Refused(TOO_MANY_ON_SIDE)
        self._pending[key] = address
        self._by_stream[stream] = self._by_stream.get(stream, 0) + 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return Admitted()

    def settle(self, stream, originating: str, receiving: str) -> None:
        """The request for the pair on ``stream`` has its answer: it no longer counts."""
        address = self._pending.pop((stream, originating, receiving), _ABSENT)
        if address is _ABSENT:
            return
        _decrement(self._by_stream, stream)
        _decrement(self._by_address, address)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pending_for(self, stream=None, address=None) -> int:
        if stream is not None:
            return self._by_stream.get(stream, 0)
        return self._by_address.get(address, 0)


_ABSENT = object()


def _decrement(counts: dict, key) -> None:
    remaining = counts.get(key, 0) - 1
    if remaining > 0:
        counts[key] = remaining
    else:
        counts.pop(key, None)


class Verifier:
    """
    The verifications of one side, made with the side by whoever builds it
    (the service).  ``open_stream(owner, side, sender, receiver, route,
    purpose="verify")`` (``guard.edges.s2s.carrier.open_outbound_stream``, or
    a stand-in) connects an OutboundStream whose owner is a ``_VerifyChannel``;
    the channel sends db:verify elements on it once it is ready and turns its
    answers into Answers.
    """

    def __init__(self, side, open_stream):
        self.side = side
        self.open_stream = open_stream
        limits = side.limits
        self.book = PendingVerifications(
            limits.verifications_per_stream, limits.verifications_per_address, limits.verifications_per_side
        )
        self.channels: dict[tuple[str, str], _VerifyChannel] = {}

    def check_dialback(self, asker, originating: str, receiving: str, stream_id: str, key: str):
        """
        Ask ``originating``'s authoritative server whether ``key`` is genuine
        for ``receiving``: a Deferred of an Answer, or None when ``asker`` (the
        inbound stream) already waits for this pair.  Its peer's address counts
        against the per-address cap.
        """
        address = getattr(getattr(asker, "peer_address", None), "host", None)
        return self.check(asker, address, originating, receiving, stream_id, key)

    def check(self, stream, address, originating: str, receiving: str, stream_id: str, key: str):
        """
        A Deferred that fires with one Answer for the key ``originating``
        presented to ``receiving`` on ``stream`` (whose id is ``stream_id``);
        None when the same stream already waits for this pair (nothing more to answer).
        """
        admission = self.book.admit(stream, address, originating, receiving)
        if isinstance(admission, Duplicate):
            return None
        if isinstance(admission, Refused):
            return defer.succeed(admission.answer)
        route = self.side.routes.get(originating)
        if route is None:
            self.book.settle(stream, originating, receiving)
            return defer.succeed(UNREACHABLE)
        channel = self.channels.get((receiving, originating))
        if channel is None:
            channel = _VerifyChannel(self, receiving, originating, route)
            if not channel.closed:
                # A stream that failed while it was being opened is not kept: the next request tries again.
                self.channels[(receiving, originating)] = channel
        answer = channel.ask(stream_id, key)

        def settled(result):
            self.book.settle(stream, originating, receiving)
            return result

        return answer.addBoth(settled)

    def channel_closed(self, channel):
        if self.channels.get((channel.sender, channel.receiver)) is channel:
            del self.channels[(channel.sender, channel.receiver)]

    def shut_down(self):
        for channel in list(self.channels.values()):
            channel.shut_down()


class _VerifyChannel:
    """Owner of the one verification stream from ``sender`` (fronted) to ``receiver``'s authoritative server."""

    def __init__(self, verifier, sender, receiver, route):
        self.verifier = verifier
        self.sender = sender
        self.receiver = receiver
        self.clock = verifier.side.clock
        self.waiting: dict[str, tuple[str, defer.Deferred, object]] = {}  # stream id -> (key, answer, deadline)
        self.unsent: list[str] = []  # stream ids asked before the stream was ready
        # Stream ids sent whose deadline passed: a late answer to one is ignored, not taken for a
        # forgery (at most as many as were pending; forgotten with the stream).
        self.expired: set[str] = set()
        self.ready = False
        self.closed = False
        self.stream = None
        try:
            stream = verifier.open_stream(self, verifier.side, sender, receiver, route, purpose="verify")
        except Exception as problem:  # noqa: BLE001 - no stream is coming: answer, never wait or count forever
            log.error("could not open a verification stream {sender}->{receiver}: {problem!r}",
                      sender=sender, receiver=receiver, problem=problem)
            self._closed(UNREACHABLE)
            return
        if not self.closed:
            self.stream = stream

    def ask(self, stream_id: str, key: str) -> defer.Deferred:
        if self.closed:
            return defer.succeed(UNREACHABLE)
        answer = defer.Deferred()
        deadline = self.clock.callLater(
            self.verifier.side.limits.verification_timeout, self._settle, stream_id, TIMED_OUT
        )
        self.waiting[stream_id] = (key, answer, deadline)
        if self.ready:
            self.stream.send_verify(stream_id, key)
        else:
            self.unsent.append(stream_id)
        return answer

    def _settle(self, stream_id, answer):
        entry = self.waiting.pop(stream_id, None)
        if entry is None:
            return
        if answer is TIMED_OUT and self.ready and stream_id not in self.unsent:
            self.expired.add(stream_id)
        _, deferred, deadline = entry
        if deadline.active():
            deadline.cancel()
        deferred.callback(answer)
        if not self.waiting and self.ready and not self.closed:
            # Nothing more to ask: the stream is not kept open for nobody.
            self._closed(UNREACHABLE)
            self.stream.close_idle()

    def _settle_all(self, answer):
        self.unsent.clear()
        for stream_id in list(self.waiting):
            self._settle(stream_id, answer)

    def _closed(self, answer):
        self.ready = False
        self.closed = True
        self.expired.clear()
        self.verifier.channel_closed(self)
        self._settle_all(answer)

    def shut_down(self):
        self._closed(UNREACHABLE)
        if self.stream is not None:
            self.stream.close_for_shutdown()

    # -- owner calls from the OutboundStream -------------------------------

    def stream_ready(self, stream):
        if self.closed or stream is not self.stream:
            stream.close_idle()
            return
        if not self.waiting:  # every request timed out while the stream was set up: nothing to ask
            self._closed(UNREACHABLE)
            stream.close_idle()
            return
        self.ready = True
        unsent, self.unsent = self.unsent, []
        for stream_id in unsent:
            if stream_id in self.waiting:
                stream.send_verify(stream_id, self.waiting[stream_id][0])

    def verification_answered(self, stream, stream_id, verdict):
        if stream_id in self.expired:
            self.expired.discard(stream_id)  # too late: its asker already heard remote-server-timeout
            return
        self._settle(stream_id, {"valid": VALID, "invalid": INVALID}.get(verdict, UNREACHABLE))

    def asked(self, stream_id) -> bool:
        """Whether a db:verify with this id was sent (and waits for its answer, or timed out waiting)."""
        return (stream_id in self.waiting and stream_id not in self.unsent) or stream_id in self.expired

    def stream_failed(self, stream, condition, text):
        self._closed(TIMED_OUT if condition == "remote-server-timeout" else UNREACHABLE)

    def stream_lost(self, stream):
        self._closed(UNREACHABLE)

    def congested(self, stream):
        pass

    def decongested(self, stream):
        pass
