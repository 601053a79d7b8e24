"""
TLS material and peer identity for S2S streams (RFC 6120 section 13.7,
XEP-0178).

The identity of a peer is taken only from its certificate's subjectAltName:
dNSName entries (matched with service-identity's rules, wildcards included)
and id-on-xmppAddr entries (exact domain).  The subject CN is never used.
A peer's chain is verified against the CA bundle configured for its side,
after the handshake, so that a stream can report *why* a peer failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import char
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, verify_service_identity
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

XMPP_ADDR_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")


def load_pem_chain(path: str) -> list[crypto.X509]:
    """Every certificate in a PEM file, leaf first."""
    with open(path, "rb") as pem:
        data = pem.read()
    return [
        crypto.X509.from_cryptography(certificate)
        for certificate in x509.load_pem_x509_certificates(data)
    ]


@dataclass(frozen=True)
class PeerVerdict:
    """
    What a verified peer certificate proves: a trusted chain and the domains it
    names.  The certificate itself is not kept (a stream holds its verdict as
    long as it lives): only its subjectAltName patterns, which service-identity
    matches exactly as it would match the certificate, and the two facts a
    stream reports (subject, notAfter).
    """

    chain_valid: bool
    problem: str | None
    xmpp_addrs: frozenset[str]
    dns_names: frozenset[str]
    subject: str | None = None  # RFC 4514, None when no certificate was presented
    not_after: float | None = None  # epoch seconds
    patterns: tuple = ()  # service_identity's patterns of the subjectAltName

    def proves(self, domain: str) -> bool:
        """Whether the certificate authenticates ``domain`` (chain valid and a subjectAltName matches)."""
        if not self.chain_valid or self.subject is None:
            return False
        if domain in self.xmpp_addrs:
            return True
        try:
            verify_service_identity(cert_patterns=list(self.patterns), obligatory_ids=[DNS_ID(domain)],
                                    optional_ids=[])
        except Exception:  # noqa: BLE001 - no match, no names, or a malformed name: not proven
            return False
        return True


def judged(chain_valid: bool, problem: str | None, certificate: x509.Certificate) -> PeerVerdict:
    """The verdict on ``certificate``, keeping what the verdict needs of it and not the certificate."""
    xmpp_addrs, dns_names = certificate_names(certificate)
    try:
        patterns = tuple(extract_patterns(certificate))
    except Exception:  # noqa: BLE001 - a malformed subjectAltName names nothing
        patterns = ()
    return PeerVerdict(chain_valid, problem, xmpp_addrs, dns_names, certificate.subject.rfc4514_string(),
                       certificate.not_valid_after_utc.timestamp(), patterns)


def certificate_names(certificate: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    """The XmppAddr and dNSName subjectAltName entries of ``certificate``."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    xmpp_addrs = set()
    for other in names.get_values_for_type(x509.OtherName):
        if other.type_id != XMPP_ADDR_OID:
            continue
        try:
            value, _ = der_decoder.decode(other.value, asn1Spec=char.UTF8String())
        except Exception:  # noqa: BLE001 - a malformed name proves nothing
            continue
        xmpp_addrs.add(str(value).lower())
    dns_names = frozenset(name.lower() for name in names.get_values_for_type(x509.DNSName))
    return frozenset(xmpp_addrs), dns_names


