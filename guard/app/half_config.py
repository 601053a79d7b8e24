"""
The configuration of one half of a back-to-back pair: the standalone
guard's ``[guard]``, ``[limits]`` and one ``[sides.NAME]`` table (this half's
own side), plus a ``[link]`` table naming the peer half and the far side.

``load_half_config`` checks everything it can without starting anything and
raises ``ConfigError`` naming the file and the key, with the same checker
as ``guard.app.config``.  deploy/pair/ documents every option.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from guard.core.topology import Topology
from guard.edges.link.dialler import Backoff
from guard.edges.link.leg import LegConfig
from guard.edges.link.link import LinkSettings
from guard.edges.link.profile import PRESENCE_MODES, PROFILES, SECURITY_MODES, ConstrainedProfile, stretched_settings
from guard.edges.link.tls import PeerCheck, normalise_fingerprint
from guard.edges.limits import Limits
from guard.edges.xmlstream import ParserLimits

from .config import (GuardSettings, ManagementConfig, SideConfig, _Checker, _check_listen, _domain_ok, _limits, _side,
                     read_document, read_management, read_settings)

LINK_KEYS = (
    "name", "peer", "far_side", "far_domains", "import_policy", "certificate", "key", "pins", "ca",
    "listen", "dial", "buffer_stanzas", "buffer_bytes", "down_deadline", "ack_every", "ack_interval", "ack_timeout",
    "keepalive", "open_timeout", "backoff_initial", "backoff_max", "backoff_jitter",
    "profile", "constrained",
)
CONSTRAINED_KEYS = ("security", "compression", "rate", "round_trip", "presence", "groupchat_merge", "iq_deadline",
                    "max_wait")


@dataclass(frozen=True)
class LinkConfig:
    leg: LegConfig
    far_side: str
    far_domains: frozenset[str]
    import_policy: str


@dataclass(frozen=True)
class HalfConfig:
    path: str
    settings: GuardSettings
    limits: Limits
    side: SideConfig
    link: LinkConfig
    management: ManagementConfig | None = None

    log_level = property(lambda self: self.settings.log_level)
    dialback_secret = property(lambda self: self.settings.dialback_secret)
    audit_path = property(lambda self: self.settings.audit_path)
    audit_failure = property(lambda self: self.settings.audit_failure)
    status_path = property(lambda self: self.settings.status_path)

    @property
    def topology(self) -> Topology:
        return Topology({self.side.name: frozenset(self.side.domains), self.link.far_side: self.link.far_domains})


def _number(checker, table, name, key, default, whole=False, at_most=None):
    if name not in table:
        return default
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        checker.fail(f"{key}.{name}", "must be a whole number" if whole else "must be a number")
    if value <= 0 or (at_most is not None and value > at_most):
        checker.fail(f"{key}.{name}", f"must be greater than zero{'' if at_most is None else f' and at most {at_most}'}")
    return value


def _check_dial(checker, description, key):
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.testing import MemoryReactor

    try:
        clientFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as problem:
        checker.fail(key, f"not a Twisted client endpoint string ({problem})")


def link_leg(checker, table, key, known=LINK_KEYS, stanza_bytes: int = ParserLimits().stanza_bytes) -> LegConfig:
    """Read one link end (name, peer, certificate, key, pins/ca, listen/dial, bounds) from ``table``;
    ``stanza_bytes`` is the largest stanza the link carries (its parser's limit)."""
    checker.table(table, key)
    checker.only(table, known, key)
    name = checker.string(table, "name", key)
    peer = checker.string(table, "peer", key)
    if name == peer:
        checker.fail(f"{key}.peer", "must differ from name")
    profile = constrained_profile(checker, table, key)
    if profile is not None and profile.security == "bearer":
        return _bearer_leg(checker, table, key, name, peer, profile, stanza_bytes)
    certificate = checker.file(table, "certificate", key)
    key_file = checker.file(table, "key", key)
    raw_pins = table.get("pins", [])
    if not isinstance(raw_pins, list) or not all(isinstance(pin, str) for pin in raw_pins):
        checker.fail(f"{key}.pins", "must be a list of SHA-256 fingerprints")
    pins = []
    for index, pin in enumerate(raw_pins):
        normal = normalise_fingerprint(pin)
        if normal is None:
            checker.fail(f"{key}.pins[{index}]", "is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
        pins.append(normal)
    ca = checker.file(table, "ca", key, required=False)
    if not pins and ca is None:
        checker.fail(key, "needs pins or ca to authenticate the peer")
    listen = checker.string(table, "listen", key, required=False)
    dial = checker.string(table, "dial", key, required=False)
    _check_endpoints(checker, key, listen, dial)
    settings, backoff, open_timeout = _link_bounds(checker, table, key, stanza_bytes, profile)
    try:
        from guard.edges.link.tls import LinkTLS

        LinkTLS(certificate, key_file)
    except Exception as problem:  # noqa: BLE001 - report any load fault
        checker.fail(f"{key}.certificate", f"cannot use {certificate} with {key_file}: {problem}")
    if ca is not None:
        try:
            PeerCheck(peer, tuple(pins), ca)
        except Exception as problem:  # noqa: BLE001 - report any load fault
            checker.fail(f"{key}.ca", f"cannot use {ca}: {problem}")
    return LegConfig(name, peer, certificate, key_file, tuple(pins), ca, listen, dial, settings, backoff, open_timeout,
                     profile)


def _check_endpoints(checker, key, listen, dial):
    if (listen is None) == (dial is None):
        checker.fail(key, "needs exactly one of listen and dial")
    if listen is not None:
        _check_listen(checker, listen, f"{key}.listen")
    else:
        _check_dial(checker, dial, f"{key}.dial")


def _bearer_leg(checker, table, key, name, peer, profile, stanza_bytes) -> LegConfig:
    """A constrained link with security = "bearer": plain TCP, so no certificate, key, pins or CA (refused if set)."""
    for unused in ("certificate", "key", "pins", "ca"):
        if unused in table:
            checker.fail(f"{key}.{unused}", 'is not used with [link.constrained] security = "bearer" (no TLS): '
                                            "remove it, or use security = \"tls\"")
    listen = checker.string(table, "listen", key, required=False)
    dial = checker.string(table, "dial", key, required=False)
    _check_endpoints(checker, key, listen, dial)
    settings, backoff, open_timeout = _link_bounds(checker, table, key, stanza_bytes, profile)
    return LegConfig(name, peer, None, None, (), None, listen, dial, settings, backoff, open_timeout, profile)


def constrained_profile(checker, table, key) -> ConstrainedProfile | None:
    """``[link] profile`` and ``[link.constrained]``: the constrained profile, or None for the standard link."""
    profile = checker.choice(table, "profile", key, PROFILES, "standard")
    if profile == "standard":
        if "constrained" in table:
            checker.fail(f"{key}.constrained", 'is only read with profile = "constrained"')
        return None
    where = f"{key}.constrained"
    section = checker.table(table.get("constrained", {}), where)
    checker.only(section, CONSTRAINED_KEYS, where)
    defaults = ConstrainedProfile()
    from guard.edges.constrained.compression import COMPRESSION_MODES

    return ConstrainedProfile(
        # "bearer" only when the file says so: the default is TLS.
        security=checker.choice(section, "security", where, SECURITY_MODES, defaults.security),
        compression=checker.choice(section, "compression", where, COMPRESSION_MODES, defaults.compression),
        rate=_number(checker, section, "rate", where, defaults.rate, whole=True),
        round_trip=_number(checker, section, "round_trip", where, defaults.round_trip),
        presence=checker.choice(section, "presence", where, PRESENCE_MODES, defaults.presence),
        groupchat_merge=_zero_or_more(checker, section, "groupchat_merge", where, defaults.groupchat_merge),
        iq_deadline=_number(checker, section, "iq_deadline", where, defaults.iq_deadline),
        max_wait=_number(checker, section, "max_wait", where, defaults.max_wait),
    )


def _zero_or_more(checker, table, name, key, default):
    if name not in table:
        return default
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        checker.fail(f"{key}.{name}", "must be a number, zero or more")
    return value


def _link_bounds(checker, table, key, stanza_bytes, profile):
    """(LinkSettings, Backoff, open_timeout) from the link's keys; under the constrained profile, stretched."""
    defaults, backoff_defaults = LinkSettings(), Backoff()
    settings = LinkSettings(
        buffer_stanzas=_number(checker, table, "buffer_stanzas", key, defaults.buffer_stanzas, whole=True),
        buffer_bytes=_number(checker, table, "buffer_bytes", key, defaults.buffer_bytes, whole=True),
        down_deadline=_number(checker, table, "down_deadline", key, defaults.down_deadline),
        ack_every=_number(checker, table, "ack_every", key, defaults.ack_every, whole=True),
        ack_interval=_number(checker, table, "ack_interval", key, defaults.ack_interval),
        ack_timeout=_number(checker, table, "ack_timeout", key, defaults.ack_timeout),
        keepalive=_number(checker, table, "keepalive", key, defaults.keepalive),
    )
    if settings.buffer_bytes < stanza_bytes:
        checker.fail(f"{key}.buffer_bytes", f"must be at least the largest stanza the link carries ({stanza_bytes} bytes)")
    backoff = Backoff(
        initial_delay=_number(checker, table, "backoff_initial", key, backoff_defaults.initial_delay),
        max_delay=_number(checker, table, "backoff_max", key, backoff_defaults.max_delay),
        jitter=_number(checker, table, "backoff_jitter", key, backoff_defaults.jitter, at_most=1),
    )
    open_timeout = _number(checker, table, "open_timeout", key, LegConfig.open_timeout)
    if profile is not None:
        settings, open_timeout = stretched_settings(settings, open_timeout, profile)
    return settings, backoff, open_timeout


def load_half_config(path: str) -> HalfConfig:
    """Read and check the half's configuration at ``path``."""
    checker = _Checker(path)
    document = read_document(path, checker)
    checker.only(document, ("guard", "release", "limits", "sides", "link", "metrics", "management", "snmp"), "")
    settings = read_settings(checker, document)
    management = read_management(checker, document)
    limits = _limits(checker, checker.table(document.get("limits", {}), "limits"))
    sides_table = checker.table(document.get("sides", {}), "sides")
    if len(sides_table) != 1:
        checker.fail("sides", f"a half has exactly one side (its own), found {len(sides_table)}")
    ((side_name, side_table),) = sides_table.items()
    side = _side(checker, side_name, side_table)

    if "link" not in document:
        checker.fail("link", "is required for a half")
    link_table = checker.table(document["link"], "link")
    leg = link_leg(checker, link_table, "link", stanza_bytes=limits.stanza_bytes)
    far_side = checker.string(link_table, "far_side", "link")
    if far_side == side_name:
        checker.fail("link.far_side", f"must differ from this half's side {side_name!r}")
    far_domains = link_table.get("far_domains")
    if not isinstance(far_domains, list) or not far_domains or not all(isinstance(d, str) for d in far_domains):
        checker.fail("link.far_domains", "must be a non-empty list of domain names")
    for index, domain in enumerate(far_domains):
        if not _domain_ok(domain):
            checker.fail(f"link.far_domains[{index}]", f"{domain!r} is not a valid domain name")
        if domain in side.domains:
            checker.fail(f"link.far_domains[{index}]", f"{domain} is also a domain of side {side_name}")
    import_policy = checker.file(link_table, "import_policy", "link")
    link = LinkConfig(leg, far_side, frozenset(far_domains), import_policy)

    covered = {}
    for index, certificate in enumerate(side.certificates):
        for domain in certificate.domains:
            where = f"sides.{side_name}.certificates[{index}].domains"
            if domain not in link.far_domains:
                checker.fail(where, f"{domain} is not one of link.far_domains")
            if domain in covered:
                checker.fail(where, f"{domain} already has a certificate (entry {covered[domain]})")
            covered[domain] = index
    missing = sorted(link.far_domains - set(covered))
    if missing:
        checker.fail(f"sides.{side_name}.certificates", f"no certificate for {', '.join(missing)}")
    return HalfConfig(path, settings, limits, side, link, management)


def is_half_config(path: str) -> bool:
    """Whether the file at ``path`` has a [link] table (so ``guard run`` starts a half)."""
    try:
        with open(path, "rb") as source:
            return "link" in tomllib.load(source)
    except (OSError, tomllib.TOMLDecodeError):
        return False
