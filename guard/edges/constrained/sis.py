"""
The pair link over STANAG 5066 (XEP-0365): a SIS client (Subnetwork
Interface Sublayer, STANAG 5066 Annex A) and Twisted endpoints that carry the
constrained link's writes as unit data, one U_PDU per write.

What is on the SIS connection (TCP to the node's SIS port), each S_Primitive
framed as Annex A frames it::

    +-----------+---------+-----------+------+--------------------+
    | preamble  | version | size      | type | the primitive's    |
    | 0x90 0xEB | 0x00    | 2 B, BE   | 1 B  | fields             |
    +-----------+---------+-----------+------+--------------------+

``size`` counts the type and the fields.  The primitives used here:
S_BIND_REQUEST / S_BIND_ACCEPTED / S_BIND_REJECTED, S_UNBIND_REQUEST /
S_UNBIND_INDICATION, S_UNIDATA_REQUEST / S_UNIDATA_INDICATION /
S_UNIDATA_REQUEST_CONFIRM / S_UNIDATA_REQUEST_REJECTED, and the node's flow
control S_DATAFLOW_ON / S_DATAFLOW_OFF.  A node address is the Annex A
address field (3 bits of size, 1 group bit, 28 bits of address), written
here as four dotted numbers, the first below 16 (``0.0.6.1``).  XEP-0365
recommends SAP 2 (``XMPP_SAP``); every unit goes ARQ, in order, with client
delivery confirmation.

Reading is bounded: a frame whose preamble or version is wrong, whose size is
zero or larger than the largest primitive the reader accepts (an
S_UNIDATA_INDICATION of one MTU), or whose fields do not decode closes the SIS
connection; the reader never holds more than one frame.

The link over unit data.  SIS has no connections, so each U_PDU starts with
one byte, the *connection number*: the dialling end picks one (1 to 255, not
the one it used last) per connection; a unit of that one byte and nothing
else closes the connection.  The listening end starts a connection when a
unit with a new number arrives from the peer's address and SAP, and ends the
old one then (the peer reconnected); units of a connection it closed are
dropped.  Everything else is the link's own bytes: each write is one U_PDU,
each S_UNIDATA_INDICATION is handed to the link as one read.  A write larger
than the MTU (less the connection byte) is refused loudly and drops the
connection: configure ``[limits] stanza_bytes`` at most
``stanza_bytes_for_mtu(mtu, compression)`` and the link bounces a larger
stanza before writing it.  A rejected unit leaves a hole in the byte stream,
so it drops the connection too (the link resends what was not acknowledged
on the next one); confirms and rejections are matched to the connection by
the echoed connection byte, so late answers about an ended connection never
touch the next one.

Flow control and bounds: at most ``window`` units are in flight (sent, not
confirmed); further writes wait, at most ``held`` bytes of them (past that
the connection drops), and the link's protocol is paused (IPushProducer)
while the window is full or the node said S_DATAFLOW_OFF.  When the link
stops reading, the SIS connection is not read either.  A node that does not
answer the bind within ``bind_timeout`` is given up; a listening end whose
node drops it binds again, backing off from 0.5 s to 30 s.

Not XEP-0365's RCOP: the XEP (0.1/0.2) carries each stanza as an RCOP PDU
(STANAG 5066 Annex F.8) on SAP 2; this carries the link's frame after the
one connection byte, and both ends are this guard.  Version 0.3 of the XEP
moved to SLEP streaming, which is not implemented here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from twisted.internet import defer, error, interfaces
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

PREAMBLE = b"\x90\xeb"
VERSION = 0
HEADER_BYTES = 5  # preamble, version, size
XMPP_SAP = 2  # XEP-0365: "It is RECOMMENDED that 2 is used"
DEFAULT_SIS_PORT = 5066  # IANA, STANAG 5066 SIS
SAP_COUNT = 16  # SAP IDs are four bits
MAX_ADDRESS = (1 << 28) - 1
ANNEX_A_MTU = 2048  # the U_PDU size every node supports; what a client asks no more than by default
MAX_MTU = 0xFFFF  # the U_PDU size field is 16 bits

# S_Primitive types (Annex A).
S_BIND_REQUEST = 1
S_UNBIND_REQUEST = 2
S_BIND_ACCEPTED = 3
S_BIND_REJECTED = 4
S_UNBIND_INDICATION = 5
S_DATAFLOW_ON = 15
S_DATAFLOW_OFF = 16
S_UNIDATA_REQUEST = 20
S_UNIDATA_INDICATION = 21
S_UNIDATA_REQUEST_CONFIRM = 22
S_UNIDATA_REQUEST_REJECTED = 23

# Transmission modes and delivery confirmation of the service type.
MODE_DEFAULT = 0  # "ignore the service type field": the bind's
MODE_ARQ = 1
CONFIRM_NONE = 0
CONFIRM_NODE = 1
CONFIRM_CLIENT = 2

# Reasons (Annex A).
BIND_REJECTED_REASONS = {0: "unknown reason", 1: "not enough resources", 2: "invalid SAP ID",
                         3: "SAP ID already allocated", 4: "ARQ mode unsupportable during broadcast session"}
UNBIND_REASONS = {0: "unknown reason", 1: "pre-empted by a higher ranking client", 2: "inactivity",
                  3: "too many invalid primitives", 4: "too many expedited data requests",
                  5: "ARQ mode unsupportable during broadcast session"}
UNIDATA_REJECTED_REASONS = {0: "unknown reason", 1: "time-to-live expired", 2: "destination SAP ID not bound",
                            3: "destination node not responding", 4: "U_PDU larger than MTU",
                            5: "transmission mode not specified"}
REJECTED_TTL, REJECTED_SAP_NOT_BOUND, REJECTED_NOT_RESPONDING, REJECTED_TOO_LARGE, REJECTED_MODE = 1, 2, 3, 4, 5
BIND_INVALID_SAP, BIND_SAP_TAKEN = 2, 3
UNBIND_INVALID_PRIMITIVES = 3

UNIDATA_REQUEST_FIELDS = 12  # type, priority/SAP, address, service type/TTL, size
UNIDATA_INDICATION_FIELDS = 13  # type, priority/SAP, address, mode/SAP, address, size
UNIDATA_ANSWER_FIELDS = 8  # confirm / rejected: type, reason/SAP, address, size


class SisError(Exception):
    """Bytes that are not a valid S_Primitive (or one this client does not take): the SIS connection closes."""


# -- addresses ---------------------------------------------------------------------


def parse_address(text: str) -> int:
    """A node address written ``a.b.c.d`` (the first number below 16: 28 bits) as a number."""
    parts = text.split(".")
    if len(parts) != 4 or not all(part.isdigit() and len(part) <= 3 for part in parts):
        raise ValueError("a STANAG 5066 address is four dotted numbers, e.g. 0.0.6.1")
    numbers = [int(part) for part in parts]
    if numbers[0] > 15 or any(number > 255 for number in numbers):
        raise ValueError("a STANAG 5066 address has 28 bits: the first number is below 16, the others below 256")
    return (numbers[0] << 24) | (numbers[1] << 16) | (numbers[2] << 8) | numbers[3]


def format_address(address: int) -> str:
    return f"{address >> 24 & 0xF}.{address >> 16 & 0xFF}.{address >> 8 & 0xFF}.{address & 0xFF}"


def _encode_address(address: int) -> bytes:
    if not 0 <= address <= MAX_ADDRESS:
        raise ValueError("a node address has 28 bits")
    return ((7 << 29) | address).to_bytes(4, "big")  # size 7 half-bytes (all 28 bits), individual


def _decode_address(raw: bytes) -> int:
    value = int.from_bytes(raw, "big")
    if value & (1 << 28):
        raise SisError("a group address (only individual addresses are taken)")
    return value & MAX_ADDRESS


def check_mtu(mtu: int) -> None:
    """An MTU is what the 16-bit U_PDU size field can say, and at least one byte."""
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 0 < mtu <= MAX_MTU:
        raise ValueError(f"an MTU is 1 to {MAX_MTU} bytes")


def _check_sap(sap: int) -> None:
    if not 0 <= sap < SAP_COUNT:
        raise ValueError("a SAP ID is 0 to 15")


# -- primitives ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceType:
    """Annex A's service type: ARQ, in order, with client delivery confirmation unless said otherwise."""

    mode: int = MODE_ARQ
    confirmation: int = CONFIRM_CLIENT
    in_order: bool = True
    retransmissions: int = 0  # non-ARQ only

    def encode(self) -> tuple[int, int]:
        """(the first byte, the high nibble of the second)."""
        first = (self.mode & 0xF) << 4 | (self.confirmation & 0x3) << 2 | (0 if self.in_order else 1) << 1
        return first, self.retransmissions & 0xF

    @classmethod
    def decode(cls, first: int, second: int) -> "ServiceType":
        if first & 1:
            raise SisError("a service type with an extended field")
        return cls(first >> 4, first >> 2 & 0x3, not first >> 1 & 1, second >> 4)


