"""
The guard as an AgentX subagent (RFC 2741) of net-snmp's ``snmpd``.

Three layers, as everywhere in the edges:

- the codec (``encode_pdu``, ``PduReader``): AgentX PDUs to and from bytes,
  no I/O.  The reader is fail closed and bounded: a header that is not
  version 1, a payload over ``MAX_PAYLOAD_BYTES``, a length that is not a
  multiple of four, an encoding that runs past its payload, a PDU type this
  subagent never receives, all raise ``MalformedPdu``;
- the session (``AgentXSession``): an Automat machine for one connection's
  life (``opening`` -> ``registering`` -> ``serving`` -> ``closed``), no I/O:
  it takes decoded PDUs and answers the PDUs to write.  Any input a state
  does not expect closes the session (``parseError`` or ``protocolError``);
- the transport (``AgentXProtocol``, ``AgentXSubagent``): a Twisted protocol
  that only frames bytes, feeds the session and writes its answers, and a
  ``ClientService`` that connects to the master's endpoint (a Twisted client
  endpoint string such as ``unix:path=/var/agentx/master``) and connects again
  (backing off on the injected clock) whenever snmpd restarts.

The subagent is read-only: Get, GetNext and GetBulk are answered from a
``MibView`` (sorted (OID, value) pairs read afresh for each request by the
``read_view`` callable it is given); a TestSet is answered ``notWritable``.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from twisted.application.internet import ClientService
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

log = Logger()

VERSION = 1
HEADER_BYTES = 20

# PDU types (RFC 2741 section 6.1).
OPEN, CLOSE, REGISTER, UNREGISTER = 1, 2, 3, 4
GET, GET_NEXT, GET_BULK = 5, 6, 7
TEST_SET, COMMIT_SET, UNDO_SET, CLEANUP_SET = 8, 9, 10, 11
NOTIFY, PING, INDEX_ALLOCATE, INDEX_DEALLOCATE = 12, 13, 14, 15
ADD_AGENT_CAPS, REMOVE_AGENT_CAPS, RESPONSE = 16, 17, 18

# Header flags.
INSTANCE_REGISTRATION = 0x01
NON_DEFAULT_CONTEXT = 0x08
NETWORK_BYTE_ORDER = 0x10

# Value types of a VarBind (section 5.4).
INTEGER, OCTET_STRING, NULL, OBJECT_IDENTIFIER = 2, 4, 5, 6
IP_ADDRESS, COUNTER32, GAUGE32, TIME_TICKS, OPAQUE, COUNTER64 = 64, 65, 66, 67, 68, 70
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 128, 129, 130

# Response errors (section 6.2.16) and Close reasons (6.2.2).
NO_AGENTX_ERROR = 0
NOT_WRITABLE = 17
GEN_ERR = 5
TOO_BIG = 1
PARSE_ERROR = 266
PROCESSING_ERROR = 268
REASON_OTHER, REASON_PARSE_ERROR, REASON_PROTOCOL_ERROR, REASON_TIMEOUTS, REASON_SHUTDOWN = 1, 2, 3, 4, 5

# Bounds: what one PDU from the master may carry, what one connection may
# hold unread, and what one response may grow to.
MAX_PAYLOAD_BYTES = 65536
MAX_BUFFER_BYTES = HEADER_BYTES + MAX_PAYLOAD_BYTES
MAX_SUBIDS = 128
MAX_SEARCH_RANGES = 256
MAX_RESPONSE_VARBINDS = 1024
MAX_RESPONSE_BYTES = 60000

INTERNET = (1, 3, 6, 1)

Oid = tuple[int, ...]


class MalformedPdu(ValueError):
    """Bytes from the master that are not a PDU this subagent accepts; the session closes."""


@dataclass(frozen=True)
class Header:
    type: int
    flags: int = NETWORK_BYTE_ORDER
    session_id: int = 0
    transaction_id: int = 0
    packet_id: int = 0


@dataclass(frozen=True)
class SearchRange:
    start: Oid
    end: Oid = ()
    include: bool = False


@dataclass(frozen=True)
class VarBind:
    type: int
    name: Oid
    value: object = None


@dataclass(frozen=True)
class Pdu:
    """One decoded PDU: its header and the fields its type has (the others keep their defaults)."""

    header: Header
    context: bytes | None = None
    ranges: tuple[SearchRange, ...] = ()
    non_repeaters: int = 0
    max_repetitions: int = 0
    sys_uptime: int = 0
    error: int = 0
    index: int = 0
    varbinds: tuple[VarBind, ...] = ()
    reason: int = 0
    timeout: int = 0
    subtree: Oid = ()
    description: bytes = b""
    priority: int = 127

    @property
    def type(self) -> int:
        return self.header.type


# -- encoding ------------------------------------------------------------------


def _octets(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data + b"\0" * (-len(data) % 4)


def _oid(oid: Oid, include: bool = False) -> bytes:
    prefix = 0
    subids = tuple(oid)
    if len(subids) >= 5 and subids[:4] == INTERNET and 0 < subids[4] < 256:
        prefix, subids = subids[4], subids[5:]
    if len(subids) > MAX_SUBIDS:
        raise ValueError(f"an OID of {len(subids)} sub-identifiers is longer than {MAX_SUBIDS}")
    return struct.pack("!BBBB", len(subids), prefix, int(include), 0) + struct.pack(f"!{len(subids)}I", *subids)


def _value(varbind: VarBind) -> bytes:
    kind, value = varbind.type, varbind.value
    if kind in (INTEGER, COUNTER32, GAUGE32, TIME_TICKS):
        return struct.pack("!i" if kind == INTEGER else "!I", value)
    if kind == COUNTER64:
        return struct.pack("!Q", value)
    if kind in (OCTET_STRING, OPAQUE, IP_ADDRESS):
        return _octets(value)
    if kind == OBJECT_IDENTIFIER:
        return _oid(value)
    if kind in (NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW):
        return b""
    raise ValueError(f"no AgentX encoding for value type {kind}")


def _varbind(varbind: VarBind) -> bytes:
    return struct.pack("!HH", varbind.type, 0) + _oid(varbind.name) + _value(varbind)


def encode_pdu(pdu: Pdu) -> bytes:
    """The bytes of ``pdu``, in network byte order (the flag says so)."""
    kind = pdu.type
    context = _octets(pdu.context) if pdu.context is not None else b""
    if kind == OPEN:
        body = struct.pack("!B3x", pdu.timeout) + _oid(()) + _octets(pdu.description)
    elif kind == CLOSE:
        body = struct.pack("!B3x", pdu.reason)
    elif kind in (REGISTER, UNREGISTER):
        body = context + struct.pack("!BBBx", pdu.timeout if kind == REGISTER else 0, pdu.priority, 0) + _oid(pdu.subtree)
    elif kind in (GET, GET_NEXT, GET_BULK):
        ranges = b"".join(_oid(r.start, r.include) + _oid(r.end) for r in pdu.ranges)
        bulk = struct.pack("!HH", pdu.non_repeaters, pdu.max_repetitions) if kind == GET_BULK else b""
        body = context + bulk + ranges
    elif kind == PING:
        body = context
    elif kind == RESPONSE:
        body = struct.pack("!IHH", pdu.sys_uptime, pdu.error, pdu.index) + b"".join(map(_varbind, pdu.varbinds))
    else:
        raise ValueError(f"this subagent does not write AgentX PDUs of type {kind}")
    header = pdu.header
    flags = (header.flags | NETWORK_BYTE_ORDER) | (NON_DEFAULT_CONTEXT if pdu.context is not None else 0)
    return struct.pack("!BBBxIIII", VERSION, kind, flags, header.session_id, header.transaction_id,
                       header.packet_id, len(body)) + body


# -- decoding ------------------------------------------------------------------


class _Payload:
    """A cursor over one PDU's payload, in the byte order its header names; every read is bounds-checked."""

    def __init__(self, data: bytes, order: str):
        self.data, self.order, self.at = data, order, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise MalformedPdu("an encoding runs past the end of its PDU")
        chunk = self.data[self.at:self.at + count]
        self.at += count
        return chunk

    def unpack(self, fmt: str):
        fmt = self.order + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def done(self) -> bool:
        return self.at == len(self.data)

    def octets(self) -> bytes:
        (length,) = self.unpack("I")
        if length > len(self.data):
            raise MalformedPdu("an octet string longer than its PDU")
        data = self.take(length)
        self.take(-length % 4)
        return data

    def oid(self) -> tuple[Oid, bool]:
        count, prefix, include, _ = self.unpack("BBBB")
        if count > MAX_SUBIDS:
            raise MalformedPdu(f"an OID of {count} sub-identifiers (at most {MAX_SUBIDS})")
        if include not in (0, 1):
            raise MalformedPdu("an OID include flag that is neither 0 nor 1")
        subids = self.unpack(f"{count}I")
        if prefix:
            subids = INTERNET + (prefix,) + subids
        return tuple(subids), bool(include)

    def ranges(self) -> tuple[SearchRange, ...]:
        found = []
        while not self.done():
            if len(found) == MAX_SEARCH_RANGES:
                raise MalformedPdu(f"more than {MAX_SEARCH_RANGES} search ranges in one request")
            start, include = self.oid()
            end, _ = self.oid()
            found.append(SearchRange(start, end, include))
        return tuple(found)

    def varbinds(self) -> tuple[VarBind, ...]:
        found = []
        while not self.done():
            if len(found) == MAX_RESPONSE_VARBINDS:
                raise MalformedPdu(f"more than {MAX_RESPONSE_VARBINDS} VarBinds in one PDU")
            kind, _ = self.unpack("HH")
            name, _ = self.oid()
            if kind in (INTEGER,):
                (value,) = self.unpack("i")
            elif kind in (COUNTER32, GAUGE32, TIME_TICKS):
                (value,) = self.unpack("I")
            elif kind == COUNTER64:
                (value,) = self.unpack("Q")
            elif kind in (OCTET_STRING, OPAQUE, IP_ADDRESS):
                value = self.octets()
            elif kind == OBJECT_IDENTIFIER:
                value, _ = self.oid()
            elif kind in (NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW):
                value = None
            else:
                raise MalformedPdu(f"an unknown VarBind type {kind}")
            found.append(VarBind(kind, name, value))
        return tuple(found)


