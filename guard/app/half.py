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

from twisted.internet import defer
from twisted.logger import Logger

from guard.core.addressing import Misaddressed, check_addressing
from guard.core.pipeline import Direction
from guard.edges.link.leg import LinkLeg
from guard.edges.relay import Relay

from .config import ConfigError
from .half_config import HalfConfig
from .service import GuardProcess, build_side, load_checked_policy, load_side_material

log = Logger()

LINK_MISADDRESSED_RULE = "guard:link-misaddressed"


class FarSide:
    """Stands for the far side where the relay asks for a side object: only its name is used."""

    def __init__(self, name: str):
        self.name = name


class HalfRelay(Relay):
    """A relay whose far side is the pair link."""

    def __init__(self, topology, policies, books, audit, reactor, own_side: str, far_side: str,
                 stop_on_audit_failure=True, release_authority=None):
        super().__init__(topology, policies, books, audit, reactor, stop_on_audit_failure,
                         release_authority=release_authority)
        self.own_side = own_side
        self.far = FarSide(far_side)
        # Every (far domain, own domain) pair may arrive over the link; computed once, not per stanza.
        self._link_pairs = frozenset((sender, receiver) for sender in topology.hosted_on(far_side)
                                     for receiver in topology.hosted_on(own_side))
        self.leg = None  # set by the service once the link exists

    def _forward(self, side_name, pair, parcel):
        if side_name == self.far.name:
            self.leg.link.send(parcel)
            return
        super()._forward(side_name, pair, parcel)

    # -- the link's owner calls -------------------------------------------

    def link_stanza_received(self, element, size):
        """A stanza from the peer half: check its addressing here, then judge it with our import policy."""
        recipient = element.getAttribute("to") or ""
        verdict = check_addressing(element, self._link_pairs, self.topology.hosted_on(self.own_side))
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

    def begin_shutdown(self):
        # The link first: what it gives up on bounces toward this half's own
        # servers while the S2S streams to them are still open.
        if self.leg is not None:
            self.leg.link.stop()
        super().begin_shutdown()

    def status(self) -> dict:
        status = super().status()
        status["pair_link"] = self.leg.describe() if self.leg is not None else None
        return status


def half_policy_files(config: HalfConfig):
    """(direction, configuration key, path): the export policy and the import policy of a half."""
    side = config.side
    return [
        (Direction(side.name, config.link.far_side), f"sides.{side.name}.policy", side.policy),
        (Direction(config.link.far_side, side.name), "link.import_policy", config.link.import_policy),
    ]


class HalfService(GuardProcess):
    """One half: one side, one relay, one pair link."""

    def __init__(self, config: HalfConfig, reactor):
        anchors, identities = load_side_material(config.path, config.side)
        policies = {direction: load_checked_policy(config.path, key, path, direction)
                    for direction, key, path in half_policy_files(config)}
        super().__init__(config, reactor, policies)
        self.relay = HalfRelay(config.topology, self.policies, self.books, self.audit, reactor,
                               config.side.name, config.link.far_side,
                               stop_on_audit_failure=config.audit_failure == "stop",
                               release_authority=self.release_authority)
        self.side = build_side(config.side, config, anchors, identities, self.dialback_secret, reactor)
        self.relay.add_side(self.side)
        self.sides[self.side.name] = self.side
        try:
            self.leg = LinkLeg(config.link.leg, self.relay, reactor, config.limits.parser_limits())
        except (ValueError, OSError, Exception) as problem:  # noqa: BLE001 - report any load fault
            raise ConfigError(f"{config.path}: link: {problem}") from problem
        self.relay.leg = self.leg

    def policy_files(self):
        return half_policy_files(self.config)

    def side_configs(self):
        return {self.config.side.name: self.config.side}

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        self._audit_start()
        yield self._listen()
        yield self.leg.start()
        leg = self.config.link.leg
        log.info("pair link {own} <-> {peer}: {role} {endpoint}; our fingerprint {fingerprint}",
                 own=leg.own_name, peer=leg.peer_name, role="listening on" if leg.listen else "dialling",
                 endpoint=leg.listen or leg.dial, fingerprint=self.leg.tls.fingerprint)
        self.write_status()

    def stopService(self):
        super().stopService()
        return self._close_down(after_closing=self.leg.stop)