class TrustAnchors:
    """The CA bundle that authenticates one side's servers."""

    def __init__(self, ca_path: str):
        self.path = ca_path
        self.certificates = load_pem_chain(ca_path)
        if not self.certificates:
            raise ValueError(f"{ca_path}: no certificates")

    def _store(self) -> crypto.X509Store:
        store = crypto.X509Store()
        for certificate in self.certificates:
            store.add_cert(certificate)
        return store

    def judge_peer(self, connection: SSL.Connection | None, usage=ExtendedKeyUsageOID.CLIENT_AUTH) -> PeerVerdict:
        """
        Verify the chain a peer presented during the handshake on ``connection``,
        for ``usage`` (clientAuth for servers connecting to us, serverAuth for
        servers we connect to).
        """
        leaf = connection.get_peer_certificate() if connection is not None else None
        if leaf is None:
            return PeerVerdict(False, "no certificate presented", frozenset(), frozenset())
        chain = connection.get_peer_cert_chain() or []
        intermediates = [c for c in chain if c.to_cryptography() != leaf.to_cryptography()]
        certificate = leaf.to_cryptography()
        try:
            crypto.X509StoreContext(self._store(), leaf, intermediates).verify_certificate()
        except crypto.X509StoreContextError as problem:
            return judged(False, f"chain not trusted: {problem}", certificate)
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is not None and usage not in usages:
            return judged(False, f"certificate not valid for {usage._name}", certificate)
        return judged(True, None, certificate)

    def judge_server(self, connection: SSL.Connection | None) -> PeerVerdict:
        """Verify the certificate a server we connected to presented (chain and serverAuth)."""
        return self.judge_peer(connection, ExtendedKeyUsageOID.SERVER_AUTH)

    def client_trust_root(self):
        return ssl.trustRootFromCertificates(
            [ssl.Certificate(certificate) for certificate in self.certificates]
        )


def _harden(context: SSL.Context) -> None:
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    # OpenSSL 3 already refuses client-initiated renegotiation on servers;
    # this makes it explicit and covers renegotiation of any kind.
    options |= SSL.OP_NO_RENEGOTIATION
    context.set_options(options)
    # OpenSSL frees a connection's read and write buffers (about 34 KiB) whenever they are empty, so an
    # idle stream holds none; they are allocated again for the next record (Twisted's client contexts
    # already have this mode).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)


def _accept_any_chain(connection, certificate, errno, depth, ok):
    # Chains are judged after the handshake (TrustAnchors.judge_peer) so that
    # dialback peers with untrusted certificates can still negotiate TLS and a
    # certificate-mode refusal is a clear SASL failure, not a broken handshake.
    return True


def _load_pair(certificate_path, key_path):
    chain = load_pem_chain(certificate_path)
    if not chain:
        raise ValueError(f"{certificate_path}: no certificates")
    with open(key_path, "rb") as pem:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, pem.read())
    return chain[0], chain[1:], key


class Identity:
    """
    A certificate and key the guard presents on one side for some far-side
    domains: as server certificate when that side's servers connect, and as
    client certificate when the guard connects to them (a separate client
    certificate may be given).
    """

    def __init__(self, domains, certificate_path, key_path, anchors: TrustAnchors,
                 client_certificate_path=None, client_key_path=None):
        self.domains = frozenset(domains)
        self.certificate_path = certificate_path
        self.key_path = key_path
        self._leaf, self._extra, self._key = _load_pair(certificate_path, key_path)
        if client_certificate_path:
            self._client_leaf, self._client_extra, self._client_key = _load_pair(
                client_certificate_path, client_key_path
            )
        else:
            self._client_leaf, self._client_extra, self._client_key = self._leaf, self._extra, self._key
        self._server_context = self._make_server_context(anchors)
        self._anchors = anchors
        self._client_options = {}

    def _make_server_context(self, anchors: TrustAnchors) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        _harden(context)
        context.use_certificate(self._leaf)
        for extra in self._extra:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(self._key)
        context.check_privatekey()
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, _accept_any_chain)
        for certificate in anchors.certificates:
            context.add_client_ca(certificate)
        context.set_session_id(b"xmpp-guard")
        # No resumption: every stream is a full handshake whose certificate is judged afresh, and no
        # session a peer's handshakes create is kept.  OpenSSL's server cache would otherwise hold up to
        # 20,480 sessions (each with the peer's certificate) from TLS 1.2 peers, and TLS 1.3 tickets
        # would let a peer resume without presenting its certificate again.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_options(SSL.OP_NO_TICKET)
        return context

    def server_options(self):
        """What startTLS takes when the guard answers as one of ``domains``."""
        return _FixedContext(self._server_context)

    def client_options(self, server_domain: str):
        """TLS options for connecting to ``server_domain``'s server, presenting this identity."""
        cached = self._client_options.get(server_domain)
        if cached is not None:
            return cached
        client_certificate = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(self._client_leaf), ssl.KeyPair(self._client_key)
        )
        options = self._client_options[server_domain] = _RefusingRenegotiation(ssl.optionsForClientTLS(
            server_domain,
            trustRoot=self._anchors.client_trust_root(),
            clientCertificate=client_certificate,
            extraCertificateOptions={
                "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
                "extraCertChain": [ssl.Certificate(extra) for extra in self._client_extra],
            },
        ))
        return options


