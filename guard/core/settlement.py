"""
Settlement: what becomes of every stanza the guard accepts, decided with no I/O.

The relay accepts a stanza here (``accept`` gives it a numbered ``Ticket``),
judges it with the policy, and hands the ``Judgement`` to ``judged``, which
answers with what to do:

- ``Deliver(side, pair, parcel)``: give ``parcel`` to the carrier of ``side``
  for ``pair``; the stanza stays in flight until the carrier reports
  ``delivered`` or ``undeliverable``;
- ``ReturnBounce(side, pair, parcel)``: the stanza is settled as bounced;
  carry our own error reply back to its sender;
- ``Refer(ticket, judgement)``: ask the release authority, then bring its
  answer to ``answered`` (the stanza stays in flight meanwhile);
- ``None``: nothing to carry (dropped, or bounced with no way back).

The invariant lives here: every accepted stanza settles exactly once, as
delivered, bounced or dropped.  A second settlement of a ticket (or of a
parcel that no ticket of ours stands for) is refused: counted as
``refused``, told to the observers as ``settled_twice``, never counted in
the books, and a stanza already settled is never let through.  At every step
``accepted == delivered + bounced + dropped + in_flight``.

Observers (``ISettlementObserver``: the books, the audit trail, the metrics)
hear every event.  An observer that must record an event and cannot (the
audit trail) raises ``RecordUnavailable``: the core then halts relaying when
``stop_on_audit_failure`` is set (every later stanza bounces with
service-unavailable), and a pass it could not record bounces with
service-unavailable instead of leaving.  Any other exception from an observer
is raised once every observer has been told (a fault in the guard: the relay
logs it and settles the stanza if it is still in flight).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from zope.interface import Interface, implementer

from guard.core.addressing import parse_jid
from guard.core.bounce import error_reply, guard_text, may_bounce, peer_detail
from guard.core.pipeline import Direction, FAIL_CLOSED_RULE, Verdict

# The rule an audit record names when a fault in the guard bounced the stanza it was relaying.
INTERNAL_FAULT_RULE = "guard:internal-error"

# The rule an audit record names when one of our own bounces cannot be delivered.
BOUNCE_LOST_RULE = "guard:bounce-lost"

# The rule a stanza bounces under while the guard does not relay (the audit trail could not be written).
HALTED_RULE = "guard:halted"

REFER_WITHOUT_AUTHORITY = "refer: no release authority (High Assurance Guard) is configured"
REFER_CHANGED_REFUSED = "refer: the policy refuses the stanza as the release authority changed it"
NOT_BOUNCED = "not bounced ({condition}): errors and results never are"


@dataclass(frozen=True)
class Ticket:
    """What the relay keeps about an accepted stanza until it is settled, so that it can be judged again.
    ``number`` is the settlement's own for it (0: never accepted by a Settlement, so never settled by one)."""

    stanza: object  # the accepted stanza, as received (never sent: it is what the policy judges)
    pair: tuple[str, str]  # (sender domain, receiver domain)
    size: int  # wire bytes, as the parser counted them
    direction: Direction
    generation: int  # of the policies that judged it
    number: int = 0
    arrived: float | None = None  # when the relay accepted it, on its injected clock (the metrics' latency)


@dataclass(frozen=True)
class Parcel:
    """A stanza on its way out; ``original`` is the accepted stanza it settles (None for our own bounces).
    ``ticket`` lets the relay judge it again after a reload; ``size`` is what it counts for in byte bounds."""

    stanza: object
    original: object | None
    ticket: Ticket | None = None
    size: int = 0


# -- what the relay is told to do ---------------------------------------------

@dataclass(frozen=True)
class Deliver:
    """Give ``parcel`` (a stanza the policy let through) to the carrier of ``side`` for ``pair``."""

    side: str
    pair: tuple[str, str]
    parcel: Parcel


@dataclass(frozen=True)
class ReturnBounce:
    """Carry ``parcel`` (our error reply to a stanza settled as bounced) to the sender's ``side`` for ``pair``."""

    side: str
    pair: tuple[str, str]
    parcel: Parcel


@dataclass(frozen=True)
class Refer:
    """Ask the release authority about ``judgement.stanza``; bring the answer to ``Settlement.answered``."""

    ticket: Ticket
    judgement: object


# -- what observers are told --------------------------------------------------

