"""
The SIS client of STANAG 5066 Annex A (guard/edges/constrained/sis.py), bytes
in and bytes out: primitives as the standard frames them, a reader bounded to
one frame, the client's bind and unit data, and the link's connection over
unit data (one U_PDU per write, the window, the peer's address only).
"""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from guard.edges.constrained import sis
from guard.edges.constrained.sis import (BindAccepted, BindRejected, BindRequest, DataflowOff, DataflowOn,
                                         PrimitiveReader, SisAddress, SisClient, SisError, SisTransport,
                                         UnbindIndication, UnbindRequest, UnidataConfirm, UnidataIndication,
                                         UnidataRejected, UnidataRequest, UnitWindow, decode, encode,
                                         endpoint_options, format_address, largest_primitive, largest_write,
                                         parse_address)

PEER = parse_address("0.0.6.2")
OWN = parse_address("0.0.6.1")


def frame(body_hex: str, data: bytes = b"") -> bytes:
    body = bytes.fromhex(body_hex) + data
    return b"\x90\xeb\x00" + len(body).to_bytes(2, "big") + body


# Known answers: the fields as Annex A lays them out (type; SAP ID in the high nibble of a bind, in the low
# nibble after the priority of unit data; the address field 3 bits of size (7), a group bit, 28 bits).
KNOWN = [
    (BindRequest(2), frame("01 20 18 00")),
    (BindRequest(5, rank=3), frame("01 53 18 00")),
    (BindAccepted(2, 2048), frame("03 20 0800")),
    (BindRejected(3), frame("04 03")),
    (UnbindRequest(), frame("02")),
    (UnbindIndication(3), frame("05 03")),
    (DataflowOn(), frame("0f")),
    (DataflowOff(), frame("10")),
    (UnidataRequest(2, PEER, b"hello", priority=3, ttl=5), frame("14 32 e0000602 18 000005 0005", b"hello")),
    (UnidataIndication(2, OWN, 2, PEER, b"hi"), frame("15 02 e0000601 12 e0000602 0002", b"hi")),
    (UnidataConfirm(2, PEER, b"x"), frame("16 02 e0000602 0001", b"x")),
    (UnidataRejected(2, 2, PEER, b"xy"), frame("17 22 e0000602 0002", b"xy")),
]


@pytest.mark.parametrize("primitive, wire", KNOWN, ids=[type(p).__name__ for p, _ in KNOWN])
def test_primitives_encode_to_the_annex_a_bytes_and_decode_back(primitive, wire):
    """Each primitive the client and the simulator use has its Annex A bytes, and those bytes decode to it."""
    assert encode(primitive) == wire
    assert decode(wire[5:]) == primitive


@given(st.binary(min_size=1, max_size=300), st.integers(0, 15), st.integers(0, sis.MAX_ADDRESS),
       st.integers(0, 15), st.integers(0, (1 << 20) - 1), st.lists(st.integers(1, 40), max_size=8))
def test_unit_data_read_in_any_chunking_is_the_unit_data_written(data, sap, address, priority, ttl, cuts):
    """An S_UNIDATA_REQUEST and an INDICATION split anywhere by TCP come out of the reader whole and equal."""
    primitives = [UnidataRequest(sap, address, data, priority, ttl=ttl),
                  UnidataIndication(sap, address, 15 - sap, OWN, data, priority)]
    wire = b"".join(encode(p) for p in primitives)
    reader, out, at = PrimitiveReader(largest_primitive(300)), [], 0
    for cut in cuts + [len(wire)]:
        out += reader.feed(wire[at:at + cut])
        at += cut
    out += reader.feed(wire[at:])
    assert out == primitives
    assert reader.pending_bytes == 0