@dataclass(frozen=True)
class BindRequest:
    sap: int
    rank: int = 0
    service: ServiceType = ServiceType()


@dataclass(frozen=True)
class BindAccepted:
    sap: int
    mtu: int


@dataclass(frozen=True)
class BindRejected:
    reason: int


@dataclass(frozen=True)
class UnbindRequest:
    pass


@dataclass(frozen=True)
class UnbindIndication:
    reason: int


@dataclass(frozen=True)
class DataflowOn:
    pass


@dataclass(frozen=True)
class DataflowOff:
    pass


@dataclass(frozen=True)
class UnidataRequest:
    destination_sap: int
    destination: int
    data: bytes
    priority: int = 0
    service: ServiceType = ServiceType()
    ttl: int = 0  # Annex A's units; 0: no expiry


@dataclass(frozen=True)
class UnidataIndication:
    destination_sap: int
    destination: int
    source_sap: int
    source: int
    data: bytes
    priority: int = 0
    mode: int = MODE_ARQ


@dataclass(frozen=True)
class UnidataConfirm:
    destination_sap: int
    destination: int
    data: bytes  # the confirmed U_PDU (or its first bytes)


@dataclass(frozen=True)
class UnidataRejected:
    reason: int
    destination_sap: int
    destination: int
    data: bytes  # the rejected U_PDU (or its first bytes)


