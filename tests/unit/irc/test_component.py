"""The XEP-0114 component stream of the IRC gateway, bytes in and bytes out over a StringTransport."""

import hashlib
import random

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.words.xish import domish

from guard.core.vocabulary import SERVER_NS
from guard.edges.irc.component import (ComponentDialler, ComponentStream, ComponentStreamFactory, NotSent,
                                       component_tls_options, handshake_digest)
from guard.edges.link.dialler import Backoff
from guard.edges.xmlstream import ParserLimits

import pytest

COMPONENT = "irc.red.example"
SECRET = "s3cret"
PROSODY_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                  b"xmlns='jabber:component:accept' id='abc123' from='irc.red.example'>")
DIGEST = hashlib.sha1(b"abc123" + SECRET.encode()).hexdigest()


class Owner:
    """Writes down every event the stream reports, in order."""

    def __init__(self):
        self.events = []

    def component_opened(self, stream):
        self.events.append(("opened",))

    def stanza_arrived(self, stream, element, size):
        self.events.append(("stanza", element.toXml(), size))

    def component_closed(self, stream, condition):
        self.events.append(("closed", condition))


def connected(limits=ParserLimits()):
    owner, clock = Owner(), MemoryReactorClock()
    stream = ComponentStream(owner, COMPONENT, SECRET, clock, limits)
    transport = StringTransport()
    stream.makeConnection(transport)
    return stream, transport, owner, clock


def opened(limits=ParserLimits()):
    stream, transport, owner, clock = connected(limits)
    stream.dataReceived(PROSODY_HEADER)
    stream.dataReceived(b"<handshake/>")
    transport.clear()
    return stream, transport, owner, clock


def stanza(xml):
    element = domish.Element((SERVER_NS, "message"))
    element["from"] = "bot@irc.red.example"
    element["to"] = "ops@conference.red.example"
    element["type"] = "groupchat"
    element.addElement("body", content=xml)
    return element


def test_the_handshake_is_the_hex_sha1_of_the_stream_id_and_the_secret():
    """XEP-0114's known answer: SHA-1 over the id then the secret, lowercase hex."""
    assert handshake_digest("3BF96D32", "secret") == hashlib.sha1(b"3BF96D32secret").hexdigest()
    assert handshake_digest("abc123", SECRET) == DIGEST