@pytest.mark.parametrize("wire, problem", [
    (b"\x91", "bad preamble"),
    (b"\x90\xec", "bad preamble"),
    (b"\x90\xeb\x01", "SIS version 1"),
    (b"\x90\xeb\x00\x00\x00", "a primitive of 0 bytes"),
    (b"\x90\xeb\x00\x08\x0e", "a primitive of 2062 bytes"),
    (frame("63"), "type 99"),
    (frame("03 20"), "not 3"),
    (frame("16 02 e0000602 0005", b"x"), "says its U_PDU has 5 bytes"),
    (frame("16 02 f0000602 0001", b"x"), "group address"),
    (frame("15 02 e0000601 32 e0000602 0002", b"hi"), "did not come by ARQ"),
    (frame("01 20 19 00"), "extended field"),
])
def test_the_reader_refuses_at_once_what_is_not_a_primitive(wire, problem):
    """A bad preamble or version, a size of zero or over one MTU's indication, unknown or malformed fields are
    refused as soon as the byte that shows it arrives, and nothing after is read."""
    reader = PrimitiveReader(largest_primitive(2048))
    with pytest.raises(SisError, match=problem):
        reader.feed(wire)
    with pytest.raises(SisError):
        reader.feed(encode(DataflowOn()))


def test_the_reader_holds_at_most_one_frame_of_input():
    """Fed a maximal indication one byte at a time, the reader never holds more than the primitive (the header
    bytes are let go once read), and a size one over the bound is refused before a byte of its body is held."""
    mtu = 512
    reader = PrimitiveReader(largest_primitive(mtu))
    wire = encode(UnidataIndication(2, OWN, 2, PEER, b"z" * mtu))
    high = 0
    for index in range(len(wire)):
        reader.feed(wire[index:index + 1])
        high = max(high, reader.pending_bytes)
    assert high == largest_primitive(mtu) - 1
    too_big = b"\x90\xeb\x00" + (largest_primitive(mtu) + 1).to_bytes(2, "big")
    with pytest.raises(SisError, match="at most"):
        PrimitiveReader(largest_primitive(mtu)).feed(too_big + b"\x15" * 100)


def test_addresses_are_28_bits_written_as_four_dotted_numbers():
    """0.0.6.1 is 0x601; the first number is below 16; anything else is refused."""
    assert parse_address("0.0.6.1") == 0x601 and format_address(0x7DEF1) == "0.7.222.241"
    for bad in ("16.0.0.1", "0.0.6", "0.0.6.256", "a.b.c.d", "0.0.6.1.2", "0.0.6.-1"):
        with pytest.raises(ValueError):
            parse_address(bad)


