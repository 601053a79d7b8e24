"""The link stream as bytes in and bytes out: header, resume, stanzas, acknowledgements, faults."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from guard.edges.link.link import Link, LinkSettings
from guard.edges.link.stream import LinkStream

from .pairs import AcceptingCheck, RecordingOwner, RefusingCheck, message

PEER_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='half-b' to='half-a' version='1.0'>"
)
OWN_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from=\"half-a\" to=\"half-b\" version='1.0'>"
)


def opened(check=None, settings=LinkSettings()):
    clock = Clock()
    owner = RecordingOwner()
    link = Link(owner, "half-a", "half-b", clock, settings, session="sessiona")
    link.start()
    stream = LinkStream(link, check or AcceptingCheck(), clock)
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.handshakeCompleted()
    return clock, owner, link, stream, transport


def test_a_proved_peer_gets_header_and_resume_at_once():
    """Zero handshake: after the certificate proves the peer, the header and <resume/> go out unasked."""
    _, _, _, _, transport = opened()
    assert transport.value() == OWN_HEADER + (
        b"<resume xmlns='urn:xmpp-guard:link:0' session=\"sessiona\" next='1' h='0'/>"
    )


def test_an_unproved_peer_is_disconnected_without_a_byte():
    """A certificate that is not pinned ends the connection before anything is written."""
    _, _, _, _, transport = opened(RefusingCheck())
    assert transport.value() == b""
    assert transport.disconnecting


def test_stanzas_waiting_before_the_link_is_up_follow_the_resume():
    """A stanza handed over while down is written right after <resume/> when the link comes up."""
    clock = Clock()
    owner = RecordingOwner()
    link = Link(owner, "half-a", "half-b", clock, session="sessiona")
    link.start()
    link.send(message(1))
    stream = LinkStream(link, AcceptingCheck(), clock)
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.handshakeCompleted()
    assert transport.value().endswith(
        b"<resume xmlns='urn:xmpp-guard:link:0' session=\"sessiona\" next='1' h='0'/>"
        b'<message from="romeo@red.example" to="juliet@blue.example" id="1"><body>message 1</body></message>'
    )


def test_a_peer_stanza_reaches_the_owner_and_is_counted_on_request():
    """The peer's stanza is handed to the owner once; <r/> is answered with <a h='1'/>."""
    _, owner, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(
        PEER_HEADER
        + b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"
        + b"<message from='juliet@blue.example' to='romeo@red.example' id='m1'><body>hi</body></message>"
        + b"<r xmlns='urn:xmpp:sm:3'/>"
    )
    assert owner.events == [("received", "m1")]
    assert transport.value() == b"<a xmlns='urn:xmpp:sm:3' h='1'/>"


def test_an_acknowledgement_settles_the_stanzas_it_counts():
    """<a h='1'/> from the peer tells the owner the first stanza was delivered."""
    _, owner, link, stream, _ = opened()
    link.send(message(1))
    link.send(message(2))
    stream.dataReceived(
        PEER_HEADER + b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"
        + b"<a xmlns='urn:xmpp:sm:3' h='1'/>"
    )
    assert owner.events == [("delivered", "1")]
    assert link.describe()["unacknowledged"] == 1


def test_an_acknowledgement_of_unsent_stanzas_closes_the_link():
    """A peer acknowledging more than was sent is faulty: stream error, connection closed."""
    _, _, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(
        PEER_HEADER + b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"
        + b"<a xmlns='urn:xmpp:sm:3' h='5'/>"
    )
    assert b"<undefined-condition" in transport.value()
    assert transport.disconnecting


def test_a_stanza_before_resume_closes_the_link():
    """Without <resume/> the numbering is unknown: the stanza is refused and the link closed."""
    _, owner, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(PEER_HEADER + b"<message from='juliet@blue.example' to='romeo@red.example'/>")
    assert owner.events == []
    assert b"<stream:error>" in transport.value() and transport.disconnecting


def test_a_header_from_another_half_is_refused():
    """A header naming someone else than the peer half ends the stream with invalid-from."""
    _, _, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(PEER_HEADER.replace(b"from='half-b'", b"from='half-x'"))
    assert b"<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in transport.value()


def test_hostile_xml_on_the_link_is_refused_by_the_hardened_parser():
    """A DOCTYPE on the link meets the same parser as S2S streams: restricted-xml."""
    _, owner, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>")
    assert b"<restricted-xml" in transport.value()
    assert owner.events == []


