"""The guard's TLS server refuses renegotiation: a peer cannot restart the handshake mid-stream."""

from OpenSSL import SSL

from guard.edges.tlsidentity import Identity, TrustAnchors

from .streams.sides import pki


def pump(client, server):
    """Move bytes both ways between two memory-BIO connections until neither has anything to send."""
    for _ in range(50):
        moved = False
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            target.bio_write(data)
            moved = True
        if not moved:
            return


def handshake(connection):
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass


def test_client_initiated_renegotiation_is_refused():
    """After a complete handshake, a client asking to renegotiate gets a failure, not a new handshake."""
    material = pki()
    anchors = TrustAnchors(str(material.side_ca("red")))
    facing = material.guard_facing("red")
    identity = Identity(["blue.example"], str(facing.certificate), str(facing.key), anchors)
    server = identity.server_options().serverConnectionForTLS(None)
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_max_proto_version(SSL.TLS1_2_VERSION)  # renegotiation exists only up to TLS 1.2
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    for _ in range(10):
        handshake(client)
        handshake(server)
        pump(client, server)
    client.write(b"<stream:stream>")
    pump(client, server)
    assert server.read(1024) == b"<stream:stream>"

    assert client.renegotiate()
    refused = False
    for _ in range(10):
        try:
            handshake(client)
            pump(client, server)
            server.read(1024)
        except SSL.WantReadError:
            pass
        except SSL.Error:
            refused = True
            break
        try:
            pump(client, server)
            client.read(1024)
        except SSL.WantReadError:
            pass
        except SSL.Error:
            refused = True
            break
    assert refused
    assert server.total_renegotiations() == 0


def test_outbound_connections_refuse_renegotiation():
    """Connections the guard makes carry OP_NO_RENEGOTIATION, so a far server cannot renegotiate either."""
    from guard.edges import tlsidentity

    material = pki()
    anchors = TrustAnchors(str(material.side_ca("blue")))
    facing = material.guard_facing("blue")
    identity = Identity(["red.example"], str(facing.certificate), str(facing.key), anchors)
    options = identity.client_options("blue.example")
    assert isinstance(options, tlsidentity._RefusingRenegotiation)

    class PlainCreator:
        def clientConnectionForTLS(self, protocol):
            return SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)

    connection = tlsidentity._RefusingRenegotiation(PlainCreator()).clientConnectionForTLS(None)
    assert connection.set_options(0) & SSL.OP_NO_RENEGOTIATION