# The PDU types a master sends to a subagent, and the only ones this reader accepts.
RECEIVED_TYPES = frozenset({CLOSE, GET, GET_NEXT, GET_BULK, TEST_SET, COMMIT_SET, UNDO_SET, CLEANUP_SET, RESPONSE})


def decode_pdu(data: bytes) -> Pdu:
    """The PDU that is exactly ``data`` (header and payload); MalformedPdu for anything else."""
    if len(data) < HEADER_BYTES:
        raise MalformedPdu("shorter than an AgentX header")
    version, kind, flags = data[0], data[1], data[2]
    if version != VERSION:
        raise MalformedPdu(f"AgentX version {version}, not {VERSION}")
    if kind not in RECEIVED_TYPES:
        raise MalformedPdu(f"a PDU of type {kind}, which a master does not send to a subagent")
    order = "!" if flags & NETWORK_BYTE_ORDER else "<"
    session_id, transaction_id, packet_id, length = struct.unpack(order + "IIII", data[4:HEADER_BYTES])
    if length != len(data) - HEADER_BYTES:
        raise MalformedPdu("a payload length that is not the PDU's")
    header = Header(kind, flags, session_id, transaction_id, packet_id)
    payload = _Payload(data[HEADER_BYTES:], order)
    context = payload.octets() if flags & NON_DEFAULT_CONTEXT and kind not in (CLOSE, RESPONSE) else None
    if kind == CLOSE:
        (reason,) = payload.unpack("B3x")
        pdu = Pdu(header, reason=reason)
    elif kind == RESPONSE:
        sys_uptime, error, index = payload.unpack("IHH")
        pdu = Pdu(header, sys_uptime=sys_uptime, error=error, index=index, varbinds=payload.varbinds())
    elif kind in (GET, GET_NEXT):
        pdu = Pdu(header, context=context, ranges=payload.ranges())
    elif kind == GET_BULK:
        non_repeaters, max_repetitions = payload.unpack("HH")
        pdu = Pdu(header, context=context, non_repeaters=non_repeaters, max_repetitions=max_repetitions,
                  ranges=payload.ranges())
    elif kind == TEST_SET:
        pdu = Pdu(header, context=context, varbinds=payload.varbinds())
    else:  # CommitSet, UndoSet, CleanupSet: a header only
        pdu = Pdu(header, context=context)
    if not payload.done():
        raise MalformedPdu("bytes left over after the PDU's fields")
    return pdu


