"""
The S2S carrier: the outbound path for one (side, sender domain, receiver
domain).  Its queue is bounded in stanzas and in bytes while a stream to the
receiver's server is set up, then it writes through; it opens that stream
itself (``open_outbound_stream``, a Twisted client endpoint string per route).

What it cannot deliver it tells its owner (``undeliverable``); when its queue
is full or the far server stops reading it tells its owner ``congested`` (the
owner holds the feeders of its pair), and ``decongested`` when that is over.

The queue is a state machine: every (state, event) it expects is in
``TRANSITIONS``; any other one fails closed (what waits is bounced, the
stream is closed, nothing is written) and is logged as a fault.
"""

from __future__ import annotations

import enum
from collections import deque

from twisted.internet.endpoints import connectProtocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.core.bounce import peer_detail
from guard.edges.carriers import ICarrier
from guard.edges.feeders import congestion_reason
from guard.edges.xmlstream import OversizedStanza

from .outbound import OutboundStream
from .routes import route_endpoint

log = Logger()

# What the carrier tells its owner (the guard's own words: a peer's go to the log only).
QUEUE_FULL = "the queue for this server is full"
NOT_SENT = "the stanza could not be sent"
NOT_OPENED = "the stream could not be opened"
STOPPING = "the guard is stopping"
UNEXPECTED = "the outbound queue met an event it does not expect"


def open_outbound_stream(owner, side, sender, receiver, route, purpose="relay"):
    """Connect an OutboundStream to ``route``, a Twisted client endpoint string (``tcp:host=…:port=…``, or
    ``srv:domain=…`` found through the side's resolver); ``owner`` hears of a failure to connect through
    ``stream_failed``.  The stream checks the far certificate for ``receiver``, whatever the route."""
    stream = OutboundStream(owner, side, sender, receiver, purpose=purpose)
    endpoint = route_endpoint(side.reactor, route, resolver=getattr(side, "resolver", None))

    def failed(failure):
        owner.stream_failed(stream, "remote-server-not-found", failure.getErrorMessage())

    stream.connect_attempt = connectProtocol(endpoint, stream)
    stream.connect_attempt.addErrback(failed)
    return stream


class QueueState(enum.Enum):
    """Where the queue of one pair is."""

    IDLE = "idle"  # no stream, nothing waits
    CONNECTING = "connecting"  # a stream is being set up; stanzas wait in the queue
    READY = "ready"  # the stream is ready; stanzas are written through
    STOPPED = "stopped"  # the guard stopped; nothing is carried


class QueueEvent(enum.Enum):
    CARRY = "carry"  # the owner hands over a parcel
    STREAM_READY = "stream ready"
    STREAM_FAILED = "stream failed"  # the stream never became ready (or could not be opened, or no route)
    STREAM_LOST = "stream lost"  # the ready stream ended
    CONGESTED = "congested"  # the far server stopped reading
    DECONGESTED = "decongested"
    BOUNCE_WAITING = "bounce waiting"  # the guard begins to stop
    SHUT_DOWN = "shut down"  # the guard stops


_S, _E = QueueState, QueueEvent

# (state, event) -> the step that handles it; each step enters the next state itself.
#
#   IDLE        carry           queue it, open a stream -> CONNECTING (no route, or it cannot
#                               be opened: bounce it -> IDLE)
#   CONNECTING  carry           queue it; at the queue's bound the feeders of this pair are
#                               held (congested); past twice the bound bounce it
#   CONNECTING  stream ready    write the queue, release the hold -> READY
#   CONNECTING  stream failed   bounce the queue, release the hold -> IDLE
#   READY       carry           write it
#   READY       stream lost     release the congestion hold -> IDLE, or CONNECTING if stanzas wait
#   any         congested       hold the feeders of this pair; decongested releases them
#   any         bounce waiting  bounce the accepted stanzas waiting (our own bounces stay)
#   any         shut down       bounce or give up what waits, close the stream -> STOPPED
#   STOPPED     carry           bounce it (remote-server-timeout)
#   STOPPED     stream failed   nothing (the stream being closed reports its end)
TRANSITIONS = {
    (_S.IDLE, _E.CARRY): "_queue",
    (_S.CONNECTING, _E.CARRY): "_queue",
    (_S.CONNECTING, _E.STREAM_READY): "_write_queue",
    (_S.CONNECTING, _E.STREAM_FAILED): "_give_up_stream",
    (_S.READY, _E.CARRY): "_write",
    (_S.READY, _E.STREAM_LOST): "_forget_stream",
    (_S.STOPPED, _E.CARRY): "_refuse_stopping",
    (_S.STOPPED, _E.STREAM_FAILED): "_ignore",
}
for _state in QueueState:
    TRANSITIONS[(_state, _E.CONGESTED)] = "_tell_congested"
    TRANSITIONS[(_state, _E.DECONGESTED)] = "_tell_decongested"
    TRANSITIONS[(_state, _E.BOUNCE_WAITING)] = "_bounce_waiting"
    TRANSITIONS[(_state, _E.SHUT_DOWN)] = "_shut_down"


