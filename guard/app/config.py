"""
The guard's configuration: one TOML file describing two sides.

``load_config`` checks everything it can without starting anything (keys,
types, endpoint strings, files, certificates and keys, that every far-side
domain has an identity on each side, policies) and raises ``ConfigError``
with a message naming the file and the key.  deploy/guard.toml documents
every option.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from guard.core.topology import Topology
from guard.edges.audit import AUDIT_LEVELS, MIN_ROTATE_BYTES, journald_unavailable, syslog_address
from guard.edges.limits import Limits
from guard.edges.s2s.routes import route_endpoint, route_string, srv_route_string
from guard.edges.s2s.srv import SRV_KIND

AUTHENTICATION_MODES = ("certificate", "dialback")
AUDIT_FAILURE_MODES = ("stop", "continue")


class ConfigError(Exception):
    """A configuration problem; str() names the file and the key."""


@dataclass(frozen=True)
class CertificateConfig:
    domains: tuple[str, ...]
    certificate: str
    key: str
    client_certificate: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class SideConfig:
    name: str
    listen: str
    ca: str
    authentication: str
    policy: str
    domains: dict[str, tuple[str, int] | str]  # hosted domain -> (host, port), or a Twisted client endpoint string
    certificates: tuple[CertificateConfig, ...]
    # Issue 11 (SRV routing): the side's DNS server, (address, port); routes "srv" are looked up there.
    dns: tuple[str, int] | None = None


@dataclass(frozen=True)
class SrvRoute:
    """A route found through the DNS SRV records of ``domain`` (the side's ``dns`` server)."""

    domain: str


@dataclass(frozen=True)
class SnmpSettings:
    """The [snmp] table: the guard as an AgentX subagent of snmpd, off unless ``agentx`` is set."""

    agentx: str | None = None  # the master's AgentX socket, a Twisted client endpoint string
    ping_interval: float = 15.0  # seconds between Pings to the master (no answer by the next: reconnect)


@dataclass(frozen=True)
class GuardSettings:
    """The [guard] and [release] tables: what every guard process has, standalone or half of a pair."""

    log_level: str = "info"
    dialback_secret: str | None = None
    audit_path: str | None = None
    audit_failure: str = "stop"
    status_path: str | None = None
    release_endpoint: str | None = None
    release_timeout: float = 5.0
    # Added for issue 9 (items 9 and 15): questions open at once to the release
    # authority and waiting their turn; which decisions the audit trail records.
    release_max_pending: int = 16
    release_max_waiting: int = 256
    audit_level: str = "refusals"
    # Added for issue 12 (audit trail): rotation by size and copies to syslog/journald.
    audit_rotate_bytes: int | None = None
    audit_keep: int = 10
    audit_syslog: bool = False
    audit_syslog_address: str = "/dev/log"
    audit_journald: bool = False
    # Added for issue 12 (SNMP): the [snmp] table.
    snmp: SnmpSettings = SnmpSettings()
    # Issue 12, [metrics]: where /metrics is served (a Twisted server endpoint string); None: not served.
    metrics_listen: str | None = None
    # Issue 11 (every core): worker processes; 1 is one process, as before (guard.app.workers).
    workers: int = 1


@dataclass(frozen=True)
class ManagementConfig:
    """The [management] table: the management page, off unless ``listen`` is set (guard.app.management)."""

    listen: str
    token_file: str | None = None
    certificate: str | None = None
    key: str | None = None
    client_ca: str | None = None
    allow_reload: bool = False

    @property
    def tls(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class GuardConfig:
    path: str
    settings: GuardSettings
    limits: Limits
    sides: dict[str, SideConfig] = field(default_factory=dict)
    management: ManagementConfig | None = None

    # The settings read as attributes of the configuration.
    log_level = property(lambda self: self.settings.log_level)
    dialback_secret = property(lambda self: self.settings.dialback_secret)
    audit_path = property(lambda self: self.settings.audit_path)
    audit_failure = property(lambda self: self.settings.audit_failure)
    status_path = property(lambda self: self.settings.status_path)

    @property
    def topology(self) -> Topology:
        return Topology({name: frozenset(side.domains) for name, side in self.sides.items()})


class _Checker:
    def __init__(self, path):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))

    def fail(self, key, message):
        raise ConfigError(f"{self.path}: {key}: {message}")

    def table(self, value, key):
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        return value

    def only(self, table, allowed, key):
        for name in table:
            if name not in allowed:
                self.fail(f"{key}.{name}" if key else name, f"unknown key (known: {', '.join(sorted(allowed))})")

    def string(self, table, name, key, default=None, required=True):
        if name not in table:
            if required:
                self.fail(f"{key}.{name}", "is required")
            return default
        value = table[name]
        if not isinstance(value, str) or not value:
            self.fail(f"{key}.{name}", "must be a non-empty string")
        return value

    def choice(self, table, name, key, choices, default):
        value = self.string(table, name, key, default=default, required=False)
        if value not in choices:
            self.fail(f"{key}.{name}", f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def file(self, table, name, key, required=True):
        value = self.string(table, name, key, required=required)
        if value is None:
            return None
        resolved = value if os.path.isabs(value) else os.path.join(self.base, value)
        if not os.path.isfile(resolved):
            self.fail(f"{key}.{name}", f"no such file: {resolved}")
        if not os.access(resolved, os.R_OK):
            self.fail(f"{key}.{name}", f"cannot read {resolved}")
        return resolved

    def client_endpoint(self, table, name, key):
        """An optional Twisted client endpoint string (``unix:path=…``, ``tcp:host=…:port=…``), parsed to check it."""
        value = self.string(table, name, key, required=False)
        if value is not None:
            from twisted.internet.endpoints import clientFromString
            from twisted.internet.testing import MemoryReactor

            try:
                clientFromString(MemoryReactor(), value)
            except (ValueError, TypeError, KeyError) as problem:
                self.fail(f"{key}.{name}", f"not a Twisted client endpoint string ({problem})")
        return value

    def writable_path(self, table, name, key):
        value = self.string(table, name, key, required=False)
        if value is None:
            return None
        resolved = value if os.path.isabs(value) else os.path.join(self.base, value)
        folder = os.path.dirname(resolved) or "."
        if not os.path.isdir(folder):
            self.fail(f"{key}.{name}", f"no such folder: {folder}")
        return resolved


def check_writable(config_path: str, key: str, path: str, replaced: bool = False) -> None:
    """
    ConfigError naming ``key`` unless the guard could write the file at
    ``path``: an existing regular file it may write, or a new one in a folder
    it may write (always the folder for a file ``replaced`` through a
    temporary file beside it).  Nothing is opened or created: ``guard
    check-config`` calls this instead of opening the file.
    """
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConfigError(f"{config_path}: {key}: no such folder: {folder}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ConfigError(f"{config_path}: {key}: not a regular file: {path}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{config_path}: {key}: cannot write {path}")
    if (replaced or not os.path.exists(path)) and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{config_path}: {key}: cannot create files in {folder} (for {path})")


def written_files(settings: GuardSettings) -> list[tuple[str, str, bool]]:
    """(configuration key, path, replaced) of each file a guard process writes: the audit trail (appended
    to, and renamed when it rotates) and the status file (replaced through a temporary file beside it)."""
    named = (("guard.audit", settings.audit_path, settings.audit_rotate_bytes is not None),  # rotation renames it
             ("guard.status", settings.status_path, True))
    return [(key, path, replaced) for key, path, replaced in named if path is not None]


def _domain_ok(name: str) -> bool:
    from guard.core.addressing import parse_jid

    parsed = parse_jid(name)
    return parsed is not None and parsed.user is None and parsed.resource is None and parsed.host == name


def _route(checker, value, key, domain=None):
    """(host, port) for "host:port"; SrvRoute for "srv"; the string itself for a Twisted client endpoint string
    ("tcp:host=…:port=…", "srv:domain=…")."""
    if value == SRV_KIND and domain is not None:
        return SrvRoute(domain)
    if isinstance(value, str) and (value.count(":") > 1 or value.startswith(SRV_KIND + ":")):
        from twisted.internet.testing import MemoryReactor

        try:
            route_endpoint(MemoryReactor(), value)
        except (ValueError, TypeError, KeyError) as problem:
            checker.fail(key, f'must be "host:port" or a Twisted client endpoint string ({problem})')
        return value
    if not isinstance(value, str) or value.count(":") != 1:
        checker.fail(key, 'must be "host:port"')
    host, _, port = value.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        checker.fail(key, 'must be "host:port" with a port from 1 to 65535')
    return host, int(port)


def configured_route(route, connect_timeout: float) -> str:
    """
    The endpoint string a configured route is opened with: "host:port" becomes
    ``tcp:`` (``tcp6:``) for an address, ``hostname:`` for a name (both with
    ``connect_timeout`` in whole seconds, rounded up; guard.edges.s2s.routes);
    an endpoint string is used as it was written; "srv" becomes ``srv:domain=…`` with ``connect_timeout``.
    """
    if isinstance(route, str):
        return route
    if isinstance(route, SrvRoute):
        return srv_route_string(route.domain, connect_timeout)
    host, port = route
    return route_string(host, port, connect_timeout)


def _check_listen(checker, description, key):
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if description.startswith("systemd:"):
        _check_systemd_listen(checker, description, key)
        return
    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as problem:
        checker.fail(key, f"not a Twisted server endpoint string ({problem})")


def _check_systemd_listen(checker, description, key):
    """
    A ``systemd:`` listen string is checked for its form only (an address
    family, and exactly one of ``index`` and ``name``): the socket it names
    is passed by systemd when the guard runs, not when its configuration is
    checked.  ``guard run`` refuses to start when the socket is not there.
    """
    import socket

    from twisted.internet.endpoints import _parse

    try:
        arguments, options = _parse(description)
    except (ValueError, TypeError) as problem:
        checker.fail(key, f"not a Twisted server endpoint string ({problem})")
    unknown = sorted(set(options) - {"domain", "index", "name"})
    if arguments != ["systemd"] or unknown:
        checker.fail(key, f'a systemd listen string is "systemd:domain=INET:name=NAME" (unknown: {unknown or arguments[1:]})')
    domain = options.get("domain")
    if domain not in ("INET", "INET6", "UNIX") or not hasattr(socket, f"AF_{domain}"):
        checker.fail(key, f"systemd: domain must be INET, INET6 or UNIX, not {domain!r}")
    if ("index" in options) == ("name" in options):
        checker.fail(key, "systemd: give exactly one of index and name (the socket unit's FileDescriptorName)")
    if "index" in options and not options["index"].isdigit():
        checker.fail(key, f"systemd: index must be a whole number, not {options['index']!r}")
    if "name" in options and not options["name"]:
        checker.fail(key, "systemd: name must not be empty")


def _limits(checker, table):
    known = Limits.names()
    checker.only(table, known, "limits")
    values = {}
    defaults = Limits()
    for name, value in table.items():
        default = getattr(defaults, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            checker.fail(f"limits.{name}", "must be a number")
        if isinstance(default, int) and not isinstance(value, int):
            checker.fail(f"limits.{name}", "must be a whole number")
        if value <= 0:
            checker.fail(f"limits.{name}", "must be greater than zero")
        values[name] = value
    return Limits(**values)


def _side(checker, name, table):
    key = f"sides.{name}"
    checker.table(table, key)
    checker.only(table, ("listen", "ca", "authentication", "policy", "domains", "certificates", "dns"), key)
    listen = checker.string(table, "listen", key)
    _check_listen(checker, listen, f"{key}.listen")
    ca = checker.file(table, "ca", key)
    authentication = checker.choice(table, "authentication", key, AUTHENTICATION_MODES, "certificate")
    policy = checker.file(table, "policy", key)
    domains_table = checker.table(table.get("domains", None) or checker.fail(f"{key}.domains", "is required"),
                                  f"{key}.domains")
    domains = {}
    for domain, route in domains_table.items():
        if not _domain_ok(domain):
            checker.fail(f"{key}.domains.{domain}", "is not a valid domain name")
        domains[domain] = _route(checker, route, f"{key}.domains.{domain}", domain)
    if not domains:
        checker.fail(f"{key}.domains", "needs at least one domain")
    dns_server = _dns_server(checker, table, key)
    for domain, route in domains.items():
        if dns_server is None and (isinstance(route, SrvRoute) or str(route).startswith(SRV_KIND + ":")):
            checker.fail(f"{key}.domains.{domain}", f"an srv route needs {key}.dns (the side's DNS server)")
    certificates = []
    raw_certificates = table.get("certificates")
    if not isinstance(raw_certificates, list) or not raw_certificates:
        checker.fail(f"{key}.certificates", "needs at least one [[certificates]] entry")
    for index, entry in enumerate(raw_certificates):
        where = f"{key}.certificates[{index}]"
        checker.table(entry, where)
        checker.only(entry, ("domains", "certificate", "key", "client_certificate", "client_key"), where)
        fronted = entry.get("domains")
        if not isinstance(fronted, list) or not fronted or not all(isinstance(d, str) for d in fronted):
            checker.fail(f"{where}.domains", "must be a list of domain names")
        client_certificate = checker.file(entry, "client_certificate", where, required=False)
        client_key = checker.file(entry, "client_key", where, required=False)
        if (client_certificate is None) != (client_key is None):
            checker.fail(f"{where}.client_key", "client_certificate and client_key go together")
        certificates.append(CertificateConfig(
            tuple(fronted), checker.file(entry, "certificate", where), checker.file(entry, "key", where),
            client_certificate, client_key,
        ))
    return SideConfig(name, listen, ca, authentication, policy, domains, tuple(certificates), dns_server)


def _dns_server(checker, table, key):
    """``dns = "address:port"``: the side's DNS server for srv routes (an address: no system resolver is asked)."""
    import ipaddress

    value = checker.string(table, "dns", key, required=False)
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        checker.fail(f"{key}.dns", f'must be "address:port" with an IP address, not {value!r}')
    if not port.isdigit() or not 0 < int(port) < 65536:
        checker.fail(f"{key}.dns", 'must be "address:port" with a port from 1 to 65535')
    return host, int(port)


def read_document(path: str, checker):
    """The TOML document at ``path``; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with open(path, "rb") as source:
            return tomllib.load(source)
    except OSError as problem:
        raise ConfigError(f"{path}: cannot read: {problem.strerror}") from problem
    except tomllib.TOMLDecodeError as problem:
        raise ConfigError(f"{path}: not valid TOML: {problem}") from problem


def read_snmp(checker, document) -> SnmpSettings:
    """The optional [snmp] table: ``agentx = "unix:path=/var/agentx/master"`` turns the AgentX subagent on."""
    snmp = checker.table(document.get("snmp", {}), "snmp")
    checker.only(snmp, ("agentx", "ping_interval"), "snmp")
    agentx = checker.client_endpoint(snmp, "agentx", "snmp")
    ping_interval = snmp.get("ping_interval", 15.0)
    if isinstance(ping_interval, bool) or not isinstance(ping_interval, (int, float)) or not 1 <= ping_interval <= 3600:
        checker.fail("snmp.ping_interval", "must be a number of seconds from 1 to 3600")
    return SnmpSettings(agentx=agentx, ping_interval=float(ping_interval))


def read_settings(checker, document) -> GuardSettings:
    """The [guard] table and the optional [release] table (the release authority `refer` asks)."""
    guard = checker.table(document.get("guard", {}), "guard")
    checker.only(guard, ("log_level", "dialback_secret", "audit", "audit_failure", "status", "audit_level")
                 + AUDIT_OUTPUT_KEYS + ("workers",), "guard")
    release = checker.table(document.get("release", {}), "release")
    checker.only(release, ("endpoint", "timeout", "max_pending", "max_waiting"), "release")
    endpoint = checker.client_endpoint(release, "endpoint", "release")
    timeout = release.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        checker.fail("release.timeout", "must be a number of seconds from 0 to 300")
    max_pending = release.get("max_pending", 16)
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or not 1 <= max_pending <= 4096:
        checker.fail("release.max_pending", "must be a whole number from 1 to 4096")
    max_waiting = release.get("max_waiting", 256)
    if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or not 0 <= max_waiting <= 65536:
        checker.fail("release.max_waiting", "must be a whole number from 0 to 65536")
    return GuardSettings(
        log_level=checker.choice(guard, "log_level", "guard", ("debug", "info", "warn", "error"), "info"),
        dialback_secret=checker.string(guard, "dialback_secret", "guard", required=False),
        audit_path=checker.writable_path(guard, "audit", "guard"),
        audit_failure=checker.choice(guard, "audit_failure", "guard", AUDIT_FAILURE_MODES, "stop"),
        status_path=checker.writable_path(guard, "status", "guard"),
        release_endpoint=endpoint,
        release_timeout=float(timeout),
        release_max_pending=max_pending,
        release_max_waiting=max_waiting,
        audit_level=checker.choice(guard, "audit_level", "guard", AUDIT_LEVELS, "refusals"),
        **_audit_outputs(checker, guard),
        snmp=read_snmp(checker, document),
        metrics_listen=read_metrics_listen(checker, document),
        workers=_workers(checker, guard),
    )


WORKERS_MAX = 64


def _workers(checker, guard) -> int:
    """[guard] workers: how many worker processes share the listeners (guard.app.workers); 1 by default."""
    workers = guard.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= WORKERS_MAX:
        checker.fail("guard.workers", f"must be a whole number from 1 to {WORKERS_MAX}")
    return workers


def _check_workers(checker, config) -> None:
    """
    With more than one worker: every per-process limit that must hold for
    the whole guard is split between the workers (each gets its share,
    guard.app.workers.worker_limits), so it must leave each worker at least
    one; and what does not yet add up over workers is refused, not served
    per worker (the metrics, the management page, SNMP).
    """
    workers = config.settings.workers
    if workers == 1:
        return
    for name in WORKER_SHARED_LIMITS:
        if getattr(config.limits, name) < workers:
            checker.fail(f"limits.{name}", f"must be at least guard.workers ({workers}): each worker holds a share")
    if config.settings.metrics_listen is not None and config.settings.status_path is None:
        checker.fail("metrics.listen", "with guard.workers > 1 needs guard.status (the workers' metrics are written "
                                       "beside it for the supervisor to serve)")
    if config.management is not None:
        checker.fail("management", "is not served with guard.workers > 1 yet (the snapshot does not add up)")
    if config.settings.snmp.agentx is not None:
        checker.fail("snmp.agentx", "is not served with guard.workers > 1 yet (the snapshot does not add up)")


# The limits a worker holds a share of (limit // workers): together the workers never exceed the limit, in
# connections, dialback verifications or bytes held (a peer spreading its connections over the workers gets no more).
WORKER_SHARED_LIMITS = ("connections_per_address", "streams_per_domain", "verifications_per_address",
                        "verifications_per_side", "memory_budget_bytes")


AUDIT_OUTPUT_KEYS = ("audit_rotate_bytes", "audit_keep", "audit_syslog", "audit_syslog_address", "audit_journald")
AUDIT_KEEP_MAX = 100_000
AUDIT_ROTATE_MAX = 1 << 40


def _audit_outputs(checker, guard) -> dict:
    """The [guard] keys of the audit trail's rotation and copies (guard.edges.audit), checked."""
    named = [key for key in AUDIT_OUTPUT_KEYS if key in guard]
    if named and "audit" not in guard:
        checker.fail(f"guard.{named[0]}", "needs guard.audit (the file the trail is written to)")
    rotate = guard.get("audit_rotate_bytes")
    if rotate is not None and (isinstance(rotate, bool) or not isinstance(rotate, int)
                               or not MIN_ROTATE_BYTES <= rotate <= AUDIT_ROTATE_MAX):
        checker.fail("guard.audit_rotate_bytes", f"must be a whole number of bytes from {MIN_ROTATE_BYTES} "
                                                 f"to {AUDIT_ROTATE_MAX}")
    keep = guard.get("audit_keep", 10)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= AUDIT_KEEP_MAX:
        checker.fail("guard.audit_keep", f"must be a whole number from 1 to {AUDIT_KEEP_MAX}")
    if "audit_keep" in guard and rotate is None:
        checker.fail("guard.audit_keep", "needs guard.audit_rotate_bytes (only rotated files are kept or removed)")
    flags = {}
    for key in ("audit_syslog", "audit_journald"):
        flags[key] = guard.get(key, False)
        if not isinstance(flags[key], bool):
            checker.fail(f"guard.{key}", "must be true or false")
    address = checker.string(guard, "audit_syslog_address", "guard", default="/dev/log", required=False)
    try:
        parsed = syslog_address(address)
    except ValueError as problem:
        checker.fail("guard.audit_syslog_address", str(problem))
    if flags["audit_syslog"] and isinstance(parsed, str) and not os.path.exists(parsed):
        checker.fail("guard.audit_syslog", f"{parsed} does not exist (no syslog daemon listening there; "
                                           f"set guard.audit_syslog_address)")
    if flags["audit_journald"]:
        why = journald_unavailable()
        if why is not None:
            checker.fail("guard.audit_journald", f"journald is unavailable: {why}")
    return dict(audit_rotate_bytes=rotate, audit_keep=keep, audit_syslog_address=address, **flags)


def audit_options(settings: GuardSettings) -> dict:
    """The keyword arguments of AuditLog for the rotation and copies these settings ask for."""
    from guard.edges.audit import JOURNAL_SOCKET

    return dict(rotate_bytes=settings.audit_rotate_bytes, keep=settings.audit_keep,
                syslog_address=syslog_address(settings.audit_syslog_address) if settings.audit_syslog else None,
                journal_socket=JOURNAL_SOCKET if settings.audit_journald else None)


MANAGEMENT_KEYS = ("listen", "token_file", "certificate", "key", "client_ca", "allow_reload")
MANAGEMENT_TOKEN_CHARACTERS = 32  # the shortest token a token file may hold


def loopback_by_default(listen: str) -> str:
    """A ``tcp:``/``tcp6:`` endpoint string with no ``interface=`` listens on loopback only (127.0.0.1, ::1)."""
    kind, _, rest = listen.partition(":")
    if kind in ("tcp", "tcp6") and "interface=" not in rest:
        return f"{listen}:interface={'::1' if kind == 'tcp6' else '127.0.0.1'}"
    return listen


def check_token_file(config_path: str, key: str, path: str) -> None:
    """ConfigError naming the file and ``key`` unless the token file is a regular file owned by this user,
    readable by nobody else (no group or other permission bits), holding a token of at least
    MANAGEMENT_TOKEN_CHARACTERS characters."""
    import stat

    try:
        status = os.stat(path)
    except OSError as problem:
        raise ConfigError(f"{config_path}: {key}: cannot use {path}: {problem.strerror}") from problem
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"{config_path}: {key}: {path} is not a regular file")
    if status.st_mode & 0o077:
        raise ConfigError(f"{config_path}: {key}: {path} is readable or writable by group or others "
                          f"(mode {stat.S_IMODE(status.st_mode):04o}); the guard refuses it: chmod 600 {path}")
    if status.st_uid != os.geteuid():
        raise ConfigError(f"{config_path}: {key}: {path} belongs to uid {status.st_uid}, not to the guard's "
                          f"user (uid {os.geteuid()})")
    if len(read_token(path)) < MANAGEMENT_TOKEN_CHARACTERS:
        raise ConfigError(f"{config_path}: {key}: {path} must hold a token of at least "
                          f"{MANAGEMENT_TOKEN_CHARACTERS} characters")


def read_token(path: str) -> str:
    """The token a token file holds: its first line, without surrounding white space."""
    with open(path, encoding="utf-8") as source:
        return source.readline(4096).strip()


def read_management(checker, document) -> ManagementConfig | None:
    """The optional [management] table; None (no management page) unless it sets ``listen``."""
    table = checker.table(document.get("management", {}), "management")
    checker.only(table, MANAGEMENT_KEYS, "management")
    listen = checker.string(table, "listen", "management", required=False)
    if listen is None:
        if table:
            checker.fail("management.listen", "is required to serve the management page")
        return None
    listen = loopback_by_default(listen)
    _check_listen(checker, listen, "management.listen")
    if listen.startswith("ssl:"):
        checker.fail("management.listen", "use tcp: with management.certificate and management.key for TLS")
    token_file = checker.file(table, "token_file", "management", required=False)
    if token_file is not None:
        check_token_file(checker.path, "management.token_file", token_file)
    certificate = checker.file(table, "certificate", "management", required=False)
    key = checker.file(table, "key", "management", required=False)
    if (certificate is None) != (key is None):
        checker.fail("management.key", "certificate and key go together (they make the page TLS)")
    client_ca = checker.file(table, "client_ca", "management", required=False)
    if client_ca is not None and certificate is None:
        checker.fail("management.client_ca", "client certificates need TLS: set management.certificate and key")
    if certificate is not None:
        from guard.app.management import tls_options

        try:
            tls_options(certificate, key, client_ca)
        except Exception as problem:  # noqa: BLE001 - report any load fault
            checker.fail("management.certificate", f"cannot use {certificate} with {key} "
                                                   f"(client CA {client_ca}): {problem}")
    if token_file is None and client_ca is None:
        checker.fail("management", "needs token_file or client_ca: the page is never served without authentication")
    allow_reload = table.get("allow_reload", False)
    if not isinstance(allow_reload, bool):
        checker.fail("management.allow_reload", "must be true or false")
    return ManagementConfig(listen, token_file, certificate, key, client_ca, allow_reload)


def read_metrics_listen(checker, document) -> str | None:
    """The [metrics] table: ``listen``, a Twisted server endpoint string (``tcp:9269:interface=127.0.0.1``), or None."""
    metrics = checker.table(document.get("metrics", {}), "metrics")
    checker.only(metrics, ("listen",), "metrics")
    listen = checker.string(metrics, "listen", "metrics", required=False)
    if listen is not None:
        _check_listen(checker, listen, "metrics.listen")
    return listen


def load_config(path: str) -> GuardConfig:
    """Read and check the configuration at ``path``."""
    checker = _Checker(path)
    document = read_document(path, checker)
    checker.only(document, ("guard", "release", "limits", "sides", "metrics", "management", "snmp"), "")
    settings = read_settings(checker, document)
    management = read_management(checker, document)
    limits = _limits(checker, checker.table(document.get("limits", {}), "limits"))
    sides_table = checker.table(document.get("sides", {}), "sides")
    if len(sides_table) != 2:
        checker.fail("sides", f"needs exactly two sides, found {len(sides_table)}")
    sides = {name: _side(checker, name, table) for name, table in sides_table.items()}
    config = GuardConfig(path, settings, limits, sides, management)
    _check_workers(checker, config)
    try:
        topology = config.topology
    except ValueError as problem:
        checker.fail("sides", str(problem))
    for name, side in sides.items():
        fronted = topology.fronted_on(name)
        covered = {}
        for index, certificate in enumerate(side.certificates):
            for domain in certificate.domains:
                where = f"sides.{name}.certificates[{index}].domains"
                if domain not in fronted:
                    checker.fail(where, f"{domain} is not a domain of the other side")
                if domain in covered:
                    checker.fail(where, f"{domain} already has a certificate (entry {covered[domain]})")
                covered[domain] = index
        missing = sorted(fronted - set(covered))
        if missing:
            checker.fail(f"sides.{name}.certificates", f"no certificate for {', '.join(missing)}")
    return config
