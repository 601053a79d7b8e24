"""
The lasting half of the pair link: what outlives each connection (the
retransmission buffer, the counters, the "down too long" deadline) and the
decisions taken on what a connection reports.

    down --(a connection proves the peer)--> up --(connection lost)--> down
    down --(down_deadline passes)--> down_too_long: every waiting stanza is
          bounced (remote-server-timeout), and so is each new one, until a
          connection proves the peer again
    any state --(stop)--> stopped

The owner (the half's relay, or the reference HAG) is told three things:
``link_stanza_received(element, size)`` for each new stanza from the peer
(duplicates are dropped here), ``link_delivered(parcel)`` when the peer has
acknowledged one of ours, and ``link_undeliverable(parcel, condition, text)``
when one is given up on.
"""

from __future__ import annotations

from dataclasses import dataclass

from automat import MethodicalMachine
from twisted.logger import Logger

from guard.edges.xmlstream import serialise

from . import wire
from .ledger import Inbox, LinkFault, Outbox

log = Logger()


@dataclass(frozen=True)
class LinkSettings:
    """The link's bounds and clocks; every one is enforced by ``Link`` and tested."""

    buffer_stanzas: int = 10000  # stanzas kept until acknowledged (sent or waiting)
    down_deadline: float = 120.0  # seconds down after which waiting stanzas are bounced
    ack_every: int = 50  # ask for an acknowledgement after this many stanzas written
    ack_interval: float = 1.0  # seconds between checks for unacknowledged stanzas
    ack_timeout: float = 30.0  # seconds an acknowledgement request may stay unanswered
    keepalive: float = 60.0  # seconds of an idle link after which <r/> checks the peer is still there


@dataclass(frozen=True)
class Carried:
    """A parcel on the link and its bytes, serialised once when it was handed over."""

    parcel: object
    data: bytes


