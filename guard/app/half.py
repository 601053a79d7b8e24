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

from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from guard.core.accepted import accepted_from_element
from guard.core.addressing import Misaddressed, check_addressing, parse_jid
from guard.core.pipeline import Direction, judge_fail_closed
from guard.core.settlement import Deliver
from guard.edges.feeders import Feeders
from guard.edges.link.leg import LinkLeg, NoSuchSocket
from guard.edges.link.link import NOT_WRITABLE, REFUSED_CONDITION, TOO_LARGE, LinkCarrier, LinkFeeder
from guard.edges.relay import Relay, Ticket
from guard.edges.s2s.carrier import open_outbound_stream
from guard.edges.release import reparse_stanza
from guard.edges.xmlstream import OversizedStanza, ParserLimits, serialise

from .config import ConfigError
from .half_config import HalfConfig
from .service import GuardProcess, build_side, load_checked_policy, load_side_material

log = Logger()

LINK_MISADDRESSED_RULE = "guard:link-misaddressed"
LINK_IN_DOUBT_RULE = "guard:link-in-doubt"
# The constrained profile's own drops (presence it does not carry, presence a later one replaced): audited.
LINK_PROFILE_RULES = {"stripped": "guard:link-presence-stripped", "superseded": "guard:link-presence-superseded"}
IN_DOUBT_TEXT = "written to the peer half, not acknowledged before this half stopped: it may have been delivered"


class FarSide:
    """Stands for the far side where the relay asks for a side object: only its name is used."""

    def __init__(self, name: str):
        self.name = name


