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

import enum
from collections import deque
from dataclasses import replace

from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.logger import Logger

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
from .limits import Limits
from .s2s.outbound import OutboundStream
from .s2s.verification import Verifier
from .xmlstream import OversizedStanza

log = Logger()

__all__ = ["BOUNCE_LOST_RULE", "INTERNAL_FAULT_RULE", "Parcel", "PolicyTable", "Relay", "Ticket"]


# What one of our own bounces counts for in byte bounds besides its addresses and id.
BOUNCE_BYTES = 256

# The reason a stream is held while what the guard holds is over its budget.
MEMORY_HOLD = "memory budget"


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
        self.open_stream = open_stream or self._open_tcp_stream
        self.policies = policies
        self.books = books
        self.audit = audit
        self.settlement = Settlement(topology, (books, AuditObserver(audit), *observers), stop_on_audit_failure)
        self.reactor = reactor
        self.sides = {}
        self.links: dict[tuple[str, str, str], OutboundLink] = {}
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
        ticket = self.settlement.accept(stanza, addressed.pair, size, direction, self.policies.generation)
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
            self._hold_inbound(getattr(side, "inbound_streams", ()))
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

    def check_dialback(self, side, peer_domain, fronted_domain, stream_id, key, asker=None):
        """
        Ask ``peer_domain``'s authoritative server whether ``key`` is genuine: a
        Deferred of a verification Answer, or None when ``asker`` already waits
        for this pair.  Deduplication, caps and the verification streams are the
        side's Verifier's (guard.edges.s2s.verification).
        """
        if side.verifier is None:
            side.verifier = Verifier(side, self.open_stream)
        address = getattr(getattr(asker, "peer_address", None), "host", None)
        return side.verifier.check(asker, address, peer_domain, fronted_domain, stream_id, key)

    def _open_tcp_stream(self, owner, side, sender, receiver, route, purpose="relay"):
        """Connect an OutboundStream to ``route``; the owner hears of failure through stream_failed."""
        stream = OutboundStream(owner, side, sender, receiver, purpose=purpose)
        endpoint = HostnameEndpoint(self.reactor, route[0], route[1], timeout=side.limits.connect_timeout)

        def failed(failure):
            owner.stream_failed(stream, "remote-server-not-found", failure.getErrorMessage())

        stream.connect_attempt = connectProtocol(endpoint, stream)
        stream.connect_attempt.addErrback(failed)
        return stream

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
        key = (side_name,) + pair
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = OutboundLink(self, self.sides[side_name], *pair)
        link.enqueue(parcel)

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

    # -- back-pressure ----------------------------------------------------------

    def hold_senders(self, sender, receiver, reason=None):
        """Stop reading every inbound stream that carries (sender, receiver): the far server is not reading
        (or, with another ``reason``, its stream is still being set up and its queue is full)."""
        side = self.sides.get(self.topology.side_of(sender))
        if side is None:
            return
        for stream in list(side.inbound_streams):
            if (sender, receiver) in stream.authenticated_pairs:
                stream.hold(reason or f"congested {sender}->{receiver}")

    def release_senders(self, sender, receiver, reason=None):
        side = self.sides.get(self.topology.side_of(sender))
        if side is None:
            return
        for stream in list(side.inbound_streams):
            stream.release(reason or f"congested {sender}->{receiver}")

    def count_held(self, amount):
        """Count bytes the guard now holds; at the budget, stop reading every inbound stream."""
        if self.held.take(amount):
            log.warn("holding {held} bytes of stanzas (budget {budget}): reading stops",
                     held=self.held.held, budget=self.held.budget)
            for side in self.sides.values():
                self._hold_inbound(side.inbound_streams)

    def count_freed(self, amount):
        """Count bytes the guard no longer holds; at the low-water mark, read every inbound stream again."""
        if self.held.give(amount):
            log.info("holding {held} bytes of stanzas: reading resumes", held=self.held.held)
            for side in self.sides.values():
                for stream in list(side.inbound_streams):
                    stream.release(MEMORY_HOLD)

    @staticmethod
    def _hold_inbound(streams):
        for stream in list(streams):
            stream.hold(MEMORY_HOLD)

    # -- shutdown -------------------------------------------------------------

    def begin_shutdown(self):
        """
        First half of stopping: close every inbound stream (nothing new is
        accepted) and bounce every accepted stanza still waiting.  The bounces
        themselves may need outbound streams back to the senders' side: those
        stay open, or are opened, until ``finish_shutdown``.
        """
        self.stopping = True
        for side in self.sides.values():
            for stream in list(side.inbound_streams):
                stream.close_for_shutdown()
        for link in list(self.links.values()):
            link.bounce_waiting("remote-server-timeout", "the guard is stopping")
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
        return sum(len(link.queue) for link in self.links.values())

    def finish_shutdown(self):
        """Second half of stopping: close every outbound stream; bounces still waiting are given up (logged)."""
        for link in list(self.links.values()):
            link.shut_down()
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


