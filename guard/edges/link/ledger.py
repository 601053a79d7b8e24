"""
The counting behind "nothing lost, nothing doubled": pure objects, no I/O.

``Outbox`` is the sending half's bounded retransmission buffer: every stanza
handed to the link gets the next sequence number of this process's outgoing
session and stays until the peer acknowledges it (or it is bounced because
the link stayed down too long).  ``Inbox`` is the receiving half's counter:
it knows which sequence number the next stanza on the current connection
carries and refuses the ones it has counted before.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from dataclasses import dataclass

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


@dataclass
class Entry:
    sequence: int
    parcel: object


class Outbox:
    """Stanzas handed to the link and not yet acknowledged by the peer, in order."""

    def __init__(self, capacity: int, session: str | None = None):
        if capacity < 1:
            raise ValueError("the retransmission buffer needs room for at least one stanza")
        self.capacity = capacity
        self.session = session or new_session()
        self.entries: deque[Entry] = deque()
        self.next_sequence = 1  # the number the next stanza added gets
        self.acknowledged = 0  # every sequence number up to this one is settled
        self.sent_up_to = 0  # highest sequence written on the current connection
        self.highest_sent = 0  # highest sequence ever written

    def __len__(self) -> int:
        return len(self.entries)

    # The entries always hold consecutive sequence numbers (added at the
    # end, settled from the front, or all given up at once), so the counts
    # below and ``unsent`` need no scan of the whole buffer.

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

    def add(self, parcel) -> int | None:
        """Keep ``parcel``; its sequence number, or None when the buffer is full."""
        if len(self.entries) >= self.capacity or self.next_sequence > MAX_COUNTER:
            return None
        sequence = self.next_sequence
        self.next_sequence += 1
        self.entries.append(Entry(sequence, parcel))
        return sequence

    def rewind(self) -> int:
        """A new connection starts: everything unacknowledged is to be sent again; the first number sent."""
        self.sent_up_to = self.entries[0].sequence - 1 if self.entries else self.next_sequence - 1
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

    def acknowledge(self, received: int) -> list:
        """The peer has counted every stanza up to ``received``: the parcels this settles, oldest first."""
        if received > self.highest_sent:
            raise LinkFault("undefined-condition", f"acknowledged {received}, only {self.highest_sent} were sent")
        if received <= self.acknowledged:
            # Nothing new, or stale: stanzas given up on while the link was
            # down count as settled before the peer ever hears of them.
            return []
        settled = []
        while self.entries and self.entries[0].sequence <= received:
            settled.append(self.entries.popleft().parcel)
        self.acknowledged = received
        return settled

    def resume_from(self, resume: Resume) -> list:
        """The peer's <resume/>: acknowledge what it has seen of our session; the parcels this settles."""
        if resume.seen_session != self.session:
            return []  # the peer has counted nothing of this process's stanzas
        return self.acknowledge(resume.received)

    def take_all(self) -> list:
        """Give up on every waiting stanza (the link stayed down too long); the parcels, oldest first."""
        parcels = [entry.parcel for entry in self.entries]
        self.entries.clear()
        # Their numbers are spent: the next connection resumes after them
        # and the peer skips the gap.
        self.acknowledged = self.highest_sent = self.sent_up_to = self.next_sequence - 1
        return parcels


class Inbox:
    """What this half has received of the peer's outgoing session."""

    def __init__(self):
        self.peer_session: str | None = None
        self.received = 0  # every peer sequence number up to this one has been counted
        self.expected: int | None = None  # sequence of the next stanza on this connection
        self.duplicates = 0
        self.skipped = 0  # numbers the peer gave up on (bounced) before sending them to us

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
        self.received = sequence
        return True

    def connection_over(self) -> None:
        self.expected = None
