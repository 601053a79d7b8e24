"""
Handing a judged stanza over to the worker its domain pair is pinned to (issue 11, goal 3).

With ``[guard] workers = N`` each (sender domain, receiver domain) pair is
pinned to one worker (``pinned_worker``: a stable hash of the pair modulo N),
so that the pair's outbound traffic leaves on one S2S stream, in order.  The
worker that accepted a stanza judges it and settles it in its own books; when
the pair is pinned elsewhere its relay hands the parcel to a
``HandoverCarrier`` (an ``ICarrier``) that writes it as a frame on a channel
to the pinned worker.  There a ``HandoverReceiver`` gives it to the S2S
carrier of the pair, as that carrier's owner (judged once: it is not judged
again), and reports back ``delivered`` or ``undeliverable``; the accepting
worker then settles it.

Frames are ``length (4 bytes, big-endian) | kind (1 byte) | body``, each at
most ``stanza_bytes + ENVELOPE_BYTES``; anything else ends the channel.
While a parcel is unconfirmed it counts in the accepting worker's held
bytes.  When the channel ends, parcels written and not confirmed settle *in
doubt* (audited, counted, never twice); a parcel carried while the channel
is down bounces with remote-server-timeout, as a failed S2S stream's do.
"""

from __future__ import annotations

import hashlib
import struct

from twisted.internet import protocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.core.bounce import peer_detail
from guard.core.settlement import Parcel
from guard.core.vocabulary import SERVER_NS, STANZA_ERROR_CONDITIONS, STREAMS_NS
from guard.edges.carriers import ICarrier, ICarrierOwner
from guard.edges.xmlstream import StreamFault, StreamParser, serialise

log = Logger()

# Bytes a frame may take besides its stanza: kind, number, flags, side and domain names.
ENVELOPE_BYTES = 4096
# Unconfirmed bytes on one channel past which the accepting worker's feeders of its pairs are held.
UNCONFIRMED_BOUND = 1024 * 1024

CARRY = 1  # accepting -> pinned: number, own-bounce flag, size, side, sender, receiver, stanza
DELIVERED = 2  # pinned -> accepting: number
UNDELIVERABLE = 3  # pinned -> accepting: number, condition, detail (the far server's words: audit only)
HOLD = 4  # pinned -> accepting: sender, receiver (the pair's S2S carrier is congested)
RELEASE = 5  # pinned -> accepting: sender, receiver
KINDS = frozenset({CARRY, DELIVERED, UNDELIVERABLE, HOLD, RELEASE})

_HEAD = struct.Struct(">IB")
_NUMBER = struct.Struct(">Q")
_CARRY_HEAD = struct.Struct(">QBI")

# What the carrier tells its owner (the guard's own words).
CHANNEL_DOWN = "the worker this domain pair is pinned to cannot be reached"
IN_DOUBT_TEXT = "handed to another worker, which stopped before it confirmed the stanza"
HANDOVER_IN_DOUBT_RULE = "guard:handover-in-doubt"
# The stream header the receiving parser is fed once, so that each frame's stanza parses as a stream child.
_RECEIVING_HEADER = (f"<stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS_NS}' version='1.0'>").encode()


class FrameFault(Exception):
    """The channel carried something that is not a frame we write: the channel ends."""