def encode(primitive) -> bytes:
    """One S_Primitive as Annex A frames it on the SIS connection."""
    kind = type(primitive)
    if kind is BindRequest:
        _check_sap(primitive.sap)
        first, second = primitive.service.encode()
        body = bytes((S_BIND_REQUEST, primitive.sap << 4 | (primitive.rank & 0xF), first, second << 4))
    elif kind is BindAccepted:
        _check_sap(primitive.sap)
        body = bytes((S_BIND_ACCEPTED, primitive.sap << 4)) + _u16(primitive.mtu)
    elif kind is BindRejected:
        body = bytes((S_BIND_REJECTED, primitive.reason & 0xFF))
    elif kind is UnbindRequest:
        body = bytes((S_UNBIND_REQUEST,))
    elif kind is UnbindIndication:
        body = bytes((S_UNBIND_INDICATION, primitive.reason & 0xFF))
    elif kind is DataflowOn:
        body = bytes((S_DATAFLOW_ON,))
    elif kind is DataflowOff:
        body = bytes((S_DATAFLOW_OFF,))
    elif kind is UnidataRequest:
        _check_sap(primitive.destination_sap)
        if not 0 <= primitive.ttl < 1 << 20:
            raise ValueError("a time-to-live has 20 bits")
        first, second = primitive.service.encode()
        body = (bytes((S_UNIDATA_REQUEST, (primitive.priority & 0xF) << 4 | primitive.destination_sap))
                + _encode_address(primitive.destination)
                + bytes((first,)) + ((second << 20) | primitive.ttl).to_bytes(3, "big")
                + _u16(len(primitive.data)) + primitive.data)
    elif kind is UnidataIndication:
        _check_sap(primitive.destination_sap)
        _check_sap(primitive.source_sap)
        body = (bytes((S_UNIDATA_INDICATION, (primitive.priority & 0xF) << 4 | primitive.destination_sap))
                + _encode_address(primitive.destination)
                + bytes(((primitive.mode & 0xF) << 4 | primitive.source_sap,)) + _encode_address(primitive.source)
                + _u16(len(primitive.data)) + primitive.data)
    elif kind is UnidataConfirm:
        _check_sap(primitive.destination_sap)
        body = (bytes((S_UNIDATA_REQUEST_CONFIRM, primitive.destination_sap)) + _encode_address(primitive.destination)
                + _u16(len(primitive.data)) + primitive.data)
    elif kind is UnidataRejected:
        _check_sap(primitive.destination_sap)
        body = (bytes((S_UNIDATA_REQUEST_REJECTED, (primitive.reason & 0xF) << 4 | primitive.destination_sap))
                + _encode_address(primitive.destination) + _u16(len(primitive.data)) + primitive.data)
    else:
        raise TypeError(f"not an S_Primitive: {primitive!r}")
    return PREAMBLE + bytes((VERSION,)) + _u16(len(body)) + body


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError("a 16-bit field")
    return value.to_bytes(2, "big")


def decode(body: bytes):
    """The S_Primitive whose type and fields are ``body`` (a frame without its header); SisError if invalid."""
    if not body:
        raise SisError("an empty primitive")
    kind, fields = body[0], body[1:]

    def exactly(count):
        if len(fields) != count:
            raise SisError(f"primitive {kind} has {len(fields)} bytes of fields, not {count}")

    if kind == S_BIND_REQUEST:
        exactly(3)
        return BindRequest(fields[0] >> 4, fields[0] & 0xF, ServiceType.decode(fields[1], fields[2]))
    if kind == S_BIND_ACCEPTED:
        exactly(3)
        return BindAccepted(fields[0] >> 4, int.from_bytes(fields[1:3], "big"))
    if kind == S_BIND_REJECTED:
        exactly(1)
        return BindRejected(fields[0])
    if kind == S_UNBIND_REQUEST:
        exactly(0)
        return UnbindRequest()
    if kind == S_UNBIND_INDICATION:
        exactly(1)
        return UnbindIndication(fields[0])
    if kind == S_DATAFLOW_ON:
        exactly(0)
        return DataflowOn()
    if kind == S_DATAFLOW_OFF:
        exactly(0)
        return DataflowOff()
    if kind == S_UNIDATA_REQUEST:
        data = _sized(fields, UNIDATA_REQUEST_FIELDS - 1, kind)
        service_and_ttl = int.from_bytes(fields[6:9], "big")
        return UnidataRequest(fields[0] & 0xF, _decode_address(fields[1:5]), data, fields[0] >> 4,
                              ServiceType.decode(fields[5], service_and_ttl >> 16 & 0xF0), service_and_ttl & 0xFFFFF)
    if kind == S_UNIDATA_INDICATION:
        if len(fields) >= 6 and fields[5] >> 4 != MODE_ARQ:
            raise SisError("unit data that did not come by ARQ (only ARQ delivery is taken)")
        data = _sized(fields, UNIDATA_INDICATION_FIELDS - 1, kind)
        return UnidataIndication(fields[0] & 0xF, _decode_address(fields[1:5]), fields[5] & 0xF,
                                 _decode_address(fields[6:10]), data, fields[0] >> 4, fields[5] >> 4)
    if kind == S_UNIDATA_REQUEST_CONFIRM:
        data = _sized(fields, UNIDATA_ANSWER_FIELDS - 1, kind)
        return UnidataConfirm(fields[0] & 0xF, _decode_address(fields[1:5]), data)
    if kind == S_UNIDATA_REQUEST_REJECTED:
        data = _sized(fields, UNIDATA_ANSWER_FIELDS - 1, kind)
        return UnidataRejected(fields[0] >> 4, fields[0] & 0xF, _decode_address(fields[1:5]), data)
    raise SisError(f"an S_Primitive of type {kind}, which this client does not take")


