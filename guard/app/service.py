"""
The composition root: turns a checked configuration into a running guard
(listening endpoints, sides, the relay, policies, audit, release authority)
and back down again.  ``GuardProcess`` holds what a standalone guard and a
half of a back-to-back pair share; ``GuardService`` is the standalone guard.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets

from OpenSSL import crypto
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger

from guard.core.books import Books
from guard.core.pipeline import Direction
from guard.core.policy import PolicyError, load_policy
from guard.core.policy.cases import cases_path, run_cases
from guard.edges.handover import policy_revision
from guard.edges.audit import AuditLog, AuditUnavailable
from guard.edges.relay import PolicyTable, Relay
from guard.edges.release import ReleaseAuthority
from guard.edges.s2s.carrier import open_outbound_stream
from guard.edges.s2s.inbound import InboundFactory
from guard.edges.s2s.srv import side_resolver
from guard.edges.s2s.verification import Verifier
from guard.edges.side import Side
from guard.edges.tlsidentity import Identity, TrustAnchors

from .config import ConfigError, GuardConfig, audit_options, configured_route
from .snmp import subagent_for
from .metrics import GuardMetrics, metrics_site

log = Logger()


def load_side_material(config_path: str, side_config):
    """The CA bundle and the identities (fronted domain -> Identity) one side's configuration names."""
    name = side_config.name
    try:
        anchors = TrustAnchors(side_config.ca)
    except (ValueError, OSError) as problem:
        raise ConfigError(f"{config_path}: sides.{name}.ca: {problem}") from problem
    identities = {}
    for index, entry in enumerate(side_config.certificates):
        try:
            identity = Identity(entry.domains, entry.certificate, entry.key, anchors,
                                entry.client_certificate, entry.client_key)
        except (ValueError, OSError, crypto.Error, Exception) as problem:  # noqa: BLE001 - report any load fault
            raise ConfigError(
                f"{config_path}: sides.{name}.certificates[{index}]: cannot use "
                f"{entry.certificate} with {entry.key}: {problem}"
            ) from problem
        for domain in entry.domains:
            identities[domain] = identity
    return anchors, identities


def load_checked_policy(config_path: str, key: str, path: str, direction: Direction):
    """The policy at ``path``, refused (ConfigError naming ``key``) if it does not load or is written for another direction."""
    try:
        policy = load_policy(path)
    except PolicyError as problem:
        raise ConfigError(f"{config_path}: {key}: {problem}") from problem
    declared = getattr(policy, "sides", None)
    if declared is not None and tuple(declared) != (direction.source, direction.destination):
        raise ConfigError(
            f"{config_path}: {key}: {path} is written for {declared[0]}->{declared[1]}, but judges {direction} here"
        )
    return policy


def policy_record(direction, path: str, policy, loaded: float) -> dict:
    """
    What the snapshot and the metrics say of a policy in force: its file,
    name, when it was loaded (epoch seconds), the SHA-256 of the file, and
    the results of its own cases (``<policy>.tests.toml``, when there is one;
    a cases file that cannot be read counts as one failed case).
    """
    try:
        with open(path, "rb") as source:
            digest = hashlib.sha256(source.read()).hexdigest()
    except OSError:
        digest = None
    passed = failed = 0
    cases = cases_path(path)
    if os.path.exists(cases):
        try:
            results = run_cases(policy, cases)
        except Exception as problem:  # noqa: BLE001 - a cases file that cannot be run is a failed case
            log.warn("policy cases {cases} could not be run: {problem}", cases=cases, problem=str(problem))
            results = None
        if results is None:
            failed = 1
        else:
            passed = sum(1 for result in results if result.passed)
            failed = len(results) - passed
    return {"direction": str(direction), "file": path, "name": getattr(policy, "name", None), "loaded": loaded,
            "digest": digest, "cases": {"passed": passed, "failed": failed}}


def policy_files(config: GuardConfig):
    """(direction, configuration key, path) for each policy of a standalone guard."""
    return [
        (Direction(name, config.topology.far_side(name)), f"sides.{name}.policy", side.policy)
        for name, side in config.sides.items()
    ]


def load_material(config: GuardConfig):
    """Load every CA, certificate, key and policy the configuration names; ConfigError on any fault."""
    anchors, identities = {}, {}
    for name, side in config.sides.items():
        anchors[name], identities[name] = load_side_material(config.path, side)
    policies = {direction: load_checked_policy(config.path, key, path, direction)
                for direction, key, path in policy_files(config)}
    return anchors, identities, policies