class Recorder:
    """The client's listener: appends ("event", args) tuples to one list."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if not name.startswith("sis_"):
            raise AttributeError(name)
        return lambda *args: self.events.append((name[4:], *args))


def bound_client(mtu=2048, node_mtu=1024):
    listener = Recorder()
    client = SisClient(2, listener, max_mtu=mtu)
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(encode(BindAccepted(2, node_mtu)))
    return client, transport, listener


def test_the_client_binds_its_sap_at_once_and_takes_the_smaller_mtu():
    """On connecting it says S_BIND_REQUEST for its SAP (ARQ, client delivery confirmation); the node's
    S_BIND_ACCEPTED gives the MTU, the smaller of the node's and the client's own."""
    listener = Recorder()
    client = SisClient(2, listener, max_mtu=2048)
    transport = StringTransport()
    client.makeConnection(transport)
    assert transport.value() == frame("01 20 18 00")
    client.dataReceived(encode(BindAccepted(2, 4096)))
    assert (client.mtu, listener.events) == (2048, [("bound", 2048)])
    assert client.reader.max_primitive == largest_primitive(2048)


def test_a_rejected_bind_is_reported_with_its_reason_and_the_connection_closes():
    """S_BIND_REJECTED (SAP already allocated) reaches the listener as text and the SIS connection closes."""
    listener = Recorder()
    client = SisClient(2, listener)
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(encode(BindRejected(3)))
    assert listener.events == [("bind_rejected", "SAP ID already allocated")]
    assert transport.disconnecting


def test_unit_data_goes_as_an_arq_unidata_request_and_answers_reach_the_listener():
    """send() writes one S_UNIDATA_REQUEST; indications, confirms, rejections and dataflow reach the listener."""
    client, transport, listener = bound_client()
    transport.clear()
    client.send(PEER, 2, b"<message/>")
    assert transport.value() == encode(UnidataRequest(2, PEER, b"<message/>"))
    client.dataReceived(encode(UnidataIndication(2, OWN, 2, PEER, b"in"))
                        + encode(UnidataConfirm(2, PEER, b"<message/>"))
                        + encode(UnidataRejected(3, 2, PEER, b"<m/>"))
                        + encode(DataflowOff()) + encode(DataflowOn()))
    assert listener.events[1:] == [("received", PEER, 2, b"in"), ("confirmed", PEER, 2, b"<message/>"),
                                   ("rejected", "destination node not responding", PEER, b"<m/>"),
                                   ("dataflow", False), ("dataflow", True)]


def test_the_client_refuses_unit_data_over_its_mtu_and_before_its_bind():
    """A U_PDU over the MTU is not sent; unit data from the node before the bind closes the connection; an
    indication longer than one MTU is refused by the reader."""
    client, transport, listener = bound_client(node_mtu=100)
    with pytest.raises(ValueError):
        client.send(PEER, 2, b"x" * 101)
    client.dataReceived(encode(UnidataIndication(2, OWN, 2, PEER, b"y" * 101)))
    assert listener.events[-1][0] == "failed" and transport.disconnecting
    early = SisClient(2, Recorder())
    early_transport = StringTransport()
    early.makeConnection(early_transport)
    early.dataReceived(encode(UnidataIndication(2, OWN, 2, PEER, b"y")))
    assert early.listener.events == [("failed", "UnidataIndication before the bind was accepted")]


def test_unbind_says_s_unbind_request_and_closes():
    """unbind() writes S_UNBIND_REQUEST and closes the SIS connection, once."""
    client, transport, _ = bound_client()
    transport.clear()
    client.unbind()
    client.unbind()
    assert transport.value() == encode(UnbindRequest()) and transport.disconnecting


def test_the_window_holds_units_past_its_count_and_refuses_past_its_bytes():
    """At most ``units`` in flight; more are held (bounded in bytes: past it, None); confirms of the oldest
    release the held in order; S_DATAFLOW_OFF holds everything until ON; a confirm matching nothing is None."""
    window = UnitWindow(units=2, held_bytes=10)
    assert window.offer(b"a1") == [b"a1"] and window.offer(b"b2") == [b"b2"]
    assert window.full and window.offer(b"c3") == [] and window.offer(b"d4") == []
    assert window.offer(b"e" * 7) is None
    assert window.confirmed(b"a") == [b"c3"]
    assert window.confirmed(b"zz") is None
    assert window.dataflow(False) == [] and window.confirmed(b"b2") == []
    assert window.dataflow(True) == [b"d4"] and window.full
    assert window.held_total == 0 and window.outstanding == [b"c3", b"d4"]
    assert window.confirmed(b"c3") == [] and not window.full


class FakeClient:
    """A bound SisClient that records the unit data it is asked to send."""

    def __init__(self, mtu=64):
        self.mtu = mtu
        self.sap = 2
        self.sent = []
        self.transport = StringTransport()

    def send(self, destination, sap, data):
        self.sent.append((destination, sap, data))


class LinkSide(Protocol):
    """The link's protocol: records what it reads and whether it was paused."""

    def __init__(self):
        self.events = []

    def dataReceived(self, data):
        self.events.append(("read", data))

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


class Producer:
    def __init__(self, events):
        self.events = events

    def pauseProducing(self):
        self.events.append(("paused",))

    def resumeProducing(self):
        self.events.append(("resumed",))


def connection(mtu=64, units=2, held=100):
    client = FakeClient(mtu)
    ended = []
    transport = SisTransport(client, SisAddress(PEER, 2), 7, UnitWindow(units, held), ended.append, Clock())
    protocol = LinkSide()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    transport.registerProducer(Producer(protocol.events), True)
    return transport, client, protocol, ended


def test_each_write_is_one_u_pdu_to_the_peer_with_the_connection_number():
    """Two writes are two unit data requests to the peer's address and SAP, each the connection byte then the
    write; a read is handed to the protocol as it arrived."""
    transport, client, protocol, _ = connection()
    transport.write(b"<a/>")
    transport.write(b"<b/>")
    transport.received(b"<c/>")
    assert client.sent == [(PEER, 2, b"\x07<a/>"), (PEER, 2, b"\x07<b/>")]
    assert protocol.events == [("paused",), ("read", b"<c/>")]


