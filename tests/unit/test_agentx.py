"""The AgentX subagent (RFC 2741): PDUs as bytes in and bytes out, the session's life, the transport and reconnecting."""

import struct

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from guard.edges import agentx
from guard.edges.agentx import (
    CLOSE, COUNTER64, END_OF_MIB_VIEW, GET, GET_BULK, GET_NEXT, INTEGER, NETWORK_BYTE_ORDER, NO_SUCH_OBJECT,
    NOT_WRITABLE, OCTET_STRING, OPEN, PING, REGISTER, RESPONSE, TEST_SET, AgentXProtocol, AgentXSession,
    AgentXSubagent, Header, MalformedPdu, MibView, Pdu, PduReader, SearchRange, VarBind, decode_pdu, encode_pdu,
)

GUARD = (1, 3, 6, 1, 2, 1, 27)
NAME = GUARD + (1, 1, 1, 2, 1)
VERSION = GUARD + (1, 1, 1, 4, 1)
ACCEPTED = (1, 3, 6, 1, 4, 1, 99999, 1, 1, 1, 0)


def header(kind, length, session=0, transaction=0, packet=0, flags=NETWORK_BYTE_ORDER):
    return struct.pack("!BBBxIIII", 1, kind, flags, session, transaction, packet, length)


def response(packet, session=7, uptime=1000, error=0, transaction=0):
    return header(RESPONSE, 8, session, transaction, packet) + struct.pack("!IHH", uptime, error, 0)


def request(kind, ranges, session=7, transaction=3, packet=9, bulk=b""):
    body = bulk + b"".join(ranges)
    return header(kind, len(body), session, transaction, packet) + body


def oid_bytes(oid, include=0):
    if oid[:4] == (1, 3, 6, 1) and len(oid) >= 5:
        return struct.pack("!BBBB", len(oid) - 5, oid[4], include, 0) + struct.pack(f"!{len(oid) - 5}I", *oid[5:])
    return struct.pack("!BBBB", len(oid), 0, include, 0) + struct.pack(f"!{len(oid)}I", *oid)


NULL_OID = b"\0\0\0\0"


def written(data):
    """(type, packet id) of each whole PDU in ``data``, as the subagent wrote them (network byte order)."""
    found = []
    while data:
        kind, flags, packet, length = data[1], data[2], *struct.unpack("!4xII", data[8:20])
        assert flags & NETWORK_BYTE_ORDER and len(data) >= 20 + length
        found.append((kind, packet))
        data = data[20 + length:]
    return found


def view(now_ticks=0):
    return MibView([(NAME, OCTET_STRING, b"xmpp-guard"), (VERSION, OCTET_STRING, b"1.0"),
                    (ACCEPTED, COUNTER64, 5)])


def serving_session(read_view=view, clock=None):
    """A session past Open and Register (two subtrees), as after a master accepted both."""
    clock = clock or MemoryReactorClock()
    session = AgentXSession((GUARD, (1, 3, 6, 1, 4, 1, 99999)), read_view, b"xmpp-guard", clock.seconds)
    session.start()
    registers = session.received(decode_pdu(response(1)))
    assert [pdu.type for pdu in registers] == [REGISTER, REGISTER]
    assert session.received(decode_pdu(response(2))) == []
    assert session.received(decode_pdu(response(3))) == []
    assert session.state == "serving"
    return session


def test_open_pdu_bytes():
    """An Open is the header, the timeout, a null id OID and the description padded to four bytes."""
    pdu = Pdu(Header(OPEN, packet_id=1), timeout=5, description=b"xmpp-guard")
    assert encode_pdu(pdu) == (
        header(OPEN, 24, packet=1)
        + b"\x05\0\0\0" + NULL_OID + b"\0\0\0\x0axmpp-guard\0\0"
    )


def test_register_pdu_uses_the_internet_prefix():
    """A Register's subtree under 1.3.6.1.x is written with the prefix byte x and the rest of its sub-identifiers."""
    pdu = Pdu(Header(REGISTER, session_id=7, packet_id=2), timeout=5, subtree=GUARD)
    assert encode_pdu(pdu) == (
        header(REGISTER, 16, session=7, packet=2)
        + b"\x05\x7f\0\0" + b"\x02\x02\0\0" + b"\0\0\0\x01\0\0\0\x1b"
    )


