"""
The inbound stream before TLS, bytes in and bytes out: what a server on the
red side sees when it connects to the guard.
"""

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundStream

from .sides import make_side

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='red.example' to='blue.example' version='1.0'>"
)


class TLSRecordingTransport(StringTransport):
    """A StringTransport that records startTLS instead of doing it (so no peer certificate is ever seen)."""

    tls_options = None

    def startTLS(self, options):
        self.tls_options = options

    def getHandle(self):
        return None


def connect(authentication="certificate", limits=None):
    clock = MemoryReactorClock()
    side = make_side("red", clock, authentication=authentication, limits=limits)
    stream = InboundStream(side)
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    return stream, transport, clock, side


def written(transport):
    value = transport.value().decode()
    transport.clear()
    return value


def test_header_is_answered_with_starttls_required():
    """A good header gets our header (from the fronted domain, with an id) and STARTTLS as a required feature."""
    stream, transport, clock, side = connect()
    stream.dataReceived(HEADER)
    out = written(transport)
    assert out.startswith("<?xml version='1.0'?><stream:stream xmlns='jabber:server'")
    assert "from='blue.example' to='red.example'" in out
    assert f"id='{stream.stream_id}'" in out
    assert out.endswith(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        "</stream:features>"
    )
    assert not transport.disconnecting


def test_starttls_proceeds_and_starts_tls_with_the_fronted_identity():
    """<starttls/> is answered with <proceed/> and TLS starts with the certificate for the domain in 'to'."""
    stream, transport, clock, side = connect()
    stream.dataReceived(HEADER)
    written(transport)
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert written(transport) == "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert transport.tls_options is not None


@pytest.mark.parametrize("header, condition", [
    (HEADER.replace(b"to='blue.example'", b"to='red.example'"), "host-unknown"),
    (HEADER.replace(b"to='blue.example'", b"to='green.example'"), "host-unknown"),
    (HEADER.replace(b"to='blue.example' ", b""), "host-unknown"),
    (HEADER.replace(b"from='red.example'", b"from='blue.example'"), "invalid-from"),
    (HEADER.replace(b"from='red.example'", b"from='red.example.evil.example'"), "invalid-from"),
    (HEADER.replace(b" version='1.0'>", b" version='0.9'>"), "unsupported-version"),
    (HEADER.replace(b" version='1.0'>", b">"), "unsupported-version"),
    (HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"), "invalid-namespace"),
    (HEADER.replace(b"http://etherx.jabber.org/streams", b"urn:example:not-streams"), "invalid-namespace"),
])
def test_bad_headers_end_the_stream_with_their_error(header, condition):
    """Each header fault gets a header of ours, then the RFC 6120 stream error, and the connection closes."""
    stream, transport, clock, side = connect()
    stream.dataReceived(header)
    out = written(transport)
    assert out.startswith("<?xml version='1.0'?><stream:stream")
    assert f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out
    assert out.endswith("</stream:error></stream:stream>")
    assert transport.disconnecting
    assert side.relay.events == []


@pytest.mark.parametrize("element, condition", [
    (b"<message from='romeo@red.example' to='juliet@blue.example'><body>early</body></message>", "not-authorized"),
    (b"<db:result from='red.example' to='blue.example'>abcdef</db:result>", "policy-violation"),
    (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>", "policy-violation"),
])
def test_nothing_but_starttls_is_accepted_in_the_clear(element, condition):
    """Stanzas, dialback and SASL before TLS close the stream and reach nobody."""
    stream, transport, clock, side = connect(authentication="dialback" if b"db:" in element else "certificate")
    stream.dataReceived(HEADER)
    written(transport)
    stream.dataReceived(element)
    out = written(transport)
    assert out.startswith(f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
    assert transport.disconnecting
    assert side.relay.events == []


def test_hostile_xml_gets_restricted_xml():
    """A DOCTYPE (the start of billion laughs) is refused with restricted-xml before anything is expanded."""
    stream, transport, clock, side = connect()
    stream.dataReceived(b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]>" + HEADER[21:])
    out = written(transport)
    assert "<restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out
    assert transport.disconnecting


def test_preauth_byte_budget_is_enforced():
    """More than preauth_bytes before authentication ends the stream with policy-violation."""
    stream, transport, clock, side = connect(limits=Limits(preauth_bytes=400))
    stream.dataReceived(HEADER)
    written(transport)
    stream.dataReceived(b" " * (400 - len(HEADER)))
    assert not transport.disconnecting
    stream.dataReceived(b" ")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert transport.disconnecting


def test_preauth_element_budget_is_enforced():
    """More than preauth_elements elements before authentication ends the stream, counting across the TLS restart."""
    stream, transport, clock, side = connect(limits=Limits(preauth_elements=1))
    stream.dataReceived(HEADER)
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(HEADER)
    assert not transport.disconnecting
    written(transport)
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)


def test_external_is_not_offered_without_a_certificate():
    """A peer that presented no certificate is offered no mechanism, and EXTERNAL fails with not-authorized."""
    stream, transport, clock, side = connect()
    stream.dataReceived(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(HEADER)
    assert written(transport).endswith("<stream:features></stream:features>")
    stream.dataReceived(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert written(transport) == "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
    stream.dataReceived(b"<message from='romeo@red.example' to='juliet@blue.example'/>")
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert side.relay.events == []


def test_slow_drip_is_cut_off_at_the_authentication_deadline():
    """A peer that trickles bytes without authenticating is closed when auth_timeout passes, whatever it sends."""
    stream, transport, clock, side = connect(limits=Limits(auth_timeout=30.0))
    for second in range(29):
        stream.dataReceived(HEADER[second:second + 1])
        clock.advance(1)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert transport.disconnecting


def test_tls_deadline_closes_a_stalled_handshake():
    """After <proceed/>, a peer that never opens the secure stream is closed at tls_timeout; the old stream is gone,
    so the error comes after a new header of ours."""
    stream, transport, clock, side = connect(limits=Limits(tls_timeout=5.0, auth_timeout=60.0))
    stream.dataReceived(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    written(transport)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    out = written(transport)
    assert "connection-timeout" in out
    assert out.startswith("<?xml version='1.0'?><stream:stream") and f"id='{stream.stream_id}'" in out
    assert out.count("<stream:stream") == 1
    assert transport.disconnecting


def test_peer_closing_its_stream_is_answered_with_ours():
    """</stream:stream> from the peer is answered with ours and the connection closes."""
    stream, transport, clock, side = connect()
    stream.dataReceived(HEADER)
    written(transport)
    stream.dataReceived(b"</stream:stream>")
    assert written(transport) == "</stream:stream>"
    assert transport.disconnecting


def test_shutdown_sends_system_shutdown():
    """Stopping the guard closes open streams with system-shutdown."""
    stream, transport, clock, side = connect()
    stream.dataReceived(HEADER)
    written(transport)
    stream.close_for_shutdown()
    assert written(transport) == (
        "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>the guard is stopping</text>"
        "</stream:error></stream:stream>"
    )


def test_shutdown_before_the_peer_header_sends_our_header_first():
    """A stream that has not answered a header yet (its state awaits one) gets a header of ours before system-shutdown."""
    stream, transport, clock, side = connect()
    stream.close_for_shutdown()
    out = written(transport)
    assert out.startswith("<?xml version='1.0'?><stream:stream") and "from='blue.example'" in out
    assert out.endswith("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>the guard is stopping</text>"
                        "</stream:error></stream:stream>")
    assert transport.disconnecting
