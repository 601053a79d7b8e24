"""
The books: every stanza the guard accepts is accounted for exactly once, as
delivered, bounced or dropped.  ``balanced`` says whether they add up once
nothing is in flight.  The books observe the settlement core
(guard.core.settlement), which keeps the exactly-once invariant: they only
count what it tells them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from guard.core.settlement import SettlementObserver


@dataclass
class Books(SettlementObserver):
    """The counts of a guard's settlements, by outcome and by the rule that bounced or dropped."""

    accepted: int = 0
    delivered: int = 0
    bounced: int = 0
    dropped: int = 0
    drop_reasons: Counter = field(default_factory=Counter)
    bounce_reasons: Counter = field(default_factory=Counter)

    def accept(self):
        self.accepted += 1

    def deliver(self):
        self.delivered += 1

    def bounce(self, reason: str):
        self.bounced += 1
        self.bounce_reasons[reason] += 1

    def drop(self, reason: str):
        self.dropped += 1
        self.drop_reasons[reason] += 1

    # -- as an observer of settlement (guard.core.settlement.ISettlementObserver)

    def stanza_accepted(self, ticket):
        self.accepted += 1

    def stanza_delivered(self, event):
        self.delivered += 1

    def stanza_bounced(self, event):
        self.bounce(event.rule)

    def stanza_dropped(self, event):
        self.drop(event.rule)

    @property
    def settled(self) -> int:
        return self.delivered + self.bounced + self.dropped

    @property
    def in_flight(self) -> int:
        return self.accepted - self.settled

    def balanced(self) -> bool:
        return self.in_flight == 0

    def summary(self) -> dict:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "bounced": self.bounced,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "drop_reasons": dict(self.drop_reasons),
            "bounce_reasons": dict(self.bounce_reasons),
        }


@dataclass
class HeldBytes:
    """
    The bytes of every stanza the guard holds (waiting in a relay queue or for
    the release authority), counted from the wire size the parser reported,
    against a budget.  ``take`` says when the total reaches the budget (stop
    reading input); ``give`` says when it falls to the low-water mark again
    (read again).  No I/O: the relay acts on the answers.
    """

    budget: int
    low_water: int
    held: int = 0
    peak: int = 0
    over: bool = False

    @classmethod
    def for_budget(cls, budget: int) -> "HeldBytes":
        """A ledger whose low-water mark is three quarters of ``budget``."""
        return cls(budget, budget * 3 // 4)

    def take(self, amount: int) -> bool:
        """Count ``amount`` more bytes held; True when this reached the budget."""
        self.held += amount
        self.peak = max(self.peak, self.held)
        if not self.over and self.held >= self.budget:
            self.over = True
            return True
        return False

    def give(self, amount: int) -> bool:
        """Count ``amount`` bytes no longer held; True when this fell to the low-water mark."""
        self.held -= amount
        if self.over and self.held <= self.low_water:
            self.over = False
            return True
        return False

    def summary(self) -> dict:
        return {"held": self.held, "peak": self.peak, "budget": self.budget, "over": self.over}
