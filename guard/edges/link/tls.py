"""
Mutual TLS for the pair link.  Each half presents its own certificate and
requires one from the peer; the peer's certificate is judged after the
handshake by ``PeerCheck``: either its SHA-256 fingerprint is one of the
pinned ones, or it chains to the link's dedicated CA and names the peer's
link name in its subjectAltName (dNSName or id-on-xmppAddr).
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from guard.edges.tlsidentity import certificate_names, load_pem_chain


def fingerprint_of(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as lower-case hex pairs joined by colons."""
    digest = hashlib.sha256(der).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def normalise_fingerprint(text: str) -> str | None:
    """A configured fingerprint in canonical form, or None when it is not a SHA-256 fingerprint."""
    bare = text.replace(":", "").strip().lower()
    if len(bare) != 64 or any(c not in "0123456789abcdef" for c in bare):
        return None
    return ":".join(bare[i:i + 2] for i in range(0, 64, 2))


def certificate_fingerprint(path: str) -> str:
    """The fingerprint of the first certificate in a PEM file (what the peer pins)."""
    leaf = load_pem_chain(path)[0]
    return fingerprint_of(crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf))


class PeerCheck:
    """Decides whether the certificate a link peer presented is the peer half's."""

    def __init__(self, peer_name: str, pins=(), ca_path: str | None = None):
        self.peer_name = peer_name
        self.pins = frozenset(pins)
        self.ca = load_pem_chain(ca_path) if ca_path else []
        if not self.pins and not self.ca:
            raise ValueError("the link needs pinned fingerprints or a CA")

    def judge(self, transport):
        """(fingerprint, None) when the peer is proved, (fingerprint or None, problem) otherwise."""
        connection = transport.getHandle() if hasattr(transport, "getHandle") else None
        leaf = connection.get_peer_certificate() if connection is not None else None
        if leaf is None:
            return None, "no certificate presented"
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
        fingerprint = fingerprint_of(der)
        if fingerprint in self.pins:
            return fingerprint, None
        if not self.ca:
            return fingerprint, f"certificate {fingerprint} is not pinned"
        store = crypto.X509Store()
        for certificate in self.ca:
            store.add_cert(certificate)
        chain = [c for c in (connection.get_peer_cert_chain() or [])
                 if crypto.dump_certificate(crypto.FILETYPE_ASN1, c) != der]
        try:
            crypto.X509StoreContext(store, leaf, chain).verify_certificate()
        except crypto.X509StoreContextError as problem:
            return fingerprint, f"certificate not issued by the link CA: {problem}"
        xmpp_addrs, dns_names = certificate_names(leaf.to_cryptography())
        if self.peer_name.lower() not in xmpp_addrs | dns_names:
            return fingerprint, f"certificate does not name {self.peer_name}"
        return fingerprint, None


def _accept_any_chain(connection, certificate, errno, depth, ok):
    # The peer is judged after the handshake by PeerCheck (pins need no CA).
    return True


def _context(method, certificate_path: str, key_path: str, tls13_only: bool = False) -> SSL.Context:
    chain = load_pem_chain(certificate_path)
    if not chain:
        raise ValueError(f"{certificate_path}: no certificates")
    with open(key_path, "rb") as pem:
        key = serialization.load_pem_private_key(pem.read(), password=None)
    context = SSL.Context(method)
    context.set_min_proto_version(SSL.TLS1_3_VERSION if tls13_only else SSL.TLS1_2_VERSION)
    if tls13_only:
        # A bearer outage ends the TCP connection without close_notify.  OpenSSL treats that as a fatal error and
        # makes the session unresumable; the link needs no TLS truncation protection (its parser takes only whole
        # stanzas, and its counters settle each one), so an unexpected EOF is read as a close and the session lives.
        context.set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
    context.set_options(SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000))
    context.use_certificate(chain[0].to_cryptography())
    for extra in chain[1:]:
        context.add_extra_chain_cert(extra.to_cryptography())
    context.use_privatekey(key)
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_chain)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, context):
        self._context = context

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self._context, None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, context, sessions=None):
        self._context = context
        self._sessions = sessions

    def clientConnectionForTLS(self, protocol):
        connection = SSL.Connection(self._context, None)
        if self._sessions is not None and self._sessions.kept is not None:
            connection.set_session(self._sessions.kept)
            self._sessions.offered += 1
        connection.set_connect_state()
        return connection


