"""
The outbound stream before TLS, bytes in and bytes out: what the guard does
when a far server answers badly.
"""

from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.edges.limits import Limits
from guard.edges.s2s.outbound import OutboundStream
from guard.edges.tlsidentity import load_pem_chain
from guard.lab.inmemory import PresentedChain

from .sides import make_side, pki
from .test_handshakes import RecordingOwner

FAR_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='blue.example' to='red.example' id='s1' version='1.0'>"
)


class TLSRecordingTransport(StringTransport):
    tls_options = None

    def startTLS(self, options):
        self.tls_options = options


class ProvenTLSTransport(TLSRecordingTransport):
    """Records startTLS instead of doing it, and presents a certificate (by default the blue server's own) as its
    handshake would."""

    def __init__(self, presents=None):
        super().__init__()
        self.presents = presents

    def getHandle(self):
        return PresentedChain(load_pem_chain(str((self.presents or pki().blue_server).certificate)))


def connect(limits=None):
    clock = MemoryReactorClock()
    side = make_side("blue", clock, limits=limits, presents_for=("red.example", "conference.red.example"))
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    return stream, transport, clock, owner


def written(transport):
    value = transport.value().decode()
    transport.clear()
    return value


def test_opens_with_a_header_for_the_pair():
    """The guard opens the stream from the source domain to the target domain, with the dialback namespace."""
    stream, transport, clock, owner = connect()
    assert written(transport) == (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        "from='red.example' to='blue.example' version='1.0'>"
    )


def test_starttls_is_requested_and_started_with_verification_for_the_target():
    """Offered STARTTLS, the guard asks for it and starts TLS on <proceed/>, then reopens the stream."""
    stream, transport, clock, owner = connect()
    written(transport)
    stream.dataReceived(FAR_HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                     b"</stream:features>")
    assert written(transport) == "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert transport.tls_options is not None
    assert written(transport).endswith("from='red.example' to='blue.example' version='1.0'>")


def test_a_server_without_tls_is_refused():
    """A far server that does not offer STARTTLS is never sent a stanza: the stream fails and waiting stanzas bounce."""
    stream, transport, clock, owner = connect()
    written(transport)
    stream.dataReceived(FAR_HEADER + b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                                     b"</stream:features>")
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert owner.events == [("failed", "remote-server-not-found")]
    assert transport.disconnecting


def test_far_stream_error_fails_the_stream():
    """A stream error from the far server ends the attempt; the owner hears it once."""
    stream, transport, clock, owner = connect()
    stream.dataReceived(FAR_HEADER + b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                     b"</stream:error>")
    assert owner.events == [("failed", "remote-server-not-found")]
    stream.connectionLost(_Reason())
    assert owner.events == [("failed", "remote-server-not-found")]


def test_header_without_id_is_refused():
    """A far header without a stream id (needed for dialback) is refused with invalid-xml."""
    stream, transport, clock, owner = connect()
    written(transport)
    stream.dataReceived(FAR_HEADER.replace(b" id='s1'", b""))
    assert "<invalid-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert owner.events == [("failed", "remote-server-not-found")]


def test_silent_server_times_out_and_reports_remote_server_timeout():
    """A far server that never finishes negotiating is closed at auth_timeout; waiting stanzas bounce with remote-server-timeout."""
    stream, transport, clock, owner = connect(limits=Limits(auth_timeout=10.0))
    stream.dataReceived(FAR_HEADER)
    clock.advance(10.5)
    assert owner.events == [("failed", "remote-server-timeout")]
    assert transport.disconnecting


def test_unexpected_stanza_on_an_outbound_stream_is_refused():
    """Outbound streams carry nothing inbound: a stanza from the far server ends the stream."""
    stream, transport, clock, owner = connect()
    written(transport)
    stream.dataReceived(FAR_HEADER + b"<message from='juliet@blue.example' to='romeo@red.example'/>")
    assert "<unsupported-stanza-type xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert owner.events == [("failed", "remote-server-not-found")]


class _Reason:
    def getErrorMessage(self):
        return "connection lost"


def stanza(xml):
    from guard.edges.xmlstream import StreamParser

    found = []
    StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None).feed(
        FAR_HEADER + xml.encode()
    )
    return found[0]


def test_send_refuses_a_stanza_larger_than_the_far_sides_stanza_bytes():
    """A stanza whose serialisation exceeds the far side's stanza_bytes raises OversizedStanza and writes nothing."""
    import pytest

    from guard.edges.xmlstream import OversizedStanza

    stream, transport, clock, owner = connect(limits=Limits(stanza_bytes=200))
    transport.clear()
    small = stanza("<message from='romeo@red.example' to='juliet@blue.example'><body>hi</body></message>")
    large = stanza("<message from='romeo@red.example' to='juliet@blue.example'><body>"
                   + "x" * 200 + "</body></message>")
    with pytest.raises(OversizedStanza):
        stream.send(large)
    assert transport.value() == b""
    stream.send(small)
    assert transport.value() == (b'<message from="romeo@red.example" to="juliet@blue.example">'
                                 b'<body>hi</body></message>')


STARTTLS_FEATURES = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
DIALBACK_FEATURES = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"


def dialback_stream():
    """A stream on a dialback side, with the far server's certificate presented when TLS starts, not yet ready."""
    clock = MemoryReactorClock()
    side = make_side("blue", clock, authentication="dialback", presents_for=("red.example",))
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = ProvenTLSTransport()
    stream.makeConnection(transport)
    stream.dataReceived(FAR_HEADER + STARTTLS_FEATURES)
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    return stream, transport, owner


def test_a_full_buffer_before_ready_is_not_congestion_and_after_ready_is_reported_once():
    """TLS pauses during its handshake (ignored); once ready, a pause is one congested and a resume one decongested."""
    stream, transport, owner = dialback_stream()
    transport.producer.pauseProducing()
    transport.producer.resumeProducing()
    stream.dataReceived(FAR_HEADER + DIALBACK_FEATURES)
    stream.dataReceived(b"<db:result from='blue.example' to='red.example' type='valid'/>")
    transport.producer.pauseProducing()
    transport.producer.pauseProducing()
    transport.producer.resumeProducing()
    transport.producer.resumeProducing()
    assert owner.events == [("ready",), ("congested",), ("decongested",)]


def test_a_connection_lost_while_congested_decongests_then_reports_the_loss():
    """The transport stops its producer before the loss: the owner hears decongested, then lost."""
    stream, transport, owner = dialback_stream()
    stream.dataReceived(FAR_HEADER + DIALBACK_FEATURES)
    stream.dataReceived(b"<db:result from='blue.example' to='red.example' type='valid'/>")
    transport.producer.pauseProducing()
    transport.producer.stopProducing()
    stream.connectionLost(_Reason())
    assert owner.events == [("ready",), ("congested",), ("decongested",), ("lost",)]


def test_a_certificate_that_does_not_name_the_receiver_fails_the_secured_stream():
    """The secured stream's first header is refused when the far server's certificate has no subjectAltName for it."""
    clock = MemoryReactorClock()
    side = make_side("blue", clock, authentication="dialback", presents_for=("red.example",))
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = ProvenTLSTransport(presents=pki().blue_common_name_only)
    stream.makeConnection(transport)
    stream.dataReceived(FAR_HEADER + STARTTLS_FEATURES)
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    transport.clear()
    stream.dataReceived(FAR_HEADER + DIALBACK_FEATURES)
    assert "<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in written(transport)
    assert owner.events == [("failed", "remote-server-not-found")]