class SettlementEvent(NamedTuple):
    """
    One decision or settlement, with what the audit trail records of it.
    ``event`` is the audit's name for it: "pass", "deliver", "bounce", "drop"
    or "bounce-lost".  ``detail`` (a peer's words) and ``notes`` (the rules'
    ``log`` texts) are already bounded and escaped.  (A named tuple: one is
    made per decision, and a frozen dataclass costs three times as much.)
    """

    event: str
    stanza: object
    rule: str | None = None
    rev: int = 1
    direction: Direction | None = None
    condition: str | None = None
    text: str | None = None
    detail: str | None = None
    notes: tuple[str, ...] = ()
    ticket: Ticket | None = None

    @property
    def kind(self) -> str:
        return self.stanza.name

    @property
    def type(self) -> str | None:
        return self.stanza.getAttribute("type")

    @property
    def id(self) -> str | None:
        return self.stanza.getAttribute("id")

    @property
    def sender(self) -> str | None:
        return self.stanza.getAttribute("from")

    @property
    def recipient(self) -> str | None:
        return self.stanza.getAttribute("to")


class RecordUnavailable(Exception):
    """An observer could not record an event it must record; ``str()`` of it is the reason relaying halts."""


class ISettlementObserver(Interface):
    """Hears what becomes of every accepted stanza.  Methods return nothing; ``stanza_passed``,
    ``stanza_bounced``, ``stanza_dropped`` and ``bounce_lost`` may raise ``RecordUnavailable``."""

    def stanza_accepted(ticket):
        """A stanza was accepted and is now in flight."""

    def stanza_passed(event):
        """The policy (or the release authority and the policy) let the stanza through; it is not settled yet."""

    def stanza_delivered(event):
        """Settled: a carrier wrote the stanza (or the peer half acknowledged it)."""

    def stanza_bounced(event):
        """Settled: an error reply goes back to the sender."""

    def stanza_dropped(event):
        """Settled: nothing is sent to anyone (by policy, a limit, or because errors and results never bounce)."""

    def bounce_lost(event):
        """One of our own bounces could not be delivered (not a settlement: our bounces are not accepted stanzas)."""

    def settled_twice(ticket, attempt):
        """A decision about a stanza already settled was refused (``attempt`` names it: a verdict "pass",
        "bounce", "drop" or "refer", or "release", "delivered", "bounced", "dropped"); nothing was counted
        and nothing leaves.  ``ticket`` is None for a parcel no ticket of ours stands for."""

    def relaying_halted(reason):
        """The guard stops relaying (an event that must be recorded could not be)."""


@implementer(ISettlementObserver)
class SettlementObserver:
    """An observer that ignores everything: subclass it and override only what you need."""

    def stanza_accepted(self, ticket):
        pass

    def stanza_passed(self, event):
        pass

    def stanza_delivered(self, event):
        pass

    def stanza_bounced(self, event):
        pass

    def stanza_dropped(self, event):
        pass

    def bounce_lost(self, event):
        pass

    def settled_twice(self, ticket, attempt):
        pass

    def relaying_halted(self, reason):
        pass


def audited_notes(notes) -> tuple[str, ...]:
    """A judgement's notes (the rules' ``log`` texts) as the audit records them: each bounded and escaped."""
    return tuple(peer_detail(note) for note in notes) if notes else ()


def released_stanza(release):
    """The stanza the release authority lets leave, or None when it did not release one (refused, busy, no answer)."""
    if release is None or getattr(release, "busy", False) or not release.released:
        return None
    return release.stanza


