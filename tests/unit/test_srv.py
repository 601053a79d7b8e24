"""
DNS SRV routing (guard.edges.s2s.srv): RFC 2782 order, the fallback to the
domain's own addresses on 5269, the bounded answer cache, lookups that fail
closed, the next target after a refusal or a timeout, the ``srv`` route in
the configuration, and the far certificate checked for the domain, never for
the SRV target.  The DNS is a twisted.names resolver answering from a table.
"""

import random

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import common, dns, error as dns_error
from twisted.python.failure import Failure

from guard.app.config import ConfigError, SrvRoute, configured_route, load_config
from guard.edges.s2s.carrier import open_outbound_stream
from guard.edges.s2s.routes import route_endpoint
from guard.edges.s2s.srv import (
    DEFAULT_PORT, ENTRY_OVERHEAD, NEGATIVE_TTL, AnswerCache, DomainResolver, LookupFailed, SrvEndpoint, SrvRecord,
    order_records,
)
from guard.lab.topology import render_guard_config

from .streams.sides import make_side, pki
from .test_config import write


class TableResolver(common.ResolverBase):
    """A DNS server in a dict: (name, type) -> [(payload, ttl)]; a name absent from every key is NXDOMAIN;
    ``silent`` names never answer; each question asked is written down."""

    def __init__(self, records, silent=()):
        super().__init__()
        self.records = records
        self.silent = set(silent)
        self.asked = []

    def _lookup(self, name, cls, type, timeout):  # noqa: A002 - Twisted's signature
        name = name.decode() if isinstance(name, bytes) else name
        self.asked.append((name, type))
        if name in self.silent:
            return defer.Deferred()
        if not any(known == name for known, _ in self.records):
            return defer.fail(dns_error.DNSNameError(name))
        answers = [dns.RRHeader(name=name, type=type, ttl=ttl, payload=payload)
                   for payload, ttl in self.records.get((name, type), [])]
        return defer.succeed((answers, [], []))


def srv(priority, weight, port, target, ttl=300):
    return dns.Record_SRV(priority=priority, weight=weight, port=port, target=target, ttl=ttl), ttl


def a(address, ttl=300):
    return dns.Record_A(address=address, ttl=ttl), ttl


def found(deferred):
    """The result of a Deferred that has fired, or its failure raised."""
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


TWO_GUARDS = {
    ("_xmpp-server._tcp.blue.example", dns.SRV): [srv(10, 60, 5269, "guard-a.lab.example"),
                                                   srv(10, 40, 5270, "guard-b.lab.example")],
    ("guard-a.lab.example", dns.A): [a("127.0.3.1")],
    ("guard-b.lab.example", dns.A): [a("127.0.3.2")],
}


# -- order ----------------------------------------------------------------------


def test_records_are_ordered_by_priority_then_drawn_by_weight():
    """Every record of priority 10 comes before any of priority 20, and within a priority the heavier record
    comes first about as often as its share of the weight."""
    records = [SrvRecord(20, 0, 1, "late"), SrvRecord(10, 90, 1, "heavy"), SrvRecord(10, 10, 1, "light")]
    draw = random.Random(7)
    firsts = [order_records(records, draw)[0].target for _ in range(2000)]
    assert all(order_records(records, draw)[-1].target == "late" for _ in range(50))
    assert 0.85 < firsts.count("heavy") / len(firsts) < 0.95 and set(firsts) == {"heavy", "light"}


def test_a_record_of_weight_zero_is_drawn_only_when_the_draw_is_zero():
    """RFC 2782 puts weight-0 records first in the list drawn from, so they win only a draw of 0."""
    records = [SrvRecord(0, 5, 1, "weighted"), SrvRecord(0, 0, 1, "zero")]

    class Fixed:
        def __init__(self, value):
            self.value = value

        def randint(self, low, high):
            return min(self.value, high)

    assert [r.target for r in order_records(records, Fixed(0))] == ["zero", "weighted"]
    assert [r.target for r in order_records(records, Fixed(3))] == ["weighted", "zero"]


# -- lookups --------------------------------------------------------------------


def test_targets_come_from_the_srv_records_of_the_side_dns():
    """The targets of blue.example are the SRV records' hosts and ports, in order, asked of the side's DNS."""
    names = TableResolver(TWO_GUARDS)
    resolver = DomainResolver(names, Clock(), random=random.Random(1))
    targets = found(resolver.targets("blue.example"))
    assert sorted(targets) == [("guard-a.lab.example", 5269, False), ("guard-b.lab.example", 5270, False)]
    assert names.asked == [("_xmpps-server._tcp.blue.example", dns.SRV), ("_xmpp-server._tcp.blue.example", dns.SRV)]
    assert found(resolver.addresses("guard-b.lab.example")) == ["127.0.3.2"]