@implementer(ICarrier)
class S2SCarrier:
    """The outbound queue and stream for one (side, sender, receiver); the owner of its OutboundStream."""

    def __init__(self, owner, side, sender, receiver, open_stream=open_outbound_stream):
        self.owner = owner
        self.side = side
        self.sender = sender
        self.receiver = receiver
        self.pairs = frozenset({(sender, receiver)})
        self.open_stream = open_stream
        self.queue: deque = deque()
        self.queued_bytes = 0
        self.stream = None
        self.state = QueueState.IDLE
        self.holding = False
        self.connects = 0
        self.failures = 0
        self.unexpected = 0

    @property
    def hold_reason(self) -> str:
        return f"waiting for {self.sender}->{self.receiver}"

    # -- ICarrier ----------------------------------------------------------

    def carry(self, parcel):
        self._on(QueueEvent.CARRY, parcel)

    def bounce_waiting(self, condition, text):
        self._on(QueueEvent.BOUNCE_WAITING, condition, text)

    def waiting(self) -> int:
        return len(self.queue)

    def shut_down(self):
        self._on(QueueEvent.SHUT_DOWN)

    def describe(self):
        return {"state": self.state.value, "queued": len(self.queue), "queued_bytes": self.queued_bytes,
                "holding": self.holding, "connects": self.connects, "failures": self.failures}

    # -- owner calls from the OutboundStream ----------------------------------

    def stream_ready(self, stream):
        if stream is not self.stream:
            stream.close_idle()  # a stream this queue no longer waits for
            return
        self._on(QueueEvent.STREAM_READY, stream)

    def stream_failed(self, stream, condition, text):
        if self.stream is not None and stream is not self.stream:
            return
        self._on(QueueEvent.STREAM_FAILED, stream, condition, text)

    def stream_lost(self, stream):
        if stream is not self.stream:
            return
        self._on(QueueEvent.STREAM_LOST, stream)

    def congested(self, stream):
        """The far server stopped reading: the servers that send to this pair stop being read."""
        self._on(QueueEvent.CONGESTED, stream)

    def decongested(self, stream):
        self._on(QueueEvent.DECONGESTED, stream)

    # -- the machine -----------------------------------------------------------

    def _on(self, event, *args):
        step = TRANSITIONS.get((self.state, event))
        if step is None:
            self._unexpected(event, *args)
            return
        getattr(self, step)(*args)

    def _enter(self, state):
        self.state = state

    def _queue(self, parcel):
        limits = self.side.limits
        if (len(self.queue) >= 2 * limits.outbound_queue
                or self.queued_bytes + parcel.size > 2 * limits.outbound_queue_bytes):
            self.owner.undeliverable(parcel, "resource-constraint", QUEUE_FULL)
            return
        self._push(parcel)
        if self.state is QueueState.IDLE:
            self._connect()
        if self.state is QueueState.CONNECTING and (len(self.queue) >= limits.outbound_queue
                                                    or self.queued_bytes >= limits.outbound_queue_bytes):
            # At every stanza past the bound, so that a feeder that was not held yet (a new stream) is held too.
            self.holding = True
            self.owner.congested(self, self.hold_reason)

    def _write(self, parcel):
        parcel = self.owner.judged_again(parcel)
        if parcel is None:
            return
        try:
            self.stream.send(parcel.stanza)
        except OversizedStanza as problem:
            log.info("a stanza for {receiver} is too large once serialised: {problem}", receiver=self.receiver,
                     problem=str(problem))
            self.owner.undeliverable(parcel, "policy-violation", str(problem))
            return
        except Exception as problem:  # noqa: BLE001 - a stanza that cannot be written is not delivered
            log.error("could not serialise a stanza for {receiver}: {problem!r}", receiver=self.receiver, problem=problem)
            self.owner.undeliverable(parcel, "internal-server-error", NOT_SENT)
            return
        self.owner.delivered(parcel)

    def _write_queue(self, stream):
        self._enter(QueueState.READY)
        while self.queue and self.state is QueueState.READY:
            self._write(self._pop())
        self._release_hold()

    def _give_up_stream(self, stream, condition, text):
        self.failures += 1
        self.stream = None
        self._enter(QueueState.IDLE)
        log.info("outbound {sender}->{receiver} failed ({condition}): {detail}; bouncing {n} waiting",
                 sender=self.sender, receiver=self.receiver, condition=condition, detail=peer_detail(text),
                 n=len(self.queue))
        self._give_up(condition, text)

    def _forget_stream(self, stream):
        self.owner.decongested(self, congestion_reason(self.sender, self.receiver))
        self.stream = None
        self._enter(QueueState.IDLE)
        if self.queue:
            self._connect()

    def _tell_congested(self, stream):
        self.owner.congested(self, congestion_reason(self.sender, self.receiver))

    def _tell_decongested(self, stream):
        self.owner.decongested(self, congestion_reason(self.sender, self.receiver))

    def _bounce_waiting(self, condition, text):
        """Bounce every accepted stanza waiting here; our own bounces stay queued for the stream being set up."""
        waiting = [self._pop() for _ in range(len(self.queue))]
        for parcel in waiting:
            if parcel.original is None:
                self._push(parcel)
        self._release_hold()
        for parcel in waiting:
            if parcel.original is not None:
                self.owner.undeliverable(parcel, condition, text)

    def _shut_down(self):
        self._enter(QueueState.STOPPED)
        self._give_up("remote-server-timeout", STOPPING)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close_for_shutdown()

    def _refuse_stopping(self, parcel):
        self.owner.undeliverable(parcel, "remote-server-timeout", STOPPING)

    def _ignore(self, *args):
        pass

    def _unexpected(self, event, *args):
        """Fail closed: settle the parcel the event brought, bounce what waits, close the streams concerned."""
        self.unexpected += 1
        log.error("outbound {sender}->{receiver}: {event} is not expected while {state}; bouncing {n} waiting "
                  "and closing the stream", sender=self.sender, receiver=self.receiver, event=event.value,
                  state=getattr(self.state, "value", self.state), n=len(self.queue))
        reporting = args[0] if event in (QueueEvent.STREAM_READY, QueueEvent.STREAM_FAILED,
                                         QueueEvent.STREAM_LOST) else None
        stream, self.stream = self.stream, None
        if self.state is not QueueState.STOPPED:
            self._enter(QueueState.IDLE)
        if event is QueueEvent.CARRY:
            self.owner.undeliverable(args[0], "internal-server-error", UNEXPECTED)
        self._give_up("internal-server-error", UNEXPECTED)
        for closing in {id(s): s for s in (stream, reporting) if s is not None}.values():
            try:
                closing.close_idle()
            except Exception as problem:  # noqa: BLE001 - a stream that cannot close cleanly is dropped anyway
                log.error("outbound {sender}->{receiver}: closing the stream failed: {problem!r}",
                          sender=self.sender, receiver=self.receiver, problem=problem)

    # -- helpers -------------------------------------------------------------------

    def _push(self, parcel):
        self.queue.append(parcel)
        self.queued_bytes += parcel.size
        self.owner.count_held(parcel.size)

    def _pop(self):
        parcel = self.queue.popleft()
        self.queued_bytes -= parcel.size
        self.owner.count_freed(parcel.size)
        return parcel

    def _release_hold(self):
        if self.holding:
            self.holding = False
            self.owner.decongested(self, self.hold_reason)

    def _give_up(self, condition, text):
        """Bounce or abandon everything waiting: no stream will carry it."""
        waiting = [self._pop() for _ in range(len(self.queue))]
        self._release_hold()
        for parcel in waiting:
            self.owner.undeliverable(parcel, condition, text)

    def _connect(self):
        route = self.side.routes.get(self.receiver)
        self._enter(QueueState.CONNECTING)
        self.stream = None
        if route is None:
            self.stream_failed(None, "remote-server-not-found", f"no route to {self.receiver}")
            return
        self.connects += 1
        try:
            stream = self.open_stream(self, self.side, self.sender, self.receiver, route)
        except Exception as problem:  # noqa: BLE001 - no stream is coming: settle what waits, never wait forever
            log.error("could not open a stream {sender}->{receiver}: {problem!r}", sender=self.sender,
                      receiver=self.receiver, problem=problem)
            self.stream_failed(None, "internal-server-error", NOT_OPENED)
            return
        if self.state is QueueState.CONNECTING and self.stream is None:
            self.stream = stream