def test_response_bytes_carry_every_value_type():
    """A Response writes sysUpTime, error, index and each VarBind's type, name and value."""
    pdu = Pdu(Header(RESPONSE, session_id=7, transaction_id=3, packet_id=9), varbinds=(
        VarBind(INTEGER, (1, 2), -1), VarBind(COUNTER64, (1, 2), 2**40), VarBind(END_OF_MIB_VIEW, (1, 2))))
    name = b"\x02\0\0\0\0\0\0\x01\0\0\0\x02"
    body = (b"\0\0\0\0\0\0\0\0"
            + b"\0\x02\0\0" + name + b"\xff\xff\xff\xff"
            + b"\0\x46\0\0" + name + b"\0\0\x01\0\0\0\0\0"
            + b"\0\x82\0\0" + name)
    assert encode_pdu(pdu) == header(RESPONSE, len(body), 7, 3, 9) + body


def test_response_decodes():
    """A master's Response gives its session id, sysUpTime and error."""
    pdu = decode_pdu(response(packet=1, session=42, uptime=123456, error=0))
    assert (pdu.type, pdu.header.session_id, pdu.header.packet_id, pdu.sys_uptime, pdu.error) == (
        RESPONSE, 42, 1, 123456, 0)


def test_little_endian_request_decodes():
    """A PDU without the network-byte-order flag is read little-endian."""
    oid = struct.pack("<BBBB", 2, 2, 1, 0) + struct.pack("<2I", 1, 27)
    body = oid + NULL_OID
    data = struct.pack("<BBBxIIII", 1, GET_NEXT, 0, 7, 3, 9, len(body)) + body
    pdu = decode_pdu(data)
    assert pdu.ranges == (SearchRange((1, 3, 6, 1, 2, 1, 27), (), True),)


def test_get_next_and_get_bulk_decode():
    """GetNext and GetBulk give their search ranges (start, end, include) and the bulk counts."""
    pdu = decode_pdu(request(GET_BULK, [oid_bytes(GUARD) + oid_bytes(ACCEPTED)], bulk=b"\0\x01\0\x0a"))
    assert (pdu.non_repeaters, pdu.max_repetitions) == (1, 10)
    assert pdu.ranges == (SearchRange(GUARD, ACCEPTED, False),)


@pytest.mark.parametrize("data, problem", [
    (response(1)[:19], "shorter than an AgentX header"),
    (b"\x02" + response(1)[1:], "version 2"),
    (header(OPEN, 0), "type 1"),
    (header(RESPONSE, 8) + b"\0" * 4, "payload length"),
    (request(GET, [struct.pack("!BBBB", 3, 0, 0, 0) + b"\0\0\0\x01"]), "runs past the end"),
    (request(GET, [struct.pack("!BBBB", 129, 0, 0, 0)]), "129 sub-identifiers"),
    (request(GET, [struct.pack("!BBBB", 0, 0, 2, 0) + NULL_OID]), "include flag"),
    (request(GET, [oid_bytes(GUARD) + NULL_OID + b"\0\0\0\0"]), "runs past the end"),
    (header(RESPONSE, 16, packet=1) + struct.pack("!IHH", 0, 0, 0) + b"\0\x63\0\0" + NULL_OID,
     "unknown VarBind type 99"),
])
def test_malformed_pdus_are_refused(data, problem):
    """Bytes that are not a PDU a master sends raise MalformedPdu naming what is wrong."""
    with pytest.raises(MalformedPdu, match=problem):
        decode_pdu(data)


def test_reader_frames_pdus_split_anywhere():
    """PDUs arriving a byte at a time, or two in one read, come out whole and in order."""
    data = response(1) + response(2)
    reader = PduReader()
    pdus = [pdu for byte in data for pdu in reader.feed(bytes([byte]))]
    assert [pdu.header.packet_id for pdu in pdus] == [1, 2]
    assert [pdu.header.packet_id for pdu in PduReader().feed(data)] == [1, 2]