def test_without_srv_records_the_domain_itself_is_tried_on_5269():
    """RFC 6120 3.2: no SRV record (NXDOMAIN, or a name without one) means the domain's own A/AAAA on 5269."""
    names = TableResolver({("blue.example", dns.A): [a("127.0.2.1")],
                           ("_xmpp-server._tcp.conference.blue.example", dns.TXT): []})
    resolver = DomainResolver(names, Clock())
    assert found(resolver.targets("blue.example")) == [("blue.example", DEFAULT_PORT, False)]
    assert found(resolver.targets("conference.blue.example")) == [("conference.blue.example", 5269, False)]
    assert found(resolver.addresses("blue.example")) == ["127.0.2.1"]


def test_a_dot_target_means_the_domain_offers_no_service():
    """A single SRV record whose target is "." says there is no XMPP server: no fallback, the lookup fails."""
    names = TableResolver({("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 0, 0, "")]})
    with pytest.raises(LookupFailed, match="offers no XMPP server"):
        found(DomainResolver(names, Clock()).targets("blue.example"))


def test_direct_tls_records_are_ordered_with_the_starttls_ones_and_marked():
    """XEP-0368: _xmpps-server records join the _xmpp-server ones in one RFC 2782 order, marked direct TLS."""
    names = TableResolver({("_xmpps-server._tcp.blue.example", dns.SRV): [srv(5, 1, 5223, "tls.lab.example")],
                           ("_xmpp-server._tcp.blue.example", dns.SRV): [srv(1, 1, 5269, "plain.lab.example"),
                                                                          srv(9, 1, 5269, "last.lab.example")]})
    assert found(DomainResolver(names, Clock()).targets("blue.example")) == [
        ("plain.lab.example", 5269, False), ("tls.lab.example", 5223, True), ("last.lab.example", 5269, False)]


def test_a_lookup_without_answer_fails_closed_within_its_bound_and_is_not_cached():
    """A DNS server that never answers fails the lookup after lookup_seconds; the next connection asks again."""
    clock = Clock()
    names = TableResolver({}, silent={"_xmpp-server._tcp.blue.example"})
    resolver = DomainResolver(names, clock, lookup_seconds=5)
    pending = resolver.targets("blue.example")
    clock.advance(4.9)
    assert not pending.called
    clock.advance(0.2)
    with pytest.raises(LookupFailed, match="looking up _xmpp-server._tcp.blue.example failed"):
        found(pending)
    resolver.targets("blue.example")
    assert names.asked.count(("_xmpp-server._tcp.blue.example", dns.SRV)) == 2
    assert ("_xmpp-server._tcp.blue.example", dns.SRV) not in resolver.cache.entries


def test_a_server_failure_fails_the_lookup_closed():
    """SERVFAIL (or any error that is not "no such name") is no route, never a fallback to the domain."""
    class Failing(common.ResolverBase):
        def _lookup(self, name, cls, type, timeout):  # noqa: A002
            return defer.fail(dns_error.DNSServerError(name))

    with pytest.raises(LookupFailed):
        found(DomainResolver(Failing(), Clock()).targets("blue.example"))


# -- the cache ------------------------------------------------------------------


def test_answers_are_cached_for_their_ttl():
    """A second lookup within the TTL is answered from the cache; after it the side's DNS is asked again;
    a name without records is remembered for NEGATIVE_TTL."""
    clock = Clock()
    records = dict(TWO_GUARDS)
    records[("_xmpp-server._tcp.blue.example", dns.SRV)] = [srv(0, 1, 5269, "guard-a.lab.example", ttl=60)]
    names = TableResolver(records)
    resolver = DomainResolver(names, clock)
    question = ("_xmpp-server._tcp.blue.example", dns.SRV)
    found(resolver.targets("blue.example"))
    clock.advance(59)
    found(resolver.targets("blue.example"))
    assert names.asked.count(question) == 1
    clock.advance(2)
    found(resolver.targets("blue.example"))
    assert names.asked.count(question) == 2
    found(resolver.targets("red.example"))
    clock.advance(NEGATIVE_TTL - 1)
    found(resolver.targets("red.example"))
    assert names.asked.count(("_xmpp-server._tcp.red.example", dns.SRV)) == 1


def test_the_cache_is_bounded_in_entries_and_in_bytes():
    """Past max_entries or max_bytes the oldest answers go; an answer larger than the whole cache is not kept."""
    clock = Clock()
    by_count = AnswerCache(clock, max_entries=3, max_bytes=10_000)
    for index in range(5):
        by_count.put(index, (index,), 60, 10)
    assert list(by_count.entries) == [2, 3, 4] and by_count.get(0) is None and by_count.get(4) == (4,)
    by_bytes = AnswerCache(clock, max_entries=100, max_bytes=3 * (ENTRY_OVERHEAD + 100))
    for index in range(5):
        by_bytes.put(index, (index,), 60, 100)
    assert list(by_bytes.entries) == [2, 3, 4] and by_bytes.bytes == 3 * (ENTRY_OVERHEAD + 100)
    by_bytes.put("huge", ("x",), 60, 10_000)
    assert "huge" not in by_bytes.entries and by_bytes.bytes <= by_bytes.max_bytes


def test_a_resolver_counts_what_it_caches_in_bytes():
    """The resolver's cache never holds more bytes than its bound, however many names are asked."""
    clock = Clock()
    records = {(f"host{index}.lab.example", dns.A): [a("127.0.3.1")] for index in range(50)}
    resolver = DomainResolver(TableResolver(records), clock, cache=AnswerCache(clock, max_entries=1000, max_bytes=2000))
    for index in range(50):
        found(resolver.addresses(f"host{index}.lab.example"))
    assert 0 < resolver.cache.bytes <= 2000 and len(resolver.cache.entries) < 100


# -- connecting ------------------------------------------------------------------


def endpoint_for(records, reactor, max_attempts=6):
    resolver = DomainResolver(TableResolver(records), reactor, random=random.Random(3))
    return SrvEndpoint(reactor, resolver, "blue.example", timeout=7, max_attempts=max_attempts)


def test_a_refused_target_is_followed_by_the_next_one():
    """The first target refuses: the second is connected to, each with the route's connect timeout."""
    reactor = MemoryReactorClock()
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, 5269, "guard-a.lab.example"),
                                                              srv(1, 1, 5270, "guard-b.lab.example")],
               ("guard-a.lab.example", dns.A): [a("127.0.3.1")], ("guard-b.lab.example", dns.A): [a("127.0.3.2")]}
    from twisted.internet.protocol import Factory, Protocol

    connecting = endpoint_for(records, reactor).connect(Factory.forProtocol(Protocol))
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.3.1", 5269, 7)
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("down")))
    host, port, factory, timeout, _ = reactor.tcpClients[1]
    assert (host, port, timeout) == ("127.0.3.2", 5270, 7)
    assert not connecting.called


