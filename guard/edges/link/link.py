"""
The lasting half of the pair link: what outlives each connection (the
retransmission buffer, the counters, the "down too long" deadline) and the
decisions taken on what a connection reports.

    down --(a connection proves the peer)--> up --(connection lost)--> down
    down --(down_deadline passes)--> down_too_long: every stanza never
          written is bounced (remote-server-timeout), and so is each new
          one, until a connection proves the peer again
    any state --(stop)--> stopped

The deadline starts when the link is lost and runs until a connection makes
progress (the peer acknowledges, refuses or has nothing waiting for it): a
reconnection that delivers nothing does not reset it.  When it passes, the
stanzas written and not acknowledged (the peer may have them) are frozen:
never written again, settled exactly by the peer's next ``<resume/>``
(delivered if it counted them, bounced if not), or reported in doubt when
the half stops first.

The owner (the half's relay, or the reference HAG) is told four things:
``link_stanza_received(element, size)`` for each new stanza from the peer
(duplicates are dropped here), ``link_delivered(parcel)`` when the peer has
acknowledged one of ours, ``link_undeliverable(parcel, condition, text)``
when one is given up on or refused (the peer never had it), and
``link_in_doubt(parcel)`` when the half stops before knowing whether the
peer had it.  Each parcel is told exactly one of the last three, once.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from automat import MethodicalMachine
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from guard.edges.carriers import ICarrier
from guard.edges.feeders import MEMORY_HOLD
from guard.edges.xmlstream import OversizedStanza, ParserLimits, serialise

from . import wire
from .constrained import Merged, carries_link_elements, fan_out, parcels_of, with_recipients
from .ledger import Inbox, LinkFault, Outbox, StanzaNotTaken

log = Logger()

# What the link says when it gives a stanza up (constant texts: the peer's words go to the log only).
LINK_DOWN = "the link to the peer half is down"
LINK_STOPPING = "the link to the peer half is stopping"
BUFFER_FULL = "too many stanzas waiting for the link"
TOO_LARGE = "the stanza is too large for the link"
NOT_WRITABLE = "the stanza could not be sent"
PEER_REFUSED = "the peer half refused the stanza"
WAITED_TOO_LONG = "the stanza waited too long for the bearer"
IQ_TOO_LATE = "the request cannot be answered across the bearer in time"
PRESENCE_STRIPPED = "presence not carried by this link (its presence setting)"
UNKNOWN_TYPE = "a stanza of a type this link does not carry"
PRESENCE_SUPERSEDED = "presence superseded by a later one from the same sender to the same recipient"
# The condition of both refusals: RFC 3920 and 6120 define it, so every client can read it
# (policy-violation is RFC 6120 only, and some clients fail on it and wait out their timeout).
REFUSED_CONDITION = "not-acceptable"


@dataclass(frozen=True)
class LinkSettings:
    """The link's bounds and clocks; every one is enforced by ``Link`` and tested."""

    buffer_stanzas: int = 10000  # stanzas kept until acknowledged (sent or waiting)
    buffer_bytes: int = 64 * 1024 * 1024  # serialised bytes kept until acknowledged (sent or waiting)
    down_deadline: float = 120.0  # seconds without progress after a loss, after which waiting stanzas are bounced
    ack_every: int = 50  # ask for an acknowledgement after this many stanzas written
    ack_interval: float = 1.0  # seconds between checks for unacknowledged stanzas
    ack_timeout: float = 30.0  # seconds an acknowledgement request may stay unanswered
    keepalive: float = 60.0  # seconds of an idle link after which <r/> checks the peer is still there
    fan_out_recipients: int = 100  # recipients one merged link stanza may list (constrained profile)
    fan_out_bytes: int = 4 * 1024 * 1024  # copies x wire size one merged link stanza may fan out into


@dataclass(frozen=True)
class Carried:
    """A parcel on the link and its bytes, serialised once when it was handed over (a ``Merged`` parcel under
    the constrained profile: several parcels, one link stanza)."""

    parcel: object
    data: bytes


def top_element(element):
    """A copy of ``element`` without children: enough to address a bounce and write an audit record."""
    copied = domish.Element((element.uri, element.name), defaultUri=element.defaultUri)
    copied.attributes = dict(element.attributes)
    return copied


def retained(parcel):
    """What the link keeps of a parcel (of each one of a ``Merged`` parcel), as ``retained_one``."""
    if isinstance(parcel, Merged):
        return Merged(tuple(retained_one(each) for each in parcel.parcels))
    return retained_one(parcel)