def test_the_protocol_is_paused_while_confirms_lag_and_resumed_when_they_come():
    """With a window of two, the second write pauses the producer; the confirm of the first resumes it; a third
    write while full is held and goes out on the next confirm."""
    transport, client, protocol, _ = connection(units=2)
    transport.write(b"1")
    transport.write(b"2")
    transport.write(b"3")
    assert [data for _, _, data in client.sent] == [b"\x071", b"\x072"]
    assert transport.confirmed(b"\x071")
    assert [data for _, _, data in client.sent][-1] == b"\x073"
    assert transport.confirmed(b"\x072")
    assert protocol.events == [("paused",), ("resumed",)]


def test_the_node_saying_dataflow_off_pauses_the_protocol():
    """S_DATAFLOW_OFF pauses the writer and holds its writes; S_DATAFLOW_ON sends them and resumes it."""
    transport, client, protocol, _ = connection(units=8)
    transport.dataflow(False)
    transport.write(b"held")
    assert client.sent == [] and protocol.events == [("paused",)]
    transport.dataflow(True)
    assert client.sent == [(PEER, 2, b"\x07held")] and protocol.events == [("paused",), ("resumed",)]


def test_a_write_larger_than_the_mtu_is_refused_loudly_and_drops_the_connection():
    """A write of MTU bytes (one more than a U_PDU carries after the connection byte) is not sent: the peer
    hears the close unit and the protocol loses the connection."""
    transport, client, protocol, ended = connection(mtu=64)
    transport.write(b"x" * largest_write(64))
    transport.write(b"y" * 64)
    assert ("lost", error.ConnectionLost) not in protocol.events  # never from inside the protocol's own write
    transport.clock.advance(0)
    assert client.sent == [(PEER, 2, b"\x07" + b"x" * 63), (PEER, 2, b"\x07")]
    assert protocol.events[-1] == ("lost", error.ConnectionLost) and ended == [transport]


def test_writes_past_the_held_bytes_drop_the_connection():
    """When the node confirms nothing, writes are held up to the bound in bytes, then the connection drops."""
    transport, client, protocol, _ = connection(units=1, held=10)
    transport.write(b"first")
    transport.write(b"12345678")
    transport.write(b"overflow")
    transport.clock.advance(0)
    assert protocol.events[-1] == ("lost", error.ConnectionLost)
    assert len(client.sent) == 1


def test_lose_connection_sends_the_close_unit_once():
    """loseConnection tells the peer with a unit of the connection byte alone, once, and the protocol hears
    ConnectionDone."""
    transport, client, protocol, _ = connection()
    transport.loseConnection()
    transport.loseConnection()
    transport.write(b"after")
    transport.clock.advance(0)
    assert client.sent == [(PEER, 2, b"\x07")]
    assert protocol.events[-1] == ("lost", error.ConnectionDone)


def test_endpoint_strings_name_the_node_the_sap_and_the_peer():
    """The endpoint string gives node, port, SAP (XEP-0365's 2 by default), the peer's address and SAP, the MTU
    and the window; unknown, repeated or out-of-range keys are refused."""
    options = endpoint_options("stanag5066:node=127.0.6.1:port=5066:peer=0.0.6.2")
    assert (options.node_host, options.node_port, options.sap, options.peer, options.max_mtu) == (
        "127.0.6.1", 5066, 2, SisAddress(PEER, 2), 2048)
    options = endpoint_options("stanag5066:node=127.0.6.1:port=7000:sap=5:peer=0.0.6.2:peer_sap=6:mtu=4096:window=3")
    assert (options.sap, options.peer.sap, options.max_mtu, options.window_units) == (5, 6, 4096, 3)
    for bad in ("tcp:host=x", "stanag5066:node=127.0.6.1", "stanag5066:peer=0.0.6.2",
                "stanag5066:node=a:peer=0.0.6.2:sap=16", "stanag5066:node=a:peer=0.0.6.2:color=red",
                "stanag5066:node=a:peer=0.0.6.2:node=b", "stanag5066:node=a:peer=0.0.6.2:mtu=70000"):
        with pytest.raises(ValueError):
            endpoint_options(bad)