class HalfRelay(Relay):
    """A relay whose far side is the pair link."""

    def __init__(self, topology, policies, books, audit, reactor, own_side: str, far_side: str,
                 stop_on_audit_failure=True, release_authority=None, open_stream=None):
        super().__init__(topology, policies, books, audit, reactor, stop_on_audit_failure,
                         open_stream=open_stream, release_authority=release_authority)
        self.own_side = own_side
        self.far = FarSide(far_side)
        # Every (far domain, own domain) pair may arrive over the link; computed once, not per stanza.
        self._link_pairs = frozenset((sender, receiver) for sender in topology.hosted_on(far_side)
                                     for receiver in topology.hosted_on(own_side))
        self._leg = None
        self.link_feeder = None

    @property
    def leg(self):
        """The pair link's leg (set by the service once the link exists)."""
        return self._leg

    @leg.setter
    def leg(self, leg):
        """Setting the leg makes its link the carrier of everything bound for the far side, and the feeder
        of every (far domain, own domain) pair: held while a pair toward our own servers is congested (or
        its stream is set up with a full queue) and while the guard holds its whole memory budget."""
        self._leg = leg
        if leg is None:
            return
        own = self.topology.hosted_on(self.own_side)
        far = self.topology.hosted_on(self.far.name)
        self.link_feeder = LinkFeeder(leg.link, self._link_pairs)
        self.back_pressure.attach(self.far.name, Feeders([self.link_feeder]))
        self.carry_side_over(self.far.name, LinkCarrier(leg.link, ((sender, receiver) for sender in own
                                                                   for receiver in far)))

    @property
    def link_holds(self) -> set:
        """Why the link is not read: a reason per congested pair (its text names the pair), and MEMORY_HOLD."""
        return set(self.link_feeder.reasons) if self.link_feeder is not None else set()

    # -- policy reload ------------------------------------------------------------

    def rejudge_link_buffer(self):
        """The policies changed: every stanza still waiting unwritten in the link's buffer is judged again
        by the export policy now in force before it leaves (HalfService.reload_policies calls this).

        What is judged is what would leave (the bytes the old policy let through, parsed again), so a
        looser new policy cannot bring back what the old one removed; a stricter one bounces, drops or
        refers it, audited.  A stanza already written may be at the peer: it is not recalled."""
        if self.leg is None:
            return
        direction = Direction(self.own_side, self.far.name)
        self.leg.link.rejudge_unwritten(lambda carried: self._judge_link_waiting(carried, direction))

    def _judge_link_waiting(self, carried, direction):
        """The bytes to carry after judging the waiting stanza again, or None once it is settled here."""
        parcel = carried.parcel
        if parcel.original is None:
            return carried.data  # our own bounces are not judged
        limits = getattr(self.leg, "limits", ParserLimits())
        stanza = reparse_stanza(carried.data.decode("utf-8"), limits)
        if stanza is None:
            self.undeliverable(parcel, "internal-server-error", NOT_WRITABLE)
            return None
        judgement, problem = judge_fail_closed(self.policies.current(direction), stanza, direction,
                                               accepted_from_element(stanza, direction, len(carried.data)))
        if problem is not None:
            log.error("policy for {direction} failed on a waiting stanza: {problem!r}",
                      direction=str(direction), problem=problem)
        original = parcel.original
        sender, recipient = parse_jid(original.getAttribute("from")), parse_jid(original.getAttribute("to"))
        pair = (sender.host if sender else "", recipient.host if recipient else "")
        # The ticket keeps the whole stanza (the parcel's original is only its top element): a refer that is
        # judged once more, after another reload, must see what would leave, body included.  It keeps the
        # number the settlement gave the stanza when it was accepted (none: the settlement refuses it).
        ticket = replace(parcel.ticket or Ticket(stanza, pair, 0, direction, 0), stanza=stanza, pair=pair,
                         size=len(carried.data), direction=direction, generation=self.policies.generation)
        action = self._settle(ticket, judgement)
        if not isinstance(action, Deliver):
            self._act(action)  # bounced, referred or dropped, as any judged stanza (a pass not recorded: bounced)
            return None
        try:
            return serialise(action.parcel.stanza, max_bytes=limits.stanza_bytes).encode("utf-8")
        except OversizedStanza:
            self.undeliverable(parcel, REFUSED_CONDITION, TOO_LARGE)
            return None

    # -- the link's owner calls -------------------------------------------

    def link_stanza_received(self, element, size):
        """A stanza from the peer half: check its addressing here, then judge it with our import policy."""
        recipient = element.getAttribute("to") or ""
        verdict = check_addressing(element, self._link_pairs, self.topology.hosted_on(self.own_side))
        if isinstance(verdict, Misaddressed):
            ticket = self.settlement.accept(element, ("", ""), size, Direction(self.far.name, self.own_side),
                                            self.policies.generation)
            self.settlement.drop(ticket, LINK_MISADDRESSED_RULE, 1,
                                 f"{verdict.condition}: {verdict.text} (to {recipient!r})")
            return
        self.stanza_received(self.far, element, verdict, size)

    def link_delivered(self, parcel):
        self.delivered(parcel)

    def link_undeliverable(self, parcel, condition, text):
        self.undeliverable(parcel, condition, text)

    def link_dropped_by_profile(self, parcel, why, text):
        """The constrained profile does not carry ``parcel`` (``why``: "stripped" or "superseded"): dropped, audited."""
        if parcel.original is None:
            self.settlement.bounce_lost(parcel, text)  # one of our own bounces (a presence error) the profile strips
            return
        self.settlement.drop(parcel.ticket, LINK_PROFILE_RULES[why], 1, text, stanza=parcel.original,
                             direction=Direction(self.own_side, self.far.name))

    def link_in_doubt(self, parcel):
        """Written to the peer, never acknowledged, and this half stops: neither bounced nor delivered; audited."""
        if parcel.original is None:
            self.settlement.bounce_lost(parcel, IN_DOUBT_TEXT)  # one of our own bounces that may never arrive
            return
        self.settlement.drop(parcel.ticket, LINK_IN_DOUBT_RULE, 1, IN_DOUBT_TEXT, stanza=parcel.original,
                             direction=Direction(self.own_side, self.far.name))

    # -- shutdown (deploy/pair/PAIR.md has the table of what happens when) -----
    #
    # Relay.begin_shutdown drains the link first (its carrier's bounce_waiting): it
    # takes nothing more from the peer (what the peer still sends stays the peer's,
    # to resend to this half's next run) and bounces what it never wrote while the
    # S2S streams to our servers are open.  Then the relay closes inbound streams and
    # bounces what waits for our servers, including stanzas that came over the link:
    # those bounces go back over the link, which still carries.  bounces_waiting counts
    # what a live link may still acknowledge within the grace; finish_shutdown stops
    # the link (what is written and unacknowledged is reported in doubt), then the streams.

    def status(self) -> dict:
        status = super().status()
        status["pair_link"] = self.leg.describe() if self.leg is not None else None
        return status


def profile_summary(config: HalfConfig) -> str:
    """The link's profile in one line (``--check`` and the start-up log)."""
    profile = config.link.leg.profile
    return "profile standard" if profile is None else profile.describe()