def _sized(fields: bytes, fixed: int, kind: int) -> bytes:
    """The U_PDU at the end of ``fields``, after ``fixed`` bytes of which the last two give its size."""
    if len(fields) < fixed:
        raise SisError(f"primitive {kind} is too short")
    size = int.from_bytes(fields[fixed - 2:fixed], "big")
    if len(fields) != fixed + size:
        raise SisError(f"primitive {kind} says its U_PDU has {size} bytes, it has {len(fields) - fixed}")
    return bytes(fields[fixed:])


def largest_primitive(mtu: int) -> int:
    """The largest primitive (type and fields) a reader must take when U_PDUs are at most ``mtu`` bytes."""
    return UNIDATA_INDICATION_FIELDS + mtu


class PrimitiveReader:
    """
    Splits what the SIS connection delivers into primitives, holding at most
    one frame: a bad preamble or version, a size of zero or over
    ``max_primitive``, or fields that do not decode raise SisError (and every
    later feed raises too).
    """

    def __init__(self, max_primitive: int):
        if not 0 < max_primitive <= 0xFFFF:
            raise ValueError("a primitive is 1 to 65535 bytes")
        self.max_primitive = max_primitive
        self._pending = bytearray()
        self._size: int | None = None
        self._failed = False

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> list:
        if self._failed:
            raise SisError("input after an invalid primitive")
        try:
            return self._feed(memoryview(data))
        except SisError:
            self._failed = True
            self._pending = bytearray()
            raise

    def _feed(self, view: memoryview) -> list:
        primitives = []
        while view:
            if self._size is None:
                take = min(HEADER_BYTES - len(self._pending), len(view))
                self._pending += view[:take]
                view = view[take:]
                self._check_header()
                if len(self._pending) == HEADER_BYTES:
                    self._size = int.from_bytes(self._pending[3:5], "big")
                    if not 0 < self._size <= self.max_primitive:
                        raise SisError(f"a primitive of {self._size} bytes (at most {self.max_primitive} taken)")
                    self._pending.clear()
                continue
            take = min(self._size - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == self._size:
                body = bytes(self._pending)
                self._pending.clear()
                self._size = None
                primitives.append(decode(body))
        return primitives

    def _check_header(self):
        pending = self._pending
        if pending[:2] != PREAMBLE[:len(pending[:2])]:
            raise SisError("bad preamble")
        if len(pending) >= 3 and pending[2] != VERSION:
            raise SisError(f"SIS version {pending[2]}")


# -- the SIS client ------------------------------------------------------------------


class SisClient(Protocol):
    """
    One SIS connection to a node: binds to ``sap`` at once, then sends and
    receives unit data.  It tells ``listener`` what the node says (sis_bound,
    sis_bind_rejected, sis_unbound, sis_failed, sis_received, sis_confirmed,
    sis_rejected, sis_dataflow, sis_connection_lost: ``_SisBinding`` is the
    endpoints' listener); it decides nothing about the link.
    """

    def __init__(self, sap: int, listener, max_mtu: int = ANNEX_A_MTU, rank: int = 0):
        _check_sap(sap)
        check_mtu(max_mtu)
        self.sap = sap
        self.listener = listener
        self.max_mtu = max_mtu
        self.rank = rank
        self.mtu: int | None = None  # once bound: the smaller of the node's and ours
        self.reader = PrimitiveReader(largest_primitive(max_mtu))
        self.unbinding = False

    def connectionMade(self):
        self.transport.write(encode(BindRequest(self.sap, self.rank)))

    def dataReceived(self, data):
        try:
            primitives = self.reader.feed(data)
        except SisError as problem:
            self._give_up(f"the node sent an invalid primitive: {problem}")
            return
        for primitive in primitives:
            if self.transport is None or self.unbinding and not isinstance(primitive, (UnidataConfirm,)):
                continue
            self._dispatch(primitive)

    def _dispatch(self, primitive):
        kind = type(primitive)
        if kind is BindAccepted:
            if self.mtu is not None or primitive.sap != self.sap or primitive.mtu == 0:
                self._give_up("an unexpected S_BIND_ACCEPTED")
                return
            self.mtu = min(primitive.mtu, self.max_mtu)
            self.reader.max_primitive = largest_primitive(self.mtu)
            self.listener.sis_bound(self.mtu)
        elif kind is BindRejected:
            self.listener.sis_bind_rejected(BIND_REJECTED_REASONS.get(primitive.reason, "unknown reason"))
            self.transport.loseConnection()
        elif kind is UnbindIndication:
            self.listener.sis_unbound(UNBIND_REASONS.get(primitive.reason, "unknown reason"))
            self.transport.loseConnection()
        elif self.mtu is None:
            self._give_up(f"{kind.__name__} before the bind was accepted")
        elif kind is UnidataIndication:
            if primitive.destination_sap != self.sap:
                log.warn("SIS: unit data for SAP {sap} dropped (bound to {own})", sap=primitive.destination_sap,
                         own=self.sap)
                return
            self.listener.sis_received(primitive.source, primitive.source_sap, primitive.data)
        elif kind is UnidataConfirm:
            self.listener.sis_confirmed(primitive.destination, primitive.destination_sap, primitive.data)
        elif kind is UnidataRejected:
            self.listener.sis_rejected(UNIDATA_REJECTED_REASONS.get(primitive.reason, "unknown reason"),
                                       primitive.destination, primitive.data)
        elif kind is DataflowOff:
            self.listener.sis_dataflow(False)
        elif kind is DataflowOn:
            self.listener.sis_dataflow(True)
        else:
            self._give_up(f"{kind.__name__} is not sent by a node")

    def send(self, destination: int, destination_sap: int, data: bytes, priority: int = 0) -> None:
        """One U_PDU to ``destination``'s ``destination_sap``, ARQ, in order, client delivery confirmed."""
        if self.mtu is None:
            raise RuntimeError("not bound")
        if not 0 < len(data) <= self.mtu:
            raise ValueError(f"a U_PDU is 1 to {self.mtu} bytes")
        self.transport.write(encode(UnidataRequest(destination_sap, destination, data, priority)))

    def unbind(self) -> None:
        """Say S_UNBIND_REQUEST and close the SIS connection."""
        if self.transport is not None and not self.unbinding:
            self.unbinding = True
            self.transport.write(encode(UnbindRequest()))
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.listener.sis_connection_lost(reason)

    def _give_up(self, text: str):
        log.error("SIS: {text}; SIS connection closed", text=text)
        self.listener.sis_failed(text)
        self.transport.abortConnection()


# -- the link over unit data -----------------------------------------------------------

BIND_TIMEOUT_SECONDS = 30.0  # a node that does not answer S_BIND_REQUEST in time is given up (and dialled again)
REBIND_FIRST_SECONDS = 0.5  # a listening end binds again after losing its node: first delay, doubling
REBIND_MAX_SECONDS = 30.0
DEFAULT_WINDOW_UNITS = 8  # unit data sent and not yet confirmed
DEFAULT_HELD_BYTES = 64 * 1024  # written while the window is full (or the node said S_DATAFLOW_OFF)
CONNECTION_BYTE = 1  # each U_PDU starts with the connection number


def largest_write(mtu: int) -> int:
    """The largest write the link may make over a node of ``mtu``: one U_PDU less the connection byte.

    With compression, a frame of a stanza of s bytes is at most ``deflate_bound(s) + 5`` bytes
    (guard.edges.constrained.compression); without it, the stanza itself."""
    return mtu - CONNECTION_BYTE


def stanza_bytes_for_mtu(mtu: int, compression: str = "dictionary") -> int:
    """
    The largest ``[limits] stanza_bytes`` whose every stanza fits one write over a node of ``mtu``: the link
    refuses (bounces) a larger stanza before writing it, so no write is ever over the MTU.  Without
    compression a write is the stanza; with it, one frame of at most ``deflate_bound(size)`` payload bytes
    after its type and length (guard.edges.constrained.compression).
    """
    from guard.edges.constrained.compression import deflate_bound, encode_length

    room = largest_write(mtu)
    if compression == "none":
        return room
    low, high = 0, room
    while low < high:  # the largest size whose worst frame fits
        size = (low + high + 1) // 2
        payload = deflate_bound(size)
        if 1 + len(encode_length(payload)) + payload <= room:
            low = size
        else:
            high = size - 1
    return low


@dataclass
class UnitWindow:
    """
    Unit data in flight, bounded: at most ``units`` sent and not yet
    confirmed, and at most ``held_bytes`` written while no more may be sent.
    No I/O: the transport asks it what to send and when to pause.
    """

    units: int = DEFAULT_WINDOW_UNITS
    held_bytes: int = DEFAULT_HELD_BYTES
    outstanding: list = field(default_factory=list)
    held: list = field(default_factory=list)
    held_total: int = 0
    node_allows: bool = True

    def offer(self, unit: bytes) -> list[bytes] | None:
        """What to send now for one more ``unit`` (it or nothing: it is held), or None: over the held bound."""
        if self.held or not self._room():
            if self.held_total + len(unit) > self.held_bytes:
                return None
            self.held.append(unit)
            self.held_total += len(unit)
            return []
        self.outstanding.append(unit)
        return [unit]

    def confirmed(self, echo: bytes) -> list[bytes] | None:
        """The node confirmed the oldest unit (``echo`` is it or its first bytes): what may go now, or None if
        the confirm matches no unit in flight."""
        if not self.outstanding or not echo or not self.outstanding[0].startswith(echo):
            return None
        self.outstanding.pop(0)
        return self._release()

    def dataflow(self, on: bool) -> list[bytes]:
        self.node_allows = on
        return self._release() if on else []

    def _room(self) -> bool:
        return self.node_allows and len(self.outstanding) < self.units

    def _release(self) -> list[bytes]:
        out = []
        while self.held and self._room():
            unit = self.held.pop(0)
            self.held_total -= len(unit)
            self.outstanding.append(unit)
            out.append(unit)
        return out

    @property
    def full(self) -> bool:
        """Whether the writer should pause (the node lags or said stop)."""
        return bool(self.held) or not self._room()


@implementer(interfaces.IAddress)
@dataclass(frozen=True)
class SisAddress:
    """A SAP on a STANAG 5066 node."""

    node: int
    sap: int

    def __str__(self):
        return f"stanag5066:{format_address(self.node)}:sap={self.sap}"


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class SisTransport:
    """
    What the link's protocol writes to and reads from: one connection of the
    link over unit data, to one peer (node address and SAP) and one
    connection number.  Writes become U_PDUs through the ``UnitWindow``; the
    protocol registered as producer is paused while the window is full.
    """

    def __init__(self, client: SisClient, peer: SisAddress, number: int, window: UnitWindow, on_end, clock):
        self.client = client
        self.clock = clock
        self.peer = peer
        self.number = number
        self.window = window
        self.protocol = None
        self.producer = None
        self.producer_paused = False
        self.disconnecting = False
        self.disconnected = False
        self._on_end = on_end
        self.units_out = 0
        self.units_in = 0

    # ITransport
    def write(self, data: bytes) -> None:
        if self.disconnecting or not data:
            return
        limit = largest_write(self.client.mtu)
        if len(data) > limit:
            log.error("SIS link to {peer}: a write of {size} bytes does not fit one U_PDU (at most {limit}): "
                      "connection dropped; configure the link's stanza_bytes below the node's MTU",
                      peer=str(self.peer), size=len(data), limit=limit)
            self._end(Failure(error.ConnectionLost("a write larger than the SIS MTU")), say_close=True)
            return
        sent = self.window.offer(bytes((self.number,)) + bytes(data))
        if sent is None:
            log.error("SIS link to {peer}: the node does not confirm unit data and {held} bytes are held: "
                      "connection dropped", peer=str(self.peer), held=self.window.held_total)
            self._end(Failure(error.ConnectionLost("the SIS node does not confirm unit data")), say_close=False)
            return
        self._send(sent)
        self._pace()

    def writeSequence(self, data) -> None:
        for piece in data:
            self.write(piece)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self._end(Failure(error.ConnectionDone("closed")), say_close=True)

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self):
        return self.peer

    def getHost(self):
        return SisAddress(-1, self.client.sap)

    # IConsumer
    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer
        self.producer_paused = False
        self._pace()

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer: the protocol stops reading us
    def pauseProducing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # from the SIS side
    def received(self, payload: bytes) -> None:
        self.units_in += 1
        if payload and self.protocol is not None and not self.disconnecting:
            self.protocol.dataReceived(payload)

    def confirmed(self, echo: bytes) -> bool:
        sent = self.window.confirmed(echo)
        if sent is None:
            return False
        self._send(sent)
        self._pace()
        return True

    def dataflow(self, on: bool) -> None:
        self._send(self.window.dataflow(on))
        self._pace()

    def lost(self, reason: Failure) -> None:
        """The SIS side is gone (rejected unit, unbound, node connection lost): the connection ends."""
        self._end(reason, say_close=False)

    def _send(self, units) -> None:
        for unit in units:
            self.units_out += 1
            self.client.send(self.peer.node, self.peer.sap, unit)

    def _pace(self) -> None:
        if self.producer is None or self.disconnecting:
            return
        if self.window.full and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()
        elif not self.window.full and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()

    def _end(self, reason: Failure, say_close: bool) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        if say_close and self.client.mtu is not None and self.client.transport is not None:
            try:
                self.client.send(self.peer.node, self.peer.sap, bytes((self.number,)))
            except Exception:  # noqa: BLE001 - the connection ends anyway
                log.failure("SIS: the close unit could not be sent")
        self._on_end(self)
        # As a TCP transport does, tell the protocol later, never from inside its own write.
        self.clock.callLater(0, self._tell_lost, reason)

    def _tell_lost(self, reason: Failure) -> None:
        self.disconnected = True
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connectionLost(reason)