def test_a_fresh_dial_never_reuses_the_last_connection_number():
    """The dialling endpoint picks a connection number from 1 to 255 other than the one it used last."""
    endpoint = sis.SisClientEndpoint(None, endpoint_options("stanag5066:node=a:peer=0.0.6.2"), random.Random(4))
    numbers = []
    for _ in range(50):
        endpoint._last_number = numbers[-1] if numbers else 0
        numbers.append(endpoint._random.choice([n for n in range(1, 256) if n != endpoint._last_number]))
    assert all(a != b for a, b in zip(numbers, numbers[1:])) and all(1 <= n <= 255 for n in numbers)


@pytest.mark.parametrize("mtu", [64, 512, 2048, 65535])
def test_the_stanza_bytes_for_an_mtu_make_frames_that_always_fit_one_u_pdu(mtu):
    """A write of stanza_bytes_for_mtu(mtu) random (incompressible) bytes, deflated or stored, is a frame no
    larger than one U_PDU less the connection byte; without compression the limit is that room itself."""
    from guard.edges.constrained.compression import FrameWriter

    size = sis.stanza_bytes_for_mtu(mtu)
    data = random.Random(mtu).randbytes(size)
    assert len(FrameWriter(size)(data)) <= largest_write(mtu)
    assert len(FrameWriter(size)(b"password" + data[8:])) <= largest_write(mtu)  # stored (a secret)
    assert sis.stanza_bytes_for_mtu(mtu, "none") == largest_write(mtu)
    assert size > 0.85 * largest_write(mtu) - 30


def listening_port():
    """A listening endpoint bound (through a FakeClient) on a clock, with the link's protocols it built."""
    clock = Clock()
    endpoint = sis.SisServerEndpoint(clock, endpoint_options("stanag5066:node=a:peer=0.0.6.2"))
    binding = sis._SisBinding(endpoint, None)
    binding.client = FakeClient(mtu=64)
    built = []

    class Factory_:
        def buildProtocol(self, addr):
            built.append(LinkSide())
            return built[-1]

    endpoint.port = sis.SisListeningPort(endpoint, binding, Factory_())
    return clock, binding, built


def test_answers_for_units_of_an_ended_connection_do_not_end_the_next_one():
    """The peer reconnects while units of the old connection are in flight: their late confirm and rejection
    (their first byte names the old connection) are dropped, and the new connection carries on."""
    clock, binding, built = listening_port()
    binding.sis_received(PEER, 2, b"\x07<stream>")
    binding.connection.write(b"<old/>")
    binding.sis_received(PEER, 2, b"\x09<stream again>")
    clock.advance(0)
    assert built[0].events[-1] == ("lost", error.ConnectionLost)
    binding.connection.write(b"<new/>")
    binding.sis_confirmed(PEER, 2, b"\x07<old/>")
    binding.sis_rejected("destination node not responding", PEER, b"\x07<old/>")
    clock.advance(0)
    assert built[1].events == [("read", b"<stream again>")]
    assert binding.sis_confirmed(PEER, 2, b"\x09<new/>") is None and binding.connection.window.outstanding == []
    binding.sis_rejected("destination node not responding", PEER, b"\x09<new/>")
    clock.advance(0)
    assert built[1].events[-1] == ("lost", error.ConnectionLost)


def test_the_listener_takes_a_new_connection_number_and_drops_units_of_a_closed_one():
    """A unit with a new number starts a connection; the close unit ends it; later units of that number are
    dropped; a unit from another node or SAP never reaches the link."""
    clock, binding, built = listening_port()
    binding.sis_received(PEER, 3, b"\x07<from another SAP>")
    binding.sis_received(parse_address("0.0.6.3"), 2, b"\x07<from a stranger>")
    assert built == []
    binding.sis_received(PEER, 2, b"\x07<a/>")
    binding.sis_received(PEER, 2, b"\x07")
    binding.sis_received(PEER, 2, b"\x07<late/>")
    clock.advance(0)
    assert len(built) == 1 and built[0].events == [("read", b"<a/>"), ("lost", error.ConnectionDone)]


def test_the_link_pausing_its_reading_stops_reading_the_node():
    """When the link stops reading (its own side is congested), the SIS connection to the node is not read
    either, and reading resumes with the link."""
    transport, client, protocol, _ = connection()
    transport.pauseProducing()
    assert client.transport.producerState == "paused"
    transport.resumeProducing()
    assert client.transport.producerState == "producing"
