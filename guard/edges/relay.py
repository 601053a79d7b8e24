"""
The relay: the I/O around the settlement core.  For each stanza an inbound
stream (or the pair link) accepted, it judges it with the policy in force,
asks the settlement core (guard.core.settlement) what to do, and does it:
hands a parcel to a carrier (guard.edges.carriers: the S2S carrier of the
(side, sender, receiver) pair, or a side's own carrier such as the pair
link), or asks the release authority.  Carriers report back as the
relay's ``ICarrierOwner``: delivered, undeliverable, congested and
decongested; the core settles what they report, and the books, the audit
trail and (later) the metrics observe the core.

What the relay holds is bounded in bytes: each carrier's queue (a full queue
holds the feeders of its pair through guard.edges.feeders), the requests
waiting for the release authority, and all of them together against
``memory_budget_bytes`` (beyond it no feeder is read).  A stanza held while
the policies are reloaded is judged again by the new policy before it
leaves.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.logger import Logger
from zope.interface import implementer

from guard.core.accepted import accept, accepted_from_element
from guard.core.books import HeldBytes
from guard.core.bounce import peer_detail
from guard.core.pipeline import Direction, judge_fail_closed
from guard.core.settlement import (
    BOUNCE_LOST_RULE,
    INTERNAL_FAULT_RULE,
    Deliver,
    Parcel,
    Refer,
    ReturnBounce,
    Settlement,
    Ticket,
    released_stanza,
)

from .audit import AuditObserver
from .carriers import ICarrierOwner
from .feeders import MEMORY_HOLD, BackPressure
from .limits import Limits
from .s2s.carrier import S2SCarrier, open_outbound_stream

log = Logger()

__all__ = ["BOUNCE_LOST_RULE", "INTERNAL_FAULT_RULE", "Parcel", "PolicyTable", "Relay", "Ticket"]


# What one of our own bounces counts for in byte bounds besides its addresses and id.
BOUNCE_BYTES = 256



class PolicyTable:
    """The policy in force for each direction; a reload swaps one reference."""

    def __init__(self, policies: dict[Direction, object]):
        self._policies = dict(policies)
        self.generation = 0  # grows at every swap: a stanza judged under an older one is judged again

    def current(self, direction: Direction):
        return self._policies[direction]

    def swap(self, direction: Direction, policy) -> None:
        self._policies[direction] = policy
        self.generation += 1


@implementer(ICarrierOwner)
class Relay:
    """
    The I/O around the settlement core (guard.core.settlement): judges each
    accepted stanza with the policy in force, asks the core what to do, and
    does it (carriers, the release authority).  The books and the audit trail
    observe the core; ``observers`` adds more (metrics).
    """

    def __init__(self, topology, policies: PolicyTable, books, audit, reactor, stop_on_audit_failure=True,
                 open_stream=None, release_authority=None, observers=()):
        self.topology = topology
        self.release_authority = release_authority
        self.open_stream = open_stream or open_outbound_stream
        self.policies = policies
        self.books = books
        self.audit = audit
        self.settlement = Settlement(topology, (books, AuditObserver(audit), *observers), stop_on_audit_failure)
        self.reactor = reactor
        self.sides = {}
        self.links: dict[tuple[str, str, str], S2SCarrier] = {}  # the S2S carrier of each (side, sender, receiver)
        self.side_carriers: dict[str, object] = {}  # a carrier for everything bound to a side (a half's pair link)
        # With workers: carrier_for_pair(side name, pair) -> the ICarrier of a pair pinned to another worker, or None
        # for this worker's own S2S carrier (guard.edges.handover).
        self.carrier_for_pair = None
        self.back_pressure = BackPressure(topology)  # who feeds the relay, by side
        self.stopping = False
        self.held = HeldBytes.for_budget(Limits().memory_budget_bytes)
        # The stanzas waiting for the release authority, by a token of each question (oldest first):
        # each is settled once, by the answer or, if the guard stops first, by a bounce.
        self.referred: dict[object, Ticket] = {}

    @property
    def halted_reason(self) -> str | None:
        """Why the guard does not relay (the audit trail could not be written), or None while it does."""
        return self.settlement.halted_reason

    @halted_reason.setter
    def halted_reason(self, reason: str | None) -> None:
        self.settlement.halted_reason = reason

    @property
    def bounces_lost(self) -> int:
        """Our own bounces that could not be delivered (each audited)."""
        return self.settlement.counts["bounce-lost"]

    def add_side(self, side):
        side.relay = self
        self.sides[side.name] = side
        self.back_pressure.attach(side.name, side.inbound_streams)
        if self.held.budget != side.limits.memory_budget_bytes and not self.held.held:
            self.held = HeldBytes.for_budget(side.limits.memory_budget_bytes)

    # -- from inbound streams ---------------------------------------------

    def stanza_received(self, side, stanza, addressed, size):
        """
        Judge a stanza accepted on ``side`` and act on the verdict.  A fault
        in the guard while doing so is logged, and settles the stanza if it
        is neither settled nor held yet (bounced, internal-server-error):
        once accepted, a stanza is taken, so the fault does not travel back
        to the stream (or link) that brought it.
        """
        direction = Direction(side.name, self.topology.far_side(side.name))
        ticket = self.settlement.accept(stanza, addressed.pair, size, direction, self.policies.generation,
                                        self.reactor.seconds())
        held = self.held.held
        try:
            self._judge_and_act(side, ticket, addressed)
        except Exception:  # noqa: BLE001 - settled here, exactly once
            log.failure("a fault in the guard while relaying a stanza")
            if self.settlement.is_open(ticket) and self.held.held == held:  # no carrier and no question holds it
                self._act(self.settlement.fault(ticket))

    def _judge_and_act(self, side, ticket, addressed):
        if self.settlement.halted_reason is not None:
            self._act(self.settlement.refused_while_halted(ticket))
            return
        if self.held.over:
            self.back_pressure.feeders_of(side.name).hold_all(MEMORY_HOLD)  # a feeder that came after the hold
        direction = ticket.direction
        judgement, problem = judge_fail_closed(self.policies.current(direction), ticket.stanza, direction,
                                               accept(ticket.stanza, addressed, ticket.size, direction))
        if problem is not None:
            log.error("policy for {direction} failed on a stanza: {problem!r}", direction=str(direction), problem=problem)
        self._act(self._settle(ticket, judgement))

    def _settle(self, ticket, judgement):
        """What the settlement core says to do with the stanza of ``ticket`` judged so."""
        return self.settlement.judged(ticket, judgement, referable=self.release_authority is not None)

    def _act(self, action):
        """Carry out what the settlement core said: carry a parcel, or ask the release authority; None: nothing."""
        if isinstance(action, (Deliver, ReturnBounce)):
            self._forward(action.side, action.pair, action.parcel)
        elif isinstance(action, Refer):
            self._refer(action.ticket, action.judgement)

    def _judge_again(self, ticket):
        """Judge the accepted stanza of ``ticket`` by the policy in force now: (judgement, renewed ticket)."""
        renewed = replace(ticket, generation=self.policies.generation)
        judgement, problem = judge_fail_closed(self.policies.current(ticket.direction), ticket.stanza, ticket.direction,
                                               accepted_from_element(ticket.stanza, ticket.direction, ticket.size))
        if problem is not None:
            log.error("policy for {direction} failed on a stanza judged again: {problem!r}",
                      direction=str(ticket.direction), problem=problem)
        return judgement, renewed

    def judged_again(self, parcel):
        """
        ``parcel`` as the policy in force now lets it leave, or None when it no
        longer may (then it is settled here: bounced, dropped or referred).
        A parcel judged under the policies in force, or one of our own
        bounces, is returned as it is.
        """
        ticket = parcel.ticket
        if ticket is None or ticket.generation == self.policies.generation:
            return parcel
        judgement, renewed = self._judge_again(ticket)
        action = self._settle(renewed, judgement)
        if isinstance(action, Deliver):
            return action.parcel
        self._act(action)
        return None

    def _refer(self, ticket, judgement):
        """
        Ask the release authority about the stanza the policy judged; the
        settlement core decides on the answer (guard.core.settlement.Settlement.answered).
        A stanza the authority changed is judged by the policy again first; one
        answered after a reload is judged from the start by the new policy.
        While waiting, the stanza counts in the bytes the guard holds.
        """
        direction = ticket.direction
        question = object()
        self.referred[question] = ticket
        self.count_held(ticket.size)

        def decided(release):
            if self.referred.pop(question, None) is None:
                return  # already settled: the guard stopped before the authority answered
            self.count_freed(ticket.size)
            leaving = released_stanza(release)
            if leaving is not None and ticket.generation != self.policies.generation:
                # The policies were reloaded while the authority decided: the new one judges from the start.
                judgement_now, renewed = self._judge_again(ticket)
                self._act(self._settle(renewed, judgement_now))
                return
            again = None
            if leaving is not None and leaving is not judgement.stanza:
                again, problem = judge_fail_closed(self.policies.current(direction), leaving, direction)
                if problem is not None:
                    log.error("policy for {direction} failed on a released stanza: {problem!r}",
                              direction=str(direction), problem=problem)
            self._act(self.settlement.answered(ticket, judgement, release, again))

        def failed(failure):  # the authority client never errbacks; if it ever does, drop
            log.error("release authority failed: {f}", f=failure.getErrorMessage())
            decided(None)

        self.release_authority.ask(judgement.stanza, direction, judgement.rule_id).addCallbacks(decided, failed)

    # -- settling -------------------------------------------------------------

    def _forward(self, side_name, pair, parcel):
        if self.stopping and parcel.original is not None:
            # A late release (refer answered during shutdown) would open a new
            # stream while the guard stops: bounce it instead.  Our own bounces
            # still go out within the shutdown grace.
            self.undeliverable(parcel, "remote-server-timeout", "the guard is stopping")
            return
        if parcel.original is None and not parcel.size:
            parcel = replace(parcel, size=bounce_bytes(parcel.stanza))
        self._carrier_for(side_name, pair).carry(parcel)

    def _carrier_for(self, side_name, pair):
        """The carrier bound for ``side_name`` (a side's own carrier, else the S2S carrier of the pair, made on first use)."""
        carrier = self.side_carriers.get(side_name)
        if carrier is not None:
            return carrier
        key = (side_name,) + pair
        carrier = self.links.get(key)
        if carrier is None and self.carrier_for_pair is not None:
            carrier = self.carrier_for_pair(side_name, pair)
            if carrier is not None:
                self.links[key] = carrier
        if carrier is None:
            carrier = self.links[key] = S2SCarrier(self, self.sides[side_name], *pair, open_stream=self.open_stream)
        return carrier

    def carrier_bound_for(self, side_name, pair):
        """The carrier a stanza bound for ``side_name`` and ``pair`` leaves on (another worker hands such stanzas here)."""
        return self._carrier_for(side_name, pair)

    def carry_side_over(self, side_name, carrier):
        """Everything bound for ``side_name`` leaves on ``carrier`` (an ICarrier) instead of S2S streams."""
        self.side_carriers[side_name] = carrier

    def _carriers(self):
        """Every carrier; a side's own carrier first (what it gives up bounces onto the S2S carriers)."""
        return list(self.side_carriers.values()) + list(self.links.values())

    def delivered(self, parcel):
        """A carrier wrote ``parcel``: the core settles what it carries as delivered."""
        self.settlement.delivered(parcel)

    def undeliverable(self, parcel, condition, detail):
        """
        A parcel could not be delivered: the core bounces what it settles with
        the guard's own text for ``condition``; our own bounces end with an
        audit record (``bounce-lost``) and a count, never in silence.
        ``detail`` may hold what a far server said: it goes to the log and the
        audit trail (bounded, escaped), never into the bounce.
        """
        if parcel.original is None:
            log.info("bounce to {to} undeliverable: {detail}", to=parcel.stanza.getAttribute("to"),
                     detail=peer_detail(detail))
        self._act(self.settlement.undeliverable(parcel, condition, detail))

    # -- back-pressure: carriers report, feeders are held (guard.edges.feeders) --------

    def congested(self, carrier, reason):
        """``carrier`` takes nothing more for now: stop reading the feeders of its pairs for ``reason``."""
        self.back_pressure.hold(carrier.pairs, reason)

    def decongested(self, carrier, reason):
        self.back_pressure.release(carrier.pairs, reason)

    def count_held(self, amount):
        """Count bytes the guard now holds; at the budget, stop reading every feeder."""
        if self.held.take(amount):
            log.warn("holding {held} bytes of stanzas (budget {budget}): reading stops",
                     held=self.held.held, budget=self.held.budget)
            self.back_pressure.hold_everyone(MEMORY_HOLD)

    def count_freed(self, amount):
        """Count bytes the guard no longer holds; at the low-water mark, read every feeder again."""
        if self.held.give(amount):
            log.info("holding {held} bytes of stanzas: reading resumes", held=self.held.held)
            self.back_pressure.release_everyone(MEMORY_HOLD)

    # -- shutdown -------------------------------------------------------------

    def begin_shutdown(self):
        """
        First half of stopping: close every inbound stream (nothing new is
        accepted) and bounce every accepted stanza still waiting.  The bounces
        themselves may need outbound streams back to the senders' side: those
        stay open, or are opened, until ``finish_shutdown``.
        """
        self.stopping = True
        for carrier in list(self.side_carriers.values()):
            carrier.bounce_waiting("remote-server-timeout", "the guard is stopping")
        for side in self.sides.values():
            for stream in list(side.inbound_streams):
                stream.close_for_shutdown()
        for carrier in list(self.links.values()):
            carrier.bounce_waiting("remote-server-timeout", "the guard is stopping")
        self._settle_referred()

    def _settle_referred(self):
        """Bounce every stanza still waiting for the release authority: its answer, if it comes, is ignored."""
        waiting, self.referred = self.referred, {}
        for ticket in waiting.values():
            self.count_freed(ticket.size)
            self.undeliverable(Parcel(ticket.stanza, ticket.stanza, ticket, ticket.size),
                               "remote-server-timeout", "the guard is stopping")

    def bounces_waiting(self) -> int:
        """Our own bounces not yet written (the service waits for them, within a grace, before closing)."""
        return sum(carrier.waiting() for carrier in self._carriers())

    def finish_shutdown(self):
        """Second half of stopping: close every outbound stream; bounces still waiting are given up (logged)."""
        for carrier in self._carriers():
            carrier.shut_down()
        for side in self.sides.values():
            if getattr(side, "verifier", None) is not None:
                side.verifier.shut_down()

    def shut_down(self):
        """Stop at once: both halves without a grace in between."""
        self.begin_shutdown()
        self.finish_shutdown()

    def status(self) -> dict:
        return {
            "books": self.books.summary(),
            "held_bytes": self.held.summary(),
            "halted": self.halted_reason,
            "bounces_lost": self.bounces_lost,
            "links": {
                f"{side}:{sender}->{receiver}": link.describe()
                for (side, sender, receiver), link in self.links.items()
            },
            "inbound_streams": {name: len(side.inbound_streams) for name, side in self.sides.items()},
        }


def bounce_bytes(reply) -> int:
    """What one of our own bounces counts for in byte bounds: its addresses and id, and a constant for the rest."""
    return BOUNCE_BYTES + sum(len(reply.getAttribute(name) or "") for name in ("from", "to", "id"))