def test_a_target_that_times_out_is_followed_by_the_next_one_and_ipv6_is_tried_too():
    """The first target's connection times out: its IPv6 address is tried next (tcp6), then the next target."""
    from twisted.internet.error import TimeoutError as ConnectTimeout
    from twisted.internet.protocol import Factory, Protocol

    reactor = MemoryReactorClock()
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, 5269, "guard-a.lab.example"),
                                                              srv(1, 1, 5269, "guard-b.lab.example")],
               ("guard-a.lab.example", dns.A): [a("127.0.3.1")],
               ("guard-a.lab.example", dns.AAAA): [(dns.Record_AAAA(address="::1", ttl=300), 300)],
               ("guard-b.lab.example", dns.A): [a("127.0.3.2")]}
    endpoint_for(records, reactor).connect(Factory.forProtocol(Protocol))
    tried = []
    for attempt in range(3):
        host, port, factory, timeout, _ = reactor.tcpClients[attempt]
        tried.append((host, port, timeout))
        if attempt < 2:
            factory.clientConnectionFailed(None, Failure(ConnectTimeout("slow")))
    assert tried == [("127.0.3.1", 5269, 7), ("::1", 5269, 7), ("127.0.3.2", 5269, 7)]


def test_a_fault_inside_the_endpoint_fails_the_connection_closed():
    """Whatever goes wrong while finding the servers (here the resolver raises) fails the connection: no stream."""
    from twisted.internet.protocol import Factory, Protocol

    class Broken:
        def holding_down(self, domain):
            return None

        def targets(self, domain):
            raise RuntimeError("broken resolver")

    reactor = MemoryReactorClock()
    connecting = SrvEndpoint(reactor, Broken(), "blue.example", timeout=7).connect(Factory.forProtocol(Protocol))
    with pytest.raises(RuntimeError):
        found(connecting)
    assert reactor.tcpClients == []