class LinkState(enum.Enum):
    """Where an outbound link is: no stream, a stream being set up (stanzas wait), a stream ready (write-through)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"


class OutboundLink:
    """
    The outbound path for one (side, sender domain, receiver domain): a queue
    bounded in stanzas and in bytes while a stream is being set up, then
    write-through.

    ==========  ==================  ==========================================
    state       event               effect
    ==========  ==================  ==========================================
    IDLE        stanza              queue it, open a stream -> CONNECTING
    CONNECTING  stanza              queue it; at the queue's bound hold the
                                    streams that feed this pair; past twice
                                    the bound bounce it (resource-constraint)
    CONNECTING  stream ready        send the queue, release holds -> READY
    CONNECTING  stream failed       bounce the queue, release holds -> IDLE
    READY       stanza              send it
    READY       stream lost         -> IDLE, or CONNECTING if stanzas wait
    ==========  ==================  ==========================================
    """

    def __init__(self, relay, side, sender, receiver):
        self.relay = relay
        self.side = side
        self.sender = sender
        self.receiver = receiver
        self.queue: deque[Parcel] = deque()
        self.queued_bytes = 0
        self.stream = None
        self.state = LinkState.IDLE
        self.holding = False
        self.connects = 0
        self.failures = 0

    @property
    def hold_reason(self) -> str:
        return f"waiting for {self.sender}->{self.receiver}"

    def describe(self):
        return {"state": self.state.value, "queued": len(self.queue), "queued_bytes": self.queued_bytes,
                "holding": self.holding, "connects": self.connects, "failures": self.failures}

    def enqueue(self, parcel):
        if self.state is LinkState.READY:
            self._send(parcel)
            return
        limits = self.side.limits
        if (len(self.queue) >= 2 * limits.outbound_queue
                or self.queued_bytes + parcel.size > 2 * limits.outbound_queue_bytes):
            self.relay.undeliverable(parcel, "resource-constraint", "the queue for this server is full")
            return
        self._push(parcel)
        if self.state is LinkState.IDLE:
            self._connect()
        if self.state is LinkState.CONNECTING and (len(self.queue) >= limits.outbound_queue
                                                   or self.queued_bytes >= limits.outbound_queue_bytes):
            # At every stanza past the bound, so that a feeder that was not held yet (a new stream) is held too.
            self.holding = True
            self.relay.hold_senders(self.sender, self.receiver, self.hold_reason)

    def _push(self, parcel):
        self.queue.append(parcel)
        self.queued_bytes += parcel.size
        self.relay.count_held(parcel.size)

    def _pop(self):
        parcel = self.queue.popleft()
        self.queued_bytes -= parcel.size
        self.relay.count_freed(parcel.size)
        return parcel

    def _release_holds(self):
        if self.holding:
            self.holding = False
            self.relay.release_senders(self.sender, self.receiver, self.hold_reason)

    def _send(self, parcel):
        parcel = self.relay.judged_again(parcel)
        if parcel is None:
            return
        try:
            self.stream.send(parcel.stanza)
        except OversizedStanza as problem:
            log.info("a stanza for {receiver} is too large once serialised: {problem}", receiver=self.receiver,
                     problem=str(problem))
            self.relay.undeliverable(parcel, "policy-violation", str(problem))
            return
        except Exception as problem:  # noqa: BLE001 - a stanza that cannot be written is not delivered
            log.error("could not serialise a stanza for {receiver}: {problem!r}", receiver=self.receiver, problem=problem)
            self.relay.undeliverable(parcel, "internal-server-error", "the stanza could not be sent")
            return
        self.relay.delivered(parcel)

    def _connect(self):
        route = self.side.routes.get(self.receiver)
        if route is None:
            self.stream_failed(None, "remote-server-not-found", f"no route to {self.receiver}")
            return
        self.state = LinkState.CONNECTING
        self.connects += 1
        self.stream = None
        try:
            stream = self.relay.open_stream(self, self.side, self.sender, self.receiver, route)
        except Exception as problem:  # noqa: BLE001 - no stream is coming: settle what waits, never wait forever
            log.error("could not open a stream {sender}->{receiver}: {problem!r}", sender=self.sender,
                      receiver=self.receiver, problem=problem)
            self.stream_failed(None, "internal-server-error", "the stream could not be opened")
            return
        if self.state is LinkState.CONNECTING and self.stream is None:
            self.stream = stream

    # -- owner calls from OutboundStream ---------------------------------

    def stream_ready(self, stream):
        if stream is not self.stream:
            stream.close_idle()
            return
        self.state = LinkState.READY
        while self.queue and self.state is LinkState.READY:
            self._send(self._pop())
        self._release_holds()

    def stream_failed(self, stream, condition, text):
        if self.stream is not None and stream is not self.stream:
            return
        self.failures += 1
        self.stream = None
        self.state = LinkState.IDLE
        log.info("outbound {sender}->{receiver} failed ({condition}): {detail}; bouncing {n} waiting",
                 sender=self.sender, receiver=self.receiver, condition=condition, detail=peer_detail(text),
                 n=len(self.queue))
        self.give_up(condition, text)

    def stream_lost(self, stream):
        if stream is not self.stream:
            return
        self.relay.release_senders(self.sender, self.receiver)
        self.stream = None
        self.state = LinkState.IDLE
        if self.queue:
            self._connect()

    def bounce_waiting(self, condition, text):
        """Bounce every accepted stanza waiting here; our own bounces stay queued for the stream being set up."""
        waiting = [self._pop() for _ in range(len(self.queue))]
        for parcel in waiting:
            if parcel.original is None:
                self._push(parcel)
        self._release_holds()
        for parcel in waiting:
            if parcel.original is not None:
                self.relay.undeliverable(parcel, condition, text)

    def give_up(self, condition, text):
        """Bounce or abandon everything waiting: the stream will not come."""
        waiting = [self._pop() for _ in range(len(self.queue))]
        self._release_holds()
        for parcel in waiting:
            self.relay.undeliverable(parcel, condition, text)

    def congested(self, stream):
        """The far server stopped reading: stop reading from the servers that send to this pair."""
        self.relay.hold_senders(self.sender, self.receiver)

    def decongested(self, stream):
        self.relay.release_senders(self.sender, self.receiver)

    def shut_down(self):
        self.give_up("remote-server-timeout", "the guard is stopping")
        if self.stream is not None:
            self.stream.close_for_shutdown()