def test_reader_refuses_an_oversized_payload_before_holding_it():
    """A header announcing more than MAX_PAYLOAD_BYTES is refused at once: the reader never holds more than MAX_BUFFER_BYTES."""
    reader = PduReader()
    with pytest.raises(MalformedPdu, match="65540 bytes"):
        reader.feed(header(GET, agentx.MAX_PAYLOAD_BYTES + 4))
    assert len(reader.buffer) == agentx.HEADER_BYTES
    reader = PduReader()
    assert reader.feed(header(GET, agentx.MAX_PAYLOAD_BYTES) + b"\0" * 1000) == []
    assert len(reader.buffer) <= agentx.MAX_BUFFER_BYTES


def test_reader_refuses_a_payload_length_not_a_multiple_of_four():
    """Every AgentX payload is a multiple of four bytes; another length is malformed."""
    with pytest.raises(MalformedPdu, match="multiple of 4"):
        PduReader().feed(header(GET, 6))


def test_session_opens_then_registers_each_subtree():
    """The session sends Open, takes its session id from the Response, then registers each subtree with that id."""
    clock = MemoryReactorClock()
    session = AgentXSession((GUARD, ACCEPTED[:7]), view, b"xmpp-guard", clock.seconds)
    [opening] = session.start()
    assert (opening.type, opening.header.packet_id) == (OPEN, 1)
    registers = session.received(decode_pdu(response(1, session=42, uptime=500)))
    assert [(pdu.type, pdu.subtree, pdu.header.session_id) for pdu in registers] == [
        (REGISTER, GUARD, 42), (REGISTER, ACCEPTED[:7], 42)]
    session.received(decode_pdu(response(2, session=42)))
    assert session.state == "registering"
    session.received(decode_pdu(response(3, session=42)))
    assert session.state == "serving"


def test_get_answers_values_and_no_such_object():
    """A Get answers each name from the view, noSuchObject for a name it does not have, echoing the ids."""
    session = serving_session()
    [answer] = session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID,
                                                         oid_bytes(NAME[:-1] + (2,)) + NULL_OID])))
    assert (answer.type, answer.header.session_id, answer.header.transaction_id, answer.header.packet_id) == (
        RESPONSE, 7, 3, 9)
    assert answer.varbinds == (VarBind(OCTET_STRING, NAME, b"xmpp-guard"), VarBind(NO_SUCH_OBJECT, NAME[:-1] + (2,)))
    name = oid_bytes(NAME)
    assert encode_pdu(answer)[20:] == (b"\0\0\0\0\0\0\0\0" + b"\0\x04\0\0" + name + b"\0\0\0\x0axmpp-guard\0\0"
                                       + b"\0\x80\0\0" + oid_bytes(NAME[:-1] + (2,)))


def test_get_next_walks_within_its_range():
    """GetNext gives the next name after the start (at it when include is set), endOfMibView past the range's end."""
    session = serving_session()
    [answer] = session.received(decode_pdu(request(GET_NEXT, [
        oid_bytes(GUARD) + NULL_OID,
        oid_bytes(NAME, include=1) + NULL_OID,
        oid_bytes(VERSION) + oid_bytes((1, 3, 6, 1, 4, 1, 99999, 1, 1, 1)),
        oid_bytes(ACCEPTED) + NULL_OID,
    ])))
    assert [(varbind.type, varbind.name) for varbind in answer.varbinds] == [
        (OCTET_STRING, NAME), (OCTET_STRING, NAME), (END_OF_MIB_VIEW, VERSION), (END_OF_MIB_VIEW, ACCEPTED)]


def test_get_bulk_repeats_after_the_non_repeaters():
    """GetBulk answers the non-repeaters once, then each repeater up to max-repetitions, stopping at the end of the view."""
    session = serving_session()
    [answer] = session.received(decode_pdu(request(GET_BULK, [oid_bytes(VERSION) + NULL_OID,
                                                              oid_bytes(GUARD) + NULL_OID], bulk=b"\0\x01\0\x0a")))
    assert [varbind.name for varbind in answer.varbinds] == [ACCEPTED, NAME, VERSION, ACCEPTED, ACCEPTED]
    assert answer.varbinds[-1].type == END_OF_MIB_VIEW