def test_the_gateway_opens_with_a_component_header_then_answers_prosodys_id_with_the_handshake():
    """Header out on connect; Prosody's header with an id brings the handshake; the empty reply opens the stream."""
    stream, transport, owner, _ = connected()
    assert transport.value() == (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' to=\"irc.red.example\">")
    transport.clear()
    stream.dataReceived(PROSODY_HEADER)
    assert transport.value() == f"<handshake>{DIGEST}</handshake>".encode()
    assert owner.events == [] and not stream.is_open
    stream.dataReceived(b"<handshake/>")
    assert owner.events == [("opened",)] and stream.is_open and stream.reached_open


@pytest.mark.parametrize("header, condition", [
    (PROSODY_HEADER.replace(b"jabber:component:accept", b"jabber:client"), b"invalid-namespace"),
    (PROSODY_HEADER.replace(b" id='abc123'", b""), b"invalid-xml"),
    (PROSODY_HEADER.replace(b"from='irc.red.example'", b"from='other.example'"), b"host-unknown"),
])
def test_a_header_that_is_not_prosodys_component_header_closes_the_stream(header, condition):
    """Another namespace, no stream id or another component name: a stream error and no handshake is written."""
    stream, transport, owner, _ = connected()
    transport.clear()
    stream.dataReceived(header)
    assert transport.value() == (b"<stream:error><" + condition +
                                 b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
    assert transport.disconnecting and owner.events == [] and stream.closing


def test_anything_but_an_empty_handshake_before_opening_closes_the_stream():
    """A stanza before the handshake reply, or a handshake reply with content, is refused: fail closed."""
    for early in (b"<message from='a@red.example' to='irc.red.example'/>", b"<handshake>x</handshake>"):
        stream, transport, owner, _ = connected()
        stream.dataReceived(PROSODY_HEADER)
        transport.clear()
        stream.dataReceived(early)
        assert transport.value().startswith(b"<stream:error>") and transport.disconnecting
        assert owner.events == [] and not stream.is_open


@pytest.mark.parametrize("condition", ["not-authorized", "conflict"])
def test_a_stream_error_from_prosody_is_read_and_told_to_the_owner(condition):
    """not-authorized (a wrong secret) and conflict (another gateway attached) end the stream; the owner hears which."""
    stream, transport, owner, _ = connected()
    stream.dataReceived(PROSODY_HEADER)
    transport.clear()
    stream.dataReceived(f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                        "</stream:error></stream:stream>".encode())
    assert transport.value() == b"</stream:stream>" and transport.disconnecting
    stream.connectionLost(Failure(ConnectionError("gone")))
    assert owner.events == [("closed", condition)] and not stream.reached_open


def test_a_stream_that_does_not_open_in_time_is_closed():
    """Prosody that never answers the handshake: connection-timeout after the open timeout, on the injected clock."""
    stream, transport, owner, clock = connected()
    stream.dataReceived(PROSODY_HEADER)
    transport.clear()
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert b"<connection-timeout " in transport.value() and transport.disconnecting


def test_stanzas_from_prosody_come_out_in_jabber_server_with_their_size():
    """A groupchat message addressed to a JID of the component domain reaches the owner re-namespaced, with its wire size."""
    stream, transport, owner, _ = opened()
    wire = (b"<message from='ops@conference.red.example/alice' to='bot@irc.red.example/x' type='groupchat'>"
            b"<body>hello</body></message>")
    stream.dataReceived(wire)
    assert owner.events[-1] == ("stanza", "<message xmlns='jabber:server' from='ops@conference.red.example/alice' "
                                "to='bot@irc.red.example/x' type='groupchat'><body>hello</body></message>", len(wire))
    assert transport.value() == b"" and stream.stanzas_in == 1


@pytest.mark.parametrize("wire", [
    b"<message from='ops@conference.red.example/alice' to='someone@red.example'><body>x</body></message>",
    b"<message from='ops@conference.red.example/alice'><body>x</body></message>",
    b"<message from='a@@bad' to='bot@irc.red.example'><body>x</body></message>",
])
def test_a_stanza_not_addressed_to_the_component_or_without_a_valid_sender_ends_the_stream(wire):
    """Misaddressed stanzas are not taken: improper-addressing, and the owner hears nothing of them."""
    stream, transport, owner, _ = opened()
    stream.dataReceived(wire)
    assert b"<improper-addressing " in transport.value() and transport.disconnecting
    assert [event for event in owner.events if event[0] == "stanza"] == []


def test_an_oversized_stanza_from_prosody_ends_the_stream():
    """The hardened parser's stanza_bytes bounds what Prosody may send: policy-violation, nothing delivered."""
    stream, transport, owner, _ = opened(ParserLimits(stanza_bytes=200))
    stream.dataReceived(b"<message from='a@red.example' to='irc.red.example'><body>" + b"x" * 300 + b"</body></message>")
    assert transport.value().startswith(b"<stream:error>") and transport.disconnecting
    assert [event for event in owner.events if event[0] == "stanza"] == []


def test_an_element_that_is_not_a_stanza_ends_the_open_stream():
    """A nonza in another namespace on the open stream is refused with unsupported-stanza-type."""
    stream, transport, owner, _ = opened()
    stream.dataReceived(b"<r xmlns='urn:xmpp:sm:3'/>")
    assert b"<unsupported-stanza-type " in transport.value() and transport.disconnecting


def test_stanzas_go_out_without_an_xmlns_so_they_take_the_component_namespace():
    """What the gateway sends is serialised with jabber:server as default: no xmlns, counted in bytes and stanzas."""
    stream, transport, _, _ = opened()
    written = stream.send(stanza("hi & bye"))
    assert transport.value() == (b'<message from="bot@irc.red.example" to="ops@conference.red.example" '
                                 b'type="groupchat"><body>hi &amp; bye</body></message>')
    assert written == len(transport.value()) and stream.stanzas_out == 1
    assert stream.byte_count.bytes_out >= written


def test_a_stanza_from_outside_the_component_domain_or_too_big_or_before_opening_is_not_written():
    """Sender outside irc.red.example, over stanza_bytes, or a stream not yet open: NotSent, nothing written."""
    stream, transport, _, _ = opened(ParserLimits(stanza_bytes=200))
    foreign = stanza("x")
    foreign["from"] = "bot@red.example"
    with pytest.raises(NotSent):
        stream.send(foreign)
    with pytest.raises(NotSent):
        stream.send(stanza("x" * 300))
    assert transport.value() == b""
    early, early_transport, _, _ = connected()
    early_transport.clear()
    with pytest.raises(NotSent):
        early.send(stanza("x"))
    assert early_transport.value() == b""


def test_closing_the_open_stream_writes_a_stream_error_and_the_end():
    """The gateway stopping: system-shutdown and </stream:stream>."""
    stream, transport, _, _ = opened()
    stream.close()
    assert transport.value() == (b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                 b"</stream:error></stream:stream>")
    assert transport.disconnecting and not stream.is_open


def test_bytes_are_counted_in_and_out_by_the_filter_chain():
    """ByteCount sees every byte of the connection both ways."""
    stream, transport, _, _ = connected()
    sent = len(transport.value())
    stream.dataReceived(PROSODY_HEADER)
    assert stream.byte_count.describe() == {"bytes_in": len(PROSODY_HEADER),
                                            "bytes_out": sent + len(f"<handshake>{DIGEST}</handshake>")}


class FakeEndpoint:
    """Connects whenever asked, giving a fresh stream over a StringTransport (or fails when told to)."""

    def __init__(self):
        self.attempts = []
        self.fail = False

    def connect(self, factory):
        self.attempts.append(factory)
        if self.fail:
            return defer.fail(ConnectionRefusedError())
        stream = factory.buildProtocol(None)
        stream.makeConnection(StringTransport())
        return defer.succeed(stream)


def test_the_dialler_reconnects_after_a_refusal_with_growing_jittered_delays():
    """not-authorized twice: each loss waits longer (backoff with jitter on the injected clock) before the next attempt."""
    clock, owner, endpoint = MemoryReactorClock(), Owner(), FakeEndpoint()
    factory = ComponentStreamFactory(owner, COMPONENT, SECRET, clock)
    dialler = ComponentDialler(endpoint, factory, clock, random.Random(4).random, Backoff(1.0, 30.0, 2.0, 0.5))
    dialler.start()
    delays = []
    for _ in range(3):
        stream = dialler.stream
        stream.dataReceived(PROSODY_HEADER)
        stream.dataReceived(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
        stream.connectionLost(Failure(ConnectionError("closed")))
        delays.append(dialler.last_delay)
        attempts = len(endpoint.attempts)
        clock.advance(dialler.last_delay + 0.01)
        assert len(endpoint.attempts) == attempts + 1
    assert 0.5 <= delays[0] <= 1.5 and 1.0 <= delays[1] <= 3.0 and 2.0 <= delays[2] <= 6.0
    assert delays[0] < delays[2]
    assert owner.events == [("closed", "not-authorized")] * 3


def test_an_opened_stream_resets_the_backoff():
    """After a stream that reached open is lost, the next delay is the initial one again."""
    clock, owner, endpoint = MemoryReactorClock(), Owner(), FakeEndpoint()
    factory = ComponentStreamFactory(owner, COMPONENT, SECRET, clock)
    dialler = ComponentDialler(endpoint, factory, clock, lambda: 0.5, Backoff(1.0, 30.0, 2.0, 0.5))
    dialler.start()
    for _ in range(3):
        dialler.stream.connectionLost(Failure(ConnectionError("refused")))
        clock.advance(dialler.last_delay)
    assert dialler.last_delay == 4.0
    dialler.stream.dataReceived(PROSODY_HEADER + b"<handshake/>")
    dialler.stream.connectionLost(Failure(ConnectionError("prosody restarted")))
    assert dialler.last_delay == 1.0


class ProsodyOverTls(Protocol):
    """Prosody's side of a TLS component connection: keeps what arrives, answers the header and the handshake."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        if b"<stream:stream" in data:
            self.transport.write(PROSODY_HEADER)
        if b"<handshake>" in data:
            self.transport.write(b"<handshake/>")


def over_tls(authority):
    """A component stream to a TLS server holding red.example's certificate, verified against ``authority``."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim

    from guard.app.management import tls_options

    from ..streams.sides import pki

    lab = pki()
    clock, owner, prosody = MemoryReactorClock(), Owner(), ProsodyOverTls()
    server = TLSMemoryBIOFactory(tls_options(str(lab.red_server.certificate), str(lab.red_server.key)), False,
                                 Factory.forProtocol(lambda: prosody), clock=clock)
    client = TLSMemoryBIOFactory(component_tls_options(str(getattr(lab, authority)), "red.example"), True,
                                 ComponentStreamFactory(owner, COMPONENT, SECRET, clock), clock=clock)
    address = IPv4Address("TCP", "127.0.0.1", 5347)
    _, _, pump = iosim.connectedServerAndClient(lambda: server.buildProtocol(address),
                                                lambda: client.buildProtocol(address), greet=True)
    for _ in range(50):  # bounded: a handshake and two exchanges take a handful of rounds
        clock.advance(0)
        pump.pump()
    return owner, prosody


def test_over_tls_prosodys_certificate_is_verified_before_anything_is_sent():
    """TLS to Prosody: with the right CA the stream opens; with another CA the handshake fails and not a byte of the header leaves."""
    owner, prosody = over_tls("red_ca")
    assert owner.events == [("opened",)] and f"<handshake>{DIGEST}</handshake>".encode() in prosody.received
    refused_owner, refused_prosody = over_tls("blue_ca")
    assert refused_prosody.received == b"" and ("opened",) not in refused_owner.events


def test_prosody_that_stops_reading_is_cut_off_past_the_unread_bound():
    """Prosody stops reading: writes go on up to unread_output_limit bytes, then the connection is aborted (bounded in bytes)."""
    stream, transport, owner, _ = opened()
    stream.unread_output_limit = 1000
    transport.producer.pauseProducing()
    while not transport.disconnected and transport.value().count(b"<message") < 100:
        stream.send(stanza("x" * 100))
    assert transport.disconnected and stream.close_condition == "cut-off"
    assert len(transport.value()) <= 1000 + 300