def half_policy_files(config: HalfConfig):
    """(direction, configuration key, path): the export policy and the import policy of a half."""
    side = config.side
    return [
        (Direction(side.name, config.link.far_side), f"sides.{side.name}.policy", side.policy),
        (Direction(config.link.far_side, side.name), "link.import_policy", config.link.import_policy),
    ]


class HalfService(GuardProcess):
    """One half: one side, one relay, one pair link."""

    def __init__(self, config: HalfConfig, reactor, open_stream=open_outbound_stream):
        """``open_stream`` opens every outbound S2S stream (relay and dialback verification); a lab may inject its own."""
        anchors, identities = load_side_material(config.path, config.side)
        policies = {direction: load_checked_policy(config.path, key, path, direction)
                    for direction, key, path in half_policy_files(config)}
        super().__init__(config, reactor, policies)
        self.relay = HalfRelay(config.topology, self.policies, self.books, self.audit, reactor,
                               config.side.name, config.link.far_side,
                               stop_on_audit_failure=config.audit_failure == "stop",
                               release_authority=self.release_authority, open_stream=open_stream)
        self.side = build_side(config.side, config, anchors, identities, self.dialback_secret, reactor, open_stream)
        self.relay.add_side(self.side)
        self.sides[self.side.name] = self.side
        try:
            self.leg = LinkLeg(config.link.leg, self.relay, reactor, config.limits.parser_limits(),
                               near_domains=config.side.domains, far_domains=config.link.far_domains)
        except (ValueError, OSError, Exception) as problem:  # noqa: BLE001 - report any load fault
            raise ConfigError(f"{config.path}: link: {problem}") from problem
        self.relay.leg = self.leg
        self._attach_metrics()

    def policy_files(self):
        return half_policy_files(self.config)

    def reload_policies(self):
        """Reload as every guard does; then the stanzas waiting unwritten on the link are judged again."""
        reloaded = super().reload_policies()
        if reloaded:
            self.relay.rejudge_link_buffer()
        return reloaded

    def side_configs(self):
        return {self.config.side.name: self.config.side}

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        self._audit_start()
        yield self._listen()
        yield self._start_management()
        try:
            yield self.leg.start()
        except NoSuchSocket as problem:
            raise ConfigError(f"{self.config.path}: link.listen: {problem}") from problem
        leg = self.config.link.leg
        log.info("pair link {own} <-> {peer}: {role} {endpoint}; our fingerprint {fingerprint}; {profile}",
                 own=leg.own_name, peer=leg.peer_name, role="listening on" if leg.listen else "dialling",
                 endpoint=leg.listen or leg.dial,
                 fingerprint=self.leg.tls.fingerprint or "none (no TLS)",
                 profile=profile_summary(self.config))
        self.write_status()

    def stopService(self):
        super().stopService()
        return self._close_down(after_closing=self.leg.stop)


def main(argv=None) -> int:
    """``python -m guard.app.half --config X.toml [--check]``: run one half (either profile), or check its file."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m guard.app.half",
                                     description="Run one half of a back-to-back pair (standard or constrained link).")
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="the half's configuration (TOML)")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration, print the link's profile (security, compression), start nothing")
    arguments = parser.parse_args(argv)
    from .cli import main as guard_main

    if arguments.check:
        try:
            config = checked_half(arguments.config)
        except ConfigError as problem:
            print(f"{problem}", file=sys.stderr)
            return 1
        print(f"{arguments.config}: OK (side {config.side.name}: {len(config.side.domains)} domains; "
              f"link {config.link.leg.own_name} <-> {config.link.leg.peer_name}, {profile_summary(config)})")
        return 0
    return guard_main(["run", "--config", arguments.config])


def checked_half(path: str) -> HalfConfig:
    """A half's configuration after every check that starts nothing (as ``guard check-config``): its keys, its
    side's certificates, both policies and their test cases, the files it writes."""
    from .cli import _check_cases
    from .config import check_writable, written_files
    from .half_config import is_half_config, load_half_config

    if not is_half_config(path):
        raise ConfigError(f"{path}: link: is required for a half")
    config = load_half_config(path)
    load_side_material(config.path, config.side)
    for direction, key, policy_path in half_policy_files(config):
        _check_cases(config.path, key, policy_path, load_checked_policy(config.path, key, policy_path, direction))
    for key, written, replaced in written_files(config.settings):
        check_writable(config.path, key, written, replaced)
    return config


if __name__ == "__main__":
    raise SystemExit(main())
