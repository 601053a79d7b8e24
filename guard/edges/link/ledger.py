"""
The counting behind "nothing lost, nothing doubled": pure objects, no I/O.

``Outbox`` is the sending half's bounded retransmission buffer: every stanza
handed to the link gets the next sequence number of this process's outgoing
session and stays until the peer acknowledges it, refuses it, or it is
given up on (the down deadline, the half stopping): ``Settlement`` says how
each one ended, exactly once.  ``Inbox`` is the receiving half's counter:
it knows which sequence number the next stanza on the current connection
carries and refuses the ones it has counted before.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from dataclasses import dataclass, field

from .wire import MAX_COUNTER, Resume


def new_session() -> str:
    """A fresh outgoing session name (one per process start)."""
    return secrets.token_hex(12)


class LinkFault(Exception):
    """The peer's counters contradict ours; the connection must be closed with ``condition``."""

    def __init__(self, condition: str, text: str):
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text


class StanzaNotTaken(LinkFault):
    """This half could not take the peer's stanza now being read: it is not counted, and the peer is told
    (by the stanza's number in the stream error) to settle it as refused, never to resend it."""


@dataclass
class Entry:
    sequence: int
    parcel: object
    size: int = 0  # bytes the parcel takes on the wire (what the byte bound counts)


@dataclass
class Settlement:
    """What one piece of news from the peer settles: each parcel exactly once, oldest first."""

    delivered: list = field(default_factory=list)  # the peer counted them
    refused: list = field(default_factory=list)  # the peer never counted them, and never will
    in_doubt: list = field(default_factory=list)  # written, and nobody can tell whether the peer counted them

    def __bool__(self) -> bool:
        return bool(self.delivered or self.refused or self.in_doubt)


class Outbox:
    """Stanzas handed to the link and not yet acknowledged by the peer, in order.

    Bounded twice: at most ``capacity`` entries and at most ``capacity_bytes``
    bytes of serialised stanzas (the sum of the sizes given to ``add``).

    Three kinds of entry, always in this order (oldest first):
    written at least once and not yet acknowledged (the peer may have them),
    then never written anywhere (``unwritten``: the peer cannot have them).
    Entries up to ``frozen_through`` are written ones that are never written
    again (the down deadline passed while they were in doubt): the peer's
    next ``<resume/>`` settles each of them exactly.
    """

    def __init__(self, capacity: int, session: str | None = None, capacity_bytes: int | None = None):
        if capacity < 1:
            raise ValueError("the retransmission buffer needs room for at least one stanza")
        if capacity_bytes is not None and capacity_bytes < 1:
            raise ValueError("the retransmission buffer needs room for at least one byte")
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.session = session or new_session()
        self.entries: deque[Entry] = deque()
        self.bytes = 0  # sum of the sizes of the entries
        self.next_sequence = 1  # the number the next stanza added gets
        self.acknowledged = 0  # every sequence number up to this one is settled
        self.sent_up_to = 0  # highest sequence written on the current connection
        self.highest_sent = 0  # highest sequence ever written
        self.frozen_through = 0  # written entries up to this number are never written again

    def __len__(self) -> int:
        return len(self.entries)

    # The entries always hold consecutive sequence numbers (added at the
    # end, settled from the front, unwritten ones taken from the end), so the
    # counts below and ``unsent`` need no scan of the whole buffer.

    @property
    def unacknowledged(self) -> int:
        """Stanzas written at least once and not yet acknowledged."""
        if not self.entries:
            return 0
        return max(0, min(self.highest_sent, self.next_sequence - 1) - self.entries[0].sequence + 1)

    @property
    def queued(self) -> int:
        """Stanzas not yet written on the current connection."""
        return min(len(self.entries), self.next_sequence - 1 - self.sent_up_to)

    @property
    def in_doubt(self) -> int:
        """Written entries that wait for the peer's next <resume/> (frozen at the down deadline)."""
        if not self.entries:
            return 0
        return max(0, self.frozen_through - self.entries[0].sequence + 1)

    def fits(self, size: int) -> bool:
        """Whether one more entry of ``size`` bytes is within both bounds."""
        if len(self.entries) >= self.capacity or self.next_sequence > MAX_COUNTER:
            return False
        return self.capacity_bytes is None or self.bytes + size <= self.capacity_bytes

    def add(self, parcel, size: int = 0) -> int | None:
        """Keep ``parcel`` (``size`` bytes on the wire); its sequence number, or None when it does not fit."""
        if not self.fits(size):
            return None
        sequence = self.next_sequence
        self.next_sequence += 1
        self.entries.append(Entry(sequence, parcel, size))
        self.bytes += size
        return sequence

    def rewind(self) -> int:
        """A new connection starts: everything unacknowledged and not frozen is to be sent again; the first number sent."""
        start = self.entries[0].sequence - 1 if self.entries else self.next_sequence - 1
        self.sent_up_to = max(start, min(self.frozen_through, self.next_sequence - 1))
        return self.sent_up_to + 1

    def unsent(self):
        """The entries not yet written on this connection, oldest first."""
        waiting = list(itertools.islice(reversed(self.entries), self.queued))
        waiting.reverse()
        return waiting

    def mark_sent(self, sequence: int) -> None:
        if sequence != self.sent_up_to + 1:
            raise ValueError(f"stanza {sequence} written out of order (after {self.sent_up_to})")
        self.sent_up_to = sequence
        self.highest_sent = max(self.highest_sent, sequence)

    def _settle_through(self, sequence: int) -> list:
        settled = []
        while self.entries and self.entries[0].sequence <= sequence:
            entry = self.entries.popleft()
            self.bytes -= entry.size
            settled.append(entry.parcel)
        self.acknowledged = max(self.acknowledged, sequence)
        return settled

    def acknowledge(self, received: int) -> list:
        """The peer has counted every stanza up to ``received``: the parcels this settles, oldest first."""
        if received > self.highest_sent:
            raise LinkFault("undefined-condition", f"acknowledged {received}, only {self.highest_sent} were sent")
        if received <= self.acknowledged:
            # Nothing new, or stale: stanzas given up on while the link was
            # down count as settled before the peer ever hears of them.
            return []
        return self._settle_through(received)

    def resume_from(self, resume: Resume) -> Settlement:
        """The peer's <resume/>: what it has seen of our session settles; and so does every frozen entry."""
        settlement = Settlement()
        if resume.seen_session == self.session:
            settlement.delivered = self.acknowledge(resume.received)
            # Frozen entries the peer has not counted are never written
            # again: our <resume/> on this connection skips their numbers.
            settlement.refused = self._settle_through(self.frozen_through)
        else:
            # A new incarnation of the peer: what the old one did with the
            # frozen entries is unknown, and they are not written again.
            settlement.in_doubt = self._settle_through(self.frozen_through)
        return settlement

    def refuse(self, sequence: int) -> Settlement | None:
        """The peer refused stanza ``sequence`` (counting everything before it): None when that makes no sense."""
        if not self.acknowledged < sequence <= self.highest_sent:
            return None
        if not self.entries or self.entries[0].sequence > sequence:
            return None
        settlement = Settlement(delivered=self._settle_through(sequence - 1))
        settlement.refused = self._settle_through(sequence)
        return settlement

    def take_unwritten(self) -> list:
        """Take out every entry never written anywhere (the peer cannot have them); their numbers are reused."""
        taken = []
        while self.entries and self.entries[-1].sequence > self.highest_sent:
            entry = self.entries.pop()
            self.bytes -= entry.size
            taken.append(entry.parcel)
        taken.reverse()
        self.next_sequence = max(self.highest_sent, self.acknowledged) + 1
        self.sent_up_to = min(self.sent_up_to, self.next_sequence - 1)
        return taken

    def freeze(self) -> None:
        """Written entries are never written again; the peer's next <resume/> settles them."""
        self.frozen_through = max(self.frozen_through, self.highest_sent)

    def take_all(self) -> Settlement:
        """Give up on every entry (the half stops): unwritten ones are refused, written ones are in doubt."""
        unwritten = self.take_unwritten()
        in_doubt = self._settle_through(self.next_sequence - 1)
        self.highest_sent = self.sent_up_to = self.next_sequence - 1
        return Settlement(refused=unwritten, in_doubt=in_doubt)