def build_side(side_config, config, anchors, identities, dialback_secret, reactor,
               open_stream=open_outbound_stream) -> Side:
    """One side, its routes as Twisted client endpoint strings and its dialback Verifier (which opens its
    verification streams with ``open_stream``)."""
    side = Side(
        name=side_config.name,
        topology=config.topology,
        authentication=side_config.authentication,
        identities=identities,
        anchors=anchors,
        routes={domain: configured_route(route, config.limits.connect_timeout)
                for domain, route in side_config.domains.items()},
        limits=config.limits,
        dialback_secret=dialback_secret,
        reactor=reactor,
        resolver=side_resolver(getattr(side_config, "dns", None), reactor),  # issue 11: srv routes
    )
    side.verifier = Verifier(side, open_stream)
    return side


class GuardProcess(service.Service):
    """
    What every guard process has: books, audit trail, policies that reload
    atomically, an optional release authority for ``refer``, the status
    file, and the listening ports of its sides.  Subclasses build the relay.
    """

    def __init__(self, config, reactor, policies):
        self.config = config
        self.reactor = reactor
        self.books = Books()
        try:
            self.audit = AuditLog(config.audit_path, level=config.settings.audit_level, **audit_options(config.settings))
        except AuditUnavailable as problem:
            raise ConfigError(f"{config.path}: guard.audit: cannot open the audit trail: {problem}") from problem
        self.policies = PolicyTable(policies)
        self.dialback_secret = config.dialback_secret or secrets.token_hex(32)
        self.release_authority = None
        endpoint = config.settings.release_endpoint
        if endpoint is not None:
            try:
                self.release_authority = ReleaseAuthority.at(reactor, endpoint, self.audit,
                                                             config.settings.release_timeout,
                                                             config.settings.release_max_pending,
                                                             config.settings.release_max_waiting)
            except ValueError as problem:
                raise ConfigError(f"{config.path}: release.endpoint: {problem}") from problem
        self.sides = {}
        self._ports = []
        # For the snapshot and the metrics (guard.app.snapshot): when the process started, and each policy in force.
        self.started = reactor.seconds()
        self.policy_records = self._policy_records(policies)
        # SNMP (issue 12): the AgentX subagent, when [snmp] agentx is set; it reads guard.app.snapshot.
        self.snmp = None
        self.metrics = None  # GuardMetrics, once the subclass built the relay (_attach_metrics)
        self._metrics_port = None
        # A worker (guard.app.workers) adopts the listening socket of each side it inherited: side name -> fd.
        self.adopted_listeners: dict[str, int] = {}
        # A worker writes its metrics here with its status (guard.app.workers.worker_metrics_file); None: it does not.
        self.metrics_path: str | None = None

    def policy_files(self):
        """(direction, configuration key, path) for each policy this process enforces."""
        raise NotImplementedError

    def side_configs(self):
        """The configuration of each side this process terminates S2S streams for, by name."""
        raise NotImplementedError

    def _policy_records(self, policies) -> list[dict]:
        now = self.reactor.seconds()
        return [policy_record(direction, path, policies[direction], now)
                for direction, _, path in self.policy_files() if direction in policies]

    def startService(self):
        super().startService()
        self.snmp = subagent_for(self)
        if self.snmp is not None:
            self.snmp.start()

    def stopService(self):
        super().stopService()
        if self.snmp is not None:
            self.snmp.stop()

    def _attach_metrics(self):
        """Build the metrics (always; served only when [metrics] listen is set) once relay, sides and link exist."""
        self.metrics = GuardMetrics(self).attach()

    @defer.inlineCallbacks
    def _listen_metrics(self):
        listen = self.config.settings.metrics_listen
        if listen is None:
            return
        self._metrics_port = yield serverFromString(self.reactor, listen).listen(metrics_site(self.metrics.registry))
        log.info("metrics: serving /metrics on {listen}", listen=listen)

    def _audit_start(self):
        """Write a first audit record at start: an audit trail that cannot be written is found now, not at the first drop."""
        try:
            self.audit.record("start", rule="guard:start", rev=1, config=self.config.path,
                              directions=[str(d) for d, _, _ in self.policy_files()])
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE at start: {problem}", problem=str(problem))
            if self.config.audit_failure == "stop":
                self.relay.halted_reason = f"audit trail unavailable: {problem}"
                log.critical("the guard stops relaying: {reason}", reason=self.relay.halted_reason)

    @defer.inlineCallbacks
    def _listen(self):
        for name, side in self.sides.items():
            listen = self.side_configs()[name].listen
            if name in self.adopted_listeners:
                from .workers import accept_one_at_a_time, socket_family

                fd = self.adopted_listeners[name]
                self._ports.append(accept_one_at_a_time(
                    self.reactor.adoptStreamPort(fd, socket_family(fd), InboundFactory(side))))
                log.info("side {side}: accepting on the inherited socket of {listen} (fd {fd})", side=name,
                         listen=listen, fd=fd)
                continue
            try:
                endpoint = serverFromString(self.reactor, listen)
            except (KeyError, IndexError) as problem:
                # A systemd: string whose socket was not passed (Twisted raises KeyError/IndexError).
                raise ConfigError(
                    f"{self.config.path}: sides.{name}.listen: {listen}: no such socket was passed by systemd "
                    f"(LISTEN_FDNAMES={os.environ.get('LISTEN_FDNAMES', '')!r}): {problem!r}"
                ) from problem
            port = yield endpoint.listen(InboundFactory(side))
            self._ports.append(port)
            log.info("side {side}: listening on {listen} for {hosted}, fronting {fronted}",
                     side=name, listen=listen, hosted=sorted(side.hosted), fronted=sorted(side.fronted))
        yield self._listen_metrics()

    @defer.inlineCallbacks
    def _start_management(self):
        """Serve the management page when [management] listen is set (guard.app.management); it stops with the
        other listeners."""
        if getattr(self.config, "management", None) is None:
            return
        from guard.app.management import listen_management
        from guard.app.snapshot import snapshot

        port = yield listen_management(self, snapshot)
        self._ports.append(port)
        log.info("management page: listening on {listen} ({mode})", listen=self.config.management.listen,
                 mode="reload allowed" if self.config.management.allow_reload else "read-only")

    @defer.inlineCallbacks
    def _close_down(self, after_closing=None):
        """
        Stop listening, close inbound streams, bounce what waits, give the
        bounces up to shutdown_grace to reach their senders, close the
        outbound streams, let the closes reach the wire, write the books.
        """
        for port in self._ports:
            yield port.stopListening()
        self._ports = []
        self.relay.begin_shutdown()
        deadline = self.reactor.seconds() + self.config.limits.shutdown_grace
        while self.relay.bounces_waiting() and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.relay.finish_shutdown()
        if after_closing is not None:
            yield after_closing()
        yield deferLater(self.reactor, 0.3, lambda: None)
        self.write_status()
        log.info("books at shutdown: {books}", books=self.books.summary())
        self.audit.close()
        if self._metrics_port is not None:
            yield self._metrics_port.stopListening()
            self._metrics_port = None

    def reload_policies(self):
        """
        Load every policy again; swap them all in only if all load (the old
        ones stay otherwise).  Stanzas judged by the old policies and still
        held (in outbound queues, waiting for the release authority) are
        judged again by the new ones before they leave.
        """
        fresh = {}
        for direction, key, path in self.policy_files():
            try:
                fresh[direction] = load_checked_policy(self.config.path, key, path, direction)
            except ConfigError as problem:
                log.error("reload refused, policies unchanged: {problem}", problem=str(problem))
                return False
        for direction, policy in fresh.items():
            self.policies.swap(direction, policy)
        self.policy_records = self._policy_records(fresh)
        if self.metrics is not None:
            self.metrics.policies_changed()
        log.info("policies reloaded: {files}; {held} bytes of stanzas held are judged again before they leave",
                 files=[path for _, _, path in self.policy_files()], held=self.relay.held.held)
        return True

    def status(self) -> dict:
        status = self.relay.status()
        # Which policies are in force, as every process that loaded the same files names them (workers compare it).
        status["policy_revision"] = policy_revision(self.policy_records)
        if self.release_authority is not None:
            status["release_authority"] = self.release_authority.describe()
        return status

    def write_status(self):
        if self.config.status_path is None:
            return
        temporary = self.config.status_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(self.status(), out, indent=2, sort_keys=True)
        os.replace(temporary, self.config.status_path)
        if self.metrics_path is not None:  # a worker: its metrics, for the supervisor's /metrics (guard.app.workers)
            from prometheus_client import generate_latest

            with open(self.metrics_path + ".tmp", "wb") as out:
                out.write(generate_latest(self.metrics.registry))
            os.replace(self.metrics_path + ".tmp", self.metrics_path)


class GuardService(GuardProcess):
    """One standalone guard: two sides, one relay."""

    def __init__(self, config: GuardConfig, reactor, open_stream=open_outbound_stream):
        """``open_stream`` opens every outbound S2S stream (relay and dialback verification); a lab may inject its own."""
        anchors, identities, policies = load_material(config)
        super().__init__(config, reactor, policies)
        self.relay = Relay(config.topology, self.policies, self.books, self.audit, reactor,
                           stop_on_audit_failure=config.audit_failure == "stop",
                           open_stream=open_stream, release_authority=self.release_authority)
        for name, side_config in config.sides.items():
            side = build_side(side_config, config, anchors[name], identities[name], self.dialback_secret, reactor,
                              open_stream)
            self.relay.add_side(side)
            self.sides[name] = side
        self._attach_metrics()

    def policy_files(self):
        return policy_files(self.config)

    def side_configs(self):
        return self.config.sides

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        self._audit_start()
        if self.adopted_listeners:  # a worker (guard.app.workers): pairs pinned to other workers are handed over
            from .workers import join_handover

            self.handover = join_handover(self)
        yield self._listen()
        yield self._start_management()
        self.write_status()

    def stopService(self):
        super().stopService()
        return self._close_down()