def test_get_bulk_is_bounded_in_count_and_bytes():
    """A GetBulk asking 65535 repetitions over a large view answers at most MAX_RESPONSE_VARBINDS and MAX_RESPONSE_BYTES."""
    big = MibView([((1, 3, 6, 1, 4, 1, 99999, 9, n), OCTET_STRING, b"x" * 200) for n in range(1, 5000)])
    session = serving_session(lambda now: big)
    [answer] = session.received(decode_pdu(request(GET_BULK, [oid_bytes((1, 3, 6, 1, 4, 1, 99999)) + NULL_OID],
                                                   bulk=b"\0\0\xff\xff")))
    assert 0 < len(answer.varbinds) <= agentx.MAX_RESPONSE_VARBINDS
    assert len(encode_pdu(answer)) - agentx.HEADER_BYTES <= agentx.MAX_RESPONSE_BYTES + 8
    small = MibView([((1, 3, 6, 1, 4, 1, 99999, 9, n), COUNTER64, n) for n in range(1, 5000)])
    session = serving_session(lambda now: small)
    [answer] = session.received(decode_pdu(request(GET_BULK, [oid_bytes((1, 3, 6, 1, 4, 1, 99999)) + NULL_OID],
                                                   bulk=b"\0\0\xff\xff")))
    assert len(answer.varbinds) == agentx.MAX_RESPONSE_VARBINDS


def test_test_set_is_not_writable():
    """The subagent is read-only: a TestSet is answered notWritable for its first VarBind."""
    session = serving_session()
    body = b"\0\x02\0\0" + oid_bytes(NAME) + b"\0\0\0\x01"
    [answer] = session.received(decode_pdu(header(TEST_SET, len(body), 7, 3, 9) + body))
    assert (answer.error, answer.index) == (NOT_WRITABLE, 1)


def test_a_view_that_fails_answers_gen_err():
    """When the guard's view cannot be read the answer is genErr with no values, never made-up ones."""
    def broken(now):
        raise ValueError("a stream id that is no assocIndex")
    session = serving_session(broken)
    [answer] = session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID])))
    assert (answer.error, answer.index, answer.varbinds) == (agentx.GEN_ERR, 1, ())


def test_a_request_for_another_context_answers_gen_err():
    """Only the default context is registered: a request naming another context gets genErr, not the guard's values."""
    session = serving_session()
    body = b"\0\0\0\x04ctx1" + oid_bytes(NAME) + NULL_OID
    data = header(GET, len(body), 7, 3, 9, flags=NETWORK_BYTE_ORDER | agentx.NON_DEFAULT_CONTEXT) + body
    [answer] = session.received(decode_pdu(data))
    assert (answer.error, answer.index, answer.varbinds) == (agentx.GEN_ERR, 1, ())


def test_view_is_read_with_the_masters_uptime_now():
    """read_view gets the master's sysUpTime: its last Response's value plus the time since, in centiseconds."""
    clock = MemoryReactorClock()
    seen = []
    session = AgentXSession((GUARD,), lambda now: seen.append(now) or view(), b"g", clock.seconds)
    session.start()
    session.received(decode_pdu(response(1, uptime=5000)))
    clock.advance(2.5)
    session.received(decode_pdu(response(2, uptime=5000)))
    clock.advance(1.5)
    session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID])))
    assert seen == [5150]


@pytest.mark.parametrize("step, reason", [
    ("request before registration", agentx.REASON_PROTOCOL_ERROR),
    ("response to nothing", agentx.REASON_PROTOCOL_ERROR),
    ("register refused", agentx.REASON_OTHER),
    ("request from another session", agentx.REASON_PROTOCOL_ERROR),
])
def test_unexpected_inputs_close_the_session(step, reason):
    """An input the state does not expect, or a refused registration, closes the session with a Close PDU."""
    clock = MemoryReactorClock()
    session = AgentXSession((GUARD,), view, b"g", clock.seconds)
    session.start()
    session.received(decode_pdu(response(1)))
    if step == "request before registration":
        out = session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID])))
    elif step == "response to nothing":
        out = session.received(decode_pdu(response(77)))
    elif step == "register refused":
        out = session.received(decode_pdu(response(2, error=263)))
    else:
        session.received(decode_pdu(response(2)))
        out = session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID], session=8)))
    assert [(pdu.type, pdu.reason) for pdu in out] == [(CLOSE, reason)]
    assert session.closed
    assert session.received(decode_pdu(request(GET, [oid_bytes(NAME) + NULL_OID]))) == []


