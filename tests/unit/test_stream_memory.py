"""What an idle stream holds: OpenSSL's record buffers and the expat parser are let go between uses."""

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as openssl

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from guard.edges.tlsidentity import Identity, TrustAnchors
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser

from .streams.sides import pki
from .test_tls_renegotiation import pump


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


# -- what an established TLS stream keeps: no session for resumption, no certificate, no grown BIO --

def red_client_context(material, maximum=None) -> SSL.Context:
    """A red server's client context (red's certificate, trusting red's CA), optionally capped at a TLS version."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.use_certificate_file(str(material.server("red").certificate))
    context.use_privatekey_file(str(material.server("red").key))
    context.load_verify_locations(str(material.side_ca("red")))
    if maximum is not None:
        context.set_max_proto_version(maximum)
    return context


def drain(connection: SSL.Connection) -> bytes:
    """Every application byte ``connection`` can read now."""
    received = b""
    for _ in range(100):
        try:
            received += connection.recv(65536)
        except SSL.WantReadError:
            return received
    raise AssertionError("recv never ran dry")


def shake_hands(one: SSL.Connection, other: SSL.Connection) -> None:
    """Both ends' handshakes over memory BIOs (their accept or connect state already set)."""
    for _ in range(10):
        for end in (one, other):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
        pump(one, other)


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """Both ends' handshakes over memory BIOs, then one exchange each way (TLS 1.3 tickets come after the handshake)."""
    server.set_accept_state()
    client.set_connect_state()
    client.set_tlsext_host_name(b"blue.example")
    shake_hands(client, server)
    client.send(b"<stream:stream>")
    pump(client, server)
    assert drain(server) == b"<stream:stream>"
    server.send(b"<stream:features/>")
    pump(client, server)
    assert drain(client) == b"<stream:features/>"


@pytest.fixture(scope="module")
def lab():
    material = pki()
    anchors = TrustAnchors(str(material.side_ca("red")))
    facing = material.guard_facing("red")
    return material, Identity(["blue.example"], str(facing.certificate), str(facing.key), anchors)


@pytest.mark.parametrize("maximum", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["tls1.2", "tls1.3"])
def test_a_peer_cannot_resume_a_session(lab, maximum):
    """A red server that offers the session of its previous stream gets a full handshake: the guard keeps no session cache and issues no ticket."""
    material, identity = lab
    client_context = red_client_context(material, maximum)
    first = SSL.Connection(client_context, None)
    handshake(identity.server_options().serverConnectionForTLS(None), first)
    second = SSL.Connection(client_context, None)
    second.set_session(first.get_session())
    server = identity.server_options().serverConnectionForTLS(None)
    handshake(server, second)
    assert not openssl.SSL_session_reused(second._ssl)
    assert not openssl.SSL_session_reused(server._ssl)
    assert server.get_peer_certificate() is not None  # the certificate was presented again
    assert identity.server_options().serverConnectionForTLS(None).get_context().get_session_cache_mode() == \
        SSL.SESS_CACHE_OFF


def test_closed_streams_leave_no_session_behind(lab):
    """TLS 1.2 peers that decline tickets and close cleanly leave nothing in the guard's heap (a session cache kept about 12 KiB for each, up to 20,480 of them)."""
    material, identity = lab
    client_context = red_client_context(material, SSL.TLS1_2_VERSION)
    client_context.set_options(SSL.OP_NO_TICKET)

    def open_and_close():
        server = identity.server_options().serverConnectionForTLS(None)
        client = SSL.Connection(client_context, None)
        handshake(server, client)
        for end in (server, client, server):
            try:
                end.shutdown()
            except SSL.Error:
                pass
            pump(client, server)

    open_and_close()  # what the first handshake allocates once
    before = heap_in_use()
    for _ in range(32):
        open_and_close()
    assert (heap_in_use() - before) / 32 < 1024