class Link:
    _machine = MethodicalMachine()

    def __init__(self, owner, own_name: str, peer_name: str, clock, settings: LinkSettings = LinkSettings(),
                 session: str | None = None):
        self.owner = owner
        self.own_name = own_name
        self.peer_name = peer_name
        self.clock = clock
        self.settings = settings
        self.outbox = Outbox(settings.buffer_stanzas, session)
        self.inbox = Inbox()
        self.stream = None
        self.connections = 0
        self.bounced = 0
        self._deadline = None
        self._ticker = None
        self._ack_asked_at: float | None = None
        self._last_request = 0.0
        self._written_since_request = 0

    # -- the owner's verbs --------------------------------------------------

    def start(self) -> None:
        """Start counting the time the link is down."""
        self._start()

    def send(self, parcel) -> None:
        """Carry ``parcel.stanza`` to the peer half: exactly once, or bounce it."""
        try:
            data = serialise(parcel.stanza).encode("utf-8")
        except Exception as problem:  # noqa: BLE001 - what cannot be written is not carried
            log.error("link: a stanza could not be serialised: {problem!r}", problem=problem)
            self.owner.link_undeliverable(parcel, "internal-server-error", "the stanza could not be sent")
            return
        self._offered(Carried(parcel, data))

    def stop(self) -> None:
        """Bounce everything waiting and close the connection."""
        self._stop()

    def describe(self) -> dict:
        return {
            "state": self.state_name,
            "peer": self.peer_name,
            "peer_fingerprint": self.stream.peer_fingerprint if self.stream is not None else None,
            "queued": self.outbox.queued,
            "unacknowledged": self.outbox.unacknowledged,
            "received": self.inbox.received,
            "duplicates_dropped": self.inbox.duplicates,
            "connections": self.connections,
            "bounced": self.bounced,
        }

    # -- what a stream reports (its own faults become LinkFault) -------------

    def stream_authenticated(self, stream) -> None:
        self._authenticated(stream)

    def stream_closed(self, stream) -> None:
        if stream is self.stream:
            self._lost()

    def peer_resumed(self, stream, resume) -> None:
        if stream is not self.stream:
            raise LinkFault("conflict", "this connection was replaced")
        self.inbox.resume(resume)
        self._settle(self.outbox.resume_from(resume))

    def stanza_arrived(self, stream, element, size) -> None:
        if stream is not self.stream:
            raise LinkFault("conflict", "this connection was replaced")
        if self.inbox.accept():
            self.owner.link_stanza_received(element, size)

    def acknowledged(self, stream, received: int) -> None:
        if stream is not self.stream:
            raise LinkFault("conflict", "this connection was replaced")
        self._ack_asked_at = None
        self._settle(self.outbox.acknowledge(received))

    def received_count(self) -> int:
        return self.inbox.received

    # -- states ---------------------------------------------------------------

    @_machine.state(initial=True)
    def down(self):
        "No connection proves the peer; stanzas wait in the buffer."

    @_machine.state()
    def up(self):
        "A connection proved the peer; stanzas are written as they come."

    @_machine.state()
    def down_too_long(self):
        "The link has been down past the deadline; stanzas are bounced."

    @_machine.state()
    def stopped(self):
        "The half is stopping; nothing is carried."

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def _start(self):
        "The half starts."

    @_machine.input()
    def _offered(self, carried):
        "The owner hands over a stanza."

    @_machine.input()
    def _authenticated(self, stream):
        "A connection's certificate proved the peer half."

    @_machine.input()
    def _lost(self):
        "The current connection is gone."

    @_machine.input()
    def _deadline_passed(self):
        "The link has been down for ``down_deadline`` seconds."

    @_machine.input()
    def _stop(self):
        "The half stops."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _start_deadline(self):
        self._cancel_deadline()
        self._deadline = self.clock.callLater(self.settings.down_deadline, self._deadline_passed)

    @_machine.output()
    def _keep(self, carried):
        if self.outbox.add(carried) is None:
            self._give_up(carried, "resource-constraint", "too many stanzas waiting for the link")

    @_machine.output()
    def _write_offered(self, carried):
        self._write_unsent()

    @_machine.output()
    def _write_waiting(self, stream):
        self._write_unsent()

    @_machine.output()
    def _bounce(self, carried):
        self._give_up(carried, "remote-server-timeout", "the link to the peer half is down")

    @_machine.output()
    def _bounce_waiting(self):
        waiting = self.outbox.take_all()
        if waiting:
            log.warn("link down too long: bouncing {n} waiting stanzas", n=len(waiting))
        for carried in waiting:
            self._give_up(carried, "remote-server-timeout", "the link to the peer half is down")

    @_machine.output()
    def _adopt(self, stream):
        previous, self.stream = self.stream, stream
        if previous is not None:
            previous.close("conflict", "replaced by a newer connection")
        self.connections += 1
        self._cancel_deadline()
        self.inbox.connection_over()
        first = self.outbox.rewind()
        seen = self.inbox.peer_session
        stream.write(wire.resume(self.outbox.session, first, seen, self.inbox.received))
        self._ack_asked_at = None
        self._last_request = self.clock.seconds()
        self._written_since_request = 0
        self._start_ticker()
        log.info("link up to {peer} ({fingerprint}); resuming at {first}",
                 peer=self.peer_name, fingerprint=stream.peer_fingerprint, first=first)

    @_machine.output()
    def _forget_stream(self):
        log.info("link to {peer} down; {n} stanzas waiting", peer=self.peer_name, n=len(self.outbox))
        self.stream = None
        self.inbox.connection_over()
        self._stop_ticker()

    @_machine.output()
    def _close_stream(self):
        self._cancel_deadline()
        self._stop_ticker()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close("system-shutdown", "the half is stopping")

    @_machine.output()
    def _refuse_stream(self, stream):
        stream.close("system-shutdown", "the half is stopping")

    # -- helpers --------------------------------------------------------------

    def _write_unsent(self) -> None:
        for entry in self.outbox.unsent():
            self._write(entry)

    def _write(self, entry) -> None:
        self.outbox.mark_sent(entry.sequence)
        self.stream.write(entry.parcel.data)
        self._written_since_request += 1
        if self._written_since_request >= self.settings.ack_every:
            self._ask_for_ack()

    def _ask_for_ack(self) -> None:
        self._written_since_request = 0
        self._last_request = self.clock.seconds()
        if self._ack_asked_at is None:
            self._ack_asked_at = self._last_request
        self.stream.write(wire.ACK_REQUEST)

    def _settle(self, settled) -> None:
        for carried in settled:
            self.owner.link_delivered(carried.parcel)

    def _give_up(self, carried, condition, text) -> None:
        self.bounced += 1
        self.owner.link_undeliverable(carried.parcel, condition, text)

    def _tick(self) -> None:
        self._ticker = self.clock.callLater(self.settings.ack_interval, self._tick)
        if self.stream is None:
            return
        now = self.clock.seconds()
        if self._ack_asked_at is not None and now - self._ack_asked_at >= self.settings.ack_timeout:
            log.warn("link: no acknowledgement for {t}s; dropping the connection", t=self.settings.ack_timeout)
            self.stream.close("connection-timeout", "acknowledgements stopped")
            return
        if self.outbox.unacknowledged:
            self._ask_for_ack()
        elif self._ack_asked_at is None and now - self._last_request >= self.settings.keepalive:
            self._ask_for_ack()  # an idle link: is the peer still there?

    def _start_ticker(self) -> None:
        self._stop_ticker()
        self._ticker = self.clock.callLater(self.settings.ack_interval, self._tick)

    def _stop_ticker(self) -> None:
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    @property
    def state_name(self) -> str:
        return self._state_name

    _state_name = "down"

    @_machine.output()
    def _now_down(self):
        self._state_name = "down"

    @_machine.output()
    def _now_up(self, stream):
        self._state_name = "up"

    @_machine.output()
    def _now_down_too_long(self):
        self._state_name = "down_too_long"

    @_machine.output()
    def _now_stopped(self):
        self._state_name = "stopped"

    # -- transitions ----------------------------------------------------------

    down.upon(_start, enter=down, outputs=[_start_deadline])
    down.upon(_offered, enter=down, outputs=[_keep])
    down.upon(_authenticated, enter=up, outputs=[_now_up, _adopt, _write_waiting])
    down.upon(_deadline_passed, enter=down_too_long, outputs=[_now_down_too_long, _bounce_waiting])
    down.upon(_stop, enter=stopped, outputs=[_now_stopped, _bounce_waiting, _close_stream])
    up.upon(_offered, enter=up, outputs=[_keep, _write_offered])
    up.upon(_authenticated, enter=up, outputs=[_adopt, _write_waiting])
    up.upon(_lost, enter=down, outputs=[_now_down, _forget_stream, _start_deadline])
    up.upon(_stop, enter=stopped, outputs=[_now_stopped, _bounce_waiting, _close_stream])
    up.upon(_start, enter=up, outputs=[])
    up.upon(_deadline_passed, enter=up, outputs=[])
    down_too_long.upon(_offered, enter=down_too_long, outputs=[_bounce])
    down_too_long.upon(_authenticated, enter=up, outputs=[_now_up, _adopt, _write_waiting])
    down_too_long.upon(_stop, enter=stopped, outputs=[_now_stopped, _close_stream])
    down_too_long.upon(_start, enter=down_too_long, outputs=[])
    down_too_long.upon(_deadline_passed, enter=down_too_long, outputs=[])
    stopped.upon(_offered, enter=stopped, outputs=[_bounce])
    stopped.upon(_authenticated, enter=stopped, outputs=[_refuse_stream])
    stopped.upon(_lost, enter=stopped, outputs=[])
    stopped.upon(_deadline_passed, enter=stopped, outputs=[])
    stopped.upon(_stop, enter=stopped, outputs=[])
    stopped.upon(_start, enter=stopped, outputs=[])
