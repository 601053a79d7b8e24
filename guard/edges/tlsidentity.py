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
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import char
from service_identity.cryptography import verify_certificate_hostname
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
    """What a verified peer certificate proves: a trusted chain and the domains it names."""

    chain_valid: bool
    problem: str | None
    xmpp_addrs: frozenset[str]
    dns_names: frozenset[str]
    certificate: x509.Certificate | None

    def proves(self, domain: str) -> bool:
        """Whether the certificate authenticates ``domain`` (chain valid and a subjectAltName matches)."""
        if not self.chain_valid or self.certificate is None:
            return False
        if domain in self.xmpp_addrs:
            return True
        try:
            verify_certificate_hostname(self.certificate, domain)
        except Exception:  # noqa: BLE001 - no match, no names, or a malformed name: not proven
            return False
        return True


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
            return PeerVerdict(False, "no certificate presented", frozenset(), frozenset(), None)
        chain = connection.get_peer_cert_chain() or []
        intermediates = [c for c in chain if c.to_cryptography() != leaf.to_cryptography()]
        certificate = leaf.to_cryptography()
        xmpp_addrs, dns_names = certificate_names(certificate)
        try:
            crypto.X509StoreContext(self._store(), leaf, intermediates).verify_certificate()
        except crypto.X509StoreContextError as problem:
            return PeerVerdict(False, f"chain not trusted: {problem}", xmpp_addrs, dns_names, certificate)
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is not None and usage not in usages:
            return PeerVerdict(False, f"certificate not valid for {usage._name}", xmpp_addrs, dns_names, certificate)
        return PeerVerdict(True, None, xmpp_addrs, dns_names, certificate)

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
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class _FixedContext:
    """Server connections from one prepared context."""

    def __init__(self, context):
        self._context = context

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self._context, None)