class PduReader:
    """
    Frames a byte stream into PDUs.  ``feed`` returns the complete PDUs so
    far; MalformedPdu when a header announces more than
    ``MAX_PAYLOAD_BYTES`` (so at most ``MAX_BUFFER_BYTES`` are ever held)
    or when a PDU does not decode.
    """

    def __init__(self, max_payload_bytes: int = MAX_PAYLOAD_BYTES):
        self.max_payload_bytes = max_payload_bytes
        self.buffer = b""

    def feed(self, data: bytes) -> list[Pdu]:
        self.buffer += data
        pdus = []
        while len(self.buffer) >= HEADER_BYTES:
            order = "!" if self.buffer[2] & NETWORK_BYTE_ORDER else "<"
            (length,) = struct.unpack(order + "I", self.buffer[16:HEADER_BYTES])
            if length > self.max_payload_bytes or length % 4:
                raise MalformedPdu(f"a payload of {length} bytes (a multiple of 4, at most {self.max_payload_bytes})")
            if len(self.buffer) < HEADER_BYTES + length:
                break
            whole, self.buffer = self.buffer[:HEADER_BYTES + length], self.buffer[HEADER_BYTES + length:]
            pdus.append(decode_pdu(whole))
        return pdus


# -- answering requests from a view ---------------------------------------------


