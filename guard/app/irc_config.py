"""
The IRC gateway's configuration (``guard-irc --config irc.toml``): one TOML
file naming the XMPP side (the gateway is an XEP-0114 component of the side's
Prosody), the IRC networks, and the bridges, each a MUC room paired with an
IRC channel under a label policy (a policy file in the guard's language).

``load_irc_config`` checks everything it can without starting anything
(keys, types, endpoint strings, files, each bridge's policy compiled and its
IRC side's clearance and default label present, the marking map within the
clearance) and raises ``ConfigError`` naming the file, the line (where it can
be found) and the key: ``irc.toml:12: networks.lab.port: ...``.  It uses the
guard's own checker (``guard.app.config``): the messages read the same.

Tables (deploy/irc/irc.toml documents every key):

- ``[gateway]``: log_level, audit, audit_failure, audit_level, status;
- ``[management]`` and ``[metrics]``: as in the guard's configuration;
- ``[xmpp]``: component, connect, tls, ca, secret or secret_file, room_service;
- ``[networks.NAME]``: host, port, tls, ca, tls_verify, server_name, sasl (none, plain,
  external) with sasl_user + sasl_password_file or client_certificate +
  client_key, nick, user, realname, flood_burst, flood_interval, charset,
  max_connections;
- ``[[bridges]]``: room, network, channel, policy, irc_domain, room_nick,
  flot_template, flot_position, map_markings, max_occupant_connections,
  join_window;
- ``[limits]``: queue_bytes, queue_lines, total_connections,
  nick_book_entries, joined_message_bytes, irc_users_per_bridge, connections_per_minute,
  renames_per_minute.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields

from guard.app.config import (AUDIT_FAILURE_MODES, ConfigError, ManagementConfig, _Checker, _domain_ok,
                              read_document, read_management, read_metrics_listen)
from guard.core.addressing import parse_jid
from guard.core.topology import Topology
from guard.edges.audit import AUDIT_LEVELS
# The sides of the topology every bridge policy judges in (policies/irc-bridge.toml names them).
from guard.edges.irc.lines import check_fallback
from guard.edges.irc.labels import DEFAULT_FLOT_TEMPLATE, FLOT_POSITIONS, IRC_SIDE, XMPP_SIDE, FirstLineMarking

SASL_MECHANISMS = ("none", "plain", "external")
FLOT_TEMPLATE_MAX_BYTES = 200
IRC_DOMAIN_SUFFIX = ".irc.invalid"
CHANNEL_MAX_BYTES = 50  # RFC 2812 section 1.3
CHANNEL_PREFIXES = "#&+!"
IRC_PARAM_FORBIDDEN = " ,\x07\r\n\x00"
NICK_MAX_BYTES = 64
MARKING_MAX_BYTES = 128

GATEWAY_KEYS = ("log_level", "audit", "audit_failure", "audit_level", "status")
XMPP_KEYS = ("component", "connect", "tls", "ca", "secret", "secret_file", "room_service")
NETWORK_KEYS = ("host", "port", "tls", "ca", "tls_verify", "server_name", "sasl", "sasl_user", "sasl_password_file",
                "client_certificate", "client_key", "nick", "user", "realname", "flood_burst", "flood_interval",
                "charset", "max_connections")
BRIDGE_KEYS = ("room", "network", "channel", "policy", "irc_domain", "room_nick", "flot_template", "flot_position",
               "map_markings", "max_occupant_connections", "join_window")
LABEL_KEYS = ("policy", "classification", "categories")


@dataclass(frozen=True)
class IrcLimits:
    """The [limits] table: every bound of the gateway process, with its default (each enforced and tested)."""

    queue_bytes: int = 256 * 1024  # bytes waiting on one IRC connection (its flood-control queue)
    queue_lines: int = 1024  # lines waiting on one IRC connection
    total_connections: int = 256  # IRC connections of the whole gateway, bots included
    nick_book_entries: int = 10_000  # MUC nick <-> IRC nick mappings a network's NickBook keeps
    joined_message_bytes: int = 16 * 1024  # UTF-8 bytes of IRC lines joined back into one room message
    irc_users_per_bridge: int = 500  # IRC users a bridge joins the room as (past it: relayed as <nick> text)
    connections_per_minute: int = 10  # occupant connections one bridge opens per minute (past it: the bot relays)
    renames_per_minute: int = 3  # nick changes of one occupant (either side) that cross per minute (past it: held)

    BOUNDS = {  # name -> (lowest, highest)
        "queue_bytes": (512, 64 * 1024 * 1024),
        "queue_lines": (1, 1_000_000),
        "total_connections": (1, 100_000),
        "nick_book_entries": (16, 10_000_000),
        "joined_message_bytes": (512, 1024 * 1024),
        "irc_users_per_bridge": (1, 100_000),
        "connections_per_minute": (1, 10_000),
        "renames_per_minute": (1, 1000),
    }

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class GatewaySettings:
    log_level: str = "info"
    audit_path: str | None = None
    audit_failure: str = "stop"
    audit_level: str = "refusals"
    status_path: str | None = None
    metrics_listen: str | None = None


@dataclass(frozen=True)
class XmppConfig:
    component: str  # the component's domain, e.g. irc.red.example
    connect: str  # a Twisted client endpoint string toward Prosody's component port
    tls: bool
    ca: str | None
    secret: str  # the component secret (read from secret_file when given)
    room_service: str  # the MUC service, e.g. conference.red.example


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    host: str
    port: int
    tls: bool = True
    ca: str | None = None  # None: the platform's trust store
    tls_verify: bool = True
    sasl: str = "none"
    sasl_user: str | None = None
    sasl_password_file: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    nick: str = "xmppgw"
    user: str = "xmppgw"
    realname: str = "XMPP gateway"
    flood_burst: int | None = None  # None: the connection's defaults (ngircd's)
    flood_interval: float | None = None
    charset: str = "latin-1"  # the fallback when a line is not UTF-8
    max_connections: int = 64
    server_name: str | None = None  # the name the server's certificate must hold (None: host)


@dataclass(frozen=True)
class BridgeConfig:
    room: str  # bare room JID
    network: str
    channel: str
    policy_path: str
    irc_domain: str  # the IRC side's pseudo-domain in the bridge policy's topology
    room_nick: str = "irc"  # the gateway's own occupant in the room (it hears the room through it)
    flot_template: str = DEFAULT_FLOT_TEMPLATE
    flot_position: str = "line"
    map_markings: dict = field(default_factory=dict)  # typed marking -> SecurityLabel
    max_occupant_connections: int = 32
    join_window: float = 0.5  # seconds: IRC lines that filled their budget wait this long for the rest
    policy: object = field(default=None, compare=False, repr=False)  # the compiled policy


@dataclass(frozen=True)
class IrcConfig:
    path: str
    settings: GatewaySettings
    xmpp: XmppConfig
    networks: dict[str, NetworkConfig]
    bridges: tuple[BridgeConfig, ...]
    limits: IrcLimits = IrcLimits()
    management: ManagementConfig | None = None

    @property
    def topology(self) -> Topology:
        """The two sides every bridge's settlement knows: the room service (XMPP) and the component (IRC)."""
        return Topology({XMPP_SIDE: frozenset({self.xmpp.room_service}),
                         IRC_SIDE: frozenset({self.xmpp.component} | {b.irc_domain for b in self.bridges})})


