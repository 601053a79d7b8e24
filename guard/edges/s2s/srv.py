"""
DNS SRV routing (RFC 6120 3.2, RFC 2782): where the servers of a domain are,
asked of the DNS server configured for the side (``[sides.X] dns``), never of
the system resolver.

A route ``srv:domain=blue.example`` is opened by ``SrvEndpoint``: it looks up
``_xmpps-server._tcp.blue.example`` (XEP-0368, TLS from the first byte) and
``_xmpp-server._tcp.blue.example`` (STARTTLS), orders the records of both
together (lowest priority first, then weighted random within a priority),
resolves each target's A and
AAAA records through the same DNS server and connects to them in turn, at
most ``MAX_ATTEMPTS`` addresses, each with the route's connect timeout.  A
refused or timed-out connection means the next address is tried; when none
is left the connection fails and the carrier bounces what waits
(remote-server-not-found).

- No SRV record of either kind (the names do not exist, or have no SRV
  record): the domain's own A/AAAA records on port 5269, with STARTTLS.
- Records whose target is "." only: the domain offers no service.
- A direct TLS target: the OutboundStream starts TLS at once, SNI the domain
  and ALPN ``xmpp-server`` (``direct_tls_options``).
- A lookup that fails or takes longer than ``LOOKUP_SECONDS``: no route
  (fail closed); the failure is not cached.
- Answers are cached for their TTL (at most ``MAX_TTL``; a name without
  records for ``NEGATIVE_TTL``), bounded in entries and in bytes.

The far server's certificate is checked for the domain, never for the SRV
target: the endpoint only opens the TCP connection; the OutboundStream it
carries knows the receiving domain alone and secures the stream for it.
"""

from __future__ import annotations

import ipaddress
import random as random_module
import socket
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.names import dns, error as dns_error
from zope.interface import implementer

from guard.core.bounce import peer_detail

log = Logger()

SRV_KIND = "srv"  # the route kind: srv:domain=<domain>[:timeout=<seconds>]
SERVICE_PREFIX = "_xmpp-server._tcp."
DIRECT_TLS_PREFIX = "_xmpps-server._tcp."  # XEP-0368
ALPN_PROTOCOL = b"xmpp-server"
DEFAULT_PORT = 5269  # RFC 6120 3.2.2: the fallback when a domain has no SRV record

MAX_ATTEMPTS = 6  # addresses tried per connection, each with the connect timeout
MAX_RECORDS = 16  # records of one answer kept (the rest are ignored)
LOOKUP_SECONDS = 5.0  # one DNS question, answer or not
MAX_TTL = 3600  # seconds an answer is cached at most
NEGATIVE_TTL = 30  # seconds a name without records is remembered
CACHE_ENTRIES = 1024
CACHE_BYTES = 256 * 1024
ENTRY_OVERHEAD = 64  # bytes counted for each cached entry and record, beside its names

NO_SERVICE = "the domain offers no XMPP server service"
NO_DNS = "no DNS server is configured for this side"
NOT_CONNECTED = "no server of the domain accepted a connection"


class LookupFailed(ConnectError):
    """No address to connect to: the lookup failed, timed out, or the domain offers no service."""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # "." means no service
    direct_tls: bool = False  # from _xmpps-server: TLS from the first byte (XEP-0368)


def order_records(records, random) -> list[SrvRecord]:
    """RFC 2782: lowest priority first; within a priority, weighted random (weight 0 first in the draw's list)."""
    ordered = []
    for priority in sorted({record.priority for record in records}):
        pool = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while pool:
            total = sum(record.weight for record in pool)
            chosen = random.randint(0, total)
            running = 0
            for index, record in enumerate(pool):
                running += record.weight
                if running >= chosen:
                    ordered.append(pool.pop(index))
                    break
    return ordered


