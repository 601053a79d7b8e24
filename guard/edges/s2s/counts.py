"""
How many inbound streams of a side are open from each address, and how many
send as each domain: kept as streams come, prove domains and go, so that
``connections_per_address`` and ``streams_per_domain`` are checked in
constant time instead of by a walk over every open stream (which made
opening n streams cost n² steps).  No I/O.
"""

from __future__ import annotations

from collections import Counter


class InboundCounts:
    def __init__(self):
        self.from_address: Counter = Counter()  # peer host -> inbound streams open from it
        self.sending_as: Counter = Counter()  # domain -> inbound streams that have proved it (as a sender)

    def connected(self, address) -> None:
        self.from_address[address] += 1

    def disconnected(self, address) -> None:
        self._less(self.from_address, address)

    def proved(self, domain: str) -> None:
        """A stream proved ``domain`` (its first pair with that sender)."""
        self.sending_as[domain] += 1

    def closed_proving(self, domains) -> None:
        """A stream that had proved ``domains`` is gone."""
        for domain in domains:
            self._less(self.sending_as, domain)

    @staticmethod
    def _less(counts: Counter, key) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]  # bounded by what is open now, not by what ever was