def test_attempts_are_bounded_and_the_last_failure_fails_the_connection():
    """With more targets than max_attempts, only max_attempts are tried; when all fail, the connection fails."""
    reactor = MemoryReactorClock()
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(index, 1, 5269, f"g{index}.lab.example")
                                                              for index in range(5)]}
    records.update({(f"g{index}.lab.example", dns.A): [a(f"127.0.3.{index + 1}")] for index in range(5)})
    from twisted.internet.protocol import Factory, Protocol

    connecting = endpoint_for(records, reactor, max_attempts=3).connect(Factory.forProtocol(Protocol))
    for attempt in range(3):
        _, _, factory, _, _ = reactor.tcpClients[attempt]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("down")))
    assert len(reactor.tcpClients) == 3
    with pytest.raises(LookupFailed, match=r"no server of the domain accepted a connection \(3 tried\)"):
        found(connecting)


def test_a_side_without_dns_fails_an_srv_route_closed():
    """An srv: route on a side with no DNS server is no route: the stream fails remote-server-not-found."""
    reactor = MemoryReactorClock()
    heard = []

    class Owner:
        def stream_failed(self, stream, condition, text):
            heard.append(condition)

    open_outbound_stream(Owner(), make_side("blue", reactor), "red.example", "blue.example",
                         "srv:domain=blue.example:timeout=5")
    assert heard == ["remote-server-not-found"] and reactor.tcpClients == []


def test_the_carrier_bounces_what_waits_when_every_target_fails():
    """Through a carrier: the lookup times out, so the stanza waiting is bounced remote-server-not-found."""
    from tests.unit.test_carriers import RecordingOwner, parcel
    from guard.edges.s2s.carrier import S2SCarrier

    reactor = MemoryReactorClock()
    side = make_side("blue", reactor, routes={"blue.example": "srv:domain=blue.example:timeout=5"})
    side.resolver = DomainResolver(TableResolver({}, silent={"_xmpp-server._tcp.blue.example"}), reactor,
                                   lookup_seconds=5)
    log = []
    carrier = S2SCarrier(RecordingOwner(log), side, "red.example", "blue.example")
    carrier.carry(parcel(1))
    reactor.advance(5.1)
    assert ("undeliverable", "m1", "remote-server-not-found") in [entry[:3] for entry in log]
    assert carrier.state.value == "idle"


# -- configuration -------------------------------------------------------------------


def test_a_route_written_srv_is_looked_up_through_the_side_dns(tmp_path):
    """ "srv" in a side's domains table is the srv: route of that domain with the connect timeout; the side's
    dns key is its DNS server, and the service gives the side a resolver asking only that server."""
    from guard.app.service import GuardService

    text = render_guard_config(pki(), "certificate").replace(
        '"blue.example" = "127.0.2.1:5269"', '"blue.example" = "srv"').replace(
        '[sides.blue.domains]', 'dns = "127.0.1.53:5300"\n\n[sides.blue.domains]')
    config = load_config(str(write(tmp_path, text)))
    assert config.sides["blue"].domains["blue.example"] == SrvRoute("blue.example")
    assert config.sides["blue"].dns == ("127.0.1.53", 5300) and config.sides["red"].dns is None
    assert configured_route(SrvRoute("blue.example"), 10.0) == "srv:domain=blue.example:timeout=10"
    service = GuardService(config, MemoryReactorClock())
    blue = service.sides["blue"]
    assert blue.routes["blue.example"] == "srv:domain=blue.example:timeout=10"
    assert blue.resolver.names.pickServer() == ("127.0.1.53", 5300) and service.sides["red"].resolver is None
    assert blue.resolver.own_names == blue.fronted and "red.example" in blue.resolver.own_names