class KeptSession:
    """
    The dialling half's TLS session of its last link connection, offered on
    the next one (TLS 1.3 resumption: no certificates cross again, one
    round trip less is not the point, the bytes are: a full handshake with a
    certificate chain each way is several kilobytes, seconds at 1,200 bit/s).
    The certificate the peer proved itself with is kept in the session, so a
    resumed connection still proves the peer (``PeerCheck`` judges it).

    Only a session from a connection whose peer was proved and whose link
    stream opened is kept (``keep``): the server's TLS 1.3 ticket arrives
    after the handshake, so it is read by then.
    """

    def __init__(self):
        self.kept = None
        self.offered = 0  # connections that offered a kept session

    def watch(self, stream) -> None:
        """A dialled link connection opened (its peer proved, its <resume/> read): keep its session now, and
        keep it resumable when the connection ends (``connection_over``)."""
        self.keep(stream.transport)
        stream.when_lost.append(lambda lost: self.connection_over(lost.transport, lost.lost_reason))

    def keep(self, transport) -> None:
        connection = transport.getHandle() if hasattr(transport, "getHandle") else None
        if connection is None:
            return
        session = connection.get_session()
        if session is not None:
            self.kept = session

    def connection_over(self, transport, reason=None) -> None:
        """A connection that opened is gone.  A TLS error (a bad record, an alert) ends the kept session: the
        next connection is a full handshake.  Otherwise the session stays resumable: OpenSSL marks a session
        not resumable when its connection is freed without a close_notify sent, which is how a bearer outage
        ends every connection, so the connection is marked as shut down (``set_shutdown``) before it is freed."""
        connection = transport.getHandle() if hasattr(transport, "getHandle") else None
        check = getattr(reason, "check", None)
        if check is not None and check(SSL.Error) is not None:
            self.kept = None
            return
        if connection is not None:
            connection.set_shutdown(connection.get_shutdown() | SSL.SENT_SHUTDOWN)


class LinkTLS:
    """This half's certificate and key, wrapping link factories in mutual TLS.

    ``tls13_only`` (the constrained profile): TLS 1.3 and nothing older, and
    the dialling half resumes its last session (``sessions``).  The listening
    half keeps its session cache and TLS 1.3 tickets on (OpenSSL's default:
    stateless tickets under a key made when the context is)."""

    def __init__(self, certificate_path: str, key_path: str, tls13_only: bool = False):
        self.certificate_path = certificate_path
        self._server = _context(SSL.TLS_SERVER_METHOD, certificate_path, key_path, tls13_only)
        self._server.set_session_id(b"xmpp-guard-link")
        self._client = _context(SSL.TLS_CLIENT_METHOD, certificate_path, key_path, tls13_only)
        self.sessions = KeptSession() if tls13_only else None
        if tls13_only:
            self._server.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            self._client.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate_path)

    def listening(self, factory, clock) -> TLSMemoryBIOFactory:
        return _on_clock(TLSMemoryBIOFactory(_ServerCreator(self._server), False, factory), clock)

    def dialling(self, factory, clock) -> TLSMemoryBIOFactory:
        return _on_clock(TLSMemoryBIOFactory(_ClientCreator(self._client, self.sessions), True, factory), clock)


def _on_clock(factory: TLSMemoryBIOFactory, clock) -> TLSMemoryBIOFactory:
    # Small TLS writes are gathered and flushed on the next turn of this
    # clock (Twisted's default is the global reactor; we pass ours).
    factory._clock = clock
    return factory