def test_a_verdict_keeps_what_it_proves_and_not_the_certificate(lab):
    """The verdict on a red server's certificate proves red.example (and nothing else) without holding the certificate."""
    from cryptography import x509

    material, identity = lab
    server = identity.server_options().serverConnectionForTLS(None)
    handshake(server, SSL.Connection(red_client_context(material), None))
    verdict = TrustAnchors(str(material.side_ca("red"))).judge_peer(server)
    assert verdict.chain_valid and verdict.problem is None
    assert verdict.proves("red.example") and verdict.proves("conference.red.example")
    assert not verdict.proves("blue.example") and not verdict.proves("example") and not verdict.proves("")
    assert "red.example" in verdict.subject and verdict.not_after > 0
    assert not any(isinstance(value, x509.Certificate) for value in vars(verdict).values())


def heap_in_use() -> int:
    import ctypes
    import gc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    gc.collect()
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


BURST = b"<message>" + b"x" * 60000 + b"</message>"


def heap_per_connection_after_bursts(connect) -> float:
    """C heap each of 16 guard connections keeps, idle after a 60 KiB burst each way; ``connect()`` gives
    (the guard's end, the far end) after their handshake."""
    kept = []
    before = heap_in_use()
    for _ in range(16):
        guard_end, far_end = connect()
        for source, sink in ((far_end, guard_end), (guard_end, far_end)):
            source.sendall(BURST)
            pump(guard_end, far_end)
            assert drain(sink) == BURST
        kept.append(guard_end)
    return (heap_in_use() - before) / len(kept)


def test_an_idle_connection_after_a_burst_keeps_no_grown_buffer(lab):
    """After 60 KiB each way, an idle server connection holds under 64 KiB of C heap (its BIOs were about 160 KiB before they were released)."""
    material, identity = lab
    client_context = red_client_context(material)

    def connect():
        server = identity.server_options().serverConnectionForTLS(None)
        client = SSL.Connection(client_context, None)
        handshake(server, client)
        return server, client

    assert heap_per_connection_after_bursts(connect) < 64 * 1024


def test_an_idle_outbound_connection_after_a_burst_keeps_no_grown_buffer(lab):
    """The guard's client connection to a far server also lets go of its BIOs after 60 KiB each way (under 64 KiB of C heap each)."""
    material, identity = lab
    far_server = SSL.Context(SSL.TLS_SERVER_METHOD)
    far_server.use_certificate_file(str(material.server("red").certificate))
    far_server.use_privatekey_file(str(material.server("red").key))
    options = identity.client_options("red.example")

    def connect():
        tls = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol)).buildProtocol(None)
        guard = options.clientConnectionForTLS(tls)
        server = SSL.Connection(far_server, None)
        server.set_accept_state()
        guard.set_connect_state()
        shake_hands(guard, server)
        return guard, server

    assert heap_per_connection_after_bursts(connect) < 64 * 1024


def test_a_bio_holding_bytes_is_not_replaced(lab):
    """Records that arrive in pieces around a release are read whole, in order: a BIO is replaced only while it holds no byte."""
    material, identity = lab
    server = identity.server_options().serverConnectionForTLS(None)
    client = SSL.Connection(red_client_context(material), None)
    handshake(server, client)
    client.sendall(b"x" * 5000)
    server.bio_write(client.bio_read(65536))  # more than RELEASE_BIO_AFTER_BYTES carried, none read yet
    client.send(b"<presence/>")
    record = client.bio_read(65536)
    holding = server._into_ssl
    server.bio_write(record[:3])
    assert server._into_ssl == holding  # it still held the burst
    assert drain(server) == b"x" * 5000
    server.bio_write(record[3:])
    assert drain(server) == b"<presence/>"


def test_a_rested_parser_takes_under_three_kib():
    """A parser resting after the stream header (what an idle stream keeps) takes under 3 KiB of Python objects (3.6 with an instance dictionary)."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsers = [recording_parser([]) for _ in range(200)]
        for parser in parsers:
            parser.feed(HEADER)
            assert parser.rest()
        per_parser = (tracemalloc.get_traced_memory()[0] - before) / len(parsers)
    finally:
        tracemalloc.stop()
    assert per_parser < 3 * 1024