def test_an_srv_route_needs_the_side_dns_and_a_dns_server_must_be_an_address(tmp_path):
    """Without dns the srv route is refused naming the key; dns must be address:port (no name: no system resolver)."""
    base = render_guard_config(pki(), "certificate")
    without = base.replace('"blue.example" = "127.0.2.1:5269"', '"blue.example" = "srv"')
    with pytest.raises(ConfigError, match="sides.blue.domains.blue.example: an srv route needs sides.blue.dns"):
        load_config(str(write(tmp_path, without)))
    spelled = base.replace('"blue.example" = "127.0.2.1:5269"',
                           '"blue.example" = "srv:domain=blue.example:timeout=3"').replace(
        '[sides.blue.domains]', 'dns = "[::1]:53"\n\n[sides.blue.domains]')
    config = load_config(str(write(tmp_path, spelled)))
    assert config.sides["blue"].domains["blue.example"] == "srv:domain=blue.example:timeout=3"
    assert config.sides["blue"].dns == ("::1", 53)
    with pytest.raises(ConfigError, match="sides.blue.domains.blue.example: must be"):
        load_config(str(write(tmp_path, spelled.replace("timeout=3", "timeout=soon"))))
    for bad in ("dns.example:53", "127.0.0.1", "127.0.0.1:0"):
        text = base.replace('[sides.blue.domains]', f'dns = "{bad}"\n\n[sides.blue.domains]')
        with pytest.raises(ConfigError, match="sides.blue.dns: must be"):
            load_config(str(write(tmp_path, text)))


def test_an_srv_endpoint_string_is_checked():
    """srv: takes domain= and timeout=; anything else is a ValueError naming the kind."""
    endpoint = route_endpoint(MemoryReactorClock(), "srv:domain=Blue.Example:timeout=4", resolver="dns")
    assert (endpoint.domain, endpoint.timeout, endpoint.resolver) == ("blue.example", 4, "dns")
    for broken in ("srv:", "srv:timeout=3", "srv:domain=x:port=5", "srv:domain=x:timeout=0"):
        with pytest.raises(ValueError, match="srv:"):
            route_endpoint(MemoryReactorClock(), broken)


# -- the lab's DNS responder -----------------------------------------------------------


def test_the_lab_dns_answers_several_srv_targets_and_their_addresses():
    """--srv records replace a domain's record pointing at itself; --host gives each target its A record."""
    from guard.lab.dns import ServerAddress, answer_for, parse_host_argument, parse_srv_argument

    table = {"blue.example": ServerAddress("127.0.3.1", 5269)}
    services = {"blue.example": [parse_srv_argument("blue.example=0:60:5269:guard-a.lab.example")[1],
                                 parse_srv_argument("blue.example=0:40:5270:guard-b.lab.example")[1]]}
    hosts = dict([parse_host_argument("guard-a.lab.example=127.0.3.1"),
                  parse_host_argument("guard-b.lab.example=127.0.4.1")])
    answers = answer_for(table, "_xmpp-server._tcp.blue.example", dns.SRV, services, hosts)
    assert [(r.payload.weight, r.payload.port, str(r.payload.target)) for r in answers] == [
        (60, 5269, "guard-a.lab.example"), (40, 5270, "guard-b.lab.example")]
    assert answer_for(table, "guard-b.lab.example", dns.A, services, hosts)[0].payload.dottedQuad() == "127.0.4.1"
    assert answer_for(table, "guard-b.lab.example", dns.AAAA, services, hosts) == []
    assert answer_for(table, "blue.example", dns.A, services, hosts)[0].payload.dottedQuad() == "127.0.3.1"
    assert answer_for(table, "_xmpps-server._tcp.blue.example", dns.SRV, services, hosts) is None
    with pytest.raises(Exception, match="priority:weight:port:target"):
        parse_srv_argument("blue.example=0:60:guard-a")


# -- a hostile DNS -----------------------------------------------------------------------