class _SisBinding:
    """One SIS connection and its bind, for an endpoint: calls ``bound``/``failed`` once, then routes unit data."""

    def __init__(self, endpoint, on_bound):
        self.endpoint = endpoint
        self.on_bound = on_bound
        self.client: SisClient | None = None
        self.connection: SisTransport | None = None
        self.settled = False
        self.bound = False
        self.on_lost = None  # called once when a bound SIS connection is lost

    # SisClient's listener
    def sis_bound(self, mtu):
        self.bound = True
        self._settle(None)

    def sis_bind_rejected(self, reason):
        log.error("SIS: the node refused to bind SAP {sap}: {reason}", sap=self.endpoint.sap, reason=reason)
        self._settle(SisBindRejected(reason))

    def sis_unbound(self, reason):
        log.error("SIS: the node unbound SAP {sap}: {reason}", sap=self.endpoint.sap, reason=reason)
        self._lose(f"the node unbound the SAP: {reason}")

    def sis_failed(self, text):
        self._settle(SisBindRejected(text))
        self._lose(text)

    def sis_connection_lost(self, reason):
        self._settle(SisBindRejected("the SIS connection was lost before the bind"))
        self._lose("the SIS connection was lost")
        if self.bound and self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)

    def sis_dataflow(self, on):
        if self.connection is not None:
            self.connection.dataflow(on)

    def _answered(self, destination, echo) -> SisTransport | None:
        """The connection a confirm or rejection is about (the echoed unit's first byte is its number), or None:
        an answer for a connection that ended (the peer reconnected meanwhile) concerns nothing now."""
        connection = self.connection
        if connection is None or destination != connection.peer.node or echo[:1] != bytes((connection.number,)):
            log.info("SIS: an answer for unit data of an ended connection dropped")
            return None
        return connection

    def sis_confirmed(self, destination, destination_sap, echo):
        connection = self._answered(destination, echo)
        if connection is not None and not connection.confirmed(echo):
            log.error("SIS: a confirm that matches no unit in flight; connection dropped")
            connection.lost(Failure(error.ConnectionLost("a confirm that matches no unit in flight")))

    def sis_rejected(self, reason, destination, echo):
        connection = self._answered(destination, echo)
        if connection is not None:
            log.error("SIS link to {peer}: the node rejected unit data: {reason}; connection dropped (the link "
                      "resends what was not acknowledged on the next one)", peer=format_address(destination),
                      reason=reason)
            connection.lost(Failure(error.ConnectionLost(f"unit data rejected: {reason}")))

    def sis_received(self, source, source_sap, data):
        peer = self.endpoint.peer
        if (source, source_sap) != (peer.node, peer.sap):
            log.warn("SIS: unit data from {source} SAP {sap} dropped: only {peer} is heard",
                     source=format_address(source), sap=source_sap, peer=str(peer))
            return
        if not data:
            log.warn("SIS: an empty unit from {peer} dropped", peer=str(peer))
            return
        self.endpoint.unit_arrived(self, data[0], data[1:])

    # helpers
    def _settle(self, problem):
        if not self.settled:
            self.settled = True
            self.on_bound(self, problem)

    def _lose(self, text):
        if self.connection is not None:
            self.connection.lost(Failure(error.ConnectionLost(text)))


