"""
Routes: where the guard connects to reach a domain's server, written as
Twisted client endpoint strings so that the route table can hold any kind
Twisted knows (``tcp:``, ``tcp6:``, ``unix:``) and, later, kinds of our own.

A route the operator writes as ``host:port`` becomes ``tcp:`` (or ``tcp6:``)
when the host is an address.  When it is a name, it becomes ``hostname:``,
the one kind the guard adds: it is opened with Twisted's HostnameEndpoint,
which tries every address the name has, IPv6 and IPv4 (``tcp:`` with a name
would try the first IPv4 address only).

A route ``srv:domain=<domain>[:timeout=<seconds>]`` is found through DNS SRV
records asked of the side's own DNS server (``guard.edges.s2s.srv``); the
operator writes it as ``"srv"`` in a side's domains table.
"""

from __future__ import annotations

import ipaddress
import math

from twisted.internet.endpoints import HostnameEndpoint, clientFromString, quoteStringArgument

from .srv import SRV_KIND, SrvEndpoint

# The kind of endpoint string the guard adds to Twisted's: a host name opened with HostnameEndpoint.
HOSTNAME_KIND = "hostname"


def route_string(host: str, port: int, connect_timeout: float) -> str:
    """The endpoint string for "host:port" with ``connect_timeout`` (whole seconds, rounded up, for tcp)."""
    seconds = max(1, math.ceil(connect_timeout))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{HOSTNAME_KIND}:host={quoteStringArgument(host)}:port={port}:timeout={seconds}"
    kind = "tcp6" if address.version == 6 else "tcp"
    return f"{kind}:host={quoteStringArgument(host)}:port={port}:timeout={seconds}"


def srv_route_string(domain: str, connect_timeout: float) -> str:
    """The endpoint string of the SRV route to ``domain``, each connection with ``connect_timeout`` (seconds, rounded up)."""
    return f"{SRV_KIND}:domain={quoteStringArgument(domain)}:timeout={max(1, math.ceil(connect_timeout))}"


def route_endpoint(reactor, route: str, resolver=None):
    """The client endpoint for ``route``; ValueError (naming what is wrong) when it cannot be one.
    ``resolver`` (a DomainResolver, the side's) finds the servers of an ``srv:`` route."""
    kind, _, rest = route.partition(":")
    if kind == SRV_KIND:
        return _srv_endpoint(reactor, rest, resolver)
    if kind != HOSTNAME_KIND:
        return clientFromString(reactor, route)
    arguments = _arguments(rest)
    unknown = set(arguments) - {"host", "port", "timeout"}
    if unknown or "host" not in arguments or "port" not in arguments:
        raise ValueError(f"{HOSTNAME_KIND}: takes host=, port= and timeout= (got {', '.join(sorted(arguments))})")
    if not arguments["port"].isdigit() or not 0 < int(arguments["port"]) < 65536:
        raise ValueError(f"{HOSTNAME_KIND}: port must be from 1 to 65535")
    timeout = arguments.get("timeout", "30")
    if not timeout.isdigit() or int(timeout) < 1:
        raise ValueError(f"{HOSTNAME_KIND}: timeout must be whole seconds, at least 1")
    return HostnameEndpoint(reactor, arguments["host"], int(arguments["port"]), timeout=int(timeout))


def _srv_endpoint(reactor, rest: str, resolver):
    arguments = _arguments(rest, SRV_KIND)
    unknown = set(arguments) - {"domain", "timeout"}
    if unknown or not arguments.get("domain"):
        raise ValueError(f"{SRV_KIND}: takes domain= and timeout= (got {', '.join(sorted(arguments))})")
    timeout = arguments.get("timeout", "30")
    if not timeout.isdigit() or int(timeout) < 1:
        raise ValueError(f"{SRV_KIND}: timeout must be whole seconds, at least 1")
    return SrvEndpoint(reactor, resolver, arguments["domain"].lower(), int(timeout))


def _arguments(text: str, kind: str = HOSTNAME_KIND) -> dict[str, str]:
    """``key=value`` pairs separated by ':', where ``\\`` escapes the next character (as Twisted quotes them)."""
    parts, current, escaped = [], [], False
    for character in text:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    arguments = {}
    for part in parts:
        key, equals, value = part.partition("=")
        if not equals or not key or key in arguments:
            raise ValueError(f"{kind}: each argument is key=value, once (got {part!r})")
        arguments[key] = value
    return arguments