@dataclass
class MibView:
    """The values the subagent answers with: (OID, VarBind type, value), kept sorted by OID."""

    entries: list[tuple[Oid, int, object]] = field(default_factory=list)

    def __post_init__(self):
        self.entries.sort(key=lambda entry: entry[0])
        self._names = [entry[0] for entry in self.entries]

    def get(self, name: Oid) -> VarBind:
        at = bisect_left(self._names, name)
        if at < len(self._names) and self._names[at] == name:
            _, kind, value = self.entries[at]
            return VarBind(kind, name, value)
        return VarBind(NO_SUCH_OBJECT, name)

    def next(self, search: SearchRange) -> VarBind:
        """The first value at or (include false) after ``start`` and before ``end`` (empty: no end)."""
        at = (bisect_left if search.include else bisect_right)(self._names, search.start)
        if at < len(self._names) and (not search.end or self._names[at] < search.end):
            name, kind, value = self.entries[at]
            return VarBind(kind, name, value)
        return VarBind(END_OF_MIB_VIEW, search.start)


def answer_request(pdu: Pdu, view: MibView) -> tuple[int, int, tuple[VarBind, ...]]:
    """(error, index, VarBinds) answering a Get, GetNext or GetBulk from ``view``; bounded in count and bytes."""
    if pdu.type == GET:
        varbinds = [view.get(search.start) for search in pdu.ranges]
    elif pdu.type == GET_NEXT:
        varbinds = [view.next(search) for search in pdu.ranges]
    else:
        varbinds = [view.next(search) for search in pdu.ranges[:pdu.non_repeaters]]
        repeating = list(pdu.ranges[pdu.non_repeaters:])
        for _ in range(pdu.max_repetitions):
            if not repeating or len(varbinds) + len(repeating) > MAX_RESPONSE_VARBINDS:
                break
            found = [view.next(search) for search in repeating]
            varbinds += found
            if all(varbind.type == END_OF_MIB_VIEW for varbind in found):
                break
            repeating = [SearchRange(varbind.name, search.end) for varbind, search in zip(found, repeating)]
    if len(varbinds) > MAX_RESPONSE_VARBINDS:
        return TOO_BIG, 0, ()
    encoded = 0
    for count, varbind in enumerate(varbinds):
        encoded += len(_varbind(varbind))
        if encoded > MAX_RESPONSE_BYTES:
            if pdu.type == GET_BULK and count > len(pdu.ranges):
                return NO_AGENTX_ERROR, 0, tuple(varbinds[:count])
            return TOO_BIG, 0, ()
    return NO_AGENTX_ERROR, 0, tuple(varbinds)


# -- the session -------------------------------------------------------------------


