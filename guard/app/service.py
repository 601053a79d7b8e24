"""
The composition root: turns a checked configuration into a running guard
(listening endpoints, sides, the relay, policies, audit) and back down again.
"""

from __future__ import annotations

import json
import os
import secrets

from OpenSSL import crypto
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from guard.core.books import Books
from guard.core.pipeline import Direction
from guard.core.policy import PolicyError, load_policy
from guard.edges.audit import AuditLog
from guard.edges.relay import PolicyTable, Relay
from guard.edges.s2s.inbound import InboundFactory
from guard.edges.side import Side
from guard.edges.tlsidentity import Identity, TrustAnchors

from .config import ConfigError, GuardConfig

log = Logger()


def load_material(config: GuardConfig):
    """Load every CA, certificate, key and policy the configuration names; ConfigError on any fault."""
    anchors, identities, policies = {}, {}, {}
    topology = config.topology
    for name, side in config.sides.items():
        try:
            anchors[name] = TrustAnchors(side.ca)
        except (ValueError, OSError) as problem:
            raise ConfigError(f"{config.path}: sides.{name}.ca: {problem}") from problem
        identities[name] = {}
        for index, entry in enumerate(side.certificates):
            try:
                identity = Identity(entry.domains, entry.certificate, entry.key, anchors[name],
                                    entry.client_certificate, entry.client_key)
            except (ValueError, OSError, crypto.Error, Exception) as problem:  # noqa: BLE001 - report any load fault
                raise ConfigError(
                    f"{config.path}: sides.{name}.certificates[{index}]: cannot use "
                    f"{entry.certificate} with {entry.key}: {problem}"
                ) from problem
            for domain in entry.domains:
                identities[name][domain] = identity
        direction, policy = load_direction_policy(config, name)
        policies[direction] = policy
    return anchors, identities, policies


def load_direction_policy(config: GuardConfig, name: str):
    """The policy judging traffic leaving side ``name``, checked to be written for that direction."""
    side = config.sides[name]
    direction = Direction(name, config.topology.far_side(name))
    try:
        policy = load_policy(side.policy)
    except PolicyError as problem:
        raise ConfigError(f"{config.path}: sides.{name}.policy: {problem}") from problem
    declared = getattr(policy, "sides", None)
    if declared is not None and tuple(declared) != (direction.source, direction.destination):
        raise ConfigError(
            f"{config.path}: sides.{name}.policy: {side.policy} is written for "
            f"{declared[0]}->{declared[1]}, but judges {direction} here"
        )
    return direction, policy


class GuardService(service.Service):
    """One guard: two sides, one relay."""

    def __init__(self, config: GuardConfig, reactor):
        self.config = config
        self.reactor = reactor
        anchors, identities, policies = load_material(config)
        self.books = Books()
        self.audit = AuditLog(config.audit_path)
        self.policies = PolicyTable(policies)
        self.relay = Relay(config.topology, self.policies, self.books, self.audit, reactor,
                           stop_on_audit_failure=config.audit_failure == "stop")
        secret = config.dialback_secret or secrets.token_hex(32)
        self.sides = {}
        for name, side_config in config.sides.items():
            side = Side(
                name=name,
                topology=config.topology,
                authentication=side_config.authentication,
                identities=identities[name],
                anchors=anchors[name],
                routes=dict(side_config.domains),
                limits=config.limits,
                dialback_secret=secret,
                reactor=reactor,
            )
            self.relay.add_side(side)
            self.sides[name] = side
        self._ports = []

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        for name, side in self.sides.items():
            listen = self.config.sides[name].listen
            port = yield serverFromString(self.reactor, listen).listen(InboundFactory(side))
            self._ports.append(port)
            log.info("side {side}: listening on {listen} for {hosted}, fronting {fronted}",
                     side=name, listen=listen, hosted=sorted(side.hosted), fronted=sorted(side.fronted))
        self.write_status()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        for port in self._ports:
            yield port.stopListening()
        self._ports = []
        self.relay.shut_down()
        # Give the bounces and stream closes a moment to reach the wire.
        yield deferLater(self.reactor, 0.5)
        self.write_status()
        log.info("books at shutdown: {books}", books=self.books.summary())
        self.audit.close()

    def reload_policies(self):
        """Load every policy again; swap each in only if all load (the old ones stay otherwise)."""
        fresh = {}
        for name in self.config.sides:
            try:
                direction, policy = load_direction_policy(self.config, name)
            except ConfigError as problem:
                log.error("reload refused, policies unchanged: {problem}", problem=str(problem))
                return False
            fresh[direction] = policy
        for direction, policy in fresh.items():
            self.policies.swap(direction, policy)
        log.info("policies reloaded: {files}", files=[s.policy for s in self.config.sides.values()])
        return True

    def write_status(self):
        if self.config.status_path is None:
            return
        temporary = self.config.status_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(self.relay.status(), out, indent=2, sort_keys=True)
        os.replace(temporary, self.config.status_path)


def deferLater(reactor, seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