def test_open_refused_closes_without_a_close_pdu():
    """A master refusing the Open leaves no session to close: the connection just ends."""
    session = AgentXSession((GUARD,), view, b"g", MemoryReactorClock().seconds)
    session.start()
    assert session.received(decode_pdu(response(1, error=256))) == []
    assert session.closed


def test_a_ping_unanswered_by_the_next_closes():
    """Pings go out while serving; one still unanswered when the next is due closes the session (timeouts)."""
    session = serving_session()
    [ping] = session.ping_due()
    assert ping.type == PING
    session.received(decode_pdu(response(ping.header.packet_id)))
    [ping] = session.ping_due()
    assert [(pdu.type, pdu.reason) for pdu in session.ping_due()] == [(CLOSE, agentx.REASON_TIMEOUTS)]


def test_master_close_ends_the_session():
    """A Close from the master ends the session; nothing is written back."""
    session = serving_session()
    assert session.received(decode_pdu(header(CLOSE, 4, 7) + b"\x05\0\0\0")) == []
    assert (session.closed, session.close_reason) == (True, agentx.REASON_SHUTDOWN)


def protocol_on_transport(clock, read_view=view):
    session = AgentXSession((GUARD,), read_view, b"xmpp-guard", clock.seconds)
    protocol = AgentXProtocol(session, clock, ping_interval=10)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_protocol_writes_open_then_answers_requests():
    """Connected, the protocol writes the Open; the master's bytes, split anywhere, are answered in bytes."""
    clock = MemoryReactorClock()
    protocol, transport = protocol_on_transport(clock)
    assert transport.value()[:2] == b"\x01\x01"
    transport.clear()
    protocol.dataReceived(response(1)[:7])
    protocol.dataReceived(response(1)[7:] + response(2))
    transport.clear()
    protocol.dataReceived(request(GET, [oid_bytes(VERSION) + NULL_OID]))
    answer = decode_pdu(transport.value())
    assert answer.varbinds == (VarBind(OCTET_STRING, VERSION, b"1.0"),)


def test_protocol_closes_on_malformed_bytes():
    """Garbage from the master is answered with Close (parseError) and the connection is dropped."""
    clock = MemoryReactorClock()
    protocol, transport = protocol_on_transport(clock)
    protocol.dataReceived(response(1) + response(2))
    transport.clear()
    protocol.dataReceived(b"\x01\x05\x10\x00" + b"\xff" * 16)
    close = decode_pdu(transport.value())
    assert (close.type, close.reason) == (CLOSE, agentx.REASON_PARSE_ERROR)
    assert transport.disconnecting


def test_protocol_pings_on_the_clock_and_drops_a_silent_master():
    """Every ping_interval a Ping goes out; a master silent for a whole interval gets a Close and the connection ends."""
    clock = MemoryReactorClock()
    protocol, transport = protocol_on_transport(clock)
    protocol.dataReceived(response(1) + response(2))
    transport.clear()
    clock.advance(10)
    assert written(transport.value()) == [(PING, 3)]
    transport.clear()
    clock.advance(10)
    assert decode_pdu(transport.value()).reason == agentx.REASON_TIMEOUTS
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert clock.getDelayedCalls() == []


def test_subagent_connects_again_after_the_master_goes():
    """When snmpd is not there or restarts, the subagent connects again on the injected clock and opens a new session."""
    reactor = MemoryReactorClock()
    subagent = AgentXSubagent(reactor, "unix:path=/var/agentx/master", (GUARD,), view, b"xmpp-guard")
    subagent.start()
    assert [client[0] for client in reactor.unixClients] == ["/var/agentx/master"]
    reactor.unixClients[0][1].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    reactor.advance(61)
    assert len(reactor.unixClients) == 2
    factory = reactor.unixClients[1][1]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert written(transport.value()) == [(OPEN, 1)]
    first = subagent.session
    protocol.connectionLost(Failure(ConnectionError("snmpd restarted")))
    factory.clientConnectionLost(None, Failure(ConnectionError("snmpd restarted")))
    reactor.advance(61)
    assert len(reactor.unixClients) == 3
    second = reactor.unixClients[2][1].buildProtocol(None)
    second.makeConnection(StringTransport())
    assert subagent.session is not first and subagent.session.state == "opening"
    subagent.stop()