def pinned_worker(pair: tuple[str, str], workers: int) -> int:
    """The worker (0 .. workers-1) that carries ``pair``'s outbound traffic; the same in every process and run."""
    digest = hashlib.blake2b("\0".join(pair).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def frame(kind: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 1, kind) + body


def _fields(*texts: str) -> bytes:
    return b"\0".join(text.encode("utf-8") for text in texts)


def carry_frame(number: int, parcel, side: str, pair: tuple[str, str], stanza_bytes: int) -> bytes:
    """A CARRY frame for ``parcel`` (raises OversizedStanza when its stanza is larger than ``stanza_bytes``)."""
    xml = serialise(parcel.stanza, max_bytes=stanza_bytes).encode("utf-8")
    head = _CARRY_HEAD.pack(number, 1 if parcel.original is None else 0, parcel.size)
    return frame(CARRY, head + _fields(side, *pair) + b"\0" + xml)


def number_frame(kind: int, number: int, *texts: str) -> bytes:
    return frame(kind, _NUMBER.pack(number) + _fields(*texts))


class FrameReader:
    """Cuts a channel's bytes into (kind, body) frames; a frame larger than ``max_frame`` or of an unknown kind
    raises FrameFault, and so does every later call."""

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._dead = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._dead:
            raise FrameFault("the channel already broke")
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEAD.size:
            length, kind = _HEAD.unpack_from(self._buffer)
            if length < 1 or length - 1 > self.max_frame or kind not in KINDS:
                self._dead = True
                raise FrameFault(f"a frame of kind {kind} and {length} bytes")
            if len(self._buffer) < 4 + length:
                break
            frames.append((kind, bytes(self._buffer[_HEAD.size:4 + length])))
            del self._buffer[:4 + length]
        if len(self._buffer) > _HEAD.size + self.max_frame:
            self._dead = True
            raise FrameFault("a frame larger than the bound")
        return frames


def _texts(body: bytes, count: int) -> list[str]:
    parts = body.split(b"\0", count - 1)
    if len(parts) != count:
        raise FrameFault("a frame with missing fields")
    try:
        return [part.decode("utf-8") for part in parts]
    except UnicodeDecodeError:
        raise FrameFault("a frame with a field that is not UTF-8") from None


class _PairHold:
    """What the owner holds the feeders of when the pinned worker says one pair's S2S carrier is congested."""

    def __init__(self, pair):
        self.pairs = frozenset({pair})


@implementer(ICarrier)
class HandoverCarrier(protocol.Protocol):
    """
    The accepting worker's end of the channel to one other worker: carries
    parcels of the pairs pinned there and settles them with ``owner`` (the
    relay) as that worker reports.  ``in_doubt(parcel)`` settles a parcel
    written and never confirmed when the channel ends.
    """

    def __init__(self, owner, side_limits, in_doubt, unconfirmed_bound: int = UNCONFIRMED_BOUND):
        self.owner = owner
        self.stanza_bytes = side_limits.stanza_bytes
        self.in_doubt = in_doubt
        self.unconfirmed_bound = unconfirmed_bound
        self.reader = FrameReader(self.stanza_bytes + ENVELOPE_BYTES)
        self.pairs: set = set()
        self.unconfirmed: dict[int, Parcel] = {}
        self.unconfirmed_bytes = 0
        self.next_number = 1
        self.transport = None
        self.stopped = False
        self.holding = False
        self.pair_holds: dict[tuple[str, str], _PairHold] = {}
        self.counts = {"carried": 0, "delivered": 0, "undeliverable": 0, "in_doubt": 0, "bounced_down": 0}

    @property
    def hold_reason(self) -> str:
        return "waiting for another worker to confirm"

    # -- ICarrier ---------------------------------------------------------------

    def carry_for(self, side_name: str, pair: tuple[str, str]):
        """The carry callable for ``side_name`` and ``pair`` (what the relay's per-pair hook returns wraps it)."""
        return _PairLane(self, side_name, pair)

    def carry(self, parcel, side_name=None, pair=None):
        if self.transport is None or self.stopped:
            self.counts["bounced_down"] += 1
            self.owner.undeliverable(parcel, "remote-server-timeout", CHANNEL_DOWN)
            return
        parcel = self.owner.judged_again(parcel)
        if parcel is None:
            return
        number, self.next_number = self.next_number, self.next_number + 1
        try:
            data = carry_frame(number, parcel, side_name, pair, self.stanza_bytes)
        except Exception as problem:  # noqa: BLE001 - a stanza that cannot be framed is not delivered
            log.error("could not hand a stanza over: {problem!r}", problem=problem)
            self.owner.undeliverable(parcel, "internal-server-error", "the stanza could not be sent")
            return
        self.pairs.add(pair)
        self.unconfirmed[number] = parcel
        self.unconfirmed_bytes += parcel.size
        self.owner.count_held(parcel.size)
        self.counts["carried"] += 1
        self.transport.write(data)
        if self.unconfirmed_bytes >= self.unconfirmed_bound:
            self.holding = True
            self.owner.congested(self, self.hold_reason)

    def bounce_waiting(self, condition, text):
        """Nothing waits here unwritten: what is written is the other worker's to settle and confirm."""

    def waiting(self) -> int:
        return sum(1 for parcel in self.unconfirmed.values() if parcel.original is None)

    def shut_down(self):
        if self.stopped:
            return
        self.stopped = True
        if self.transport is not None:
            self.transport.loseConnection()
        self._settle_in_doubt()

    def describe(self):
        return {"state": "stopped" if self.stopped else ("up" if self.transport else "down"),
                "unconfirmed": len(self.unconfirmed), "unconfirmed_bytes": self.unconfirmed_bytes, **self.counts}

    # -- the channel --------------------------------------------------------------

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        """The channel's unwritten bytes passed the transport's bound: hold the feeders of our pairs."""
        self.owner.congested(self, "the channel to another worker is full")

    def resumeProducing(self):
        self.owner.decongested(self, "the channel to another worker is full")

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        try:
            for kind, body in self.reader.feed(data):
                self._report(kind, body)
        except FrameFault as fault:
            log.error("the channel to another worker broke: {fault}", fault=str(fault))
            self.transport.loseConnection()
            self._settle_in_doubt()

    def connectionLost(self, reason=None):
        self.transport = None
        self._settle_in_doubt()

    def _report(self, kind, body):
        if kind in (HOLD, RELEASE):
            pair = tuple(_texts(body, 2))
            hold = self.pair_holds.setdefault(pair, _PairHold(pair))
            reason = f"the worker carrying {pair[0]}->{pair[1]} is congested"
            (self.owner.congested if kind == HOLD else self.owner.decongested)(hold, reason)
            return
        if kind not in (DELIVERED, UNDELIVERABLE) or len(body) < _NUMBER.size:
            raise FrameFault(f"a frame of kind {kind} from the pinned worker")
        (number,) = _NUMBER.unpack_from(body)
        parcel = self._confirm(number)
        if kind == DELIVERED:
            self.counts["delivered"] += 1
            self.owner.delivered(parcel)
            return
        condition, detail = _texts(body[_NUMBER.size:], 2)
        if condition not in STANZA_ERROR_CONDITIONS:
            condition = "internal-server-error"
        self.counts["undeliverable"] += 1
        self.owner.undeliverable(parcel, condition, peer_detail(detail))

    def _confirm(self, number):
        parcel = self.unconfirmed.pop(number, None)
        if parcel is None:
            raise FrameFault(f"a confirmation of stanza {number}, which is not waiting")
        self._free(parcel)
        return parcel

    def _free(self, parcel):
        self.unconfirmed_bytes -= parcel.size
        self.owner.count_freed(parcel.size)
        if self.holding and self.unconfirmed_bytes < self.unconfirmed_bound // 2:
            self.holding = False
            self.owner.decongested(self, self.hold_reason)

    def _settle_in_doubt(self):
        """Every parcel written and not confirmed: in doubt, once each."""
        waiting, self.unconfirmed = self.unconfirmed, {}
        for parcel in waiting.values():
            self._free(parcel)
            self.counts["in_doubt"] += 1
            self.in_doubt(parcel)
        if self.holding:
            self.holding = False
            self.owner.decongested(self, self.hold_reason)


@implementer(ICarrier)
class _PairLane:
    """One pair's way into a HandoverCarrier (the relay keeps one carrier per (side, sender, receiver))."""

    def __init__(self, channel: HandoverCarrier, side_name: str, pair: tuple[str, str]):
        self.channel = channel
        self.side_name = side_name
        self.pair = pair
        self.pairs = frozenset({pair})

    def carry(self, parcel):
        self.channel.carry(parcel, self.side_name, self.pair)

    def bounce_waiting(self, condition, text):
        self.channel.bounce_waiting(condition, text)

    def waiting(self) -> int:
        return 0  # the channel counts what waits once (Relay.bounces_waiting sums every carrier)

    def shut_down(self):
        self.channel.shut_down()

    def describe(self):
        return {"handed_over": True, **self.channel.describe()}


@implementer(ICarrierOwner)
class HandoverReceiver(protocol.Protocol):
    """
    The pinned worker's end of a channel: gives each parcel to the S2S carrier
    of its pair (``carrier_for(side, pair, owner)`` makes or finds it, with this
    receiver as its owner) and reports what becomes of it.  It does not judge
    the stanza again: the accepting worker did, and settles it.  ``relay`` is
    this worker's: the bytes waiting in the S2S queue count in its budget.
    """

    def __init__(self, relay, carrier_for, stanza_bytes: int, parser_limits=None):
        self.relay = relay
        self.carrier_for = carrier_for
        self.reader = FrameReader(stanza_bytes + ENVELOPE_BYTES)
        self.parsed = []
        kwargs = {"limits": parser_limits} if parser_limits is not None else {}
        self.parser = StreamParser(lambda header: None, lambda element, size: self.parsed.append(element),
                                   lambda: None, **kwargs)
        self.parser.feed(_RECEIVING_HEADER)
        self.numbers: dict[int, tuple[int, Parcel]] = {}  # id(parcel) -> (number, parcel)

    def dataReceived(self, data):
        try:
            for kind, body in self.reader.feed(data):
                if kind != CARRY:
                    raise FrameFault(f"a frame of kind {kind} from the accepting worker")
                self._carry(body)
        except (FrameFault, StreamFault) as fault:
            log.error("the channel from another worker broke: {fault}", fault=str(fault))
            self.transport.loseConnection()

    def _carry(self, body):
        if len(body) < _CARRY_HEAD.size:
            raise FrameFault("a short CARRY frame")
        number, own_bounce, size = _CARRY_HEAD.unpack_from(body)
        side, sender, receiver, xml = _texts(body[_CARRY_HEAD.size:], 4)
        self.parsed.clear()
        self.parser.feed(xml.encode("utf-8"))
        if len(self.parsed) != 1:
            raise FrameFault("a CARRY frame that is not one stanza")
        stanza = self.parsed.pop()
        parcel = Parcel(stanza, None if own_bounce else stanza, None, size)
        self.numbers[id(parcel)] = (number, parcel)
        self.carrier_for(side, (sender, receiver), self).carry(parcel)

    def _number(self, parcel):
        return self.numbers.pop(id(parcel))[0]

    def _send(self, data):
        if self.transport is not None:
            self.transport.write(data)

    # -- ICarrierOwner, for the S2S carriers of the pairs pinned here ---------------

    def delivered(self, parcel):
        self._send(number_frame(DELIVERED, self._number(parcel)))

    def undeliverable(self, parcel, condition, text):
        self._send(number_frame(UNDELIVERABLE, self._number(parcel), condition, peer_detail(text or "")))

    def congested(self, carrier, reason):
        for pair in carrier.pairs:
            self._send(frame(HOLD, _fields(*pair)))

    def decongested(self, carrier, reason):
        for pair in carrier.pairs:
            self._send(frame(RELEASE, _fields(*pair)))

    def judged_again(self, parcel):
        return parcel  # judged where it was accepted; that worker judges it again after a reload before handing over

    def count_held(self, amount):
        self.relay.count_held(amount)

    def count_freed(self, amount):
        self.relay.count_freed(amount)


def in_doubt_settler(relay):
    """What settles a parcel handed over and never confirmed, in ``relay``'s books: dropped under
    HANDOVER_IN_DOUBT_RULE (audited) or, for one of our own bounces, a bounce lost; never twice (the core refuses)."""

    def settle(parcel):
        if parcel.original is None:
            relay.settlement.bounce_lost(parcel, IN_DOUBT_TEXT)
            return
        relay.settlement.drop(parcel.ticket, HANDOVER_IN_DOUBT_RULE, 1, IN_DOUBT_TEXT, stanza=parcel.original,
                              direction=parcel.ticket.direction)

    return settle
