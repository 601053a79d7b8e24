"""What an idle stream holds: OpenSSL's record buffers and the expat parser are let go between uses."""

from OpenSSL import SSL
from OpenSSL._util import lib as openssl

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from guard.edges.tlsidentity import Identity, TrustAnchors

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