def test_an_unknown_element_is_refused():
    """Only stanzas, <r/>, <a/> and <resume/> may flow: anything else closes the link."""
    _, _, _, stream, transport = opened()
    transport.clear()
    stream.dataReceived(
        PEER_HEADER + b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"
        + b"<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>key</db:result>"
    )
    assert b"<unsupported-stanza-type" in transport.value()


def test_a_silent_peer_is_dropped_when_acknowledgements_stop():
    """Unacknowledged stanzas and no <a/> for ack_timeout seconds: the connection is closed."""
    clock, _, link, _, transport = opened(settings=LinkSettings(ack_interval=1.0, ack_timeout=5.0))
    link.send(message(1))
    clock.pump([1.0] * 7)
    assert b"<connection-timeout" in transport.value()


def test_a_link_that_never_opens_times_out():
    """A connection without a header and resume in open_timeout seconds is dropped."""
    clock, _, _, stream, transport = opened()
    clock.advance(30)
    assert transport.disconnecting


def test_an_idle_link_asks_after_keepalive_seconds_and_drops_a_dead_peer():
    """Nothing to send for keepalive seconds: <r/> goes out; no <a/> within ack_timeout closes the link."""
    clock, _, _, _, transport = opened(settings=LinkSettings(ack_interval=1.0, keepalive=10.0, ack_timeout=5.0))
    transport.clear()
    clock.pump([1.0] * 9)
    assert transport.value() == b""
    clock.pump([1.0])
    assert transport.value().startswith(b"<r xmlns='urn:xmpp:sm:3'/>")
    clock.pump([1.0] * 5)
    assert b"<connection-timeout" in transport.value()


PEER_RESUME = b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"


def test_a_held_link_parses_nothing_until_released_and_then_everything_in_order():
    """Held (our side congested): the transport is paused, bytes already read wait unparsed, no <a/> answers
    <r/>; on release they are parsed in order and acknowledged."""
    _, owner, link, stream, transport = opened()
    stream.dataReceived(PEER_HEADER + PEER_RESUME)
    link.hold()
    assert transport.producerState == "paused"
    transport.clear()
    stream.dataReceived(b"<message from='juliet@blue.example' to='romeo@red.example' id='j1'/>"
                        b"<r xmlns='urn:xmpp:sm:3'/>")
    assert owner.events == [] and transport.value() == b""
    link.release()
    assert transport.producerState == "producing"
    assert owner.events == [("received", "j1")] and transport.value() == b"<a xmlns='urn:xmpp:sm:3' h='1'/>"


def test_a_paused_connection_that_keeps_receiving_is_closed():
    """PAUSED_INPUT_BYTES bounds what waits unparsed: a transport that ignores the pause ends the connection."""
    from guard.edges.link.stream import PAUSED_INPUT_BYTES

    _, owner, link, stream, transport = opened()
    stream.dataReceived(PEER_HEADER + PEER_RESUME)
    link.hold()
    transport.clear()
    chunk = b"<message from='juliet@blue.example' to='romeo@red.example'/>" * 1000
    for _ in range(PAUSED_INPUT_BYTES // len(chunk)):
        stream.dataReceived(chunk)
    assert not transport.disconnecting
    stream.dataReceived(chunk)
    assert b"<resource-constraint" in transport.value() and transport.disconnecting
    assert owner.events == []


def test_a_stanza_our_parser_refuses_is_named_in_the_stream_error():
    """The peer's stanza 2 is too deep for us: the stream error carries <refused stanza='2'/> and 1 is counted."""
    from guard.edges.xmlstream import ParserLimits

    clock = Clock()
    owner = RecordingOwner()
    link = Link(owner, "half-a", "half-b", clock, LinkSettings(), session="sessiona")
    link.start()
    stream = LinkStream(link, AcceptingCheck(), clock, ParserLimits(element_depth=2))
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.handshakeCompleted()
    transport.clear()
    stream.dataReceived(PEER_HEADER + PEER_RESUME
                        + b"<message from='juliet@blue.example' to='romeo@red.example' id='j1'><body/></message>"
                        + b"<message from='juliet@blue.example' to='romeo@red.example' id='j2'><a><b/></a></message>")
    assert owner.events == [("received", "j1")]
    assert transport.value() == (
        b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>elements nested too deeply</text>"
        b"<refused xmlns='urn:xmpp-guard:link:0' stanza='2'/></stream:error></stream:stream>")
