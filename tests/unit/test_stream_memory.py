"""What an idle stream holds: OpenSSL's record buffers and the expat parser are let go between uses."""

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as openssl

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from guard.edges.tlsidentity import Identity, TrustAnchors
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser

from .streams.sides import pki


def identity_for_red() -> Identity:
    material = pki()
    anchors = TrustAnchors(str(material.side_ca("red")))
    facing = material.guard_facing("red")
    return Identity(["blue.example"], str(facing.certificate), str(facing.key), anchors)


def releases_buffers(connection: SSL.Connection) -> bool:
    # SSL_set_mode ORs the bits in and returns the connection's mode: with 0 it only reads it.
    return bool(openssl.SSL_set_mode(connection._ssl, 0) & SSL.MODE_RELEASE_BUFFERS)


def test_inbound_tls_connections_free_their_buffers_when_idle():
    """A server connection the guard answers with is made from a context that frees OpenSSL's record buffers while empty."""
    connection = identity_for_red().server_options().serverConnectionForTLS(None)
    assert releases_buffers(connection)


def test_outbound_tls_connections_free_their_buffers_when_idle():
    """A client connection the guard opens to a server frees OpenSSL's record buffers while empty (Twisted's CertificateOptions set it; this pins it)."""
    options = identity_for_red().client_options("red.example")
    tls = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol)).buildProtocol(None)
    connection = options.clientConnectionForTLS(tls)
    assert releases_buffers(connection)


HEADER = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
STANZAS = [
    b"<message from='romeo@red.example' to='juliet@blue.example'><body>hi</body></message>",
    b"<presence/>",
    b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
]


def recording_parser(events: list, limits: ParserLimits = ParserLimits()) -> StreamParser:
    return StreamParser(lambda header: events.append("header"),
                        lambda element, size: events.append((element.toXml(), size)),
                        lambda: events.append("end"), limits)


def test_a_rested_parser_parses_on_as_one_that_never_rested():
    """Resting between every stanza and keepalive changes nothing in the elements, their sizes or the end."""
    wire = [HEADER, STANZAS[0], b" \n", STANZAS[1], b"\t", STANZAS[2] + b" ", b"</stream:stream>"]
    steady, rested = [], []
    steady_parser, rested_parser = recording_parser(steady), recording_parser(rested)
    rests = 0
    for data in wire:
        steady_parser.feed(data)
        rested_parser.feed(data)
        rests += rested_parser.rest()
    assert rests == 4  # not after the keepalives (still resting) nor after the end
    assert rested == steady
    assert rested[-1] == "end" and len(rested) == 5


def test_a_parser_rests_only_between_stanzas():
    """In the middle of a stanza or a tag, or before the header, the parser keeps expat."""
    events = []
    parser = recording_parser(events)
    parser.feed(HEADER[:20])
    assert not parser.rest()
    parser.feed(HEADER[20:] + b"<message><body>")
    assert not parser.rest()
    parser.feed(b"x</body></message><iq")
    assert not parser.rest() and not parser.resting
    parser.feed(b"/>")
    assert parser.rest() and parser.resting
    parser.feed(b"<presence/>&amp")
    assert not parser.rest()  # expat holds "&amp" back: it may be a reference
    with pytest.raises(StreamFault):
        parser.feed(b";")
    assert events == ["header", ("<message xmlns='jabber:server'><body>x</body></message>", 33),
                      ("<iq xmlns='jabber:server'/>", 5), ("<presence xmlns='jabber:server'/>", 11)]
    assert not parser.rest()


@pytest.mark.parametrize("held_back, condition", [
    (b"]", "bad-format"), (b" ]]", "bad-format"), (b"\n]", "bad-format"),
    (b"&amp", "not-well-formed"), (b"&", "not-well-formed"),
])
def test_a_parser_does_not_rest_on_what_expat_holds_back(held_back, condition):
    """Text expat has not reported yet (it may start a token) keeps the parser awake, and is refused when the next markup comes."""
    parser = recording_parser([])
    parser.feed(HEADER + b"<presence/>" + held_back)
    assert not parser.rest()
    with pytest.raises(StreamFault) as refused:
        parser.feed(b"<presence/>")
    assert refused.value.condition == condition


def test_keepalives_make_no_expat():
    """Whitespace keepalives to a resting parser leave it resting; the next stanza wakes it."""
    events = []
    parser = recording_parser(events)
    parser.feed(HEADER)
    assert parser.rest()
    for _ in range(3):
        parser.feed(b" ")
        assert parser.resting
    parser.feed(b"\r\n<presence/>")
    assert not parser.resting
    assert events == ["header", ("<presence xmlns='jabber:server'/>", 11)]


@pytest.mark.parametrize("data, condition", [
    (b"text", "bad-format"),
    (b" \x0b ", "not-well-formed"),
    (b"<!DOCTYPE x>", "restricted-xml"),
    (b"<stream:stream>", "unsupported-stanza-type"),
    (b"<message>" + b"x" * 600 + b"</message>", "policy-violation"),
], ids=["text", "vertical-tab", "doctype", "nested-header", "stanza-bytes"])
def test_a_woken_parser_refuses_what_it_refused_before(data, condition):
    """After a rest, text, bad whitespace, a DTD, a second header and an oversized stanza are refused as without it."""
    parser = recording_parser([], ParserLimits(stanza_bytes=512))
    parser.feed(HEADER)
    assert parser.rest()
    with pytest.raises(StreamFault) as refused:
        parser.feed(data)
    assert refused.value.condition == condition
    assert not parser.resting


def test_a_resting_parser_keeps_no_names():
    """Resting empties the name caches the stanzas filled; the next stanza fills them again."""
    parser = recording_parser([])
    parser.feed(HEADER + STANZAS[2])
    assert parser._names and parser._element_names and parser._uris
    assert parser.rest()
    assert (parser._names, parser._element_names, parser._uris, parser._uris_size) == ({}, {}, {}, 0)
    parser.feed(STANZAS[0])
    assert parser._element_names