class Inbox:
    """What this half has received of the peer's outgoing session."""

    def __init__(self):
        self.peer_session: str | None = None
        self.received = 0  # every peer sequence number up to this one has been counted
        self.expected: int | None = None  # sequence of the next stanza on this connection
        self.duplicates = 0
        self.skipped = 0  # numbers the peer gave up on (bounced) before sending them to us
        self.counting = True  # False once this half takes nothing more (it is stopping)
        self.taking = True  # False while this half's memory budget is spent: new stanzas stay the peer's
        self.passed_over = False  # a stanza on this connection was not counted: nothing after it on it can be
        self.not_counted = 0  # stanzas that arrived and were not counted (the peer keeps and resends them)

    def resume(self, resume: Resume) -> None:
        """The peer's <resume/> opens its numbering on this connection."""
        if resume.session != self.peer_session:
            # A new incarnation of the peer: nothing of it has been counted.
            self.peer_session = resume.session
            self.received = resume.next_sequence - 1
        elif resume.next_sequence > self.received + 1:
            self.skipped += resume.next_sequence - 1 - self.received
            self.received = resume.next_sequence - 1
        self.expected = resume.next_sequence

    def accept(self) -> bool:
        """A stanza arrived: True when it is new, False when it was counted before (a duplicate)."""
        if self.expected is None:
            raise LinkFault("undefined-condition", "a stanza before <resume/>")
        sequence = self.expected
        if sequence > MAX_COUNTER:
            raise LinkFault("resource-constraint", "the sequence numbers are exhausted")
        self.expected += 1
        if sequence <= self.received:
            self.duplicates += 1
            return False
        if not self.counting or not self.taking or self.passed_over:
            # Not counted, so not acknowledged: the peer still holds it, and
            # nothing after it on this connection can be counted either.
            self.not_counted += 1
            self.passed_over = True
            return False
        self.received = sequence
        return True

    def take_back(self) -> None:
        """The stanza ``accept`` just counted was not taken after all: it is neither counted nor acknowledged."""
        self.expected -= 1
        self.received = self.expected - 1

    def stop_counting(self) -> None:
        """Take nothing more: every later stanza stays the peer's to resend (to this half's next run)."""
        self.counting = False

    def stop_taking(self) -> None:
        """Count no new stanza until ``take_again`` (this half's memory budget is spent); acknowledgements are
        still read.  What arrives meanwhile stays the peer's, resent on the next connection."""
        self.taking = False

    def take_again(self) -> None:
        """Count new stanzas again; one passed over on this connection leaves a gap only a new connection closes."""
        self.taking = True

    def connection_over(self) -> None:
        self.expected = None
        self.passed_over = False
