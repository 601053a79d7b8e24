"""
The composition root of one half of a back-to-back pair: this half's own
side (S2S streams to its servers, as in standalone mode) and the pair link
to the peer half in place of the far side.

Stanzas from this half's side are judged by its export policy and carried
over the link.  Stanzas arriving over the link were parsed again by this
half's hardened parser (the link stream's ``StreamParser``); here they are
addressing-checked against this half's own topology and judged by its own
import policy: nothing the peer half decided is trusted.
"""

from __future__ import annotations

import json
import os
import secrets

from OpenSSL import crypto
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger

from guard.core.addressing import Misaddressed, check_addressing
from guard.core.books import Books
from guard.core.pipeline import Direction
from guard.core.policy import PolicyError, load_policy
from guard.edges.audit import AuditLog
from guard.edges.link.leg import LinkLeg
from guard.edges.relay import PolicyTable, Relay
from guard.edges.s2s.inbound import InboundFactory
from guard.edges.side import Side
from guard.edges.tlsidentity import Identity, TrustAnchors

from .config import ConfigError
from .half_config import HalfConfig

log = Logger()

LINK_MISADDRESSED_RULE = "guard:link-misaddressed"


class FarSide:
    """Stands for the far side where the relay asks for a side object: only its name is used."""

    def __init__(self, name: str):
        self.name = name


class HalfRelay(Relay):
    """A relay whose far side is the pair link."""

    def __init__(self, topology, policies, books, audit, reactor, own_side: str, far_side: str,
                 stop_on_audit_failure=True):
        super().__init__(topology, policies, books, audit, reactor, stop_on_audit_failure)
        self.own_side = own_side
        self.far = FarSide(far_side)
        self.leg = None  # set by the service once the link exists

    def _forward(self, side_name, pair, parcel):
        if side_name == self.far.name:
            self.leg.link.send(parcel)
            return
        super()._forward(side_name, pair, parcel)

    # -- the link's owner calls -------------------------------------------

    def link_stanza_received(self, element, size):
        """A stanza from the peer half: check its addressing here, then judge it with our import policy."""
        far_domains = self.topology.hosted_on(self.far.name)
        own_domains = self.topology.hosted_on(self.own_side)
        recipient = element.getAttribute("to") or ""
        pairs = {(sender, receiver) for sender in far_domains for receiver in own_domains}
        verdict = check_addressing(element, pairs, own_domains)
        if isinstance(verdict, Misaddressed):
            self.books.accept()
            self._drop(element, LINK_MISADDRESSED_RULE, 1, Direction(self.far.name, self.own_side),
                       f"{verdict.condition}: {verdict.text} (to {recipient!r})")
            return
        self.stanza_received(self.far, element, verdict, size)

    def link_delivered(self, parcel):
        self.delivered(parcel)

    def link_undeliverable(self, parcel, condition, text):
        self.undeliverable(parcel, condition, text)

    def shut_down(self):
        # The link first: what it gives up on bounces toward this half's own
        # servers while the S2S streams to them are still open.
        if self.leg is not None:
            self.leg.link.stop()
        super().shut_down()

    def status(self) -> dict:
        status = super().status()
        status["pair_link"] = self.leg.describe() if self.leg is not None else None
        return status


def load_half_material(config: HalfConfig):
    """Load the CA, certificates, keys and both policies the half's configuration names."""
    side = config.side
    try:
        anchors = TrustAnchors(side.ca)
    except (ValueError, OSError) as problem:
        raise ConfigError(f"{config.path}: sides.{side.name}.ca: {problem}") from problem
    identities = {}
    for index, entry in enumerate(side.certificates):
        try:
            identity = Identity(entry.domains, entry.certificate, entry.key, anchors)
        except (ValueError, OSError, crypto.Error, Exception) as problem:  # noqa: BLE001 - report any load fault
            raise ConfigError(f"{config.path}: sides.{side.name}.certificates[{index}]: cannot use "
                              f"{entry.certificate} with {entry.key}: {problem}") from problem
        for domain in entry.domains:
            identities[domain] = identity
    policies = {}
    for direction, path, key in (
        (Direction(side.name, config.link.far_side), side.policy, f"sides.{side.name}.policy"),
        (Direction(config.link.far_side, side.name), config.link.import_policy, "link.import_policy"),
    ):
        try:
            policies[direction] = load_policy(path)
        except PolicyError as problem:
            raise ConfigError(f"{config.path}: {key}: {problem}") from problem
    return anchors, identities, policies


