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
most ``MAX_ATTEMPTS`` addresses, each with the route's connect timeout, the
whole search (lookups and connections) within ``search_seconds`` (at least
``SEARCH_SECONDS``).  A refused or timed-out connection means the next
address is tried; when none is left the connection fails and the carrier
bounces what waits (remote-server-not-found).

Everything the DNS says is hostile:

- At most ``MAX_RECORDS`` records of one answer are kept; a record on port 0
  is no server.  A CNAME in an answer is followed inside that answer only
  (no further question), at most ``MAX_ALIASES`` deep; a loop or a longer
  chain fails the lookup.
- An address that is no single host (0.0.0.0 or ::, which reach this
  machine, multicast, broadcast) is never connected to, and neither is a
  target that is the guard itself: a name the guard fronts on this side
  (``own_names``, from the side) or the address and port of one of its
  own listeners (``own_listeners``: the reactor's listening TCP ports; one
  bound to every address matches any address of this machine).  A loop
  through the guard would carry each stanza again and again.
- A TTL with its highest bit set counts as 0 (RFC 2181 8): not cached.
- When every address tried for a domain failed to connect, a connection to
  that domain within ``HOLD_DOWN_SECONDS`` fails at once (remembered for at
  most ``CACHE_ENTRIES`` domains): stanzas arriving one by one cannot turn
  the guard into a stream of connection attempts at addresses the DNS
  chose.

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
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IListeningPort, IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.names import dns, error as dns_error
from twisted.python.failure import Failure
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
MAX_ALIASES = 8  # CNAMEs followed inside one answer
TTL_TOP_BIT = 2**31  # RFC 2181 8: a TTL with this bit set is taken as 0
SEARCH_SECONDS = 60.0  # the whole search for a server (lookups and connections), at least the connect timeout
HOLD_DOWN_SECONDS = 5.0  # after every server of a domain failed to connect, its next search waits this long

NO_SERVICE = "the domain offers no XMPP server service"
NO_DNS = "no DNS server is configured for this side"
NOT_CONNECTED = "no server of the domain accepted a connection"
SEARCH_TOO_LONG = "no server of the domain was found and connected to in time"
NOT_A_HOST = "an address that is no single host"
THE_GUARD_ITSELF = "the guard itself"
ALIAS_LOOP = "a CNAME chain that loops or is too long"


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


def answer_ttl(answer) -> int:
    """The TTL of one record; 0 when its highest bit is set (RFC 2181 8: such a TTL is taken as 0)."""
    return 0 if answer.ttl >= TTL_TOP_BIT else answer.ttl


def records_of(answers, name, kind):
    """
    The records of ``kind`` (class IN) for ``name`` in one answer and the CNAMEs
    followed to them: a CNAME is followed inside the answer (never asked further), at
    most MAX_ALIASES deep; a loop or a longer chain is LookupFailed.
    """
    wanted, aliases, seen = name.lower(), [], set()
    for _ in range(MAX_ALIASES + 1):
        seen.add(wanted)
        found = [answer for answer in answers if answer.type == kind and answer.cls == dns.IN and _name(answer) == wanted]
        if found:
            return found, aliases
        alias = next((answer for answer in answers
                      if answer.type == dns.CNAME and answer.cls == dns.IN and _name(answer) == wanted), None)
        if alias is None:
            return [], aliases
        aliases.append(alias)
        wanted = _name(alias.payload.name)
        if wanted in seen:
            break
    raise LookupFailed(string=f"looking up {peer_detail(name)}: {ALIAS_LOOP}")


def not_a_host(address: str) -> bool:
    """Whether ``address`` is no single far host: unspecified (it reaches this machine), multicast, broadcast,
    IPv4 240/4; an IPv4-mapped IPv6 address is judged as its IPv4 address."""
    parsed = _comparable(address)
    if isinstance(parsed, ipaddress.IPv4Address) and (parsed.is_reserved or parsed == BROADCAST):
        return True
    return parsed.is_unspecified or parsed.is_multicast


def own_listeners(reactor) -> list[tuple[str, int]]:
    """The (address, port) of every TCP port ``reactor`` listens on now (the guard's sides, its management)."""
    readers = getattr(reactor, "getReaders", None)
    if readers is None:
        return []
    found = []
    for reader in readers():
        if not IListeningPort.providedBy(reader):
            continue
        host = reader.getHost()
        if getattr(host, "type", None) == "TCP":
            found.append((host.host, host.port))
    return found