class Settlement:
    """Decides what becomes of each accepted stanza and keeps the invariant; does no I/O."""

    def __init__(self, topology, observers=(), stop_on_audit_failure: bool = True):
        self.topology = topology
        self.observers = tuple(observers)
        self._listeners: dict[str, tuple] = {}  # each observer method, by name, bound once
        self.stop_on_audit_failure = stop_on_audit_failure
        self.halted_reason: str | None = None
        self.counts = Counter()  # accepted, delivered, bounced, dropped, bounce-lost, refused
        self._numbers = itertools.count(1)
        self._open: set[int] = set()  # numbers of the accepted stanzas not settled yet (no trees: see link.retained)

    def observe(self, observer) -> None:
        """Add ``observer`` (an ISettlementObserver): from now on it hears every event."""
        self.observers += (observer,)
        self._listeners = {}

    # -- the books the core keeps itself ----------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def is_open(self, ticket) -> bool:
        """Whether the stanza of ``ticket`` was accepted here and is not settled yet."""
        return ticket is not None and ticket.number in self._open

    def summary(self) -> dict:
        return {"accepted": self.counts["accepted"], "delivered": self.counts["delivered"],
                "bounced": self.counts["bounced"], "dropped": self.counts["dropped"], "in_flight": self.in_flight,
                "bounces_lost": self.counts["bounce-lost"], "refused": self.counts["refused"]}

    # -- entering ---------------------------------------------------------

    def accept(self, stanza, pair, size, direction, generation, arrived=None) -> Ticket:
        """Take ``stanza`` into the books: from now on it must settle exactly once (``arrived``: when, on the
        relay's clock)."""
        ticket = Ticket(stanza, pair, size, direction, generation, next(self._numbers), arrived)
        self._open.add(ticket.number)
        self.counts["accepted"] += 1
        self._tell("stanza_accepted", ticket)
        return ticket

    # -- deciding -----------------------------------------------------------

    def judged(self, ticket, judgement, referable: bool = True):
        """What to do with the stanza of ``ticket`` as ``judgement`` says (``referable``: a release authority exists)."""
        if not self.is_open(ticket):
            return self._refuse(ticket, judgement.verdict.value)
        direction = ticket.direction
        if judgement.verdict is Verdict.PASS:
            return self._pass(ticket, judgement, judgement.stanza)
        if judgement.verdict is Verdict.BOUNCE:
            return self._bounce(ticket, ticket.stanza, judgement.condition or "not-allowed", judgement.text,
                                judgement.rule_id, judgement.rule_rev, direction, notes=audited_notes(judgement.notes))
        if judgement.verdict is Verdict.REFER:
            if not referable:
                return self._drop(ticket, ticket.stanza, judgement.rule_id, judgement.rule_rev, direction,
                                  REFER_WITHOUT_AUTHORITY)
            return Refer(ticket, judgement)
        return self._drop(ticket, ticket.stanza, judgement.rule_id, judgement.rule_rev, direction, judgement.text,
                          notes=audited_notes(judgement.notes))

    def answered(self, ticket, judgement, release, again=None):
        """
        What to do once the release authority answered about the stanza
        ``judgement`` referred.  A busy authority bounces
        (resource-constraint); no release drops; a release of the stanza the
        policy judged passes it; a stanza the authority changed leaves only
        as ``again`` (the policy's judgement of the changed stanza) lets it:
        pass, or refer (the authority already answered for it).
        """
        if not self.is_open(ticket):
            return self._refuse(ticket, "release")
        direction = ticket.direction
        if release is not None and getattr(release, "busy", False):
            return self._bounce(ticket, ticket.stanza, "resource-constraint", guard_text("resource-constraint"),
                                judgement.rule_id, judgement.rule_rev, direction, detail=release.reason)
        leaving = released_stanza(release)
        if leaving is None:
            reason = release.reason if release is not None else "no answer"
            return self._drop(ticket, ticket.stanza, judgement.rule_id, judgement.rule_rev, direction,
                              f"refer: {reason}")
        deciding = judgement
        if leaving is not judgement.stanza:
            if again is None:  # nobody judged the changed stanza: fail closed
                return self._drop(ticket, ticket.stanza, FAIL_CLOSED_RULE, 1, direction, REFER_CHANGED_REFUSED)
            if again.verdict not in (Verdict.PASS, Verdict.REFER):
                return self._drop(ticket, ticket.stanza, again.rule_id, again.rule_rev, direction,
                                  REFER_CHANGED_REFUSED)
            leaving, deciding = again.stanza, again
        return self._pass(ticket, deciding, leaving)

    def refused_while_halted(self, ticket):
        """The guard does not relay: bounce the stanza (service-unavailable) without judging it."""
        if not self.is_open(ticket):
            return self._refuse(ticket, "bounce")
        return self._bounce(ticket, ticket.stanza, "service-unavailable", guard_text("service-unavailable"),
                            HALTED_RULE)

    def fault(self, ticket):
        """A fault in the guard while relaying the stanza: bounce it (internal-server-error) if still in flight."""
        if not self.is_open(ticket):
            return self._refuse(ticket, "bounce")
        return self._bounce(ticket, ticket.stanza, "internal-server-error", guard_text("internal-server-error"),
                            INTERNAL_FAULT_RULE)

    def drop(self, ticket, rule, rev, text, stanza=None, direction=None):
        """Settle the stanza of ``ticket`` as dropped by a rule of the guard's own (``stanza``/``direction``:
        what the audit record describes, by default the ticket's)."""
        if not self.is_open(ticket):
            return self._refuse(ticket, "drop")
        return self._drop(ticket, ticket.stanza if stanza is None else stanza, rule, rev,
                          ticket.direction if direction is None else direction, text)

    # -- what carriers report later ---------------------------------------

    def delivered(self, parcel) -> None:
        """A carrier wrote ``parcel``: the stanza it settles is delivered (our own bounces settle nothing)."""
        if parcel.original is None:
            return
        if not self._settle(parcel.ticket, "delivered"):
            return
        self._tell("stanza_delivered", SettlementEvent("deliver", parcel.original, ticket=parcel.ticket))

    def undeliverable(self, parcel, condition, detail):
        """
        A carrier could not deliver ``parcel``: bounce what it settles with
        the guard's own text for ``condition``; our own bounce is lost
        (counted and told, never silent).  ``detail`` may hold a peer's
        words: it reaches the observers escaped, never the bounce.
        """
        detail = peer_detail(detail)
        if parcel.original is None:
            self.bounce_lost(parcel, detail, condition)
            return None
        if not self.is_open(parcel.ticket):
            return self._refuse(parcel.ticket, "bounce")
        return self._bounce(parcel.ticket, parcel.original, condition, guard_text(condition), f"guard:{condition}",
                            detail=detail)

    def bounce_lost(self, parcel, detail, condition=None) -> None:
        """One of our own bounces will not reach its sender: counted and told (``condition`` when known)."""
        self.counts["bounce-lost"] += 1
        self._tell("bounce_lost", SettlementEvent("bounce-lost", parcel.stanza, BOUNCE_LOST_RULE, 1, None,
                                                  condition=condition, detail=peer_detail(detail)))

    # -- halting ----------------------------------------------------------

    def halt(self, reason: str) -> None:
        """Stop relaying (when so configured): every later stanza bounces with service-unavailable."""
        if self.stop_on_audit_failure and self.halted_reason is None:
            self.halted_reason = reason
            self._tell("relaying_halted", reason)

    # -- the steps ----------------------------------------------------------

    def _pass(self, ticket, deciding, leaving):
        event = SettlementEvent("pass", ticket.stanza, deciding.rule_id, deciding.rule_rev, ticket.direction,
                                notes=audited_notes(deciding.notes), ticket=ticket)
        if not self._tell("stanza_passed", event) and self.stop_on_audit_failure:
            # The pass cannot be recorded and the guard stops: the stanza does not leave.
            return self._bounce(ticket, ticket.stanza, "service-unavailable", guard_text("service-unavailable"),
                                HALTED_RULE)
        return Deliver(ticket.direction.destination, ticket.pair, Parcel(leaving, ticket.stanza, ticket, ticket.size))

    def _bounce(self, ticket, stanza, condition, text, rule, rev=1, direction=None, detail=None, notes=()):
        """Bounce ``stanza`` with ``text``, the guard's constant or the policy rule's (never a peer's)."""
        detail = None if detail is None else peer_detail(detail)
        if not may_bounce(stanza):
            return self._drop(ticket, stanza, rule, rev, direction, NOT_BOUNCED.format(condition=condition),
                              detail=detail, notes=notes)
        self._settle(ticket, "bounced")
        self._tell("stanza_bounced", SettlementEvent("bounce", stanza, rule, rev, direction, condition, text, detail,
                                                     notes, ticket))
        reply = error_reply(stanza, condition, text)
        sender = parse_jid(stanza.getAttribute("from"))
        recipient = parse_jid(stanza.getAttribute("to"))
        side = self.topology.side_of(sender.host) if sender is not None else None
        if side is None or recipient is None:
            return None
        return ReturnBounce(side, (recipient.host, sender.host), Parcel(reply, None))

    def _drop(self, ticket, stanza, rule, rev, direction, text, detail=None, notes=()):
        self._settle(ticket, "dropped")
        self._tell("stanza_dropped", SettlementEvent("drop", stanza, rule, rev, direction, None, text, detail, notes,
                                                     ticket))
        return None

    def _settle(self, ticket, outcome) -> bool:
        """Close ``ticket`` as ``outcome``; False (refused, counted, told) when it is not open."""
        if not self.is_open(ticket):
            self._refuse(ticket, outcome)
            return False
        self._open.discard(ticket.number)
        self.counts[outcome] += 1
        return True

    def _refuse(self, ticket, attempt):
        self.counts["refused"] += 1
        self._tell("settled_twice", ticket if ticket is not None and ticket.number else None, attempt)
        return None

    def _listening(self, method) -> tuple:
        """The observers' bound ``method``s, leaving out the do-nothing ones a SettlementObserver inherits."""
        ignoring = getattr(SettlementObserver, method)
        bound = (getattr(observer, method) for observer in self.observers)
        return tuple(listener for listener in bound if getattr(listener, "__func__", None) is not ignoring)

    def _tell(self, method, *arguments) -> bool:
        """Tell every observer; False when one could not record it (and then the guard halts, if so configured).
        Any other exception from an observer is raised once all were told."""
        listeners = self._listeners.get(method)
        if listeners is None:
            listeners = self._listeners[method] = self._listening(method)
        recorded, fault = True, None
        for listener in listeners:
            try:
                listener(*arguments)
            except RecordUnavailable as problem:
                recorded = False
                self.halt(str(problem))
            except Exception as problem:  # noqa: BLE001 - raised below, after every observer heard the event
                fault = fault or problem
        if fault is not None:
            raise fault
        return recorded
