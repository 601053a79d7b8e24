"""
Fair reading: one connection parses at most read_turn_bytes per turn of the
event loop, so a peer that floods cannot keep every other stream waiting.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundStream

from .sides import RecordingRelay, make_side
from .test_inbound_bytes import HEADER, TLSRecordingTransport

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
DIALBACK = b"<db:result from='red.example' to='blue.example'>" + b"k" * 64 + b"</db:result>"


def message(n, sender="romeo"):
    return f"<message from='{sender}@red.example/a' to='juliet@blue.example' id='m{n}'><body>hello</body></message>".encode()


def open_streams(count=1, turn=200):
    """``count`` inbound streams on one dialback side, authenticated for red.example->blue.example."""
    clock = MemoryReactorClock()
    relay = RecordingRelay({("red.example", "blue.example"): True})
    side = make_side("red", clock, authentication="dialback", relay=relay, limits=Limits(read_turn_bytes=turn))
    streams = []
    for n in range(count):
        stream = InboundStream(side)
        transport = TLSRecordingTransport(peerAddress=IPv4Address("TCP", "127.0.1.1", 40000 + n))
        stream.makeConnection(transport)
        for data in (HEADER + STARTTLS, HEADER, DIALBACK):
            stream.dataReceived(data)
            turns(clock)
        assert stream.authenticated_pairs == {("red.example", "blue.example")}
        streams.append((stream, transport))
    relay.events.clear()
    return clock, relay, streams


def turns(clock, count=50):
    """Let the event loop turn ``count`` times (each runs what was scheduled for the next turn)."""
    for _ in range(count):
        clock.advance(0)


def ids(relay):
    return [event[2].split("id=\"")[1].split("\"")[0] for event in relay.events if event[0] == "stanza"]


def test_a_large_chunk_is_parsed_over_several_turns_with_reading_paused():
    """Twenty stanzas in one chunk are parsed a turn's worth at a time, in order, with reading paused until the last."""
    clock, relay, [(stream, transport)] = open_streams(turn=250)
    stream.dataReceived(b"".join(message(n) for n in range(20)))
    first_turn = len(ids(relay))
    assert 1 <= first_turn < 20
    assert transport.producerState == "paused" and "turn" in stream.held
    for _ in range(40):
        clock.advance(0)
    assert ids(relay) == [f"m{n}" for n in range(20)]
    assert transport.producerState == "producing" and stream.held == frozenset()


def test_a_flood_does_not_delay_another_streams_stanza():
    """While one stream has a flood waiting, a stanza on another stream is relayed on its own turn, before the flood ends."""
    clock, relay, [(flooder, _), (canary, _)] = open_streams(count=2, turn=250)
    flooder.dataReceived(b"".join(message(n) for n in range(100)))
    canary.dataReceived(message("canary", sender="canary"))
    relayed = ids(relay)
    assert relayed[-1] == "mcanary"
    assert len(relayed) < 10
    for _ in range(200):
        clock.advance(0)
    assert len(ids(relay)) == 101


def test_bytes_after_starttls_in_the_same_chunk_never_reach_the_secure_stream():
    """Plaintext sent after <starttls/> in the same chunk is dropped, even when the chunk spans several turns."""
    clock = MemoryReactorClock()
    side = make_side("red", clock, limits=Limits(read_turn_bytes=64))
    stream = InboundStream(side)
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    stream.dataReceived(HEADER + STARTTLS + HEADER + b"<message/>" * 20)
    for _ in range(20):
        clock.advance(0)
    assert transport.value().endswith(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert transport.value().count(b"<stream:stream") == 1
    assert not transport.disconnecting
    assert stream.held == frozenset()
    stream.dataReceived(HEADER)
    turns(clock)
    assert transport.value().count(b"<stream:stream") == 2


def test_a_fault_in_the_first_turn_drops_the_rest():
    """A stream that fails in its first turn parses nothing more of the chunk."""
    clock, relay, [(stream, transport)] = open_streams(turn=100)
    stream.dataReceived(b"<!-- no -->" + b"".join(message(n) for n in range(5)))
    clock.advance(0)
    assert b"restricted-xml" in transport.value()
    assert ids(relay) == []


def test_the_turn_budget_is_shared_by_every_delivery_in_a_turn():
    """Two deliveries in one turn (as TLS hands over one record at a time) share one read_turn_bytes budget."""
    clock, relay, [(stream, transport)] = open_streams(turn=300)
    stream.dataReceived(message(0) + message(1))
    stream.dataReceived(message(2) + message(3))
    assert len(ids(relay)) < 4
    assert transport.producerState == "paused"
    turns(clock)
    assert ids(relay) == ["m0", "m1", "m2", "m3"]
    assert transport.producerState == "producing"


def test_stanzas_after_the_peer_closes_its_stream_are_never_relayed():
    """The short per-stanza route ends with the machine's open state: a stanza behind the peer's stream close is not relayed."""
    clock, relay, [(stream, transport)] = open_streams(turn=100_000)
    stream.dataReceived(message(1) + b"</stream:stream>" + message(2))
    turns(clock)
    assert ids(relay) == ["m1"]


def test_a_stanza_handed_on_after_a_shutdown_goes_back_to_the_machine_and_is_not_relayed():
    """Once the stream has left open (here: the guard stops), the machine is asked again and ignores the stanza."""
    clock, relay, [(stream, transport)] = open_streams()
    assert stream._stanza_input.__func__ is InboundStream._stanza_while_open
    stream.close_for_shutdown()
    stream._input(stream._stanza_input, None, None, 0)
    assert ids(relay) == []
    assert getattr(stream._stanza_input, "__func__", None) is not InboundStream._stanza_while_open


def test_a_stream_held_for_another_reason_parses_no_more_of_what_waits_until_released():
    """A chunk waiting over several turns stays unparsed while the stream is held (memory budget, congestion); the release resumes it, in order."""
    clock, relay, [(stream, transport)] = open_streams(turn=250)
    stream.dataReceived(b"".join(message(n) for n in range(20)))
    first_turn = len(ids(relay))
    stream.hold("memory budget")
    turns(clock)
    assert len(ids(relay)) == first_turn
    assert transport.producerState == "paused"
    stream.release("memory budget")
    turns(clock)
    assert ids(relay) == [f"m{n}" for n in range(20)]
    assert transport.producerState == "producing" and stream.held == frozenset()