class AnswerResolver(common.ResolverBase):
    """A DNS server that answers each name with the records given for it, whatever the question's type."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.asked = []

    def _lookup(self, name, cls, type, timeout):  # noqa: A002 - Twisted's signature
        name = name.decode() if isinstance(name, bytes) else name
        self.asked.append((name, type))
        if name not in self.answers:
            return defer.fail(dns_error.DNSNameError(name))
        return defer.succeed((list(self.answers[name]), [], []))


def record(name, payload, ttl=300):
    return dns.RRHeader(name=name, type=payload.TYPE, ttl=ttl, payload=payload)


def alias(name, target, ttl=300):
    return record(name, dns.Record_CNAME(name=target, ttl=ttl), ttl)


SERVICE = "_xmpp-server._tcp.blue.example"


@pytest.mark.parametrize("ttl", [0, 2**31, 2**32 - 1])
def test_a_ttl_of_0_or_with_its_highest_bit_set_is_not_cached(ttl):
    """RFC 2181 8: a TTL of 2^31 or more counts as 0, so the answer is asked again, not kept for an hour."""
    names = AnswerResolver({SERVICE: [record(SERVICE, dns.Record_SRV(0, 1, 5269, "a.lab.example"), ttl=ttl)]})
    resolver = DomainResolver(names, Clock())
    found(resolver.targets("blue.example"))
    found(resolver.targets("blue.example"))
    assert names.asked.count((SERVICE, dns.SRV)) == 2
    assert (SERVICE, dns.SRV) not in resolver.cache.entries


def test_a_cname_chain_inside_the_answer_is_followed_and_cached_for_its_shortest_ttl():
    """An SRV name that is an alias: the records of the name it points to, in the same answer, are the targets;
    no further question is asked, and the answer is cached for the shortest TTL of the chain."""
    clock = Clock()
    names = AnswerResolver({SERVICE: [alias(SERVICE, "srv.hosting.example", ttl=20),
                                      record("srv.hosting.example", dns.Record_SRV(0, 1, 5270, "a.lab.example"))]})
    resolver = DomainResolver(names, clock)
    assert found(resolver.targets("blue.example")) == [("a.lab.example", 5270, False)]
    assert names.asked == [("_xmpps-server._tcp.blue.example", dns.SRV), (SERVICE, dns.SRV)]
    clock.advance(21)
    found(resolver.targets("blue.example"))
    assert names.asked.count((SERVICE, dns.SRV)) == 2


@pytest.mark.parametrize("chain", [
    [alias(SERVICE, "one.example"), alias("one.example", SERVICE)],
    [alias(SERVICE, "hop0.example")] + [alias(f"hop{i}.example", f"hop{i + 1}.example") for i in range(12)]
    + [record("hop12.example", dns.Record_SRV(0, 1, 5269, "a.lab.example"))],
])
def test_a_cname_loop_or_an_endless_chain_fails_the_lookup_closed(chain):
    """A CNAME loop, or a chain longer than MAX_ALIASES, is no route: never a fallback, never an endless walk."""
    with pytest.raises(LookupFailed, match="CNAME chain that loops or is too long"):
        found(DomainResolver(AnswerResolver({SERVICE: chain}), Clock()).targets("blue.example"))


def test_a_record_on_port_0_is_no_server():
    """An SRV record on port 0 is dropped: it takes no attempt, and alone it leaves no target."""
    names = AnswerResolver({SERVICE: [record(SERVICE, dns.Record_SRV(0, 1, 0, "a.lab.example")),
                                      record(SERVICE, dns.Record_SRV(1, 1, 5269, "b.lab.example"))]})
    assert found(DomainResolver(names, Clock()).targets("blue.example")) == [("b.lab.example", 5269, False)]


def test_a_huge_answer_keeps_max_records_and_tries_max_attempts():
    """Thousands of SRV records: MAX_RECORDS are kept (in bytes too), and at most max_attempts addresses tried."""
    from guard.edges.s2s.srv import MAX_RECORDS
    from twisted.internet.protocol import Factory, Protocol

    many = [record(SERVICE, dns.Record_SRV(index % 7, 1, 5269, f"t{index}.lab.example")) for index in range(3000)]
    answers = {SERVICE: many}
    answers.update({f"t{index}.lab.example": [record(f"t{index}.lab.example", dns.Record_A(f"127.0.5.{index % 200 + 1}"))]
                    for index in range(3000)})
    reactor = MemoryReactorClock()
    resolver = DomainResolver(AnswerResolver(answers), reactor, random=random.Random(5))
    assert len(found(resolver.targets("blue.example"))) == MAX_RECORDS
    assert resolver.cache.bytes < 4 * 1024
    SrvEndpoint(reactor, resolver, "blue.example", timeout=7, max_attempts=4).connect(Factory.forProtocol(Protocol))
    for attempt in range(4):
        reactor.tcpClients[attempt][2].clientConnectionFailed(None, Failure(ConnectionRefusedError("down")))
    assert len(reactor.tcpClients) == 4


def test_an_address_that_is_no_single_host_is_never_connected_to():
    """A target whose A record is 0.0.0.0 (it reaches this machine), multicast or broadcast is skipped without
    an attempt; the next target is connected to."""
    from twisted.internet.protocol import Factory, Protocol

    reactor = MemoryReactorClock()
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, 5269, "zero.lab.example"),
                                                              srv(1, 1, 5269, "many.lab.example"),
                                                              srv(2, 1, 5269, "good.lab.example")],
               ("zero.lab.example", dns.A): [a("0.0.0.0")],
               ("zero.lab.example", dns.AAAA): [(dns.Record_AAAA(address="::", ttl=300), 300)],
               ("many.lab.example", dns.A): [a("224.0.0.1"), a("255.255.255.255")],
               ("good.lab.example", dns.A): [a("127.0.3.2")]}
    endpoint_for(records, reactor).connect(Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.3.2", 5269)]


class ListeningPortAt:
    """A TCP port the reactor listens on (as the guard's sides do), at ``host`` and ``port``."""

    def __init__(self, host, port):
        from twisted.internet.address import IPv4Address

        self.address = IPv4Address("TCP", host, port)

    def getHost(self):
        return self.address


def test_a_target_that_is_the_guards_own_listener_is_never_connected_to():
    """An SRV target resolving to an address and port the guard itself listens on (or to any local address on the
    port of a listener bound to every address) would loop each stanza through the guard: it is skipped."""
    from twisted.internet.interfaces import IListeningPort
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import directlyProvides

    reactor = MemoryReactorClock()
    for host, port in (("127.0.1.1", 5269), ("0.0.0.0", 5270)):
        listening = ListeningPortAt(host, port)
        directlyProvides(listening, IListeningPort)
        reactor.addReader(listening)
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, 5269, "same.lab.example"),
                                                              srv(1, 1, 5270, "wild.lab.example"),
                                                              srv(2, 1, 5269, "good.lab.example")],
               ("same.lab.example", dns.A): [a("127.0.1.1")],
               ("wild.lab.example", dns.A): [a("127.0.9.9")],
               ("good.lab.example", dns.A): [a("127.0.3.2")]}
    endpoint_for(records, reactor).connect(Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.3.2", 5269)]


def test_the_decision_of_a_loop_through_the_guard():
    """Same address and port, an IPv4-mapped spelling, or a local address on a wildcard listener's port loop;
    another port or another machine's address on a wildcard listener's port do not."""
    from guard.edges.s2s.srv import loops_to_guard

    listeners = [("127.0.1.1", 5269), ("::", 5280)]
    local = {"127.0.1.1", "127.0.5.5", "::1"}.__contains__
    assert loops_to_guard("127.0.1.1", 5269, listeners, local)
    assert loops_to_guard("::ffff:127.0.1.1", 5269, listeners, local)
    assert loops_to_guard("127.0.5.5", 5280, listeners, local)
    assert not loops_to_guard("127.0.1.1", 5270, listeners, local)
    assert not loops_to_guard("127.0.7.7", 5280, listeners, local)


def test_an_srv_target_naming_a_domain_the_guard_fronts_on_that_side_is_not_tried():
    """On the blue side the guard is red.example: a blue SRV target red.example loops through the guard, so it is
    dropped; when every target is such a name the lookup fails closed.  The side gives its resolver those names."""
    from guard.edges.side import Side

    names = TableResolver({("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, 5269, "red.example"),
                                                                          srv(1, 1, 5269, "blue.example")],
                           ("_xmpp-server._tcp.blue2.example", dns.SRV): [srv(0, 1, 5269, "Red.Example.")]})
    resolver = DomainResolver(names, Clock())
    side = make_side("blue", MemoryReactorClock())
    Side(**{**{field: getattr(side, field) for field in ("name", "topology", "authentication", "identities",
                                                          "anchors", "routes", "limits", "dialback_secret",
                                                          "reactor")}, "resolver": resolver})
    assert "red.example" in resolver.own_names and "blue.example" not in resolver.own_names
    assert found(resolver.targets("blue.example")) == [("blue.example", 5269, False)]
    with pytest.raises(LookupFailed, match="is the guard itself"):
        found(resolver.targets("blue2.example"))


def test_the_whole_search_for_a_server_ends_within_search_seconds():
    """However many targets and slow answers, the search ends by search_seconds: the attempt under way is
    abandoned (its connector stopped) and the connection fails closed; no attempt waits past the deadline."""
    from twisted.internet.protocol import Factory, Protocol

    reactor = MemoryReactorClock()
    records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(index, 1, 5269, f"g{index}.lab.example")
                                                              for index in range(5)]}
    records.update({(f"g{index}.lab.example", dns.A): [a(f"127.0.3.{index + 1}")] for index in range(5)})
    resolver = DomainResolver(TableResolver(records), reactor, random=random.Random(3))
    endpoint = SrvEndpoint(reactor, resolver, "blue.example", timeout=30, search_seconds=45)
    connecting = endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(30)
    reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError("slow refusal")))
    assert reactor.tcpClients[1][3] == 15  # what is left of the search, not the route's 30 s
    reactor.advance(15)
    with pytest.raises(LookupFailed, match="in time"):
        found(connecting)
    assert reactor.connectors[1].stoppedConnecting and len(reactor.tcpClients) == 2