class AnswerCache:
    """Answers by (name, kind) until their TTL ends, bounded in entries and bytes (the oldest go first)."""

    def __init__(self, clock, max_entries=CACHE_ENTRIES, max_bytes=CACHE_BYTES):
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict = OrderedDict()  # key -> (expires, value, size)
        self.bytes = 0

    def get(self, key):
        entry = self.entries.get(key)
        if entry is None:
            return None
        expires, value, _ = entry
        if expires <= self.clock.seconds():
            self._remove(key)
            return None
        return value

    def put(self, key, value, ttl, size):
        """Keep ``value`` for ``ttl`` seconds (at most MAX_TTL); nothing is kept larger than the whole cache."""
        if key in self.entries:
            self._remove(key)
        size += ENTRY_OVERHEAD
        if ttl <= 0 or size > self.max_bytes:
            return
        while self.entries and (len(self.entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            self._remove(next(iter(self.entries)))
        self.entries[key] = (self.clock.seconds() + min(ttl, MAX_TTL), value, size)
        self.bytes += size

    def _remove(self, key):
        _, _, size = self.entries.pop(key)
        self.bytes -= size


def _name(value) -> str:
    """A DNS name (of a record, a dns.Name, bytes or text) in lower case without its final dot; "." for the root."""
    if isinstance(value, dns.RRHeader):
        value = value.name
    if isinstance(value, dns.Name):
        value = value.name
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.lower().rstrip(".") or "."


class DomainResolver:
    """
    A side's view of the DNS: SRV targets and addresses of names, asked of
    ``names`` (a twisted.names IResolver, e.g. ``client.Resolver(servers=[…])``),
    cached, each question bounded by ``lookup_seconds`` on ``clock``.
    """

    def __init__(self, names, clock, cache=None, random=None, lookup_seconds=LOOKUP_SECONDS):
        self.names = names
        self.clock = clock
        self.cache = cache if cache is not None else AnswerCache(clock)
        self.random = random or random_module.SystemRandom()
        self.lookup_seconds = lookup_seconds

    @defer.inlineCallbacks
    def targets(self, domain):
        """The (host, port, direct_tls) to try for ``domain``, in RFC 2782 order over the records of both
        services; its own name on 5269 (STARTTLS) without SRV records."""
        direct = yield self._lookup(DIRECT_TLS_PREFIX + domain, dns.SRV, "lookupService")
        starttls = yield self._lookup(SERVICE_PREFIX + domain, dns.SRV, "lookupService")
        records = [SrvRecord(r.priority, r.weight, r.port, r.target, True) for r in direct or ()] + list(starttls or ())
        if not records:
            return [(domain, DEFAULT_PORT, False)]
        usable = [record for record in records if record.target != "."]
        if not usable:
            raise LookupFailed(string=NO_SERVICE)
        return [(record.target, record.port, record.direct_tls) for record in order_records(usable, self.random)]

    @defer.inlineCallbacks
    def addresses(self, host):
        """The IPv4 then IPv6 addresses of ``host`` (an address is its own); [] when it has none; LookupFailed
        when neither question was answered."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found, failures = [], []
        for kind, method in ((dns.A, "lookupAddress"), (dns.AAAA, "lookupIPV6Address")):
            try:
                found += (yield self._lookup(host, kind, method)) or []
            except LookupFailed as problem:
                failures.append(problem)
        if len(failures) == 2:
            raise failures[0]
        return found

    @defer.inlineCallbacks
    def _lookup(self, name, kind, method):
        """The cached or fresh records of one kind for ``name`` (None: no such records); LookupFailed otherwise."""
        key = (name.lower(), kind)
        cached = self.cache.get(key)
        if cached is not None:
            return cached or None
        question = getattr(self.names, method)(name)
        question.addTimeout(self.lookup_seconds, self.clock)
        try:
            answers, _, _ = yield question
        except (dns_error.DNSNameError, dns_error.AuthoritativeDomainError):  # NXDOMAIN: no such name
            self.cache.put(key, (), NEGATIVE_TTL, len(name))
            return None
        except defer.CancelledError:
            raise
        except Exception as problem:  # noqa: BLE001 - a failed or timed-out lookup fails closed, uncached
            raise LookupFailed(string=f"looking up {name} failed: {peer_detail(repr(problem))}") from problem
        wanted = [answer for answer in answers if answer.type == kind and _name(answer) == name.lower()][:MAX_RECORDS]
        values = tuple(self._value(answer.payload) for answer in wanted)
        ttl = min((answer.ttl for answer in wanted), default=NEGATIVE_TTL)
        self.cache.put(key, values, ttl, len(name) + sum(ENTRY_OVERHEAD + len(str(v)) for v in values))
        return values or None

    @staticmethod
    def _value(payload):
        if isinstance(payload, dns.Record_SRV):
            return SrvRecord(payload.priority, payload.weight, payload.port, _name(payload.target))
        if isinstance(payload, dns.Record_A):
            return payload.dottedQuad()
        return socket.inet_ntop(socket.AF_INET6, payload.address)


@implementer(IStreamClientEndpoint)
class SrvEndpoint:
    """Connects to the servers of ``domain`` found through ``resolver`` (a DomainResolver), in turn."""

    def __init__(self, reactor, resolver, domain, timeout, max_attempts=MAX_ATTEMPTS):
        self.reactor = reactor
        self.resolver = resolver
        self.domain = domain
        self.timeout = timeout
        self.max_attempts = max_attempts

    def connect(self, factory):
        return self._connect(factory)

    @defer.inlineCallbacks
    def _connect(self, factory):
        if self.resolver is None:
            raise LookupFailed(string=NO_DNS)
        targets = yield self.resolver.targets(self.domain)
        attempts, failures = 0, []
        for host, port, direct_tls in targets[: self.max_attempts]:
            if attempts >= self.max_attempts:
                break
            try:
                addresses = yield self.resolver.addresses(host)
            except LookupFailed as problem:
                failures.append(f"{host}: {problem}")
                continue
            for address in addresses[: self.max_attempts - attempts]:
                attempts += 1
                kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
                try:
                    endpoint = kind(self.reactor, address, port, timeout=self.timeout)
                    return (yield endpoint.connect(_DirectTls(factory) if direct_tls else factory))
                except defer.CancelledError:
                    raise
                except Exception as problem:  # noqa: BLE001 - refused, timed out, unreachable: the next one
                    log.info("{domain}: {address} port {port} ({host}) did not connect: {problem}",
                             domain=self.domain, address=address, port=port, host=host, problem=peer_detail(str(problem)))
                    failures.append(f"{host} {address}:{port}: {problem}")
        raise LookupFailed(string=f"{NOT_CONNECTED} ({attempts} tried): {'; '.join(failures)[:500]}")


class _DirectTls(Factory):
    """Builds what ``factory`` builds, told (``direct_tls = True``) to start TLS as soon as it is connected."""

    def __init__(self, factory):
        self.factory = factory

    def buildProtocol(self, address):
        protocol = self.factory.buildProtocol(address)
        if protocol is not None:
            protocol.direct_tls = True
        return protocol


@implementer(IOpenSSLClientConnectionCreator)
class _OfferingAlpn:
    """TLS client options that also offer ALPN ``xmpp-server`` (XEP-0368), around ``inner``'s."""

    def __init__(self, inner):
        self.inner = inner

    def clientConnectionForTLS(self, tls_protocol):
        connection = self.inner.clientConnectionForTLS(tls_protocol)
        connection.set_alpn_protos([ALPN_PROTOCOL])
        return connection


def direct_tls_options(options):
    """The client options of a direct TLS connection: ``options`` (SNI and the certificate check for the
    domain) offering ALPN ``xmpp-server``."""
    return _OfferingAlpn(options)


def side_resolver(server, reactor, lookup_seconds=LOOKUP_SECONDS) -> DomainResolver | None:
    """The DomainResolver asking only the DNS server ``server`` ((address, port)), or None without one."""
    if server is None:
        return None
    from twisted.names import client

    names = client.Resolver(servers=[server], reactor=reactor, timeout=(1, 3))
    return DomainResolver(names, reactor, lookup_seconds=lookup_seconds)
