"""
The relay: judges each accepted stanza and carries it to the far side on the
outbound stream for its (from-domain, to-domain) pair, or bounces or drops it.

Every accepted stanza is settled exactly once in the books: delivered
(serialised onto a ready outbound stream), bounced (an error reply sent
back, or due) or dropped (by policy, by a limit, or because an error may not
be bounced), and each bounce and drop is audited.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.logger import Logger

from guard.core.accepted import accept
from guard.core.addressing import parse_jid
from guard.core.bounce import error_reply, may_bounce
from guard.core.pipeline import Direction, Verdict, judge_fail_closed

from .audit import AuditUnavailable
from .s2s.outbound import OutboundStream

log = Logger()


@dataclass(frozen=True)
class Parcel:
    """A stanza on its way out; ``original`` is the accepted stanza it settles (None for our own bounces)."""

    stanza: object
    original: object | None


class PolicyTable:
    """The policy in force for each direction; a reload swaps one reference."""

    def __init__(self, policies: dict[Direction, object]):
        self._policies = dict(policies)

    def current(self, direction: Direction):
        return self._policies[direction]

    def swap(self, direction: Direction, policy) -> None:
        self._policies[direction] = policy

    def directions(self):
        return tuple(self._policies)


class Relay:
    def __init__(self, topology, policies: PolicyTable, books, audit, reactor, stop_on_audit_failure=True,
                 open_stream=None, release_authority=None):
        self.topology = topology
        self.release_authority = release_authority
        self.open_stream = open_stream or self._open_tcp_stream
        self.policies = policies
        self.books = books
        self.audit = audit
        self.reactor = reactor
        self.sides = {}
        self.links: dict[tuple[str, str, str], OutboundLink] = {}
        self.stop_on_audit_failure = stop_on_audit_failure
        self.halted_reason: str | None = None
        self.stopping = False

    def add_side(self, side):
        side.relay = self
        self.sides[side.name] = side

    # -- from inbound streams ---------------------------------------------

    def stanza_received(self, side, stanza, addressed, size):
        """Judge a stanza accepted on ``side`` and act on the verdict."""
        self.books.accept()
        if self.halted_reason is not None:
            self._bounce(stanza, "service-unavailable", "the guard is not relaying", "guard:halted")
            return
        destination = self.topology.far_side(side.name)
        direction = Direction(side.name, destination)
        judgement, problem = judge_fail_closed(self.policies.current(direction), stanza, direction,
                                               accept(stanza, addressed, size, direction))
        if problem is not None:
            log.error("policy for {direction} failed on a stanza: {problem!r}", direction=str(direction), problem=problem)
        if judgement.verdict is Verdict.PASS:
            self._forward(destination, addressed.pair, Parcel(judgement.stanza, stanza))
        elif judgement.verdict is Verdict.BOUNCE:
            self._bounce(stanza, judgement.condition or "not-allowed", judgement.text,
                         judgement.rule_id, judgement.rule_rev, direction)
        elif judgement.verdict is Verdict.REFER:
            self._refer(stanza, judgement, destination, addressed, direction)
        else:
            self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction, judgement.text)

    def _refer(self, stanza, judgement, destination, addressed, direction):
        """Ask the release authority; release forwards (the answer's stanza), anything else drops."""
        if self.release_authority is None:
            self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction,
                       "refer: no release authority (High Assurance Guard) is configured")
            return

        def decided(release):
            if release is not None and release.released and release.stanza is not None:
                self._forward(destination, addressed.pair, Parcel(release.stanza, stanza))
            else:
                reason = release.reason if release is not None else "no answer"
                self._drop(stanza, judgement.rule_id, judgement.rule_rev, direction, f"refer: {reason}")

        def failed(failure):  # the authority client never errbacks; if it ever does, drop
            log.error("release authority failed: {f}", f=failure.getErrorMessage())
            decided(None)

        self.release_authority.ask(judgement.stanza, direction, judgement.rule_id).addCallbacks(decided, failed)

    def check_dialback(self, side, peer_domain, fronted_domain, stream_id, key):
        """Ask ``peer_domain``'s authoritative server whether ``key`` is genuine; a Deferred of bool."""
        route = side.routes.get(peer_domain)
        if route is None:
            return defer.succeed(False)
        verification = DialbackVerification()
        self.open_stream(verification, side, fronted_domain, peer_domain, route, purpose="verify",
                         verify=(stream_id, key))
        return verification.answer

    def _open_tcp_stream(self, owner, side, sender, receiver, route, purpose="relay", verify=None):
        """Connect an OutboundStream to ``route``; the owner hears of failure through stream_failed."""
        stream = OutboundStream(owner, side, sender, receiver, purpose=purpose, verify=verify)
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
        key = (side_name,) + pair
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = OutboundLink(self, self.sides[side_name], *pair)
        link.enqueue(parcel)

    def delivered(self, parcel):
        if parcel.original is not None:
            self.books.deliver()

    def undeliverable(self, parcel, condition, text):
        """A parcel could not be delivered: bounce what it settles; our own bounces just end."""
        if parcel.original is None:
            log.info("bounce to {to} undeliverable: {text}", to=parcel.stanza.getAttribute("to"), text=text)
            return
        self._bounce(parcel.original, condition, text, f"guard:{condition}")

    def _bounce(self, stanza, condition, text, rule_id, rule_rev=1, direction=None):
        if not may_bounce(stanza):
            self._drop(stanza, rule_id, rule_rev, direction, f"not bounced ({condition}): errors and results never are")
            return
        self.books.bounce(rule_id)
        self._audit("bounce", stanza, rule_id, rule_rev, direction, condition=condition, text=text)
        reply = error_reply(stanza, condition, text)
        sender = parse_jid(stanza.getAttribute("from"))
        recipient = parse_jid(stanza.getAttribute("to"))
        side_name = self.topology.side_of(sender.host) if sender is not None else None
        if side_name is None or recipient is None:
            return
        self._forward(side_name, (recipient.host, sender.host), Parcel(reply, None))

    def _drop(self, stanza, rule_id, rule_rev, direction, text=None):
        self.books.drop(rule_id)
        self._audit("drop", stanza, rule_id, rule_rev, direction, text=text)

    def _audit(self, event, stanza, rule_id, rule_rev, direction, **extra):
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

    # -- back-pressure ----------------------------------------------------------

    def hold_senders(self, sender, receiver):
        """Stop reading every inbound stream that carries (sender, receiver): the far server is not reading."""
        side = self.sides.get(self.topology.side_of(sender))
        if side is None:
            return
        for stream in list(side.inbound_streams):
            if (sender, receiver) in stream.authenticated_pairs:
                stream.hold(f"congested {sender}->{receiver}")

    def release_senders(self, sender, receiver):
        side = self.sides.get(self.topology.side_of(sender))
        if side is None:
            return
        for stream in list(side.inbound_streams):
            stream.release(f"congested {sender}->{receiver}")

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

    def bounces_waiting(self) -> int:
        """Our own bounces not yet written (the service waits for them, within a grace, before closing)."""
        return sum(len(link.queue) for link in self.links.values())

    def finish_shutdown(self):
        """Second half of stopping: close every outbound stream; bounces still waiting are given up (logged)."""
        for link in list(self.links.values()):
            link.shut_down()

    def shut_down(self):
        """Stop at once: both halves without a grace in between."""
        self.begin_shutdown()
        self.finish_shutdown()

    def status(self) -> dict:
        return {
            "books": self.books.summary(),
            "halted": self.halted_reason,
            "links": {
                f"{side}:{sender}->{receiver}": link.describe()
                for (side, sender, receiver), link in self.links.items()
            },
            "inbound_streams": {name: len(side.inbound_streams) for name, side in self.sides.items()},
        }