class SisBindRejected(Exception):
    """The node did not bind the SAP (or the SIS connection failed before it did)."""


def _bind(reactor, options: "SisOptions", binding) -> defer.Deferred:
    """Connect to the node's SIS port and bind the SAP: fires with the binding once the node accepted, or fails
    (SisBindRejected) when it refuses, the connection fails, or no answer comes within ``bind_timeout``."""
    done = defer.Deferred()
    timer = None

    def on_bound(binding, problem):
        if timer is not None and timer.active():
            timer.cancel()
        if problem is None:
            done.callback(binding)
        else:
            if binding.client is not None and binding.client.transport is not None:
                binding.client.transport.loseConnection()
            done.errback(problem)

    def too_late():
        log.error("SIS: the node at {host}:{port} did not answer the bind within {seconds:g} s",
                  host=options.node_host, port=options.node_port, seconds=options.bind_timeout)
        binding.sis_failed("the node did not answer the bind in time")
        binding.client.transport.abortConnection()

    binding.on_bound = on_bound
    factory = Factory.forProtocol(lambda: SisClient(options.sap, binding, options.max_mtu))

    def connected(client):
        nonlocal timer
        binding.client = client
        if not done.called:
            timer = reactor.callLater(options.bind_timeout, too_late)
        return done

    attempt = TCP4ClientEndpoint(reactor, options.node_host, options.node_port, timeout=10).connect(factory)
    attempt.addCallback(connected)
    return attempt