def test_a_search_called_off_by_its_carrier_tries_no_further_target():
    """The carrier cancels the connection (the guard stops): the attempt under way ends and no other target is tried."""
    from twisted.internet.protocol import Factory, Protocol

    reactor = MemoryReactorClock()
    connecting = endpoint_for(TWO_GUARDS, reactor).connect(Factory.forProtocol(Protocol))
    connecting.addErrback(lambda failure: None)
    connecting.cancel()
    assert len(reactor.tcpClients) == 1 and reactor.connectors[0].stoppedConnecting


def test_a_static_route_wins_and_never_asks_the_dns():
    """A domain with a static route is connected to there even on a side with a DNS server: no question is asked."""
    from tests.unit.test_carriers import RecordingOwner, parcel
    from guard.edges.s2s.carrier import S2SCarrier

    reactor = MemoryReactorClock()
    side = make_side("blue", reactor, routes={"blue.example": "tcp:host=127.0.2.1:port=5269:timeout=5"})
    names = TableResolver(TWO_GUARDS)
    side.resolver = DomainResolver(names, reactor)
    S2SCarrier(RecordingOwner([]), side, "red.example", "blue.example").carry(parcel(1))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.2.1", 5269)] and names.asked == []


def test_after_every_server_refused_the_domain_is_held_down_for_a_while():
    """Every address refused: the next connections within HOLD_DOWN_SECONDS fail at once, with no question and no
    connection attempt (stanzas arriving one by one do not become a stream of attempts at addresses the DNS
    chose); after it the servers are tried again."""
    from guard.edges.s2s.srv import HOLD_DOWN_SECONDS
    from twisted.internet.protocol import Factory, Protocol

    reactor = MemoryReactorClock()
    names = TableResolver(TWO_GUARDS)
    resolver = DomainResolver(names, reactor, random=random.Random(3))
    endpoint = SrvEndpoint(reactor, resolver, "blue.example", timeout=7)
    first = endpoint.connect(Factory.forProtocol(Protocol))
    for attempt in range(2):
        reactor.tcpClients[attempt][2].clientConnectionFailed(None, Failure(ConnectionRefusedError("down")))
    with pytest.raises(LookupFailed, match="no server of the domain accepted"):
        found(first)
    asked = len(names.asked)
    reactor.advance(HOLD_DOWN_SECONDS - 0.5)
    with pytest.raises(LookupFailed, match=r"held down"):
        found(endpoint.connect(Factory.forProtocol(Protocol)))
    assert (len(reactor.tcpClients), len(names.asked)) == (2, asked)
    reactor.advance(1)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert len(reactor.tcpClients) == 3