class SourcePlaces:
    """
    The line of a key in a TOML text, for messages only (best effort): the
    key path of a ConfigError (``networks.lab.port``, ``bridges[1].channel``)
    is followed through the table headers and the keys under them.
    """

    HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_-]+)\s*=')

    def __init__(self, text: str):
        self.tables: dict[tuple, int] = {(): 0}
        self.keys: dict[tuple, int] = {}
        current: tuple = ()
        counts: dict[tuple, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = self.HEADER.match(line)
            if header:
                path = tuple(_dotted(header.group(2)))
                if header.group(1) == "[[":
                    index = counts.get(path, 0)
                    counts[path] = index + 1
                    path = path + (index,)
                current = path
                self.tables.setdefault(current, number)
                continue
            key = self.KEY.match(line)
            if key:
                self.keys.setdefault(current + (key.group(1).strip('"'),), number)

    def line_of(self, key: str) -> int | None:
        parts = _key_parts(key)
        for length in range(len(parts), 0, -1):
            found = self.keys.get(tuple(parts[:length])) or self.tables.get(tuple(parts[:length]))
            if found:
                return found
        return None


def _dotted(header: str) -> list:
    return [part.strip().strip('"') for part in re.findall(r'"[^"]*"|[^.]+', header)]


def _key_parts(key: str) -> list:
    parts: list = []
    for piece in _dotted(key):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if index.isdigit():
                parts.append(int(index))
            rest = rest.lstrip("[")
    return parts


class _PlacedChecker(_Checker):
    """The guard's configuration checker, its messages also naming the line of the key."""

    def __init__(self, path, text):
        super().__init__(path)
        self.places = SourcePlaces(text)

    def fail(self, key, message):
        line = self.places.line_of(key) if key else None
        place = f"{self.path}:{line}" if line else self.path
        raise ConfigError(f"{place}: {key}: {message}")

    def boolean(self, table, name, key, default):
        value = table.get(name, default)
        if not isinstance(value, bool):
            self.fail(f"{key}.{name}", "must be true or false")
        return value

    def number(self, table, name, key, default, lowest, highest, whole=True):
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
            self.fail(f"{key}.{name}", "must be a whole number" if whole else "must be a number")
        if not lowest <= value <= highest:
            self.fail(f"{key}.{name}", f"must be from {lowest} to {highest}")
        return value if whole else float(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _irc_word(checker, table, name, key, default, budget=NICK_MAX_BYTES):
    """A nick, user or realname: no character IRC would read as a separator, within ``budget`` bytes."""
    value = checker.string(table, name, key, default=default, required=False)
    if any(c in value for c in "\r\n\x00") or len(value.encode("utf-8")) > budget:
        checker.fail(f"{key}.{name}", f"must be at most {budget} bytes without CR, LF or NUL")
    if name != "realname" and (" " in value or value.startswith(":")):
        checker.fail(f"{key}.{name}", "must not hold a space or start with ':'")
    return value


def _gateway(checker, document) -> GatewaySettings:
    table = checker.table(document.get("gateway", {}), "gateway")
    checker.only(table, GATEWAY_KEYS, "gateway")
    return GatewaySettings(
        log_level=checker.choice(table, "log_level", "gateway", ("debug", "info", "warn", "error"), "info"),
        audit_path=checker.writable_path(table, "audit", "gateway"),
        audit_failure=checker.choice(table, "audit_failure", "gateway", AUDIT_FAILURE_MODES, "stop"),
        audit_level=checker.choice(table, "audit_level", "gateway", AUDIT_LEVELS, "refusals"),
        status_path=checker.writable_path(table, "status", "gateway"),
        metrics_listen=read_metrics_listen(checker, document),
    )


def _xmpp(checker, document) -> XmppConfig:
    if "xmpp" not in document:
        checker.fail("xmpp", "is required (the component connection to the XMPP side)")
    table = checker.table(document["xmpp"], "xmpp")
    checker.only(table, XMPP_KEYS, "xmpp")
    component = checker.string(table, "component", "xmpp")
    if not _domain_ok(component):
        checker.fail("xmpp.component", "is not a valid domain name")
    room_service = checker.string(table, "room_service", "xmpp")
    if not _domain_ok(room_service) or room_service == component:
        checker.fail("xmpp.room_service", "must be a valid domain name other than the component's")
    connect = checker.client_endpoint(table, "connect", "xmpp")
    if connect is None:
        checker.fail("xmpp.connect", "is required (a Twisted client endpoint string: tcp:host=127.0.0.1:port=5347)")
    tls = checker.boolean(table, "tls", "xmpp", False)
    ca = checker.file(table, "ca", "xmpp", required=False)
    kind, host = _endpoint_host(connect)
    if kind not in ("tcp", "tcp6"):
        checker.fail("xmpp.connect", "must be a tcp: endpoint (TLS is set with xmpp.tls and xmpp.ca)")
    if tls and ca is None:
        checker.fail("xmpp.ca", "is required with xmpp.tls (the CA that signed Prosody's certificate)")
    if not tls and not _is_loopback(host):
        checker.fail("xmpp.tls", f"must be true: {host} is not a loopback address (the secret would cross in clear)")
    secret = checker.string(table, "secret", "xmpp", required=False)
    secret_file = checker.file(table, "secret_file", "xmpp", required=False)
    if (secret is None) == (secret_file is None):
        checker.fail("xmpp.secret", "give exactly one of secret and secret_file")
    if secret_file is not None:
        with open(secret_file, encoding="utf-8") as source:
            secret = source.readline(4096).strip()
        if not secret:
            checker.fail("xmpp.secret_file", f"{secret_file} holds no secret on its first line")
    return XmppConfig(component, connect, tls, ca, secret, room_service)


def _endpoint_host(description: str) -> tuple[str, str]:
    kind, _, rest = description.partition(":")
    for part in re.split(r"(?<!\\):", rest):
        if part.startswith("host="):
            return kind, part[len("host="):].replace("\\:", ":")
    return kind, ""


def _network(checker, name, table, limits) -> NetworkConfig:
    key = f"networks.{name}"
    checker.table(table, key)
    checker.only(table, NETWORK_KEYS, key)
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", name):
        checker.fail(key, "a network's name is a DNS label: lowercase letters, digits and '-', at most 32")
    host = checker.string(table, "host", key)
    tls = checker.boolean(table, "tls", key, True)
    port = checker.number(table, "port", key, 6697 if tls else 6667, 1, 65535)
    ca = checker.file(table, "ca", key, required=False)
    tls_verify = checker.boolean(table, "tls_verify", key, True)
    server_name = checker.string(table, "server_name", key, required=False)
    for option in ("ca", "tls_verify", "server_name"):
        if option in table and not tls:
            checker.fail(f"{key}.{option}", "needs tls = true")
    if server_name is not None and not (_domain_ok(server_name) or _is_ip(server_name)):
        checker.fail(f"{key}.server_name", "must be a DNS name or an IP address")
    sasl = checker.choice(table, "sasl", key, SASL_MECHANISMS, "none")
    sasl_user = checker.string(table, "sasl_user", key, required=False)
    password_file = checker.file(table, "sasl_password_file", key, required=False)
    certificate = checker.file(table, "client_certificate", key, required=False)
    client_key = checker.file(table, "client_key", key, required=False)
    if (certificate is None) != (client_key is None):
        checker.fail(f"{key}.client_key", "client_certificate and client_key go together")
    if certificate is not None and not tls:
        checker.fail(f"{key}.client_certificate", "needs tls = true")
    if sasl == "plain":
        if sasl_user is None or password_file is None:
            checker.fail(f"{key}.sasl", "plain needs sasl_user and sasl_password_file")
        if not tls:
            checker.fail(f"{key}.sasl", "plain needs tls = true (the password would cross in clear)")
    elif sasl_user is not None or password_file is not None:
        checker.fail(f"{key}.sasl_user" if sasl_user is not None else f"{key}.sasl_password_file",
                     'is only used with sasl = "plain"')
    if sasl == "external" and certificate is None:
        checker.fail(f"{key}.sasl", "external needs client_certificate and client_key")
    charset = checker.string(table, "charset", key, default="latin-1", required=False)
    try:
        check_fallback(charset)
    except ValueError:
        checker.fail(f"{key}.charset", f"{charset!r} is not an ASCII-compatible character set Python knows")
    if not _is_loopback(host):
        # Room text released to the channel, and SASL, never cross a network in clear or to an unverified peer.
        if not tls:
            checker.fail(f"{key}.tls", f"must be true: {host} is not a loopback address (room text would cross in clear)")
        if not tls_verify:
            checker.fail(f"{key}.tls_verify", f"must be true: {host} is not a loopback address (anyone on the path "
                                              f"could read and change what crosses)")
    flood_burst = checker.number(table, "flood_burst", key, None, 1, 100)
    flood_interval = checker.number(table, "flood_interval", key, None, 0.01, 60.0, whole=False)
    max_connections = checker.number(table, "max_connections", key, 64, 1, limits.total_connections)
    return NetworkConfig(
        name, host, port, tls, ca, tls_verify, sasl, sasl_user, password_file, certificate, client_key,
        nick=_irc_word(checker, table, "nick", key, "xmppgw"),
        user=_irc_word(checker, table, "user", key, "xmppgw"),
        realname=_irc_word(checker, table, "realname", key, "XMPP gateway", budget=200),
        flood_burst=flood_burst, flood_interval=flood_interval, charset=charset, max_connections=max_connections,
        server_name=server_name)


def _flot_template(checker, table, key) -> str:
    template = checker.string(table, "flot_template", key, default=DEFAULT_FLOT_TEMPLATE, required=False)
    try:
        FirstLineMarking(template)
    except ValueError:
        checker.fail(f"{key}.flot_template", "must hold {marking} exactly once, and no other field")
    if any(c in template for c in "\r\n\x00\x01") or len(template.encode("utf-8")) > FLOT_TEMPLATE_MAX_BYTES:
        checker.fail(f"{key}.flot_template", f"must be one line of at most {FLOT_TEMPLATE_MAX_BYTES} bytes")
    return template


def _channel(checker, table, key) -> str:
    channel = checker.string(table, "channel", key)
    if (channel[0] not in CHANNEL_PREFIXES or any(c in channel for c in IRC_PARAM_FORBIDDEN)
            or len(channel.encode("utf-8")) > CHANNEL_MAX_BYTES or len(channel) < 2):
        checker.fail(f"{key}.channel", f"must start with one of {CHANNEL_PREFIXES}, be at most {CHANNEL_MAX_BYTES} "
                                       f"bytes and hold no space, comma, BEL, CR, LF or NUL")
    return channel


def _policy(checker, table, key):
    from guard.core.policy import PolicyError, load_policy

    path = checker.file(table, "policy", key)
    try:
        return path, load_policy(path)
    except PolicyError as problem:
        checker.fail(f"{key}.policy", f"the policy is refused:\n{problem}")


def _label(checker, value, authority, where):
    """A label written as {policy, classification, categories}, given meaning by the bridge policy."""
    from guard.core.policy.labels import SecurityLabel

    if not isinstance(value, dict):
        checker.fail(where, "must be a table { policy, classification, categories }")
    checker.only(value, LABEL_KEYS, where)
    policy = authority.policies.get(value.get("policy"))
    if policy is None:
        checker.fail(f"{where}.policy", f"is not a label policy of the bridge policy ({', '.join(authority.policies)})")
    classification = value.get("classification")
    if classification not in policy.classifications:
        checker.fail(f"{where}.classification", f"{policy.name} has no classification {classification!r}")
    categories = value.get("categories", [])
    if not isinstance(categories, list) or any(c not in policy.categories for c in categories):
        checker.fail(f"{where}.categories", f"must be a list of categories of {policy.name}")
    return SecurityLabel(policy.name, classification, frozenset(categories))


def _bridge(checker, index, table, xmpp, networks, limits) -> BridgeConfig:
    key = f"bridges[{index}]"
    checker.table(table, key)
    checker.only(table, BRIDGE_KEYS, key)
    room = checker.string(table, "room", key)
    parsed = parse_jid(room)
    if parsed is None or parsed.user is None or parsed.resource is not None or parsed.full() != room:
        checker.fail(f"{key}.room", "must be a bare room JID (room@service)")
    if parsed.host != xmpp.room_service:
        checker.fail(f"{key}.room", f"must be a room of xmpp.room_service ({xmpp.room_service})")
    network = checker.string(table, "network", key)
    if network not in networks:
        checker.fail(f"{key}.network", f"is not a configured network ({', '.join(sorted(networks)) or 'none'})")
    channel = _channel(checker, table, key)
    irc_domain = checker.string(table, "irc_domain", key, default=f"{network}{IRC_DOMAIN_SUFFIX}", required=False)
    if not _domain_ok(irc_domain) or irc_domain in (xmpp.component, xmpp.room_service):
        checker.fail(f"{key}.irc_domain", "must be a valid domain name of its own (the IRC side's pseudo-domain)")
    room_nick = checker.string(table, "room_nick", key, default="irc", required=False)
    if parse_jid(f"{room}/{room_nick}") is None:
        checker.fail(f"{key}.room_nick", "is not a valid resourcepart")
    policy_path, policy = _policy(checker, table, key)
    authority = policy.labels
    if policy.sides is not None and policy.sides != (XMPP_SIDE, IRC_SIDE):
        checker.fail(f"{key}.policy", f'the policy is for {policy.sides[0]}->{policy.sides[1]}; a bridge policy '
                                      f'names from_side = "{XMPP_SIDE}", to_side = "{IRC_SIDE}" (or no sides)')
    if authority is not None:
        if authority.clearances_for(irc_domain) is None:
            checker.fail(f"{key}.policy", f'no clearance for the IRC side: add [labels.peers."{irc_domain}"] clearance')
        default = authority.default_for(irc_domain)
        if default is None:
            checker.fail(f"{key}.policy", f'no default label for the IRC side: add [labels.peers."{irc_domain}"] '
                                          f'default_label')
        ok, why = authority.releasable(default, irc_domain)
        if not ok:
            checker.fail(f"{key}.policy", f"the IRC side's default label is above its clearance ({why})")
    markings_table = checker.table(table.get("map_markings", {}), f"{key}.map_markings")
    if markings_table and authority is None:
        checker.fail(f"{key}.map_markings", "needs a bridge policy with label policies")
    map_markings = {}
    for marking, value in markings_table.items():
        where = f"{key}.map_markings.{marking}"
        if not marking.strip() or any(c in marking for c in "\r\n\x00") or len(marking.encode()) > MARKING_MAX_BYTES:
            checker.fail(where, f"a marking is one line of at most {MARKING_MAX_BYTES} bytes")
        label = _label(checker, value, authority, where)
        ok, why = authority.releasable(label, irc_domain)
        if not ok:
            checker.fail(where, f"maps to {label}, above the IRC side's clearance ({why}): never allowed")
        map_markings[" ".join(marking.split())] = label
    return BridgeConfig(
        room, network, channel, policy_path, irc_domain, room_nick,
        flot_template=_flot_template(checker, table, key),
        flot_position=checker.choice(table, "flot_position", key, FLOT_POSITIONS, "line"),
        map_markings=map_markings,
        max_occupant_connections=checker.number(table, "max_occupant_connections", key, 32, 0,
                                                limits.total_connections),
        join_window=checker.number(table, "join_window", key, 0.5, 0.0, 10.0, whole=False),
        policy=policy)


def _limits(checker, document) -> IrcLimits:
    table = checker.table(document.get("limits", {}), "limits")
    checker.only(table, IrcLimits.names(), "limits")
    defaults = IrcLimits()
    return IrcLimits(**{name: checker.number(table, name, "limits", getattr(defaults, name), *IrcLimits.BOUNDS[name])
                        for name in IrcLimits.names()})


def load_irc_config(path: str) -> IrcConfig:
    """Read and check the IRC gateway's configuration at ``path``."""
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except (OSError, UnicodeDecodeError):
        text = ""
    checker = _PlacedChecker(path, text)
    document = read_document(path, checker)
    checker.only(document, ("gateway", "management", "metrics", "xmpp", "networks", "bridges", "limits"), "")
    limits = _limits(checker, document)
    settings = _gateway(checker, document)
    management = read_management(checker, document)
    xmpp = _xmpp(checker, document)
    networks_table = checker.table(document.get("networks", {}), "networks")
    if not networks_table:
        checker.fail("networks", "needs at least one [networks.NAME] table")
    networks = {name: _network(checker, name, table, limits) for name, table in networks_table.items()}
    raw_bridges = document.get("bridges")
    if not isinstance(raw_bridges, list) or not raw_bridges:
        checker.fail("bridges", "needs at least one [[bridges]] table")
    bridges = tuple(_bridge(checker, index, table, xmpp, networks, limits) for index, table in enumerate(raw_bridges))
    seen_rooms, seen_channels = {}, {}
    for index, bridge in enumerate(bridges):
        if bridge.room in seen_rooms:
            checker.fail(f"bridges[{index}].room", f"{bridge.room} is already bridged (bridges[{seen_rooms[bridge.room]}])")
        seen_rooms[bridge.room] = index
        channel = (bridge.network, bridge.channel.lower())
        if channel in seen_channels:
            checker.fail(f"bridges[{index}].channel", f"{bridge.channel} on {bridge.network} is already bridged "
                                                      f"(bridges[{seen_channels[channel]}])")
        seen_channels[channel] = index
    if len(networks) >= limits.total_connections:
        # Occupants past the caps are relayed by the bot; the bots themselves always have their connection.
        checker.fail("limits.total_connections", f"must be more than the number of networks ({len(networks)}): "
                                                 f"one bot connection each, and room for occupants")
    return IrcConfig(os.fspath(path), settings, xmpp, networks, bridges, limits, management)