@dataclass(frozen=True)
class SisOptions:
    """Where the node is and who the peer is (see ``endpoint_options``)."""

    node_host: str
    node_port: int
    sap: int
    peer: SisAddress
    max_mtu: int = ANNEX_A_MTU
    window_units: int = DEFAULT_WINDOW_UNITS
    held_bytes: int = DEFAULT_HELD_BYTES
    bind_timeout: float = BIND_TIMEOUT_SECONDS


@implementer(interfaces.IStreamClientEndpoint)
class SisClientEndpoint:
    """Dials the link over STANAG 5066: connect to the node, bind, and give the protocol a connection to the peer."""

    def __init__(self, reactor, options: SisOptions, random_source=random.Random()):
        self.reactor = reactor
        self.options = options
        self.sap = options.sap
        self.peer = options.peer
        self._random = random_source
        self._last_number = 0

    def connect(self, protocolFactory):
        binding = _SisBinding(self, None)
        attempt = _bind(self.reactor, self.options, binding)
        return attempt.addCallback(self._open, protocolFactory)

    def _open(self, binding, protocolFactory):
        number = self._random.choice([n for n in range(1, 256) if n != self._last_number])
        self._last_number = number
        protocol = protocolFactory.buildProtocol(self.peer)
        if protocol is None:
            binding.client.unbind()
            raise error.ConnectionRefusedError("the factory refused the connection")
        connection = SisTransport(binding.client, self.peer, number,
                                  UnitWindow(self.options.window_units, self.options.held_bytes),
                                  lambda ended: self._ended(binding, ended), self.reactor)
        binding.connection = connection
        connection.protocol = protocol
        protocol.makeConnection(connection)
        return protocol

    def unit_arrived(self, binding, number, payload):
        connection = binding.connection
        if connection is None or connection.disconnecting:
            return
        if number != connection.number:
            log.warn("SIS: a unit of connection {number} dropped (this one is {own})", number=number,
                     own=connection.number)
            return
        if not payload:
            connection.lost(Failure(error.ConnectionDone("the peer closed the connection")))
            return
        connection.received(payload)

    def _ended(self, binding, connection):
        binding.connection = None
        binding.client.unbind()


