"""
The books: every stanza the guard accepts is accounted for exactly once, as
delivered, bounced or dropped.  ``balanced`` says whether they add up once
nothing is in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Books:
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
