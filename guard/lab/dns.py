"""
A loopback DNS responder for the lab: it tells each Prosody where the other
side's XMPP domains live, so that the lab can point red at blue directly, at
a dumb relay, or at the guard, without touching /etc/hosts.

For every domain in its table it answers ``_xmpp-server._tcp.<domain>`` SRV
(target ``<domain>``, the table's port) and ``<domain>`` A (the table's
address); other record types of those names get an empty answer; every other
name gets NXDOMAIN.

Run it as a process::

    python -m guard.lab.dns --listen 127.0.1.53 --port 5300 \\
        --domain blue.example=127.0.3.1:5269 --domain red.example=127.0.3.2:5269

Several servers behind one domain (issue 11: two guards, SRV weights):
``--srv blue.example=0:50:5269:guard-a.lab.example`` (repeatable) answers
those SRV records for the domain instead of the one pointing at the domain
itself, and ``--host guard-a.lab.example=127.0.3.1`` gives a target its A
record.  Targets may be named otherwise than the domain: the servers behind
them must still prove the domain.  A target "." says the domain offers no
service (RFC 2782).  ``--xmpps blue.example=0:1:5270:tls.lab.example``
(repeatable) answers ``_xmpps-server._tcp`` records (XEP-0368, TLS from the
first byte) for the domain, which otherwise has none.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from twisted.internet import defer
from twisted.names import common, dns, server

SRV_PREFIX = "_xmpp-server._tcp."
DIRECT_TLS_PREFIX = "_xmpps-server._tcp."
NO_SERVICE_TARGET = "."  # RFC 2782: the service is decidedly not available at this domain
TTL = 5


@dataclass(frozen=True)
class ServerAddress:
    """Where the servers of one domain accept S2S connections."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "ServerAddress":
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected address:port, got {text!r}")
        return cls(host, int(port))


def parse_domain_argument(text: str) -> tuple[str, ServerAddress]:
    """Parse ``domain=address:port``."""
    domain, separator, address = text.partition("=")
    if not separator or not domain:
        raise argparse.ArgumentTypeError(f"expected domain=address:port, got {text!r}")
    try:
        return domain.lower().rstrip("."), ServerAddress.parse(address)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


@dataclass(frozen=True)
class ServiceRecord:
    """One SRV record of a domain: ``priority:weight:port:target``."""

    priority: int
    weight: int
    port: int
    target: str


def parse_srv_argument(text: str) -> tuple[str, ServiceRecord]:
    """Parse ``domain=priority:weight:port:target``."""
    domain, separator, record = text.partition("=")
    parts = record.split(":")
    if not separator or not domain or len(parts) != 4 or not all(part.isdigit() for part in parts[:3]) or not parts[3]:
        raise argparse.ArgumentTypeError(f"expected domain=priority:weight:port:target, got {text!r}")
    return domain.lower().rstrip("."), ServiceRecord(int(parts[0]), int(parts[1]), int(parts[2]), parts[3].lower())


def parse_host_argument(text: str) -> tuple[str, str]:
    """Parse ``name=address`` (an A record)."""
    name, separator, address = text.partition("=")
    if not separator or not name or not address:
        raise argparse.ArgumentTypeError(f"expected name=address, got {text!r}")
    return name.lower().rstrip("."), address


def _srv_answer(name: str, records: Sequence[ServiceRecord]) -> list[dns.RRHeader]:
    """SRV records of ``name``; a target "." is written as the root name (an empty name, one zero byte)."""
    return [dns.RRHeader(name=name, type=dns.SRV, ttl=TTL, auth=True, payload=dns.Record_SRV(
        priority=record.priority, weight=record.weight, port=record.port,
        target=b"" if record.target == NO_SERVICE_TARGET else record.target, ttl=TTL))
        for record in records]


