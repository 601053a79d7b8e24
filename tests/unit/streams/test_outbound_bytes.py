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
    clock.advance(0)
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


class CountingTransport(TLSRecordingTransport):
    """Records each write separately (a TLS transport makes one record of each)."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


def ready_stream_counting_writes():
    """A ready outbound stream (SASL EXTERNAL) whose transport counts writes, with the handshake's writes forgotten."""
    clock = MemoryReactorClock()
    side = make_side("blue", clock, presents_for=("red.example", "conference.red.example"))
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = CountingTransport()
    transport.getHandle = lambda: PresentedChain(load_pem_chain(str(pki().blue_server.certificate)))
    stream.makeConnection(transport)
    for data in (FAR_HEADER + STARTTLS_FEATURES, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                 FAR_HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                              b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
                 b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", FAR_HEADER + b"<stream:features/>"):
        stream.dataReceived(data)
    assert stream._lifecycle_state() == "ready"
    transport.writes.clear()
    transport.clear()
    return stream, transport, clock


def chat(n, body="hi"):
    return stanza(f"<message from='romeo@red.example' to='juliet@blue.example' id='m{n}'><body>{body}</body></message>")


def test_stanzas_sent_in_one_turn_leave_in_one_write_at_the_end_of_the_turn():
    """Three stanzas sent in one turn of the event loop are written once, together and in order, when the turn ends."""
    stream, transport, clock = ready_stream_counting_writes()
    for n in range(3):
        stream.send(chat(n))
    assert transport.writes == []
    clock.advance(0)
    assert transport.writes == [b"".join(
        b'<message from="romeo@red.example" to="juliet@blue.example" id="m%d"><body>hi</body></message>' % n
        for n in range(3))]
    assert stream.stanzas_out == 3


def test_a_batch_is_written_as_soon_as_batch_bytes_wait():
    """What waits for the end of the turn is bounded in bytes: at BATCH_BYTES it is written at once."""
    from guard.edges.s2s.outbound import BATCH_BYTES

    stream, transport, clock = ready_stream_counting_writes()
    body = "x" * 1000
    sent = 0
    while not transport.writes:
        stream.send(chat(sent, body))
        sent += 1
    assert len(transport.writes) == 1 and BATCH_BYTES <= len(transport.writes[0]) < BATCH_BYTES + 1100
    assert transport.writes[0].count(b"<message ") == sent
    clock.advance(0)
    assert len(transport.writes) == 1  # nothing else was waiting


def test_what_the_stream_writes_after_stanzas_of_the_same_turn_follows_them():
    """Closing the stream in the turn stanzas were sent writes them first, then the end of the stream."""
    stream, transport, clock = ready_stream_counting_writes()
    stream.send(chat(1))
    stream.close_idle()
    assert b"".join(transport.writes) == (
        b'<message from="romeo@red.example" to="juliet@blue.example" id="m1"><body>hi</body></message>'
        b"</stream:stream>")