def retained_one(parcel):
    """What the link keeps of a parcel once its bytes exist: its stanzas cut to their top elements,
    the one its ticket keeps for judging again too (the link judges again from the bytes).

    A parsed stanza costs up to ~80 times its wire size; the buffer is bounded
    by the wire size, so it must not hold the trees."""
    changes = {name: top_element(value) for name in ("stanza", "original")
               if isinstance(value := getattr(parcel, name, None), domish.Element)}
    ticket = getattr(parcel, "ticket", None)
    if dataclasses.is_dataclass(ticket) and isinstance(getattr(ticket, "stanza", None), domish.Element):
        changes["ticket"] = dataclasses.replace(ticket, stanza=top_element(ticket.stanza))
    if not changes:
        return parcel
    if dataclasses.is_dataclass(parcel):
        return dataclasses.replace(parcel, **changes)
    kept = copy.copy(parcel)
    for name, value in changes.items():
        setattr(kept, name, value)
    return kept


class Link:
    _machine = MethodicalMachine()

    def __init__(self, owner, own_name: str, peer_name: str, clock, settings: LinkSettings = LinkSettings(),
                 session: str | None = None, stanza_bytes: int = ParserLimits().stanza_bytes, constrained=None):
        """``constrained``: the constrained profile's pieces (guard.edges.link.constrained.ConstrainedLink), or None."""
        self.owner = owner
        self.own_name = own_name
        self.peer_name = peer_name
        self.clock = clock
        self.settings = settings
        self.stanza_bytes = stanza_bytes  # the most one stanza may take on the wire (the peer's parser limit)
        self.outbox = Outbox(settings.buffer_stanzas, session, settings.buffer_bytes)
        self.inbox = Inbox()
        self.stream = None
        self.connections = 0
        self.bounced = 0
        self.refused_by_peer = 0
        self.in_doubt = 0
        self.held = False  # this half's own side is congested: the link is not read
        self.held_for_memory = False  # the guard's memory budget is spent: the link is read, its stanzas not taken
        self._deadline = None
        self._ticker = None
        self._ack_asked_at: float | None = None
        self._last_request = 0.0
        self._written_since_request = 0
        self.constrained = constrained
        self.schedule = constrained.new_schedule(settings) if constrained is not None else None
        self._pacer = None
        self._charged = (None, 0)  # (connection, its bytes out already charged to the bearer's rate)
        self._bytes_in_seen = (None, 0)  # (connection, its bytes in at the last tick)
        self._held_ack_at = float("-inf")  # when a held half last told the peer its count
        self._counted_held = 0  # bytes in the buffer and the schedule the owner counts as held (its memory budget)
        self.profile_dropped = 0  # presence stripped or superseded under the constrained profile
        self.answered_too_late = 0  # IQs answered at once (they could not be answered across the bearer in time)
        self.expired = 0  # stanzas that waited past max_wait for the bearer

    # -- the owner's verbs --------------------------------------------------

    def start(self) -> None:
        """Start counting the time the link is down."""
        self._start()

    def send(self, parcel) -> None:
        """Carry ``parcel.stanza`` to the peer half: exactly once, or bounce it."""
        if self.schedule is not None:
            self._offer(parcel)
            return
        data = self._serialised(parcel, parcel.stanza)
        if data is not None:
            try:
                self._offered(Carried(retained(parcel), data))
            finally:
                self._count_held()

    def _serialised(self, parcel, element) -> bytes | None:
        """``element`` as the link writes it, or None once ``parcel`` is given up (too large, not writable)."""
        try:
            return serialise(element, max_bytes=self.stanza_bytes).encode("utf-8")
        except OversizedStanza:
            log.info("link: a stanza larger than {limit} bytes is not carried", limit=self.stanza_bytes)
            self._give_up(parcel, REFUSED_CONDITION, TOO_LARGE)
        except Exception as problem:  # noqa: BLE001 - what cannot be written is not carried
            log.error("link: a stanza could not be serialised: {problem!r}", problem=problem)
            self._give_up(parcel, "internal-server-error", NOT_WRITABLE)
        return None

    def hold(self) -> None:
        """Stop reading the peer (and so stop acknowledging it) until ``release``: this half's side is congested."""
        if not self.inbox.counting:
            return  # draining: nothing read is counted or passed on, and acknowledgements must still be read
        if not self.held:
            self.held = True
            log.info("link: this half's side is congested; not reading {peer}", peer=self.peer_name)
        if self.stream is not None:
            self.stream.pause_reading()

    def release(self) -> None:
        """Read the peer again."""
        if self.held:
            self.held = False
            log.info("link: reading {peer} again", peer=self.peer_name)
            self._ack_asked_at = None  # acknowledgements could not be read meanwhile: the clock starts again
        if self.stream is not None:
            self.stream.resume_reading()

    def hold_for_memory(self) -> None:
        """The guard's memory budget is spent: take no new stanza from the peer (it keeps them), but go on
        reading, so that its acknowledgements free what this link's buffer holds (part of that budget)."""
        if not self.inbox.counting or self.held_for_memory:
            return  # draining: nothing read is counted anyway
        self.held_for_memory = True
        self.inbox.stop_taking()
        log.info("link: the memory budget is spent; taking no stanza from {peer}", peer=self.peer_name)

    def release_for_memory(self) -> None:
        """Take the peer's stanzas again.  If one was passed over on this connection, nothing after it on the same
        connection can be counted: the connection is reset, and the peer resends from what this half counted."""
        if not self.held_for_memory:
            return
        self.held_for_memory = False
        self.inbox.take_again()
        log.info("link: taking stanzas from {peer} again", peer=self.peer_name)
        if self.inbox.passed_over and self.inbox.counting and self.stream is not None:
            # Not from inside the stream's own callbacks (an acknowledgement may be what freed the budget).
            self.clock.callLater(0, self._reset_passed_over, self.stream)

    def _reset_passed_over(self, stream) -> None:
        if stream is self.stream and self.inbox.passed_over and self.inbox.counting and not self.held_for_memory:
            log.info("link: resetting the connection to {peer}: it resends what was not taken", peer=self.peer_name)
            stream.close("reset", "stanzas were not taken while the memory budget was spent")

    def rejudge_unwritten(self, judge) -> None:
        """Pass every stanza never written through ``judge(carried)``: the bytes to carry instead, or None
        when the owner has settled it (bounced, dropped, referred).  Used when the policies change.
        Stanzas already written were judged by the old policy: they are never written again (a new
        connection would resend them unjudged); the peer's next <resume/> settles each one."""
        self.outbox.freeze()
        if self.schedule is not None:
            self._rejudge_scheduled(judge)
        try:
            for carried in self.outbox.take_unwritten():
                try:
                    data = judge(carried)
                except Exception as problem:  # noqa: BLE001 - a judgement that fails lets nothing through
                    log.error("link: judging a waiting stanza again failed: {problem!r}", problem=problem)
                    self._give_up(carried.parcel, "internal-server-error", NOT_WRITABLE)
                    continue
                if data is not None:
                    self._keep(Carried(carried.parcel, data))
            if self.stream is not None and self.state_name == "up":
                self._write_unsent()
        finally:
            self._count_held()

    def _rejudge_scheduled(self, judge) -> None:
        """The constrained profile: every parcel waiting in the bearer schedule is judged again and offered again
        (what the judge lets through, parsed from the bytes it returns), in the order it waited."""
        from guard.edges.release import reparse_stanza

        limits = ParserLimits(stanza_bytes=self.stanza_bytes)
        items = self.schedule.take_all()  # everything it holds, to be offered again
        self._count_held()
        for item in items:
            for parcel in item.parcels:
                try:
                    data = judge(Carried(parcel, serialise(parcel.stanza).encode("utf-8")))
                    stanza = reparse_stanza(data.decode("utf-8"), limits) if data is not None else None
                except Exception as problem:  # noqa: BLE001 - a judgement that fails lets nothing through
                    log.error("link: judging a scheduled stanza again failed: {problem!r}", problem=problem)
                    self._give_up(parcel, "internal-server-error", NOT_WRITABLE)
                    continue
                if data is None:
                    continue  # settled by the owner
                if stanza is None:
                    self._give_up(parcel, "internal-server-error", NOT_WRITABLE)
                    continue
                offered = self._offer(_with_stanza(parcel, stanza))
                if offered is not None and offered.item is not None:
                    # Judged again, not offered anew: max_wait counts from its first offer.
                    offered.item.offered_at = min(offered.item.offered_at, item.offered_at)
        self._pace()  # the pacer wakes for the earliest expiry again

    def drain(self) -> None:
        """The half begins to stop: take nothing more from the peer, bounce what was never written,
        and ask the peer to acknowledge the rest while there is time."""
        self.inbox.stop_counting()
        self.held_for_memory = False  # stopped counting covers it, and nothing is reset from now on
        if self.held:
            self.release()  # nothing read now is counted, so nothing piles up; acknowledgements can be read
        unwritten = self.outbox.take_unwritten()
        self._count_held()
        for carried in unwritten:
            self._give_up(carried.parcel, "remote-server-timeout", LINK_STOPPING)
        self._give_up_scheduled("remote-server-timeout", LINK_STOPPING)
        if self.stream is not None and self.state_name == "up" and self.outbox.unacknowledged:
            self._ask_for_ack()

    def waiting_on_peer(self) -> int:
        """Stanzas a live connection may still settle (the half waits for them within its shutdown grace)."""
        return len(self.outbox) if self.stream is not None and self.state_name == "up" else 0

    def stop(self) -> None:
        """Settle everything waiting and close the connection."""
        self._stop()

    def describe(self) -> dict:
        return {
            "state": self.state_name,
            "peer": self.peer_name,
            "peer_fingerprint": self.stream.peer_fingerprint if self.stream is not None else None,
            "queued": self.outbox.queued,
            "unacknowledged": self.outbox.unacknowledged,
            "in_doubt": self.outbox.in_doubt,
            "buffer_bytes": self.outbox.bytes,
            "held": self.held or self.held_for_memory,
            "held_for_memory": self.held_for_memory,
            "received": self.inbox.received,
            "duplicates_dropped": self.inbox.duplicates,
            "connections": self.connections,
            "bounced": self.bounced,
            "refused_by_peer": self.refused_by_peer,
            "settled_in_doubt": self.in_doubt,
            **({} if self.schedule is None else {
                "scheduled": self.schedule.queued_stanzas, "scheduled_bytes": self.schedule.queued_bytes, "dropped_by_profile": self.profile_dropped,
                "answered_too_late": self.answered_too_late, "expired": self.expired}),
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
        settlement = self.outbox.resume_from(resume)
        self._count_held()
        if settlement.delivered or not self.outbox.entries:
            self._progressed()
        self._settle(settlement.delivered)
        for carried in settlement.refused:
            self._give_up(carried.parcel, "remote-server-timeout", LINK_DOWN)
        for carried in settlement.in_doubt:
            self._report_in_doubt(carried.parcel)

    def stanza_arrived(self, stream, element, size) -> None:
        if stream is not self.stream:
            raise LinkFault("conflict", "this connection was replaced")
        if self.inbox.accept():
            try:
                copies = self._arrived_copies(element, size)
            except StanzaNotTaken as refusal:
                log.warn("link: refusing the peer's stanza {n}: {text}", n=self.inbox.expected - 1, text=refusal.text)
                self.inbox.take_back()
                raise
            try:
                for each in copies:
                    self.owner.link_stanza_received(each, size)
            except Exception as problem:  # noqa: BLE001 - what was not taken is never acknowledged
                log.failure("link: this half could not take the peer's stanza {n}", n=self.inbox.expected - 1)
                self.inbox.take_back()
                raise StanzaNotTaken("internal-server-error", "this half could not take the stanza") from problem

    def _arrived_copies(self, element, size) -> list:
        """The stanzas one received link stanza stands for: under the constrained profile, its addresses expanded
        and a merged message fanned out (one copy per recipient); otherwise the stanza itself."""
        if self.constrained is None:
            return [element]
        expanded = self.constrained.read_form(element)
        return fan_out(expanded, self.settings.fan_out_recipients, self.settings.fan_out_bytes, size)

    def acknowledged(self, stream, received: int) -> None:
        if stream is not self.stream:
            raise LinkFault("conflict", "this connection was replaced")
        self._ack_asked_at = None
        settled = self.outbox.acknowledge(received)
        self._count_held()
        if settled:
            self._progressed()
        self._settle(settled)

    def peer_refused(self, stream, sequence: int) -> None:
        """The peer closed the connection because it could not take our stanza ``sequence``: settle it, never resend it."""
        if stream is not self.stream:
            return
        settlement = self.outbox.refuse(sequence)
        self._count_held()
        if settlement is None:
            log.warn("link: the peer refused stanza {n}, which is not one waiting for it", n=sequence)
            return
        self._progressed()
        self._settle(settlement.delivered)
        for carried in settlement.refused:
            self.refused_by_peer += 1
            log.warn("link: the peer half refused stanza {n}; bouncing it", n=sequence)
            self._give_up(carried.parcel, REFUSED_CONDITION, PEER_REFUSED)

    def received_count(self) -> int:
        return self.inbox.received

    def expected_sequence(self) -> int | None:
        """The number of the peer's stanza being read now (None before its <resume/>)."""
        return self.inbox.expected

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
        "``down_deadline`` seconds since a loss, and no connection made progress."

    @_machine.input()
    def _stop(self):
        "The half stops."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _start_deadline(self):
        # Started by the first loss; a reconnection does not reset it, progress does.
        if self._deadline is None or not self._deadline.active():
            self._deadline = self.clock.callLater(self.settings.down_deadline, self._deadline_passed)

    @_machine.output()
    def _keep_offered(self, carried):
        self._keep(carried)

    @_machine.output()
    def _write_offered(self, carried):
        self._write_unsent()

    @_machine.output()
    def _write_waiting(self, stream):
        self._write_unsent()
        if self.schedule is not None:
            self._pace()

    @_machine.output()
    def _bounce(self, carried):
        self._give_up(carried.parcel, "remote-server-timeout", LINK_DOWN)

    @_machine.output()
    def _bounce_stopping(self, carried):
        self._give_up(carried.parcel, "remote-server-timeout", LINK_STOPPING)

    @_machine.output()
    def _give_up_unwritten(self):
        """The deadline: what the peer cannot have bounces; what it may have is frozen for its next <resume/>."""
        self._deadline = None
        unwritten = self.outbox.take_unwritten()
        self.outbox.freeze()
        self._count_held()
        if unwritten or self.outbox.in_doubt:
            log.warn("link without progress for {t}s: bouncing {n} waiting stanzas; {d} written ones wait for "
                     "the peer's next resume", t=self.settings.down_deadline, n=len(unwritten), d=self.outbox.in_doubt)
        for carried in unwritten:
            self._give_up(carried.parcel, "remote-server-timeout", LINK_DOWN)
        self._give_up_scheduled("remote-server-timeout", LINK_DOWN)

    @_machine.output()
    def _settle_everything(self):
        self._cancel_deadline()
        self._give_up_scheduled("remote-server-timeout", LINK_STOPPING)
        if self._pacer is not None and self._pacer.active():
            self._pacer.cancel()
        settlement = self.outbox.take_all()
        self._count_held()
        for carried in settlement.refused:
            self._give_up(carried.parcel, "remote-server-timeout", LINK_STOPPING)
        for carried in settlement.in_doubt:
            self._report_in_doubt(carried.parcel)

    @_machine.output()
    def _adopt(self, stream):
        previous, self.stream = self.stream, stream
        if previous is not None:
            previous.close("conflict", "replaced by a newer connection")
        self.connections += 1
        self.inbox.connection_over()
        first = self.outbox.rewind()
        seen = self.inbox.peer_session
        stream.write(wire.resume(self.outbox.session, first, seen, self.inbox.received))
        if self.held:
            stream.pause_reading()
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

    def _keep(self, carried) -> None:
        if self.outbox.add(carried, len(carried.data)) is None:
            self._give_up(carried.parcel, "resource-constraint", BUFFER_FULL)

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
        self.stream.write(wire.ACK_REQUEST)
        if self._ack_asked_at is None:
            # Under the constrained profile the request reaches the peer only after the bearer has carried
            # what was written before it (a long stanza takes minutes at 1,200 bit/s): the timeout counts from then.
            self._ack_asked_at = self._last_request + self._bearer_backlog()

    def _bearer_backlog(self) -> float:
        """Seconds the bearer needs for what this half wrote to it (0 on the standard link): the schedule's debt, and
        what the connection wrote that is not charged yet (stanzas written again after a reconnection)."""
        if self.schedule is None:
            return 0.0
        counter = getattr(self.stream, "byte_count", None)
        stream, charged = self._charged
        uncharged = counter.bytes_out - (charged if stream is self.stream else 0) if counter is not None else 0
        uncharged_seconds = max(0, uncharged) * 8.0 / self.schedule.rate_bits_per_second
        return self.schedule.backlog_seconds(self.clock.seconds()) + uncharged_seconds

    def _peer_bytes_arrived(self) -> bool:
        """Whether the connection delivered bytes from the peer since the last tick (the constrained profile: the
        peer's answer may wait on the bearer behind a long stanza of its own, whose bytes show the peer is there)."""
        counter = getattr(self.stream, "byte_count", None)
        if self.schedule is None or counter is None:
            return False
        seen, self._bytes_in_seen = self._bytes_in_seen, (self.stream, counter.bytes_in)
        return seen[0] is self.stream and counter.bytes_in > seen[1]

    def _settle(self, settled) -> None:
        for carried in settled:
            for parcel in parcels_of(carried.parcel):
                self.owner.link_delivered(parcel)

    def _give_up(self, parcel, condition, text) -> None:
        for each in parcels_of(parcel):
            self.bounced += 1
            self.owner.link_undeliverable(each, condition, text)

    def _report_in_doubt(self, parcel) -> None:
        for each in parcels_of(parcel):
            self.in_doubt += 1
            self.owner.link_in_doubt(each)

    # -- the constrained profile: the bearer schedule decides what is written next --------

    def _offer(self, parcel):
        """Hand a parcel to the bearer schedule (or settle it now: stripped, superseded, refused, too late); what the
        schedule said (None when the link settled it before asking)."""
        try:
            return self._offer_to_schedule(parcel)
        finally:
            self._count_held()

    def _count_held(self) -> None:
        """Tell the owner how many bytes the link holds now: its retransmission buffer (until the peer acknowledges,
        refuses or the link settles each stanza) and, under the constrained profile, the schedule (until written,
        then in the buffer: each byte counted once).  They count in the guard's memory budget (past it, no feeder
        is read), as what waits in an S2S queue does."""
        holding = self.outbox.bytes + (self.schedule.queued_bytes if self.schedule is not None else 0)
        change, self._counted_held = holding - self._counted_held, holding
        if change > 0 and hasattr(self.owner, "count_held"):
            self.owner.count_held(change)
        elif change < 0 and hasattr(self.owner, "count_freed"):
            self.owner.count_freed(-change)

    def _offer_to_schedule(self, parcel):
        state = self.state_name
        if state == "stopped":
            self._give_up(parcel, "remote-server-timeout", LINK_STOPPING)
            return
        if state == "down_too_long":
            self._give_up(parcel, "remote-server-timeout", LINK_DOWN)
            return
        stanza = parcel.stanza
        if carries_link_elements(stanza):
            log.warn("link: a stanza holding the link's own elements is not carried")
            self._give_up(parcel, REFUSED_CONDITION, NOT_WRITABLE)
            return
        data = self._serialised(parcel, stanza)
        if data is None:
            return
        size = len(data)
        from guard.core.constrained import schedule

        # Turns within a class are by account (the bare JID of ``from``): resources of one user share its turn.
        account = (stanza.getAttribute("from") or "").partition("/")[0]
        offered = self.schedule.offer(schedule.Outgoing(parcel, stanza, size, account,
                                                        stanza.getAttribute("to") or "",
                                                        self.schedule.classify(stanza)),
                                      self.clock.seconds())
        for superseded in offered.superseded:
            self._drop_by_profile(superseded, "superseded", PRESENCE_SUPERSEDED)
        outcome = offered.outcome
        if outcome == schedule.STRIPPED:
            self._drop_by_profile(parcel, "stripped", PRESENCE_STRIPPED)
        elif outcome == schedule.REFUSED and offered.reason == schedule.UNKNOWN_TYPE:
            self._give_up(parcel, REFUSED_CONDITION, UNKNOWN_TYPE)
        elif outcome == schedule.REFUSED:
            log.info("link: the bearer schedule is full ({reason}); bouncing a stanza", reason=offered.reason)
            self._give_up(parcel, "resource-constraint", BUFFER_FULL)
        elif outcome == schedule.TOO_LATE:
            self.answered_too_late += 1
            self._give_up(parcel, "remote-server-timeout", IQ_TOO_LATE)
        self._pace()
        return offered

    def _drop_by_profile(self, parcel, why: str, text: str) -> None:
        self.profile_dropped += 1
        self.owner.link_dropped_by_profile(parcel, why, text)

    def _pace(self) -> None:
        """Write what the bearer's rate allows now, one stanza per write; bounce what waited past max_wait (and
        IQs that can no longer be answered in time); ask again when the schedule says."""
        if self._pacer is not None and self._pacer.active():
            self._pacer.cancel()
        self._pacer = None
        if self.schedule is None or self.state_name == "stopped":
            return
        try:
            self._write_due()
        finally:
            self._count_held()

    def _write_due(self) -> None:
        """Bounce what waited too long, write what the rate allows now, and set the pacer for the next time."""
        now = self.clock.seconds()
        for item in self.schedule.expired(now):
            self.expired += len(item.parcels)
            for parcel in item.parcels:
                self._give_up(parcel, "remote-server-timeout", WAITED_TOO_LONG)
        wake_at = self.schedule.next_expiry()
        self._charge_own_bytes(now)
        while self.stream is not None and self.state_name == "up":
            due = self.schedule.next_due(now)
            if due.item is None:
                wake_at = due.wake_at
                break
            self._write_queued(due.item, now)
        if wake_at is not None:
            self._pacer = self.clock.callLater(max(0.0, wake_at - now), self._pace)

    def _write_queued(self, item, now) -> None:
        """Number and write one item the schedule let go (a merged groupchat message lists its recipients)."""
        parcels = tuple(item.parcels)
        parcel = parcels[0] if len(parcels) == 1 else Merged(parcels)
        try:
            element = item.element
            if len(item.recipients) > 1:
                element = with_recipients(element, item.recipients)
            written = self.constrained.written_form(element)
        except Exception as problem:  # noqa: BLE001 - what cannot be written is not carried (each copy bounces once)
            log.error("link: a scheduled stanza could not be written: {problem!r}", problem=problem)
            self._give_up(parcel, "internal-server-error", NOT_WRITABLE)
            return
        data = self._serialised(parcel, written)
        if data is None:
            return
        carried = Carried(retained(parcel), data)
        if self.outbox.add(carried, len(data)) is None:
            self._give_up(parcel, "resource-constraint", BUFFER_FULL)
            return
        self._charge_own_bytes(now)
        counter = getattr(self.stream, "byte_count", None)
        before = counter.bytes_out if counter is not None else 0
        self._write_unsent()
        if counter is not None:
            self.schedule.wrote(item, counter.bytes_out - before, now)  # what it really cost the bearer
            self._charged = (self.stream, counter.bytes_out)

    def _charge_own_bytes(self, now) -> None:
        """Charge the bearer's rate with what the connection wrote besides scheduled stanzas (header, resume,
        acknowledgements, stanzas written again after a reconnection)."""
        counter = getattr(self.stream, "byte_count", None)
        if counter is None:
            return
        stream, charged = self._charged
        if stream is not self.stream:
            charged = 0
        if counter.bytes_out > charged:
            self.schedule.spend(counter.bytes_out - charged, now)
        self._charged = (self.stream, counter.bytes_out)

    def _give_up_scheduled(self, condition: str, text: str) -> None:
        """Everything the schedule holds is given up (the down deadline, draining, stopping)."""
        if self.schedule is None:
            return
        items = self.schedule.take_all()
        self._count_held()
        for item in items:
            for parcel in item.parcels:
                self._give_up(parcel, condition, text)

    def _progressed(self) -> None:
        """The peer settled something on this connection (or has nothing waiting): the deadline is off."""
        self._cancel_deadline()

    def _tick(self) -> None:
        self._ticker = self.clock.callLater(self.settings.ack_interval, self._tick)
        if self.stream is None:
            return
        if self.held:
            # Nothing from the peer is read, so its acknowledgements cannot
            # be awaited; tell it (truthfully) what we have counted, so that
            # it keeps the connection while our side is congested.  Under the
            # constrained profile, a few times per ack_timeout is enough (every
            # byte costs the bearer; the peer counts arriving bytes as progress).
            now = self.clock.seconds()
            if self.schedule is None or now - self._held_ack_at >= self.settings.ack_timeout / 3:
                self._held_ack_at = now
                self.stream.write(wire.ack(self.inbox.received))
            return
        now = self.clock.seconds()
        if self._peer_bytes_arrived() and self._ack_asked_at is not None:
            self._ack_asked_at = max(self._ack_asked_at, now)  # the peer is there: its answer is on the way
        if self._ack_asked_at is not None and now - self._ack_asked_at >= self.settings.ack_timeout:
            log.warn("link: no acknowledgement for {t}s; dropping the connection", t=self.settings.ack_timeout)
            self.stream.close("connection-timeout", "acknowledgements stopped")
            return
        if self.outbox.unacknowledged and (self.schedule is None or self._ack_asked_at is None):
            # Under the constrained profile a request waits for its answer before the next one: every <r/> and
            # its <a/> cost the bearer, and the answer to the first covers what was written before it.
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
    down.upon(_offered, enter=down, outputs=[_keep_offered])
    down.upon(_authenticated, enter=up, outputs=[_now_up, _adopt, _write_waiting])
    down.upon(_deadline_passed, enter=down_too_long, outputs=[_now_down_too_long, _give_up_unwritten])
    down.upon(_stop, enter=stopped, outputs=[_now_stopped, _settle_everything, _close_stream])
    down.upon(_lost, enter=down, outputs=[])
    up.upon(_offered, enter=up, outputs=[_keep_offered, _write_offered])
    up.upon(_authenticated, enter=up, outputs=[_adopt, _write_waiting])
    up.upon(_lost, enter=down, outputs=[_now_down, _forget_stream, _start_deadline])
    up.upon(_stop, enter=stopped, outputs=[_now_stopped, _settle_everything, _close_stream])
    up.upon(_start, enter=up, outputs=[])
    # Connected but nothing settled since the loss that started the deadline.
    up.upon(_deadline_passed, enter=up, outputs=[_give_up_unwritten])
    down_too_long.upon(_offered, enter=down_too_long, outputs=[_bounce])
    down_too_long.upon(_authenticated, enter=up, outputs=[_now_up, _adopt, _write_waiting])
    down_too_long.upon(_stop, enter=stopped, outputs=[_now_stopped, _settle_everything, _close_stream])
    down_too_long.upon(_start, enter=down_too_long, outputs=[])
    down_too_long.upon(_deadline_passed, enter=down_too_long, outputs=[])
    down_too_long.upon(_lost, enter=down_too_long, outputs=[])
    stopped.upon(_offered, enter=stopped, outputs=[_bounce_stopping])
    stopped.upon(_authenticated, enter=stopped, outputs=[_refuse_stream])
    stopped.upon(_lost, enter=stopped, outputs=[])
    stopped.upon(_deadline_passed, enter=stopped, outputs=[])
    stopped.upon(_stop, enter=stopped, outputs=[])
    stopped.upon(_start, enter=stopped, outputs=[])


def _with_stanza(parcel, stanza):
    """``parcel`` carrying ``stanza`` instead (a stanza judged again)."""
    if dataclasses.is_dataclass(parcel):
        return dataclasses.replace(parcel, stanza=stanza)
    changed = copy.copy(parcel)
    changed.stanza = stanza
    return changed


@implementer(ICarrier)
class LinkCarrier:
    """
    The pair link as the carrier of everything this half sends to the far
    side (``pairs``: every (own domain, far domain) pair).  The link settles
    each parcel with its owner (``link_delivered``, ``link_undeliverable``,
    ``link_in_doubt``); it is never congested toward the peer: its bounded
    buffer bounces what does not fit.
    """

    def __init__(self, link: Link, pairs):
        self.link = link
        self.pairs = frozenset(pairs)

    def carry(self, parcel):
        self.link.send(parcel)

    def bounce_waiting(self, condition, text):
        """Drain: nothing more is taken from the peer; what was never written bounces (the link's own text)."""
        self.link.drain()

    def waiting(self) -> int:
        return self.link.waiting_on_peer()

    def shut_down(self):
        self.link.stop()

    def describe(self) -> dict:
        return self.link.describe()


class LinkFeeder:
    """
    The pair link as the feeder of every (far domain, own domain) pair: it
    is not read while a pair toward one of this half's servers is congested,
    and takes no stanza while the memory budget is spent (it is read then, for
    the acknowledgements that free its own buffer); it takes stanzas again
    once the last reason is released.
    """

    def __init__(self, link: Link, pairs):
        self.link = link
        self.authenticated_pairs = frozenset(pairs)
        self.reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        self.reasons.add(reason)
        self._apply()

    def release(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        self._apply()

    def _apply(self) -> None:
        """A congested pair stops the link being read.  The memory budget alone does not: what the link's own buffer
        holds is part of that budget, and only the peer's acknowledgements, read from the link, free it; so the link
        is read and its stanzas are not taken (``Link.hold_for_memory``)."""
        memory = MEMORY_HOLD in self.reasons
        if memory and not self.link.held_for_memory:
            self.link.hold_for_memory()
        if self.reasons - {MEMORY_HOLD}:
            if not self.link.held:
                self.link.hold()
        elif self.link.held:
            self.link.release()
        if not memory and self.link.held_for_memory:
            self.link.release_for_memory()
