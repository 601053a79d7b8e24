"""
A peer that sends and never reads must not grow the guard's memory: every
stream registers a producer, reading stops while the peer leaves our output
unread, a peer that still gets unread_output_bytes more is cut off, and a
db:verify echoes only bounded, known values.
"""

from twisted.internet.testing import MemoryReactorClock

from guard.core.dialback import dialback_key
from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundStream
from guard.edges.s2s.outbound import OutboundStream

from .sides import SECRET, make_side
from .test_handshakes import RecordingOwner
from .test_inbound_bytes import HEADER, TLSRecordingTransport

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def dialback_stream(limits=None):
    """An inbound stream on a dialback side, secured and offered dialback, with nothing written yet."""
    side = make_side("red", MemoryReactorClock(), authentication="dialback", limits=limits or Limits())
    stream = InboundStream(side)
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    stream.dataReceived(HEADER + STARTTLS)
    stream.dataReceived(HEADER)
    transport.clear()
    return stream, transport


def verify(stream_id="s-1", asking="red.example", claimed="blue.example", key=None):
    key = key or dialback_key(SECRET, asking, claimed, stream_id)
    return f"<db:verify from='{asking}' to='{claimed}' id='{stream_id}'>{key}</db:verify>".encode()


def test_every_stream_registers_a_streaming_producer_with_the_output_bound():
    """Inbound and outbound streams register a push producer and set the transport's buffer to unread_output_bytes."""
    inbound, transport = dialback_stream(Limits(unread_output_bytes=5000))
    assert transport.producer is not None and transport.streaming
    assert transport.bufferSize == 5000
    side = make_side("blue", MemoryReactorClock(), presents_for=("red.example",), limits=Limits(unread_output_bytes=7000))
    outbound_transport = TLSRecordingTransport()
    OutboundStream(RecordingOwner(), side, "red.example", "blue.example").makeConnection(outbound_transport)
    assert outbound_transport.producer is not None and outbound_transport.streaming
    assert outbound_transport.bufferSize == 7000


def test_reading_stops_while_the_peer_does_not_read():
    """When the transport says our output is not being read, the stream stops reading until it drains."""
    stream, transport = dialback_stream()
    transport.producer.pauseProducing()
    assert transport.producerState == "paused"
    assert stream.held == {"peer not reading"}
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"
    assert stream.held == frozenset()


def test_peer_that_never_reads_is_cut_off_after_the_bound():
    """Answers written while the peer does not read are bounded by unread_output_bytes; beyond it the connection is aborted."""
    stream, transport = dialback_stream(Limits(unread_output_bytes=1000))
    transport.producer.pauseProducing()
    for n in range(30):
        stream.dataReceived(verify(f"s-{n}"))
    assert transport.disconnected
    assert len(transport.value()) <= 1000
    written = len(transport.value())
    stream.dataReceived(verify("s-late"))
    assert len(transport.value()) == written


def test_a_reading_peer_gets_every_answer():
    """A peer that reads gets one db:verify answer for each request, valid for the guard's own key."""
    stream, transport = dialback_stream(Limits(unread_output_bytes=1000))
    for n in range(20):
        stream.dataReceived(verify(f"s-{n}"))
    assert transport.value().count(b"type='valid'") == 20
    assert not transport.disconnecting


def test_verify_with_a_long_id_is_refused_without_echo():
    """A db:verify whose id is over 128 bytes ends the stream with policy-violation and the id is not written back."""
    stream, transport = dialback_stream()
    long_id = "i" * 129
    stream.dataReceived(verify(long_id))
    out = transport.value()
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out
    assert long_id.encode() not in out
    assert transport.disconnecting


def test_verify_with_a_128_byte_id_is_answered():
    """An id of exactly 128 bytes is within the bound and answered."""
    stream, transport = dialback_stream()
    stream.dataReceived(verify("i" * 128))
    assert transport.value() == (
        b"<db:verify from='blue.example' to='red.example' id='" + b"i" * 128 + b"' type='valid'></db:verify>"
    )


def test_verify_for_unknown_domains_is_refused_without_echo():
    """A db:verify from a domain not on this side, or for one not fronted, is refused and its addresses never written."""
    for asking, claimed, condition in (("x" * 4000 + ".example", "blue.example", b"invalid-from"),
                                       ("red.example", "y" * 4000 + ".example", b"host-unknown")):
        stream, transport = dialback_stream()
        stream.dataReceived(verify(asking=asking, claimed=claimed, key="k" * 64))
        out = transport.value()
        assert b"<" + condition + b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out
        assert b"x" * 100 not in out and b"y" * 100 not in out
        assert transport.disconnecting


def test_nothing_read_after_a_non_reading_peer_is_cut_off_reaches_the_relay():
    """Once the guard cuts off a peer that does not read, the rest of what it sent in the same read is not parsed."""
    from .sides import RecordingRelay

    relay = RecordingRelay(dialback_answers={("red.example", "blue.example"): True})
    side = make_side("red", MemoryReactorClock(), authentication="dialback", relay=relay,
                     limits=Limits(unread_output_bytes=300, read_turn_bytes=100_000))
    stream, transport = InboundStream(side), TLSRecordingTransport()
    stream.makeConnection(transport)
    stream.dataReceived(HEADER + STARTTLS)
    stream.dataReceived(HEADER)
    stream.dataReceived(b"<db:result from='red.example' to='blue.example'>k</db:result>")
    transport.producer.pauseProducing()
    message = b"<message from='a@red.example' to='b@blue.example'><body>x</body></message>"
    stream.dataReceived(b"".join(verify(f"s-{n}") for n in range(10)) + message * 5)
    assert transport.disconnected
    assert [event for event in relay.events if event[0] == "stanza"] == []