def answer_for(
    table: Mapping[str, ServerAddress], name: str, record_type: int,
    services: Mapping[str, Sequence[ServiceRecord]] | None = None, hosts: Mapping[str, str] | None = None,
    direct_tls: Mapping[str, Sequence[ServiceRecord]] | None = None,
) -> list[dns.RRHeader] | None:
    """The answer records for one question, or None when the name does not exist.  ``services`` replaces the
    SRV record of a domain by its own records; ``hosts`` are further names with an A record; ``direct_tls``
    are a domain's _xmpps-server records (XEP-0368)."""
    name = name.lower().rstrip(".")
    services, hosts, direct_tls = services or {}, hosts or {}, direct_tls or {}
    if name.startswith(DIRECT_TLS_PREFIX) and name[len(DIRECT_TLS_PREFIX):] in direct_tls:
        return _srv_answer(name, direct_tls[name[len(DIRECT_TLS_PREFIX):]]) if record_type == dns.SRV else []
    if name.startswith(SRV_PREFIX) and name[len(SRV_PREFIX):] in services:
        return _srv_answer(name, services[name[len(SRV_PREFIX):]]) if record_type == dns.SRV else []
    if name in hosts and name not in table:
        if record_type != dns.A:
            return []
        return [dns.RRHeader(name=name, type=dns.A, ttl=TTL, payload=dns.Record_A(address=hosts[name], ttl=TTL),
                             auth=True)]
    if name.startswith(SRV_PREFIX) and name[len(SRV_PREFIX):] in table:
        domain = name[len(SRV_PREFIX):]
        if record_type != dns.SRV:
            return []
        record = dns.Record_SRV(priority=0, weight=5, port=table[domain].port, target=domain, ttl=TTL)
        return [dns.RRHeader(name=name, type=dns.SRV, ttl=TTL, payload=record, auth=True)]
    if name in table:
        if record_type != dns.A:
            return []
        record = dns.Record_A(address=table[name].host, ttl=TTL)
        return [dns.RRHeader(name=name, type=dns.A, ttl=TTL, payload=record, auth=True)]
    return None


class LabTableResolver(common.ResolverBase):
    """An authoritative resolver answering only from the lab's table."""

    def __init__(self, table: Mapping[str, ServerAddress], services=None, hosts=None, direct_tls=None):
        super().__init__()
        self.table = dict(table)
        self.services = dict(services or {})
        self.hosts = dict(hosts or {})
        self.direct_tls = dict(direct_tls or {})

    def _lookup(self, name, cls, type, timeout):  # noqa: A002 - Twisted's signature
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if cls != dns.IN:
            return defer.fail(dns.DomainError(name))
        answers = answer_for(self.table, name, type, self.services, self.hosts, self.direct_tls)
        if answers is None:
            return defer.fail(dns.AuthoritativeDomainError(name))
        return defer.succeed((answers, [], []))


def listen(reactor, table: Mapping[str, ServerAddress], interface: str, port: int, services=None, hosts=None,
           direct_tls=None):
    """Listen for DNS on UDP and TCP; return the two listening ports."""
    factory = server.DNSServerFactory(authorities=[LabTableResolver(table, services, hosts, direct_tls)])
    udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=interface)
    tcp = reactor.listenTCP(port, factory, interface=interface)
    return udp, tcp


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.lab.dns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.1.53", help="address to bind (UDP and TCP)")
    parser.add_argument("--port", type=int, default=5300)
    parser.add_argument(
        "--domain",
        action="append",
        type=parse_domain_argument,
        default=[],
        metavar="DOMAIN=ADDRESS:PORT",
        help="a domain and where its S2S server listens (repeatable)",
    )
    parser.add_argument("--srv", action="append", type=parse_srv_argument, default=[],
                        metavar="DOMAIN=PRIORITY:WEIGHT:PORT:TARGET",
                        help="an SRV record of the domain, replacing the one pointing at itself (repeatable)")
    parser.add_argument("--xmpps", action="append", type=parse_srv_argument, default=[],
                        metavar="DOMAIN=PRIORITY:WEIGHT:PORT:TARGET",
                        help="an _xmpps-server SRV record of the domain (XEP-0368, direct TLS; repeatable)")
    parser.add_argument("--host", action="append", type=parse_host_argument, default=[], metavar="NAME=ADDRESS",
                        help="an A record for an SRV target (repeatable)")
    arguments = parser.parse_args(argv)
    table = dict(arguments.domain)
    services: dict[str, list[ServiceRecord]] = {}
    for domain, record in arguments.srv:
        services.setdefault(domain, []).append(record)
    hosts = dict(arguments.host)
    direct_tls: dict[str, list[ServiceRecord]] = {}
    for domain, record in arguments.xmpps:
        direct_tls.setdefault(domain, []).append(record)

    from twisted.internet import defer, task

    def serve(reactor):
        listen(reactor, table, arguments.listen, arguments.port, services, hosts, direct_tls)
        print(f"lab dns listening on {arguments.listen}:{arguments.port} for {sorted(table)}", flush=True)
        return defer.Deferred()  # until SIGTERM or SIGINT

    task.react(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