@implementer(interfaces.IListeningPort)
class SisListeningPort:
    """A bound SAP waiting for the peer's connections (one at a time)."""

    def __init__(self, endpoint, binding, factory):
        self.endpoint = endpoint
        self.binding = binding
        self.factory = factory
        self.closed_number: int | None = None
        self.stopped = False
        self.rebinds = 0
        self._failures = 0
        self._timer = None
        binding.on_lost = self._binding_lost

    def startListening(self):
        pass

    def stopListening(self):
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        connection = self.binding.connection
        if connection is not None:
            connection.loseConnection()
        self.binding.on_lost = None
        if self.binding.client is not None:
            self.binding.client.unbind()
        return defer.succeed(None)

    def _binding_lost(self, binding):
        """The SIS connection to the node is gone (node restarted, unbound us): bind again, backing off."""
        if self.stopped:
            return
        self._failures += 1
        delay = min(REBIND_MAX_SECONDS, REBIND_FIRST_SECONDS * 2 ** (self._failures - 1))
        log.warn("SIS: the node's connection for SAP {sap} was lost; binding again in {delay:g} s",
                 sap=self.endpoint.sap, delay=delay)
        self._timer = self.endpoint.reactor.callLater(delay, self._rebind)

    def _rebind(self):
        self._timer = None
        if self.stopped:
            return
        binding = _SisBinding(self.endpoint, None)
        attempt = _bind(self.endpoint.reactor, self.endpoint.options, binding)
        attempt.addCallbacks(self._rebound, lambda failure: self._binding_lost(binding))

    def _rebound(self, binding):
        if self.stopped:
            binding.client.unbind()
            return
        self.rebinds += 1
        self._failures = 0
        self.binding = binding
        binding.on_lost = self._binding_lost
        log.info("SIS: SAP {sap} bound again", sap=self.endpoint.sap)

    def getHost(self):
        return SisAddress(-1, self.endpoint.sap)


@implementer(interfaces.IStreamServerEndpoint)
class SisServerEndpoint:
    """Listens for the link over STANAG 5066: bind the SAP, and take the peer's connections as its units arrive."""

    def __init__(self, reactor, options: SisOptions):
        self.reactor = reactor
        self.options = options
        self.sap = options.sap
        self.peer = options.peer
        self.port: SisListeningPort | None = None

    def listen(self, protocolFactory):
        binding = _SisBinding(self, None)
        attempt = _bind(self.reactor, self.options, binding)

        def listening(binding):
            self.port = SisListeningPort(self, binding, protocolFactory)
            return self.port

        return attempt.addCallback(listening)

    def unit_arrived(self, binding, number, payload):
        port = self.port
        if port is None:
            return
        connection = binding.connection
        if connection is not None and number == connection.number:
            if payload:
                connection.received(payload)
            else:
                port.closed_number = number
                connection.lost(Failure(error.ConnectionDone("the peer closed the connection")))
            return
        if number == port.closed_number or not payload:
            log.info("SIS: a unit of closed connection {number} dropped", number=number)
            return
        if connection is not None:
            log.info("SIS: the peer began connection {number}; connection {old} ends", number=number,
                     old=connection.number)
            connection.lost(Failure(error.ConnectionLost("the peer began a new connection")))
        protocol = port.factory.buildProtocol(self.peer)
        if protocol is None:
            port.closed_number = number
            return
        connection = SisTransport(binding.client, self.peer, number,
                                  UnitWindow(self.options.window_units, self.options.held_bytes),
                                  lambda ended: self._ended(binding, ended), self.reactor)
        binding.connection = connection
        connection.protocol = protocol
        protocol.makeConnection(connection)
        connection.received(payload)

    def _ended(self, binding, connection):
        if binding.connection is connection:
            binding.connection = None
        if self.port is not None:
            self.port.closed_number = connection.number


# -- endpoint strings ---------------------------------------------------------------------

ENDPOINT_PREFIX = "stanag5066"


def endpoint_options(description: str) -> SisOptions:
    """
    ``stanag5066:node=127.0.6.1:port=5066:sap=2:peer=0.0.6.2`` with optional
    ``peer_sap`` (default: ``sap``), ``mtu`` (default 2048: the largest U_PDU
    asked for), ``window`` (unit data in flight, default 8) and ``held``
    (bytes written while the window is full, default 65536).
    """
    prefix, _, rest = description.partition(":")
    if prefix != ENDPOINT_PREFIX or not rest:
        raise ValueError(f"a STANAG 5066 endpoint starts with {ENDPOINT_PREFIX}:")
    values = {}
    for part in rest.split(":"):
        key, equals, value = part.partition("=")
        if not equals or key in values:
            raise ValueError(f"{description}: {part!r} is not key=value (or is repeated)")
        values[key] = value
    known = {"node", "port", "sap", "peer", "peer_sap", "mtu", "window", "held"}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{description}: unknown keys {sorted(unknown)}")
    for required in ("node", "peer"):
        if required not in values:
            raise ValueError(f"{description}: {required}= is required")

    def number(key, default, low, high):
        text = values.get(key)
        if text is None:
            return default
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"{description}: {key} is a number from {low} to {high}")
        return int(text)

    sap = number("sap", XMPP_SAP, 0, SAP_COUNT - 1)
    return SisOptions(
        node_host=values["node"], node_port=number("port", DEFAULT_SIS_PORT, 1, 65535), sap=sap,
        peer=SisAddress(parse_address(values["peer"]), number("peer_sap", sap, 0, SAP_COUNT - 1)),
        max_mtu=number("mtu", ANNEX_A_MTU, 2, MAX_MTU), window_units=number("window", DEFAULT_WINDOW_UNITS, 1, 1024),
        held_bytes=number("held", DEFAULT_HELD_BYTES, 1, 64 * 1024 * 1024))


def is_sis_endpoint(description: str) -> bool:
    return description.startswith(ENDPOINT_PREFIX + ":")


def client_endpoint(reactor, description: str) -> SisClientEndpoint:
    return SisClientEndpoint(reactor, endpoint_options(description))


def server_endpoint(reactor, description: str) -> SisServerEndpoint:
    return SisServerEndpoint(reactor, endpoint_options(description))
