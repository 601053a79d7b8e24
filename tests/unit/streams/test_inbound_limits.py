"""Per-connection and per-domain limits on inbound streams, and reading held while a limit or the far side says so."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundFactory

from .sides import make_side
from .test_inbound_bytes import HEADER, written
from .test_unread_output import dialback_stream


def connect_from(factory, host, port):
    stream = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    stream.makeConnection(transport)
    return stream, transport


def test_connections_per_address_over_the_limit_are_refused():
    """The third connection from one address is refused with conflict (RFC 6120 4.9.3.3); another address still connects."""
    clock = MemoryReactorClock()
    factory = InboundFactory(make_side("red", clock, limits=Limits(connections_per_address=2)))
    first = connect_from(factory, "127.0.1.1", 40001)
    second = connect_from(factory, "127.0.1.1", 40002)
    third, third_transport = connect_from(factory, "127.0.1.1", 40003)
    other = connect_from(factory, "127.0.1.2", 40004)
    assert "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(third_transport)
    assert third_transport.disconnecting
    assert not first[1].disconnecting and not second[1].disconnecting and not other[1].disconnecting


def test_rate_limit_stops_reading_then_resumes():
    """Beyond the burst, the stream stops reading for as long as the excess takes at the configured rate."""
    clock = MemoryReactorClock()
    side = make_side("red", clock, limits=Limits(rate_bytes_per_second=1000, rate_burst_bytes=1000,
                                                 preauth_bytes=100000))
    factory = InboundFactory(side)
    stream, transport = connect_from(factory, "127.0.1.1", 40001)
    stream.dataReceived(HEADER)
    stream.dataReceived(b" " * (1000 - len(HEADER) + 500))
    assert transport.producerState == "paused"
    assert stream.held == {"rate"}
    clock.advance(0.6)
    assert transport.producerState == "producing"
    assert stream.held == frozenset()


def test_peer_over_its_rate_past_the_grace_is_disconnected():
    """A peer that stays over its byte budget for longer than rate_grace is closed with policy-violation."""
    clock = MemoryReactorClock()
    side = make_side("red", clock, limits=Limits(rate_bytes_per_second=100, rate_burst_bytes=100, rate_grace=5.0,
                                                 preauth_bytes=100000, auth_timeout=600.0))
    stream, transport = connect_from(InboundFactory(side), "127.0.1.1", 40001)
    stream.dataReceived(HEADER)
    for _ in range(10):
        clock.advance(1.0)
        stream.dataReceived(b" " * 400)
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert transport.disconnecting


def test_holds_are_counted_by_reason():
    """Reading resumes only when every reason to hold it (rate, congestion downstream) has been released."""
    clock = MemoryReactorClock()
    stream, transport = connect_from(InboundFactory(make_side("red", clock)), "127.0.1.1", 40001)
    stream.hold("congested red.example->blue.example")
    stream.hold("rate")
    stream.release("rate")
    assert transport.producerState == "paused"
    stream.release("congested red.example->blue.example")
    assert transport.producerState == "producing"
    stream.release("never held")
    assert transport.producerState == "producing"


def test_after_authentication_more_than_preauth_bytes_may_arrive():
    """preauth_bytes bounds only what comes before a domain is authenticated: after dialback confirms one, it no longer applies."""
    stream, transport = dialback_stream(Limits(preauth_bytes=2000))
    stream.side.relay.dialback_answers[("red.example", "blue.example")] = True
    stream.dataReceived(b"<db:result from='red.example' to='blue.example'>" + b"k" * 64 + b"</db:result>")
    assert "type='valid'" in written(transport)
    stream.dataReceived(b" " * 3000)
    assert not transport.disconnecting and stream.byte_count.bytes_in > 3000