class HalfService(service.Service):
    """One half: one side, one relay, one pair link."""

    def __init__(self, config: HalfConfig, reactor):
        self.config = config
        self.reactor = reactor
        anchors, identities, policies = load_half_material(config)
        self.books = Books()
        self.audit = AuditLog(config.audit_path)
        self.policies = PolicyTable(policies)
        self.relay = HalfRelay(config.topology, self.policies, self.books, self.audit, reactor,
                               config.side.name, config.link.far_side,
                               stop_on_audit_failure=config.audit_failure == "stop")
        self.side = Side(
            name=config.side.name,
            topology=config.topology,
            authentication=config.side.authentication,
            identities=identities,
            anchors=anchors,
            routes=dict(config.side.domains),
            limits=config.limits,
            dialback_secret=config.dialback_secret or secrets.token_hex(32),
            reactor=reactor,
        )
        self.relay.add_side(self.side)
        try:
            self.leg = LinkLeg(config.link.leg, self.relay, reactor, config.limits.parser_limits())
        except (ValueError, OSError, Exception) as problem:  # noqa: BLE001 - report any load fault
            raise ConfigError(f"{config.path}: link: {problem}") from problem
        self.relay.leg = self.leg
        self._ports = []

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        listen = self.config.side.listen
        port = yield serverFromString(self.reactor, listen).listen(InboundFactory(self.side))
        self._ports.append(port)
        log.info("side {side}: listening on {listen} for {hosted}, fronting {fronted}",
                 side=self.side.name, listen=listen, hosted=sorted(self.side.hosted),
                 fronted=sorted(self.side.fronted))
        yield self.leg.start()
        leg = self.config.link.leg
        log.info("pair link {own} <-> {peer}: {role} {endpoint}; our fingerprint {fingerprint}",
                 own=leg.own_name, peer=leg.peer_name, role="listening on" if leg.listen else "dialling",
                 endpoint=leg.listen or leg.dial, fingerprint=self.leg.tls.fingerprint)
        self.write_status()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        for port in self._ports:
            yield port.stopListening()
        self._ports = []
        self.relay.shut_down()
        yield self.leg.stop()
        yield deferLater(self.reactor, 0.5, lambda: None)
        self.write_status()
        log.info("books at shutdown: {books}", books=self.books.summary())
        self.audit.close()

    def reload_policies(self):
        """Load both policies again; swap them in only if both load."""
        fresh = {}
        for direction, path in (
            (Direction(self.side.name, self.config.link.far_side), self.config.side.policy),
            (Direction(self.config.link.far_side, self.side.name), self.config.link.import_policy),
        ):
            try:
                fresh[direction] = load_policy(path)
            except PolicyError as problem:
                log.error("reload refused, policies unchanged: {problem}", problem=str(problem))
                return False
        for direction, policy in fresh.items():
            self.policies.swap(direction, policy)
        log.info("policies reloaded")
        return True

    def write_status(self):
        if self.config.status_path is None:
            return
        temporary = self.config.status_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(self.relay.status(), out, indent=2, sort_keys=True)
        os.replace(temporary, self.config.status_path)


def main(argv=None) -> int:
    """Run one half: ``python -m guard.app.half --config half.toml`` (until ``guard run`` starts halves)."""
    import argparse
    import signal
    import sys

    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
                                textFileLogObserver)

    from .half_config import load_half_config

    parser = argparse.ArgumentParser(prog="guard-half", description="Run one half of a back-to-back pair")
    parser.add_argument("--config", required=True)
    parser.add_argument("--check", action="store_true", help="check the configuration, then exit")
    arguments = parser.parse_args(argv)
    try:
        config = load_half_config(arguments.config)
        half = HalfService(config, reactor)
    except ConfigError as problem:
        print(f"guard-half: {problem}", file=sys.stderr)
        return 2
    if arguments.check:
        print(f"{arguments.config}: OK; this half's link fingerprint is {half.leg.tls.fingerprint}")
        return 0
    level = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
             "error": LogLevel.error}[config.log_level]
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def stop_once(signum, frame):
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop_once)
    signal.signal(signal.SIGINT, stop_once)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(half.write_status))
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(half.reload_policies))

    def start():
        started = half.startService()
        if started is not None:
            def failed(failure):
                log.critical("the half could not start: {problem}", problem=failure.getErrorMessage())
                reactor.stop()

            started.addErrback(failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", half.stopService)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
