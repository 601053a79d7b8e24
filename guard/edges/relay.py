"""
The relay: judges each accepted stanza and carries it to the far side on the
outbound stream for its (from-domain, to-domain) pair, or bounces or drops it.

Every accepted stanza is settled exactly once in the books: delivered
(serialised onto a ready outbound stream), bounced (an error reply sent
back, or due) or dropped (by policy, by a limit, or because an error may not
be bounced), and each bounce and drop is audited (each pass too when the
audit trail records every decision).

What the relay holds is bounded in bytes: each outbound queue (a full queue
stops reading from the streams that feed it while its stream is set up), the
requests waiting for the release authority, and all of them together against
``memory_budget_bytes`` (beyond it no inbound stream is read).  A stanza held
while the policies are reloaded is judged again by the new policy before it
leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.logger import Logger
from zope.interface import implementer

from guard.core.accepted import accept, accepted_from_element
from guard.core.addressing import parse_jid
from guard.core.books import HeldBytes
from guard.core.bounce import error_reply, guard_text, may_bounce, peer_detail
from guard.core.pipeline import Direction, Verdict, judge_fail_closed

from .audit import AuditUnavailable
from .carriers import ICarrierOwner
from .feeders import MEMORY_HOLD, BackPressure
from .limits import Limits
from .s2s.carrier import S2SCarrier, open_outbound_stream

log = Logger()


@dataclass(frozen=True)
class Ticket:
    """What the relay keeps about an accepted stanza until it is settled, so that it can be judged again."""

    stanza: object  # the accepted stanza, as received (never sent: it is what the policy judges)
    pair: tuple[str, str]  # (sender domain, receiver domain)
    size: int  # wire bytes, as the parser counted them
    direction: Direction
    generation: int  # of the policies that judged it


@dataclass(frozen=True)
class Parcel:
    """A stanza on its way out; ``original`` is the accepted stanza it settles (None for our own bounces).
    ``ticket`` lets the relay judge it again after a reload; ``size`` is what it counts for in byte bounds."""

    stanza: object
    original: object | None
    ticket: Ticket | None = None
    size: int = 0


# What one of our own bounces counts for in byte bounds besides its addresses and id.
BOUNCE_BYTES = 256

# The rule an audit record names when a fault in the guard bounced the stanza it was relaying.
INTERNAL_FAULT_RULE = "guard:internal-error"

# The rule an audit record names when one of our own bounces cannot be delivered.
BOUNCE_LOST_RULE = "guard:bounce-lost"


def audited_notes(notes) -> dict:
    """The audit field for a judgement's notes (the rules' ``log`` texts), each bounded and escaped; none: no field."""
    return {"notes": [peer_detail(note) for note in notes]} if notes else {}


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
    def __init__(self, topology, policies: PolicyTable, books, audit, reactor, stop_on_audit_failure=True,
                 open_stream=None, release_authority=None):
        self.topology = topology
        self.release_authority = release_authority
        self.open_stream = open_stream or open_outbound_stream
        self.policies = policies
        self.books = books
        self.audit = audit
        self.reactor = reactor
        self.sides = {}
        self.links: dict[tuple[str, str, str], S2SCarrier] = {}  # the S2S carrier of each (side, sender, receiver)
        self.side_carriers: dict[str, object] = {}  # a carrier for everything bound to a side (a half's pair link)
        self.back_pressure = BackPressure(topology)  # who feeds the relay, by side
        self.stop_on_audit_failure = stop_on_audit_failure
        self.halted_reason: str | None = None
        self.stopping = False
        self.held = HeldBytes.for_budget(Limits().memory_budget_bytes)
        # The stanzas waiting for the release authority, by a token of each question (oldest first):
        # each is settled once, by the answer or, if the guard stops first, by a bounce.
        self.referred: dict[object, Ticket] = {}
        self.bounces_lost = 0  # our own bounces that could not be delivered (each audited)

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
        self.books.accept()
        settled, held = self.books.settled, self.held.held
        try:
            self._judge_and_act(side, stanza, addressed, size)
        except Exception:  # noqa: BLE001 - settled here, exactly once
            log.failure("a fault in the guard while relaying a stanza")
            if self.books.settled == settled and self.held.held == held:
                self._bounce(stanza, "internal-server-error", guard_text("internal-server-error"), INTERNAL_FAULT_RULE)

    def _judge_and_act(self, side, stanza, addressed, size):
        if self.halted_reason is not None:
            self._bounce(stanza, "service-unavailable", guard_text("service-unavailable"), "guard:halted")
            return
        if self.held.over:
            self._hold_inbound(getattr(side, "inbound_streams", ()))
        generation = self.policies.generation
        destination = self.topology.far_side(side.name)
        direction = Direction(side.name, destination)
        judgement, problem = judge_fail_closed(self.policies.current(direction), stanza, direction,
                                               accept(stanza, addressed, size, direction))
        if problem is not None:
            log.error("policy for {direction} failed on a stanza: {problem!r}", direction=str(direction), problem=problem)
        self._act(judgement, Ticket(stanza, addressed.pair, size, direction, generation))

    def _act(self, judgement, ticket):
        """Do what ``judgement`` (of the stanza ``ticket`` keeps) says; the rules' ``log`` notes go to the audit."""
        stanza, direction = ticket.stanza, ticket.direction
        if judgement.verdict is Verdict.PASS:
            if self._recorded_pass(judgement, ticket):
                self._forward(direction.destination, ticket.pair, Parcel(judgement.stanza, stanza, ticket, ticket.size))
        elif judgement.verdict is Verdict.BOUNCE:
            self._bounce(stanza, judgement.condition or "not-allowed", judgement.text,
                         judgement.rule_id, judgement.rule_rev, direction, notes=judgement.notes)
        elif judgement.verdict is Verdict.REFER:
            self._refer(judgement, ticket)
        else:
            self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction, judgement.text,
                       **audited_notes(judgement.notes))

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
        if judgement.verdict is Verdict.PASS:
            if not self._recorded_pass(judgement, renewed):
                return None
            return Parcel(judgement.stanza, renewed.stanza, renewed, renewed.size)
        self._act(judgement, renewed)
        return None

    def _recorded_pass(self, judgement, ticket) -> bool:
        """
        Record the pass when the audit trail records every decision, or when a
        rule asked for a note (its ``log``); False when it cannot be recorded
        and the guard stops.
        """
        if not getattr(self.audit, "records_passes", False) and not judgement.notes:
            return True
        if self._audit("pass", ticket.stanza, judgement.rule_id, judgement.rule_rev, ticket.direction,
                       **audited_notes(judgement.notes)):
            return True
        if self.stop_on_audit_failure:
            self._bounce(ticket.stanza, "service-unavailable", guard_text("service-unavailable"), "guard:halted")
            return False
        return True

    def _refer(self, judgement, ticket):
        """
        Ask the release authority.  A release forwards the stanza the policy
        judged; a stanza the authority changed is judged by the policy again
        and leaves only as the policy lets it (pass, or refer: the authority
        already answered for it).  A busy authority bounces
        (resource-constraint); anything else drops.  While waiting, the
        stanza counts in the bytes the guard holds.
        """
        stanza, direction = ticket.stanza, ticket.direction
        if self.release_authority is None:
            self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction,
                       "refer: no release authority (High Assurance Guard) is configured")
            return
        question = object()
        self.referred[question] = ticket
        self.count_held(ticket.size)

        def decided(release):
            if self.referred.pop(question, None) is None:
                return  # already settled: the guard stopped before the authority answered
            self.count_freed(ticket.size)
            if release is not None and getattr(release, "busy", False):
                self._bounce(stanza, "resource-constraint", guard_text("resource-constraint"),
                             judgement.rule_id, judgement.rule_rev, direction, detail=release.reason)
                return
            if release is None or not release.released or release.stanza is None:
                reason = release.reason if release is not None else "no answer"
                self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction, f"refer: {reason}")
                return
            if ticket.generation != self.policies.generation:
                # The policies were reloaded while the authority decided: the new one judges from the start.
                self._act(*self._judge_again(ticket))
                return
            leaving, deciding = release.stanza, judgement
            if leaving is not judgement.stanza:
                again, problem = judge_fail_closed(self.policies.current(direction), leaving, direction)
                if problem is not None or again.verdict not in (Verdict.PASS, Verdict.REFER):
                    self._drop(stanza, again.rule_id, again.rule_rev, direction,
                               "refer: the policy refuses the stanza as the release authority changed it")
                    return
                leaving, deciding = again.stanza, again
            if self._recorded_pass(deciding, ticket):
                self._forward(direction.destination, ticket.pair, Parcel(leaving, stanza, ticket, ticket.size))

        def failed(failure):  # the authority client never errbacks; if it ever does, drop
            log.error("release authority failed: {f}", f=failure.getErrorMessage())
            decided(None)

        self.release_authority.ask(judgement.stanza, direction, judgement.rule_id).addCallbacks(decided, failed)

    def check_dialback(self, side, peer_domain, fronted_domain, stream_id, key, asker=None):
        """Kept for the inbound stream: the side's Verifier (guard.edges.s2s.verification) answers."""
        return side.verifier.check_dialback(asker, peer_domain, fronted_domain, stream_id, key)

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
        if carrier is None:
            carrier = self.links[key] = S2SCarrier(self, self.sides[side_name], *pair, open_stream=self.open_stream)
        return carrier

    def carry_side_over(self, side_name, carrier):
        """Everything bound for ``side_name`` leaves on ``carrier`` (an ICarrier) instead of S2S streams."""
        self.side_carriers[side_name] = carrier

    def _carriers(self):
        """Every carrier; a side's own carrier first (what it gives up bounces onto the S2S carriers)."""
        return list(self.side_carriers.values()) + list(self.links.values())

    def delivered(self, parcel):
        if parcel.original is not None:
            self.books.deliver()

    def undeliverable(self, parcel, condition, detail):
        """
        A parcel could not be delivered: bounce what it settles with the
        guard's own text for ``condition``; our own bounces end with an audit
        record (``bounce-lost``) and a count, never in silence.
        ``detail`` may hold what a far server said: it goes to the log and the
        audit trail (bounded, escaped), never into the bounce.
        """
        detail = peer_detail(detail)
        if parcel.original is None:
            self.bounces_lost += 1
            log.info("bounce to {to} undeliverable: {detail}", to=parcel.stanza.getAttribute("to"), detail=detail)
            self._audit("bounce-lost", parcel.stanza, BOUNCE_LOST_RULE, 1, None, condition=condition, detail=detail)
            return
        self._bounce(parcel.original, condition, guard_text(condition), f"guard:{condition}", detail=detail)

    def _bounce(self, stanza, condition, text, rule_id, rule_rev=1, direction=None, detail=None, notes=()):
        """Bounce ``stanza`` with ``text``, which is the guard's constant or the policy rule's (never a peer's);
        ``detail`` (a peer's words, escaped) and the rules' ``notes`` are audited only."""
        extra = {} if detail is None else {"detail": peer_detail(detail)}
        extra.update(audited_notes(notes))
        if not may_bounce(stanza):
            self._drop(stanza, rule_id, rule_rev, direction, f"not bounced ({condition}): errors and results never are",
                       **extra)
            return
        self.books.bounce(rule_id)
        self._audit("bounce", stanza, rule_id, rule_rev, direction, condition=condition, text=text, **extra)
        reply = error_reply(stanza, condition, text)
        sender = parse_jid(stanza.getAttribute("from"))
        recipient = parse_jid(stanza.getAttribute("to"))
        side_name = self.topology.side_of(sender.host) if sender is not None else None
        if side_name is None or recipient is None:
            return
        self._forward(side_name, (recipient.host, sender.host), Parcel(reply, None))

    def _drop(self, stanza, rule_id, rule_rev, direction, text=None, **extra):
        self.books.drop(rule_id)
        self._audit("drop", stanza, rule_id, rule_rev, direction, text=text, **extra)

    def _audit(self, event, stanza, rule_id, rule_rev, direction, **extra) -> bool:
        """Write one audit record; False (and, if so configured, the guard stops relaying) when it cannot be."""
        try:
            self.audit.record(
                event,
                rule=rule_id,
                rev=rule_rev,
                direction=str(direction) if direction else None,
                kind=stanza.name,
                type=stanza.getAttribute("type"),
                id=stanza.getAttribute("id"),
                sender=stanza.getAttribute("from"),
                recipient=stanza.getAttribute("to"),
                **extra,
            )
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}", problem=str(problem))
            if self.stop_on_audit_failure and self.halted_reason is None:
                self.halted_reason = f"audit trail unavailable: {problem}"
                log.critical("the guard stops relaying: {reason}", reason=self.halted_reason)
            return False
        return True

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

    @staticmethod
    def _hold_inbound(feeders):
        for feeder in list(feeders):
            feeder.hold(MEMORY_HOLD)

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
