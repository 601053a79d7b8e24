"""An idle inbound stream lets its parser's expat go, and wakes it for the next stanza."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundStream

from .sides import RecordingRelay, make_side
from .test_inbound_bytes import HEADER, TLSRecordingTransport
from .test_read_turns import DIALBACK, STARTTLS, message, open_streams, turns


def test_an_idle_stream_holds_no_expat_and_relays_the_next_stanza():
    """After a keepalive the stream's parser rests; the next stanza is relayed and a read of stanzas keeps expat."""
    clock, relay, [(stream, _)] = open_streams()
    assert not stream._parser.resting  # the dialback request was the last read: an element came
    stream.dataReceived(b" ")
    turns(clock)
    assert stream._parser.resting
    stream.dataReceived(message(1))
    turns(clock)
    assert not stream._parser.resting
    assert [event[0] for event in relay.events] == ["stanza"]


def test_a_read_of_only_a_header_rests_the_new_parser():
    """When a restart's header is all a read carried, the new stream's parser rests until the peer's next element."""
    clock = MemoryReactorClock()
    relay = RecordingRelay({("red.example", "blue.example"): True})
    side = make_side("red", clock, authentication="dialback", relay=relay, limits=Limits())
    stream = InboundStream(side)
    stream.makeConnection(TLSRecordingTransport(peerAddress=IPv4Address("TCP", "127.0.1.1", 40000)))
    stream.dataReceived(HEADER + STARTTLS)
    turns(clock)
    stream.dataReceived(HEADER)
    turns(clock)
    assert stream._parser.resting
    stream.dataReceived(DIALBACK)
    turns(clock)
    assert stream.authenticated_pairs == {("red.example", "blue.example")}