@implementer(IOpenSSLClientConnectionCreator)
class _RefusingRenegotiation:
    """Twisted's verifying client connections, refusing renegotiation a far server might ask for."""

    def __init__(self, inner):
        self._inner = inner

    def clientConnectionForTLS(self, protocol):
        connection = self._inner.clientConnectionForTLS(protocol)
        connection.set_options(SSL.OP_NO_RENEGOTIATION)
        if type(connection) is SSL.Connection:  # Twisted's plain memory-BIO connection: same object, releasing BIOs
            connection.__class__ = BufferReleasingConnection
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class _FixedContext:
    """Server connections from one prepared context."""

    def __init__(self, context):
        self._context = context

    def serverConnectionForTLS(self, protocol):
        return BufferReleasingConnection(self._context, None)


# A memory BIO's buffer only grows (OpenSSL reuses it, never shrinks it): after the handshake, or one
# large read or write, an idle stream would keep that much.  Once this many bytes went through a BIO,
# it is replaced by a fresh one the next time it is empty.
RELEASE_BIO_AFTER_BYTES = 2048


class BufferReleasingConnection(SSL.Connection):
    """
    A memory-BIO connection (what Twisted's TLSMemoryBIOProtocol drives)
    whose two BIOs are replaced by fresh, empty ones once they are drained after
    carrying more than RELEASE_BIO_AFTER_BYTES: the handshake's flights and a
    burst's reads and writes leave no buffer behind on an idle stream.
    Nothing is lost: a BIO is only replaced while it holds no byte.
    """

    _into_carried = 0  # bytes written into the incoming BIO since it was made
    _from_carried = 0  # bytes read out of the outgoing BIO since it was made
    _shut = False  # bio_shutdown marked the incoming BIO at end of file: keep it

    def bio_write(self, buf) -> int:
        self._release_drained_incoming()  # what the handshake left (it reads without recv)
        written = super().bio_write(buf)
        self._into_carried += written
        return written

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        try:
            return super().recv(bufsiz, flags)
        except SSL.WantReadError:
            self._release_drained_incoming()  # every record read: the stream waits for its peer
            raise

    def _release_drained_incoming(self) -> None:
        if self._into_carried > RELEASE_BIO_AFTER_BYTES and not self._shut and _pending(self._into_ssl) == 0:
            fresh = _new_memory_bio()
            _lib.SSL_set_bio(self._ssl, fresh, self._from_ssl)  # frees the old incoming BIO
            self._into_ssl, self._into_carried = fresh, 0

    def bio_read(self, bufsiz: int) -> bytes:
        try:
            data = super().bio_read(bufsiz)
        except SSL.WantReadError:
            if self._from_carried > RELEASE_BIO_AFTER_BYTES:
                fresh = _new_memory_bio()
                _lib.SSL_set_bio(self._ssl, self._into_ssl, fresh)  # frees the old outgoing BIO
                self._from_ssl, self._from_carried = fresh, 0
            raise
        self._from_carried += len(data)
        return data

    def bio_shutdown(self) -> None:
        self._shut = True
        super().bio_shutdown()


def _pending(bio) -> int:
    return _lib.BIO_get_mem_data(bio, _ffi.NULL)


def _new_memory_bio():
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new")
    return bio