class AgentXSession:
    """
    One connection's life, no I/O: each input returns the PDUs to write and
    ``closed`` says when the connection must end.  The states, named for
    facts, and what moves between them:

    ============ ====================== ==========================================
    state        input                  what happens
    ============ ====================== ==========================================
    idle         ``start``              Open out -> ``opening``
    opening      Response, no error     one Register per subtree -> ``registering``
    registering  Response, no error     the last one -> ``serving``
    serving      Get/GetNext/GetBulk    answered from ``read_view(now_ticks)``
    serving      a non-default context  genErr (only the default context is ours)
    serving      TestSet                ``notWritable``
    serving      ``ping_due``           Ping out (the last unanswered: close)
    serving      Response to our Ping   remembered
    any          Close from the master  -> ``closed``
    any          anything else          Close (protocolError) -> ``closed``
    ============ ====================== ==========================================

    An error in the Response to Open or to a Register closes the session too.
    """

    def __init__(self, subtrees, read_view, description: bytes, seconds, timeout: int = 5):
        """``read_view(now_ticks)`` gives the MibView to answer from, ``now_ticks`` being the master's
        sysUpTime now (centiseconds, worked out from its last Response and ``seconds()``, the clock)."""
        self.subtrees = tuple(subtrees)
        self.seconds = seconds
        self.read_view = read_view
        self.description = description
        self.timeout = timeout
        self.state = "idle"
        self.session_id = 0
        self.packet_id = 0
        self.awaiting = set()  # packet ids of our PDUs the master has not answered
        self.waiting_ping = None
        self.master_uptime = (0, seconds())  # the master's sysUpTime (centiseconds) in its last Response, and when
        self.close_reason = None

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def _header(self, kind, transaction_id=0):
        self.packet_id += 1
        return Header(kind, NETWORK_BYTE_ORDER, self.session_id, transaction_id, self.packet_id)

    def _sent(self, pdu: Pdu) -> Pdu:
        self.awaiting.add(pdu.header.packet_id)
        return pdu

    def start(self) -> list[Pdu]:
        """The connection is made: open the session."""
        if self.state != "idle":
            return self._close(REASON_PROTOCOL_ERROR, "started twice")
        self.state = "opening"
        return [self._sent(Pdu(self._header(OPEN), timeout=self.timeout, description=self.description))]

    def received(self, pdu: Pdu) -> list[Pdu]:
        """The PDUs answering ``pdu`` from the master; a PDU the state does not expect closes the session."""
        if self.closed:
            return []
        if pdu.type == CLOSE:
            self.state, self.close_reason = "closed", pdu.reason
            log.info("SNMP: the AgentX master closed the session (reason {reason})", reason=pdu.reason)
            return []
        if pdu.type == RESPONSE:
            return self._response(pdu)
        if self.state != "serving" or pdu.header.session_id != self.session_id:
            return self._close(REASON_PROTOCOL_ERROR, f"a request (type {pdu.type}) out of place")
        return self._answer(pdu)

    def malformed(self, problem: Exception) -> list[Pdu]:
        """The master sent bytes that are no PDU: close with parseError."""
        return self._close(REASON_PARSE_ERROR, f"malformed AgentX PDU from the master: {problem}")

    def ping_due(self) -> list[Pdu]:
        """Time to ask the master whether it is still there; the last Ping unanswered closes the session."""
        if self.state != "serving":
            return []
        if self.waiting_ping is not None:
            return self._close(REASON_TIMEOUTS, "the master did not answer a Ping")
        ping = self._sent(Pdu(self._header(PING)))
        self.waiting_ping = ping.header.packet_id
        return [ping]

    def shut_down(self) -> list[Pdu]:
        """The guard stops: close the session (reason shutdown)."""
        return self._close(REASON_SHUTDOWN, "the guard stops")

    def master_ticks(self) -> int:
        """The master's sysUpTime now, in centiseconds (TimeTicks wrap at 2**32)."""
        ticks, at = self.master_uptime
        return (ticks + int(max(0.0, self.seconds() - at) * 100)) % 2**32

    def _response(self, pdu: Pdu) -> list[Pdu]:
        packet_id = pdu.header.packet_id
        if packet_id not in self.awaiting:
            return self._close(REASON_PROTOCOL_ERROR, f"a Response to nothing we asked (packet {packet_id})")
        self.awaiting.discard(packet_id)
        if pdu.error != NO_AGENTX_ERROR:
            return self._close(REASON_OTHER, f"the master answered error {pdu.error} in state {self.state}")
        self.master_uptime = (pdu.sys_uptime, self.seconds())
        if self.state == "opening":
            self.session_id = pdu.header.session_id
            self.state = "registering"
            return [self._sent(Pdu(self._header(REGISTER), timeout=self.timeout, subtree=subtree))
                    for subtree in self.subtrees]
        if self.state == "registering":
            if not self.awaiting:
                self.state = "serving"
                log.info("SNMP: AgentX session {session} registered {count} subtrees",
                         session=self.session_id, count=len(self.subtrees))
            return []
        if packet_id == self.waiting_ping:
            self.waiting_ping = None
        return []

    def _answer(self, pdu: Pdu) -> list[Pdu]:
        header = Header(RESPONSE, NETWORK_BYTE_ORDER, self.session_id, pdu.header.transaction_id,
                        pdu.header.packet_id)
        if pdu.type == TEST_SET:
            return [Pdu(header, error=NOT_WRITABLE, index=1, varbinds=pdu.varbinds)]
        if pdu.type in (COMMIT_SET, UNDO_SET):
            return [Pdu(header, error=PROCESSING_ERROR)]
        if pdu.type == CLEANUP_SET:
            return []
        if pdu.context is not None:
            log.warn("SNMP: a request for context {context!r}, which the guard did not register", context=pdu.context)
            return [Pdu(header, error=GEN_ERR, index=1)]
        try:
            error, index, varbinds = answer_request(pdu, self.read_view(self.master_ticks()))
        except Exception as problem:  # noqa: BLE001 - a fault reading the guard is genErr, never a made-up value
            log.error("SNMP: reading the guard's view failed: {problem!r}", problem=problem)
            error, index, varbinds = GEN_ERR, 1, ()
        return [Pdu(header, error=error, index=index, varbinds=varbinds)]

    def _close(self, reason: int, why: str) -> list[Pdu]:
        if self.closed:
            return []
        opened = self.state not in ("idle", "opening")
        self.state, self.close_reason = "closed", reason
        log.warn("SNMP: closing the AgentX session: {why}", why=why)
        return [Pdu(self._header(CLOSE), reason=reason)] if opened else []