def is_local_address(address: str) -> bool:
    """Whether ``address`` is one of this machine's (a socket can be bound to it: no packet is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def loops_to_guard(address: str, port: int, listeners, is_local=is_local_address) -> bool:
    """Whether connecting to ``address`` ``port`` reaches one of ``listeners`` ((address, port) the guard listens
    on): the same address and port, or the port of a listener bound to every address and an address of this
    machine."""
    target = _comparable(address)
    for host, listening_port in listeners:
        if listening_port != port:
            continue
        bound = _comparable(host)
        if bound == target or (bound.is_unspecified and is_local(address)):
            return True
    return False


BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _comparable(address: str):
    parsed = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class DomainResolver:
    """
    A side's view of the DNS: SRV targets and addresses of names, asked of
    ``names`` (a twisted.names IResolver, e.g. ``client.Resolver(servers=[…])``),
    cached, each question bounded by ``lookup_seconds`` on ``clock``.
    """

    def __init__(self, names, clock, cache=None, random=None, lookup_seconds=LOOKUP_SECONDS, own_names=frozenset(),
                 listeners=own_listeners, is_local=is_local_address):
        self.names = names
        self.clock = clock  # the reactor: its listening ports are the guard's own (``listeners``)
        self.cache = cache if cache is not None else AnswerCache(clock)
        self.random = random or random_module.SystemRandom()
        self.lookup_seconds = lookup_seconds
        self.own_names = frozenset(own_names)  # the domains the guard fronts on this side: targets never tried
        self.listeners = listeners  # listeners(reactor): the (address, port) the guard listens on
        self.is_local = is_local
        self.held_down: OrderedDict[str, tuple[float, str]] = OrderedDict()  # domain -> (until, why), oldest first

    def hold_down(self, domain: str, why: str) -> None:
        """No server of ``domain`` accepted a connection: the next HOLD_DOWN_SECONDS fail at once with ``why``."""
        self.held_down.pop(domain, None)
        while len(self.held_down) >= CACHE_ENTRIES:
            self.held_down.popitem(last=False)
        self.held_down[domain] = (self.clock.seconds() + HOLD_DOWN_SECONDS, why)

    def holding_down(self, domain: str) -> str | None:
        """Why ``domain`` is held down now, or None (its hold-down over, or a server of it connected)."""
        entry = self.held_down.get(domain)
        if entry is None:
            return None
        until, why = entry
        if until <= self.clock.seconds():
            del self.held_down[domain]
            return None
        return why

    def refusal(self, address: str, port: int) -> str | None:
        """Why ``address`` ``port`` is never connected to (no single host, or the guard itself), or None."""
        if not_a_host(address):
            return NOT_A_HOST
        if loops_to_guard(address, port, self.listeners(self.clock), self.is_local):
            return THE_GUARD_ITSELF
        return None

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
        looping = [record for record in usable if record.target in self.own_names]
        if looping:
            log.warn("{domain}: SRV targets that name the guard itself are not tried: {targets}", domain=domain,
                     targets=peer_detail(", ".join(sorted({record.target for record in looping}))))
            usable = [record for record in usable if record.target not in self.own_names]
            if not usable:
                raise LookupFailed(string=f"every SRV target of {domain} is {THE_GUARD_ITSELF}")
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
        wanted, aliases = records_of(answers, name, kind)
        values = tuple(value for value in map(self._value, (answer.payload for answer in wanted[:MAX_RECORDS]))
                       if value is not None)
        ttl = min((answer_ttl(answer) for answer in wanted + aliases), default=NEGATIVE_TTL)
        self.cache.put(key, values, ttl, len(name) + sum(ENTRY_OVERHEAD + len(str(v)) for v in values))
        return values or None

    @staticmethod
    def _value(payload):
        """What is kept of one record: an SrvRecord, an address; None for a record on port 0 (no server there)."""
        if isinstance(payload, dns.Record_SRV):
            if payload.port == 0 and _name(payload.target) != ".":
                return None
            return SrvRecord(payload.priority, payload.weight, payload.port, _name(payload.target))
        if isinstance(payload, dns.Record_A):
            return payload.dottedQuad()
        return socket.inet_ntop(socket.AF_INET6, payload.address)


@implementer(IStreamClientEndpoint)
class SrvEndpoint:
    """Connects to the servers of ``domain`` found through ``resolver`` (a DomainResolver), in turn."""

    def __init__(self, reactor, resolver, domain, timeout, max_attempts=MAX_ATTEMPTS, search_seconds=None):
        self.reactor = reactor
        self.resolver = resolver
        self.domain = domain
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.search_seconds = max(SEARCH_SECONDS, timeout) if search_seconds is None else search_seconds

    def connect(self, factory):
        """The connected protocol, or LookupFailed: every lookup and connection ends within search_seconds."""
        deadline = self.reactor.seconds() + self.search_seconds
        searching = self._connect(factory, deadline)
        searching.addTimeout(self.search_seconds, self.reactor, onTimeoutCancel=self._too_long)
        return searching

    def _too_long(self, result, timeout):
        return Failure(LookupFailed(string=f"{SEARCH_TOO_LONG} ({timeout:g} s)"))

    @defer.inlineCallbacks
    def _connect(self, factory, deadline):
        if self.resolver is None:
            raise LookupFailed(string=NO_DNS)
        held = self.resolver.holding_down(self.domain)
        if held is not None:
            raise LookupFailed(string=f"{held} (held down {HOLD_DOWN_SECONDS:g} s)")
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
            for address in addresses:
                if attempts >= self.max_attempts:
                    break
                refusal = self.resolver.refusal(address, port)
                if refusal is not None:
                    log.warn("{domain}: {address} port {port} ({host}) is not tried: {refusal}", domain=self.domain,
                             address=address, port=port, host=peer_detail(host), refusal=refusal)
                    failures.append(f"{host} {address}:{port}: {refusal}")
                    continue
                attempts += 1
                kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
                timeout = max(0.001, min(self.timeout, deadline - self.reactor.seconds()))
                try:
                    endpoint = kind(self.reactor, address, port, timeout=timeout)
                    connected = yield endpoint.connect(_DirectTls(factory) if direct_tls else factory)
                    self.resolver.held_down.pop(self.domain, None)
                    return connected
                except (defer.CancelledError, ConnectingCancelledError):  # the search was called off: no next one
                    raise
                except Exception as problem:  # noqa: BLE001 - refused, timed out, unreachable: the next one
                    log.info("{domain}: {address} port {port} ({host}) did not connect: {problem}",
                             domain=self.domain, address=address, port=port, host=peer_detail(host),
                             problem=peer_detail(str(problem)))
                    failures.append(f"{host} {address}:{port}: {problem}")
        why = f"{NOT_CONNECTED} ({attempts} tried): {'; '.join(failures)[:500]}"
        if attempts:
            self.resolver.hold_down(self.domain, why)
        raise LookupFailed(string=why)


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