def test_the_domains_held_down_are_bounded():
    """However many domains fail, at most CACHE_ENTRIES are remembered (the oldest go first)."""
    from guard.edges.s2s.srv import CACHE_ENTRIES

    resolver = DomainResolver(TableResolver({}), Clock())
    for index in range(CACHE_ENTRIES + 10):
        resolver.hold_down(f"d{index}.example", "refused")
    assert len(resolver.held_down) == CACHE_ENTRIES and resolver.holding_down("d0.example") is None
    assert resolver.holding_down(f"d{CACHE_ENTRIES + 9}.example") == "refused"


def test_records_of_another_class_or_another_name_in_the_answer_are_ignored():
    """An answer may carry anything: only class IN records of the asked name (or of its CNAME inside the answer)
    count; a CHAOS-class SRV record or one for another name is no target."""
    chaos = dns.RRHeader(name=SERVICE, type=dns.SRV, cls=dns.CH, ttl=300,
                         payload=dns.Record_SRV(0, 1, 5269, "chaos.lab.example"))
    other = record("_xmpp-server._tcp.evil.example", dns.Record_SRV(0, 1, 5269, "evil.lab.example"))
    names = AnswerResolver({SERVICE: [chaos, other, record(SERVICE, dns.Record_SRV(5, 1, 5269, "good.lab.example"))]})
    assert found(DomainResolver(names, Clock()).targets("blue.example")) == [("good.lab.example", 5269, False)]
