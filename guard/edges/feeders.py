"""
Feeders: whatever brings stanzas into the relay (an inbound S2S stream, the
pair link of a half), and which (sender domain, receiver domain) pairs each
one feeds.  Back-pressure goes through them: when a carrier is congested the
feeders of its pairs stop being read, and over the memory budget every
feeder does; a carrier never reaches into them itself.

A feeder has ``hold(reason)`` and ``release(reason)`` (it is read while it
holds no reason) and ``authenticated_pairs``, the pairs it is proven to send
for.  That set may grow after the feeder registers (dialback proves pairs
later), so the registry asks it at each hold instead of copying it.

Reasons name what they wait for ("congested red.example->blue.example",
"waiting for red.example->blue.example", ``MEMORY_HOLD``): a release lifts
only the hold of the same reason, so a feeder held for two pairs is read
again only once both are released.
"""

from __future__ import annotations

# The reason every feeder is held while what the guard holds is over its budget.
MEMORY_HOLD = "memory budget"


def congestion_reason(sender: str, receiver: str) -> str:
    """Why feeders are held while the far server for (sender, receiver) does not read."""
    return f"congested {sender}->{receiver}"


class Feeders:
    """
    The feeders of one side, registered while they are open.  Set-like
    (``add``, ``discard``, iteration, ``len``): an inbound stream adds itself
    when it connects and discards itself when it is gone.
    """

    def __init__(self, members=()):
        self._members: dict[object, None] = dict.fromkeys(members)  # insertion order: holds are applied in it

    def add(self, feeder) -> None:
        self._members[feeder] = None

    def discard(self, feeder) -> None:
        self._members.pop(feeder, None)

    def update(self, feeders) -> None:
        for feeder in feeders:
            self.add(feeder)

    def __iter__(self):
        return iter(list(self._members))  # a copy: holding or closing a feeder may make it leave

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, feeder) -> bool:
        return feeder in self._members

    def feeding(self, pair) -> list:
        """The feeders proven, now, to send for ``pair``."""
        return [feeder for feeder in self if pair in feeder.authenticated_pairs]

    def hold(self, pair, reason: str) -> None:
        """Stop reading every feeder of ``pair`` for ``reason``."""
        for feeder in self.feeding(pair):
            feeder.hold(reason)

    def hold_all(self, reason: str) -> None:
        for feeder in self:
            feeder.hold(reason)

    def release_all(self, reason: str) -> None:
        """Lift ``reason`` from every feeder (one that was not held for it is unaffected)."""
        for feeder in self:
            feeder.release(reason)


class BackPressure:
    """
    The relay's view of who feeds it, by side: a pair's feeders are on the
    side of its sender.  No I/O: holding and releasing are the feeders' verbs.
    """

    def __init__(self, topology):
        self.topology = topology
        self._sides: dict[str, Feeders] = {}

    def attach(self, side_name: str, feeders: Feeders) -> None:
        """``feeders`` bring the stanzas sent from ``side_name``'s domains."""
        self._sides[side_name] = feeders

    def feeders_of(self, side_name: str) -> Feeders:
        feeders = self._sides.get(side_name)
        return feeders if feeders is not None else Feeders()

    def _side_feeders(self, pair) -> Feeders:
        return self.feeders_of(self.topology.side_of(pair[0]))

    def hold(self, pairs, reason: str) -> None:
        """A carrier of ``pairs`` is congested: stop reading the feeders of each pair."""
        for pair in pairs:
            self._side_feeders(pair).hold(pair, reason)

    def release(self, pairs, reason: str) -> None:
        """Lift ``reason`` from every feeder on the side of each pair's sender."""
        for pair in pairs:
            self._side_feeders(pair).release_all(reason)

    def hold_everyone(self, reason: str) -> None:
        for feeders in list(self._sides.values()):
            feeders.hold_all(reason)

    def release_everyone(self, reason: str) -> None:
        for feeders in list(self._sides.values()):
            feeders.release_all(reason)