# -- the transport -------------------------------------------------------------------

PING_INTERVAL = 15.0


class AgentXProtocol(Protocol):
    """Frames the master's bytes into PDUs for the session and writes what it answers; ends with the session."""

    def __init__(self, session: AgentXSession, clock, ping_interval: float = PING_INTERVAL):
        self.session = session
        self.clock = clock
        self.ping_interval = ping_interval
        self.reader = PduReader()
        self._ping_call = None

    def connectionMade(self):
        self._write(self.session.start())
        self._ping_call = self.clock.callLater(self.ping_interval, self._ping)

    def dataReceived(self, data: bytes):
        try:
            pdus = self.reader.feed(data)
        except MalformedPdu as problem:
            self._write(self.session.malformed(problem))
            return
        for pdu in pdus:
            self._write(self.session.received(pdu))
            if self.session.closed:
                return

    def _ping(self):
        self._ping_call = None
        self._write(self.session.ping_due())
        if not self.session.closed:
            self._ping_call = self.clock.callLater(self.ping_interval, self._ping)

    def shut_down(self):
        self._write(self.session.shut_down())

    def _write(self, pdus):
        for pdu in pdus:
            self.transport.write(encode_pdu(pdu))
        if self.session.closed:
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None


class AgentXSubagent:
    """
    The guard's subagent: connects to the master at ``endpoint`` (a Twisted
    client endpoint string), registers ``subtrees`` and answers from
    ``read_view``; connects again, backing off on ``reactor``'s clock, when
    the connection ends (snmpd restarted, or a session closed).
    """

    def __init__(self, reactor, endpoint: str, subtrees, read_view, description: bytes,
                 ping_interval: float = PING_INTERVAL):
        self.reactor = reactor
        self.subtrees = tuple(subtrees)
        self.read_view = read_view
        self.description = description
        self.ping_interval = ping_interval
        self.protocol = None
        factory = Factory.forProtocol(self._new_protocol)
        self.service = ClientService(clientFromString(reactor, endpoint), factory, clock=reactor)

    def _new_protocol(self):
        session = AgentXSession(self.subtrees, self.read_view, self.description, self.reactor.seconds)
        self.protocol = AgentXProtocol(session, self.reactor, self.ping_interval)
        return self.protocol

    @property
    def session(self) -> AgentXSession | None:
        return self.protocol.session if self.protocol is not None else None

    def start(self):
        self.service.startService()

    def stop(self):
        """Close the session politely, then stop connecting; a Deferred that fires when the connection is gone."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.shut_down()
        return self.service.stopService()
