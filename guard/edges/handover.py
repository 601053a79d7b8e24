"""
Handing a judged stanza over to the worker its domain pair is pinned to (issue 11, goal 3).

With ``[guard] workers = N`` each (sender domain, receiver domain) pair is
pinned to one worker (``pinned_worker``: a stable hash of the pair modulo N),
so that the pair's outbound traffic leaves on one S2S stream, in order.  The
worker that accepted a stanza judges it and settles it in its own books; when
the pair is pinned elsewhere its relay hands the parcel to a
``HandoverCarrier`` (an ``ICarrier``) that writes it as a frame on a channel
to the pinned worker.  There a ``HandoverReceiver`` gives it to the S2S
carrier of the pair, as that carrier's owner, and reports back
``delivered``, ``undeliverable`` or ``dropped``; the accepting worker then
settles it.

Each frame names the policy revision it was judged under (``revision``: the
digests of the policies in force, the same in every worker that loaded the
same files).  Before the pinned worker writes a parcel it judges it again
with its own policy in force if that revision is not its own, or if it
reloaded while the parcel waited: workers reload one by one, and a stanza
never leaves under a policy the worker writing it no longer holds.

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
from dataclasses import replace

from twisted.internet import protocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.core.accepted import accepted_from_element
from guard.core.bounce import peer_detail
from guard.core.pipeline import Direction, Verdict, judge_fail_closed
from guard.core.settlement import Parcel
from guard.core.vocabulary import SERVER_NS, STANZA_ERROR_CONDITIONS, STREAMS_NS
from guard.edges.carriers import ICarrier, ICarrierOwner
from guard.edges.s2s.carrier import S2SCarrier
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser, serialise

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
DROPPED = 6  # pinned -> accepting: number, rule id (judged again by the pinned worker's policy, not passed)
KINDS = frozenset({CARRY, DELIVERED, UNDELIVERABLE, HOLD, RELEASE, DROPPED})

_HEAD = struct.Struct(">IB")
_NUMBER = struct.Struct(">Q")
_CARRY_HEAD = struct.Struct(">QBI")

# What the carrier tells its owner (the guard's own words).
CHANNEL_DOWN = "the worker this domain pair is pinned to cannot be reached"
CHANNEL_FULL = "the worker this domain pair is pinned to has too much waiting"
IN_DOUBT_TEXT = "handed to another worker, which stopped before it confirmed the stanza"
JUDGED_AGAIN_TEXT = "judged again by the worker carrying it, whose policies were reloaded"
NOT_PARSED = "the stanza handed over could not be read again"
HANDOVER_IN_DOUBT_RULE = "guard:handover-in-doubt"
# The stream header the receiving parser is fed once, so that each frame's stanza parses as a stream child.
_RECEIVING_HEADER = (f"<stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS_NS}' version='1.0'>").encode()


class FrameFault(Exception):
    """The channel carried something that is not a frame we write: the channel ends."""


def receiving_limits(limits: ParserLimits | None, stanza_bytes: int) -> ParserLimits:
    """
    The parser limits of the pinned worker reading a handed-over stanza: the
    accepting worker judged it within ``limits``, and serialising it may add
    namespace declarations (on an element that enters a namespace, or hoisted
    to the stanza element), so counts are bounded by the frame's bytes alone
    (``stanza_bytes``: serialise stops there) rather than judged again; the
    depth stays (the serialiser and the relay recurse).  A stanza the peer
    made within every limit must never break the channel between workers.
    """
    limits = limits or ParserLimits(stanza_bytes=stanza_bytes)
    return ParserLimits(stanza_bytes=stanza_bytes, element_depth=limits.element_depth,
                        attributes_per_element=stanza_bytes, attribute_value_bytes=stanza_bytes,
                        children_per_stanza=stanza_bytes, header_bytes=ParserLimits().header_bytes)


def pinned_worker(pair: tuple[str, str], workers: int) -> int:
    """The worker (0 .. workers-1) that carries ``pair``'s outbound traffic; the same in every process and run."""
    digest = hashlib.blake2b("\0".join(pair).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def frame(kind: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 1, kind) + body


def _fields(*texts: str) -> bytes:
    return b"\0".join(text.encode("utf-8") for text in texts)


def carry_frame(number: int, parcel, side: str, pair: tuple[str, str], stanza_bytes: int, revision: str = "") -> bytes:
    """A CARRY frame for ``parcel`` judged under policy ``revision`` (raises OversizedStanza when its stanza is
    larger than ``stanza_bytes``)."""
    xml = serialise(parcel.stanza, max_bytes=stanza_bytes).encode("utf-8")
    head = _CARRY_HEAD.pack(number, 1 if parcel.original is None else 0, parcel.size)
    return frame(CARRY, head + _fields(side, *pair, revision) + b"\0" + xml)


def policy_revision(policy_records) -> str:
    """The revision of the policies in force, as every worker that loaded the same files names it: a digest of
    each policy file's digest by direction (``GuardProcess.policy_records``)."""
    text = "\n".join(sorted(f"{record['direction']}={record['digest']}" for record in policy_records))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def _no_revision() -> str:
    return ""


def number_frame(kind: int, number: int, *texts: str) -> bytes:
    return frame(kind, _NUMBER.pack(number) + _fields(*texts))


class FrameReader:
    """Cuts a channel's bytes into (kind, body) frames; a frame larger than ``max_frame`` or of an unknown kind
    raises FrameFault, and so does every later call."""

    def __init__(self, max_frame: int, kinds=KINDS):
        self.max_frame = max_frame
        self.kinds = kinds
        self._buffer = bytearray()
        self._dead = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._dead:
            raise FrameFault("the channel already broke")
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEAD.size:
            length, kind = _HEAD.unpack_from(self._buffer)
            if length < 1 or length - 1 > self.max_frame or kind not in self.kinds:
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

    def __init__(self, owner, stanza_bytes: int, in_doubt, unconfirmed_bound: int = UNCONFIRMED_BOUND,
                 revision=_no_revision):
        """``revision()``: the revision of the policies in force in this worker (``policy_revision``)."""
        self.owner = owner
        self.stanza_bytes = stanza_bytes
        self.in_doubt = in_doubt
        self.revision = revision
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
        self.counts = {"carried": 0, "delivered": 0, "undeliverable": 0, "in_doubt": 0, "bounced_down": 0,
                       "dropped": 0}

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
        if self.unconfirmed_bytes + parcel.size > 2 * self.unconfirmed_bound:
            self.owner.undeliverable(parcel, "resource-constraint", CHANNEL_FULL)
            return
        parcel = self.owner.judged_again(parcel)
        if parcel is None:
            return
        number, self.next_number = self.next_number, self.next_number + 1
        try:
            data = carry_frame(number, parcel, side_name, pair, self.stanza_bytes, self.revision())
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
        """Parcels the other worker may still confirm within the shutdown grace (it bounces what it cannot send)."""
        return len(self.unconfirmed)

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
        if kind not in (DELIVERED, UNDELIVERABLE, DROPPED) or len(body) < _NUMBER.size:
            raise FrameFault(f"a frame of kind {kind} from the pinned worker")
        (number,) = _NUMBER.unpack_from(body)
        parcel = self._confirm(number)
        if kind == DELIVERED:
            self.counts["delivered"] += 1
            self.owner.delivered(parcel)
            return
        if kind == DROPPED:
            (rule_id,) = _texts(body[_NUMBER.size:], 1)
            self.counts["dropped"] += 1
            dropped_settler(self.owner)(parcel, rule_id[:200])
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

    stream = None  # no S2S stream of its own (the status, the metrics and the snapshot read relay.links alike)

    def __init__(self, channel: HandoverCarrier, side_name: str, pair: tuple[str, str]):
        self.channel = channel
        self.side_name = side_name
        self.pair = pair
        self.pairs = frozenset({pair})

    @property
    def holding(self) -> bool:
        return self.channel.holding

    def carry(self, parcel):
        self.channel.carry(parcel, self.side_name, self.pair)

    def bounce_waiting(self, condition, text):
        self.channel.bounce_waiting(condition, text)

    def waiting(self) -> int:
        return self.channel.waiting()  # counted once per lane: the service only waits while any is > 0

    def shut_down(self):
        self.channel.shut_down()

    def describe(self):
        """What an S2S carrier's describe() says (nothing queued here: the channel's counts follow), and the channel's."""
        return {"state": "handed over", "queued": 0, "queued_bytes": 0, "holding": self.channel.holding,
                "connects": 0, "failures": 0, "channel": self.channel.describe()}


@implementer(ICarrierOwner)
class HandoverReceiver(protocol.Protocol):
    """
    The pinned worker's end of a channel: gives each parcel to the S2S carrier
    of its pair (``carrier_for(side, pair, owner)`` makes or finds it, with this
    receiver as its owner) and reports what becomes of it.  The accepting
    worker judged the stanza and settles it; this worker judges it again only
    when the frame names another policy revision than its own or it reloaded
    while the stanza waited (``judged_again``).  ``relay`` is this worker's:
    the bytes waiting in the S2S queue count in its budget.
    """

    def __init__(self, relay, carrier_for, stanza_bytes: int, parser_limits=None, revision=_no_revision):
        """``revision()``: the revision of the policies in force in this worker (``policy_revision``)."""
        self.relay = relay
        self.carrier_for = carrier_for
        self.revision = revision
        self.reader = FrameReader(stanza_bytes + ENVELOPE_BYTES)
        self.parsed = []
        # What the accepting worker judged is read within the frame's bytes (receiving_limits), not judged again.
        self._parser_kwargs = {"limits": parser_limits or receiving_limits(None, stanza_bytes)}
        self.parser = StreamParser(lambda header: None, lambda element, size: self.parsed.append(element),
                                   lambda: None, **self._parser_kwargs)
        self.parser.feed(_RECEIVING_HEADER)
        # id(parcel) -> (number, parcel, its side, whether it must be judged again here, this worker's generation then)
        self.numbers: dict[int, tuple] = {}

    def dataReceived(self, data):
        try:
            for kind, body in self.reader.feed(data):
                if kind != CARRY:
                    raise FrameFault(f"a frame of kind {kind} from the accepting worker")
                self._carry(body)
        except FrameFault as fault:
            log.error("the channel from another worker broke: {fault}", fault=str(fault))
            self.transport.loseConnection()

    def _carry(self, body):
        if len(body) < _CARRY_HEAD.size:
            raise FrameFault("a short CARRY frame")
        number, own_bounce, size = _CARRY_HEAD.unpack_from(body)
        side, sender, receiver, revision, xml = _texts(body[_CARRY_HEAD.size:], 5)
        stanza = self._parse(xml)
        if stanza is None:  # this stanza is not delivered; the frames around it are whole: the channel goes on
            self._send(number_frame(UNDELIVERABLE, number, "internal-server-error", NOT_PARSED))
            return
        parcel = Parcel(stanza, None if own_bounce else stanza, None, size)
        try:
            carrier = self.carrier_for(side, (sender, receiver), self)
        except KeyError:
            raise FrameFault("a CARRY frame for a side or pair this worker does not carry") from None
        self.numbers[id(parcel)] = (number, parcel, side, revision != self.revision(), self.relay.policies.generation)
        carrier.carry(parcel)

    def _parse(self, xml: str):
        """The one stanza ``xml`` holds, or None (logged; the parser starts afresh for the next frame)."""
        self.parsed.clear()
        try:
            self.parser.feed(xml.encode("utf-8"))
        except StreamFault as fault:
            log.error("a stanza handed over could not be read again: {fault}", fault=str(fault))
            self._fresh_parser()
            return None
        if len(self.parsed) != 1:
            log.error("a stanza handed over was {count} elements", count=len(self.parsed))
            self._fresh_parser()
            return None
        return self.parsed.pop()

    def _fresh_parser(self):
        self.parsed = []
        self.parser = StreamParser(lambda header: None, lambda element, size: self.parsed.append(element),
                                   lambda: None, **self._parser_kwargs)
        self.parser.feed(_RECEIVING_HEADER)

    def _number(self, parcel):
        """The accepting worker's number for ``parcel``, or None when that worker is gone since it was handed over."""
        entry = self.numbers.pop(id(parcel), None)
        return None if entry is None else entry[0]

    def judged_again(self, parcel):
        """
        ``parcel`` as it may leave now.  Judged by the accepting worker under
        the revision its frame names: if that is not this worker's, or this
        worker reloaded while it waited, this worker's policy in force judges
        what would leave again; a pass leaves as that policy builds it, a
        bounce is reported undeliverable with its condition, anything else
        (drop, refer: the authority is asked where the stanza was accepted,
        which settled it already) is reported dropped under the rule.  Our
        own bounces are not judged.
        """
        entry = self.numbers.get(id(parcel))
        if entry is None or parcel.original is None:
            return parcel
        number, _, side, other_revision, generation = entry
        if not other_revision and generation == self.relay.policies.generation:
            return parcel
        direction = Direction(self.relay.topology.far_side(side), side)
        judgement, problem = judge_fail_closed(self.relay.policies.current(direction), parcel.stanza, direction,
                                               accepted_from_element(parcel.stanza, direction, parcel.size))
        if problem is not None:
            log.error("policy for {direction} failed on a handed-over stanza: {problem!r}",
                      direction=str(direction), problem=problem)
        if judgement.verdict is Verdict.PASS:
            renewed = replace(parcel, stanza=judgement.stanza)
            del self.numbers[id(parcel)]
            self.numbers[id(renewed)] = (number, renewed, side, False, self.relay.policies.generation)
            return renewed
        log.info("a handed-over stanza judged again after a reload: {verdict} by {rule}",
                 verdict=judgement.verdict.name, rule=judgement.rule_id)
        self._number(parcel)
        if number is None:
            return None
        if judgement.verdict is Verdict.BOUNCE:
            condition = judgement.condition if judgement.condition in STANZA_ERROR_CONDITIONS else "policy-violation"
            self._send(number_frame(UNDELIVERABLE, number, condition, JUDGED_AGAIN_TEXT))
        else:
            self._send(number_frame(DROPPED, number, judgement.rule_id))
        return None

    def handed_over(self, parcel) -> bool:
        """Whether ``parcel`` came over this channel and is not reported yet (in this life of the peer or an earlier one)."""
        return id(parcel) in self.numbers

    def _send(self, data):
        if self.transport is not None:
            self.transport.write(data)

    def accepting_worker_gone(self):
        """The accepting worker died (its parcels are in doubt there): what we still carry for it is not confirmed."""
        self.numbers = {key: (None, *rest) for key, (_, *rest) in self.numbers.items()}
        self.reader = FrameReader(self.reader.max_frame)
        self._fresh_parser()

    # -- ICarrierOwner, for the S2S carriers of the pairs pinned here ---------------

    def delivered(self, parcel):
        number = self._number(parcel)
        if number is not None:
            self._send(number_frame(DELIVERED, number))

    def undeliverable(self, parcel, condition, text):
        number = self._number(parcel)
        if number is not None:
            self._send(number_frame(UNDELIVERABLE, number, condition, peer_detail(text or "")))

    def congested(self, carrier, reason):
        for pair in carrier.pairs:
            self._send(frame(HOLD, _fields(*pair)))

    def decongested(self, carrier, reason):
        for pair in carrier.pairs:
            self._send(frame(RELEASE, _fields(*pair)))

    def count_held(self, amount):
        self.relay.count_held(amount)

    def count_freed(self, amount):
        self.relay.count_freed(amount)


def dropped_settler(relay):
    """What settles a parcel the pinned worker judged again and did not pass (``DROPPED``), in ``relay``'s books:
    dropped under the rule that judged it there (audited)."""

    def settle(parcel, rule_id):
        relay.settlement.drop(parcel.ticket, rule_id, 1, JUDGED_AGAIN_TEXT, stanza=parcel.original,
                              direction=parcel.ticket.direction)

    return settle


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


# -- star routing: each worker has one channel to the supervisor, which passes frames between workers --------
#
# On a worker's channel every frame is an outer frame whose body starts with a worker's index:
#   ROUTE      worker -> supervisor: to that worker; supervisor -> worker: from that worker (then an inner frame)
#   PEER_UP    supervisor -> worker: that worker runs (a new life: nothing of the last one is confirmed)
#   PEER_DOWN  supervisor -> worker: that worker is gone
# and, once, first on the channel: HELLO (this worker's index, the number of workers), read before the reactor runs.
ROUTE = 16
PEER_UP = 17
PEER_DOWN = 18
HELLO = 19
ROUTING_KINDS = frozenset({ROUTE, PEER_UP, PEER_DOWN})


def routed_frame_bound(stanza_bytes: int) -> int:
    """The largest outer frame body: an inner frame of the largest stanza and its envelope, and the index."""
    return stanza_bytes + 2 * ENVELOPE_BYTES


def hello_frame(index: int, count: int) -> bytes:
    return frame(HELLO, bytes([index, count]))


def read_hello(fd: int) -> tuple[int, int]:
    """This worker's (index, count), the first frame the supervisor wrote on ``fd`` (read before the reactor runs)."""
    import os

    expected = len(hello_frame(0, 1))
    data = b""
    while len(data) < expected:
        piece = os.read(fd, expected - len(data))
        if not piece:
            raise FrameFault("the supervisor closed the handover channel before saying which worker this is")
        data += piece
    length, kind = _HEAD.unpack_from(data)
    index, count = data[_HEAD.size:]
    if (length, kind) != (3, HELLO) or not 0 <= index < count:
        raise FrameFault("the handover channel did not start with this worker's index")
    return index, count


class _PeerTransport:
    """What a HandoverCarrier or HandoverReceiver writes to reach one other worker: routed frames on the channel."""

    def __init__(self, channels: "WorkerChannels", peer: int):
        self.channels = channels
        self.peer = peer
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.channels.write_to(self.peer, data)

    def registerProducer(self, producer, streaming):
        pass  # the channel's own back-pressure reaches every carrier (WorkerChannels.pauseProducing)

    def unregisterProducer(self):
        pass

    def loseConnection(self):
        """A carrier or receiver found the peer's frames broken: the peer is down for it until its next life."""
        self.disconnecting = True
        self.channels.peer_broken(self.peer)


class WorkerChannels(protocol.Protocol):
    """
    A worker's channel to its supervisor: carries the parcels of pairs pinned
    to other workers (``carrier_for_pair``, the relay's per-pair hook) and
    receives those of pairs pinned here.  ``carrier_for(side, pair, owner)``
    makes the S2S carrier a received pair leaves on.
    """

    def __init__(self, index: int, count: int, relay, stanza_bytes: int, parser_limits: ParserLimits | None = None,
                 revision=_no_revision):
        self.index = index
        self.count = count
        self.relay = relay
        self.reader = FrameReader(routed_frame_bound(stanza_bytes), ROUTING_KINDS)
        self.carriers = {}
        self.receivers = {}
        self.up: set[int] = set()
        for peer in range(count):
            if peer == index:
                continue
            self.carriers[peer] = HandoverCarrier(relay, stanza_bytes, in_doubt_settler(relay), revision=revision)
            self.receivers[peer] = HandoverReceiver(relay, self._received_pair_carrier, stanza_bytes,
                                                    receiving_limits(parser_limits, stanza_bytes), revision=revision)
        self.pinned_owner = PinnedPairOwner(relay, self.receivers)

    def carrier_for_pair(self, side_name, pair):
        """
        The relay's hook: for a pair pinned to another worker, the way there;
        for one pinned here, the pair's one S2S carrier, which carries what
        this worker accepted and what the others hand over, in the order it
        comes (its owner tells each its own).
        """
        peer = pinned_worker(pair, self.count)
        if peer == self.index:
            return S2SCarrier(self.pinned_owner, self.relay.sides[side_name], *pair, open_stream=self.relay.open_stream)
        return self.carriers[peer].carry_for(side_name, pair)

    def _received_pair_carrier(self, side_name, pair, receiver):
        if pinned_worker(pair, self.count) != self.index:
            raise KeyError(pair)  # another worker handed over a pair that is not pinned here: refused
        return self.relay.carrier_bound_for(side_name, pair)

    def write_to(self, peer: int, data: bytes) -> None:
        if self.transport is not None and peer in self.up:
            self.transport.write(frame(ROUTE, bytes([peer]) + data))

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        for peer in self.up:
            self.carriers[peer].pauseProducing()

    def resumeProducing(self):
        for peer in self.up:
            self.carriers[peer].resumeProducing()

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        try:
            for kind, body in self.reader.feed(data):
                if not body:
                    raise FrameFault(f"a routing frame of kind {kind} without a worker")
                self._on(kind, body[0], body[1:])
        except FrameFault as fault:
            log.error("the handover channel to the supervisor broke: {fault}", fault=str(fault))
            self.transport.loseConnection()
            self._all_down()

    def _on(self, kind, peer, inner):
        if peer not in self.carriers:
            raise FrameFault(f"a frame about worker {peer}")
        if kind == PEER_UP:
            self._peer_down(peer)
            self.up.add(peer)
            self.receivers[peer].makeConnection(_PeerTransport(self, peer))
            self.carriers[peer].makeConnection(_PeerTransport(self, peer))
        elif kind == PEER_DOWN:
            self._peer_down(peer)
        elif peer in self.up:
            if len(inner) > _HEAD.size and inner[_HEAD.size - 1] == CARRY:
                self.receivers[peer].dataReceived(inner)
            else:
                self.carriers[peer].dataReceived(inner)

    def peer_broken(self, peer: int) -> None:
        self._peer_down(peer)

    def _peer_down(self, peer):
        if peer not in self.up:
            return
        self.up.discard(peer)
        self.receivers[peer].transport = None
        self.receivers[peer].accepting_worker_gone()
        carrier = self.carriers[peer]
        if carrier.transport is not None:
            carrier.connectionLost()

    def _all_down(self):
        for peer in list(self.up):
            self._peer_down(peer)

    def connectionLost(self, reason=None):
        self._all_down()
        self.transport = None

    def describe(self):
        return {str(peer): carrier.describe() for peer, carrier in self.carriers.items()}


@implementer(ICarrierOwner)
class PinnedPairOwner:
    """The owner of the S2S carrier of a pair pinned to this worker: what another worker handed over is reported to
    it (the receiver that took it), the rest to this worker's relay; congestion holds both."""

    def __init__(self, relay, receivers):
        self.relay = relay
        self.receivers = receivers

    def _receiver_of(self, parcel):
        for receiver in self.receivers.values():
            if receiver.handed_over(parcel):
                return receiver
        return None

    def delivered(self, parcel):
        (self._receiver_of(parcel) or self.relay).delivered(parcel)

    def undeliverable(self, parcel, condition, text):
        (self._receiver_of(parcel) or self.relay).undeliverable(parcel, condition, text)

    def congested(self, carrier, reason):
        self.relay.congested(carrier, reason)
        for receiver in self.receivers.values():
            receiver.congested(carrier, reason)

    def decongested(self, carrier, reason):
        self.relay.decongested(carrier, reason)
        for receiver in self.receivers.values():
            receiver.decongested(carrier, reason)

    def judged_again(self, parcel):
        receiver = self._receiver_of(parcel)
        return receiver.judged_again(parcel) if receiver is not None else self.relay.judged_again(parcel)

    def count_held(self, amount):
        self.relay.count_held(amount)

    def count_freed(self, amount):
        self.relay.count_freed(amount)


def routed(source: int, kind: int, body: bytes, running) -> list[tuple[int, bytes]]:
    """
    The supervisor's routing, with no I/O: what to write to which worker when
    worker ``source`` sent the outer frame (``kind``, ``body``); ``running``
    holds the workers whose channel is up.  A frame to a worker not running is
    answered with PEER_DOWN; any other frame is a fault (FrameFault).
    """
    if kind != ROUTE or not body:
        raise FrameFault(f"worker {source} sent a frame of kind {kind}")
    target = body[0]
    if target == source:
        raise FrameFault(f"worker {source} sent a frame to itself")
    if target not in running:
        return [(source, frame(PEER_DOWN, bytes([target])))]
    return [(target, frame(ROUTE, bytes([source]) + body[1:]))]