class DialbackVerification:
    """Owner of a verify-purpose outbound stream: turns its outcome into a Deferred of bool."""

    def __init__(self):
        self.answer = defer.Deferred()

    def _settle(self, valid):
        if not self.answer.called:
            self.answer.callback(bool(valid))

    def verification_answered(self, stream, valid):
        self._settle(valid)

    def stream_failed(self, stream, condition, text):
        self._settle(False)

    def stream_lost(self, stream):
        self._settle(False)

    def stream_ready(self, stream):  # a verify stream never becomes ready: refuse
        self._settle(False)

    def congested(self, stream):
        pass

    def decongested(self, stream):
        pass


class OutboundLink:
    """
    The outbound path for one (side, sender domain, receiver domain): a
    bounded queue while a stream is being set up, then write-through.
    """

    def __init__(self, relay, side, sender, receiver):
        self.relay = relay
        self.side = side
        self.sender = sender
        self.receiver = receiver
        self.queue: deque[Parcel] = deque()
        self.stream = None
        self.state = "idle"  # idle -> connecting -> ready -> idle
        self.connects = 0
        self.failures = 0

    def describe(self):
        return {"state": self.state, "queued": len(self.queue), "connects": self.connects, "failures": self.failures}

    def enqueue(self, parcel):
        if self.state == "ready":
            self._send(parcel)
            return
        if len(self.queue) >= self.side.limits.outbound_queue:
            self.relay.undeliverable(parcel, "remote-server-timeout", "too many stanzas waiting for this server")
            return
        self.queue.append(parcel)
        if self.state == "idle":
            self._connect()

    def _send(self, parcel):
        try:
            self.stream.send(parcel.stanza)
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
        self.state = "connecting"
        self.connects += 1
        self.stream = None
        stream = self.relay.open_stream(self, self.side, self.sender, self.receiver, route)
        if self.state == "connecting" and self.stream is None:
            self.stream = stream

    # -- owner calls from OutboundStream ---------------------------------

    def stream_ready(self, stream):
        if stream is not self.stream:
            stream.close_idle()
            return
        self.state = "ready"
        while self.queue and self.state == "ready":
            self._send(self.queue.popleft())

    def stream_failed(self, stream, condition, text):
        if self.stream is not None and stream is not self.stream:
            return
        self.failures += 1
        self.stream = None
        self.state = "idle"
        log.info("outbound {sender}->{receiver} failed ({condition}): {text}; bouncing {n} waiting",
                 sender=self.sender, receiver=self.receiver, condition=condition, text=text, n=len(self.queue))
        self.give_up(condition, text)

    def stream_lost(self, stream):
        if stream is not self.stream:
            return
        self.relay.release_senders(self.sender, self.receiver)
        self.stream = None
        self.state = "idle"
        if self.queue:
            self._connect()

    def bounce_waiting(self, condition, text):
        """Bounce every accepted stanza waiting here; our own bounces stay queued for the stream being set up."""
        waiting = self.queue
        self.queue = deque(parcel for parcel in waiting if parcel.original is None)
        for parcel in waiting:
            if parcel.original is not None:
                self.relay.undeliverable(parcel, condition, text)

    def give_up(self, condition, text):
        """Bounce or abandon everything waiting: the stream will not come."""
        waiting, self.queue = self.queue, deque()
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
