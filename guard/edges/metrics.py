"""
What the metrics count as it happens, in plain integers (the registry and
its collector, ``guard.app.metrics``, read them at scrape time):

- ``StanzaCounts``, an ``ISettlementObserver``: stanzas by direction, kind
  and verdict, and by the rule that decided; the latency from arrival (the
  ticket's ``arrived``, on the relay's clock) to the write, per direction;
  our bounces lost and settlements refused;
- ``StreamEvents``, the listener every stream tells (``Side.events``, the
  link's ``stream_events``; ``guard.edges.lifecycle``): streams connected
  now, closures by condition, TLS and authentication failures by reason,
  and the bytes of streams that are over (the live ones are read at scrape
  time from their ``ByteCount``);
- ``ReleaseCounts``, the release authority's answer listener: outcomes and
  the latency of its answers.

Why events and not only a scrape-time read: a closure, a failed handshake or
the bytes of a stream that is gone cannot be read later from anything; what
lives on (queues, books, streams open) is read at scrape time instead.

Every label is bounded: directions and sides come from the configuration,
kinds from the XMPP vocabulary, rules from the policies in force and the
guard's own ``guard:``/``xep0258:`` rules, conditions and reasons from fixed
sets; anything else is counted as "other".  Per stanza the cost is a tuple
key and a dictionary increment (and one bisect for a delivery).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from types import SimpleNamespace

from zope.interface import implementer

from guard.core.settlement import ISettlementObserver, SettlementObserver
from guard.core.vocabulary import STANZA_NAMES, STREAM_ERROR_CONDITIONS

OTHER = "other"

# Seconds from arrival to write: a relay on loopback takes a fraction of a millisecond; a stanza that
# waits for its stream to be set up, or for the release authority, takes seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RELEASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# How a stream can end besides a stream error the guard sent (guard.edges.lifecycle).
STREAM_ENDINGS = frozenset({"closed", "peer-error", "connection-lost", "dropped", "cut-off"})
CLOSE_CONDITIONS = STREAM_ERROR_CONDITIONS | STREAM_ENDINGS
TLS_FAILURES = frozenset({"handshake", "timeout", "untrusted-certificate"})
AUTHENTICATION_FAILURES = frozenset({"certificate-refused", "dialback-denied", "dialback-unsettled",
                                     "no-mechanism", "timeout"})
# Which timer of a stream, when it fires, is a failure of what.
TIMER_FAILURES = {"tls": ("tls", "timeout"), "auth": ("authentication", "timeout")}
RELEASE_OUTCOMES = ("released", "denied", "busy")

# The direction of an event that names none (never expected: every settled stanza has a ticket).
UNKNOWN_DIRECTION = SimpleNamespace(source="unknown", destination="unknown")


def bounded(value, allowed) -> str:
    """``value`` when it is one of ``allowed``, else "other"."""
    return value if value in allowed else OTHER


class Buckets:
    """A histogram in plain numbers: a count per bucket (upper bounds ``bounds``, then +Inf) and the sum."""

    def __init__(self, bounds=LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound as Prometheus writes it, observations at or under it), ..., ("+Inf", all)]."""
        total, buckets = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets


@implementer(ISettlementObserver)
class StanzaCounts(SettlementObserver):
    """Hears every settlement event; counts decisions by (direction, kind, verdict) and (direction, rule, verdict)."""

    def __init__(self, clock, rules=()):
        self.clock = clock
        # Per stanza only plain tuples of strings are counted (source and destination, not the Direction, whose
        # hash is computed at each use); the labels are made at scrape time (``decisions``, ``rules``, ``latency``).
        self._decisions: dict = {}  # (source, destination, kind, verdict) -> stanzas
        self._rule_decisions: dict = {}  # (source, destination, rule, verdict) -> stanzas
        self._latency: dict = {}  # (source, destination) -> Buckets, arrival to write
        self.bounces_lost = 0
        self.settled_twice = 0
        self._rules = frozenset(rules)
        # When (seconds on the clock) a stanza was last accepted, and last delivered; None before the first
        # (SNMP's applLastInboundActivity and applLastOutboundActivity).
        self.last_accepted: float | None = None
        self.last_delivered: float | None = None

    def rules_in_force(self, rules) -> None:
        """The rule ids of the policies now in force (their ids become label values; others are "other")."""
        self._rules = frozenset(rules)

    # -- ISettlementObserver --------------------------------------------------

    def stanza_accepted(self, ticket):
        arrived = ticket.arrived
        self.last_accepted = arrived if arrived is not None else self.clock.seconds()

    def stanza_passed(self, event):
        self._decided(event, "passed")

    def stanza_bounced(self, event):
        self._decided(event, "bounced")

    def stanza_dropped(self, event):
        self._decided(event, "dropped")

    def stanza_delivered(self, event):
        now = self.last_delivered = self.clock.seconds()
        ticket = event.ticket
        if ticket is None or ticket.arrived is None:
            return
        key = (ticket.direction.source, ticket.direction.destination)
        buckets = self._latency.get(key)
        if buckets is None:
            buckets = self._latency[key] = Buckets(LATENCY_BUCKETS)
        buckets.observe(max(0.0, now - ticket.arrived))

    def bounce_lost(self, event):
        self.bounces_lost += 1

    def settled_twice(self, ticket, attempt):
        self.settled_twice += 1

    # -- what the release authority's listener adds ----------------------------

    def referred(self, kind: str, direction) -> None:
        """A policy referred a stanza to the release authority (it settles later as passed, bounced or dropped)."""
        key = (direction.source, direction.destination, bounded(kind, STANZA_NAMES), "referred")
        self._decisions[key] = self._decisions.get(key, 0) + 1

    # -- reading (at scrape time) -----------------------------------------------

    @property
    def decisions(self) -> Counter:
        """(direction, kind, verdict) -> stanzas."""
        return Counter({(f"{source}->{destination}", kind, verdict): count
                        for (source, destination, kind, verdict), count in self._decisions.items()})

    @property
    def rules(self) -> Counter:
        """(direction, rule, verdict) -> stanzas."""
        return Counter({(f"{source}->{destination}", rule, verdict): count
                        for (source, destination, rule, verdict), count in self._rule_decisions.items()})

    @property
    def latency(self) -> dict[str, Buckets]:
        """direction -> the histogram of seconds from arrival to write."""
        return {f"{source}->{destination}": buckets for (source, destination), buckets in self._latency.items()}

    # -- per stanza ---------------------------------------------------------------

    def _decided(self, event, verdict):
        direction = event.direction
        if direction is None:
            direction = event.ticket.direction if event.ticket is not None else UNKNOWN_DIRECTION
        source, destination = direction.source, direction.destination
        kind = event.stanza.name
        if kind not in STANZA_NAMES:
            kind = OTHER
        key = (source, destination, kind, verdict)
        decisions = self._decisions
        decisions[key] = decisions.get(key, 0) + 1
        rule = event.rule
        if rule not in self._rules:
            rule = self._rule(rule)
        key = (source, destination, rule, verdict)
        rules = self._rule_decisions
        rules[key] = rules.get(key, 0) + 1

    def _rule(self, rule) -> str:
        if rule in self._rules or rule == "default":
            return rule
        if isinstance(rule, str) and rule.startswith(("guard:", "xep0258:")) and len(rule) <= 64:
            return rule  # the guard's own rules: constants, or guard:<a condition of its own>
        return OTHER


class StreamEvents:
    """
    Told by every stream (guard.edges.lifecycle): ``stream_opened``,
    ``stream_closed(condition)``, ``tls_failed(reason)``,
    ``authentication_failed(reason)``, ``timer_fired(name)``.  Keeps the
    streams connected now (read at scrape time) and counts the rest.
    """

    def __init__(self):
        self.live: dict = {}  # the streams connected now (insertion order)
        self.closures: Counter = Counter()  # (side, kind, condition)
        self.tls_failures: Counter = Counter()  # (side, kind, reason)
        self.authentication_failures: Counter = Counter()  # (side, kind, reason)
        self.retired_bytes: Counter = Counter()  # (side, "in"/"out") of streams that are over
        self.opened: Counter = Counter()  # (side, kind)

    def stream_opened(self, stream):
        self.live[stream] = None
        self.opened[(stream_side(stream), stream.stream_kind)] += 1

    def stream_closed(self, stream, condition):
        if self.live.pop(stream, False) is False:
            return  # never told it opened (or told twice it closed): nothing to retire
        side = stream_side(stream)
        self.closures[(side, stream.stream_kind, bounded(condition, CLOSE_CONDITIONS))] += 1
        self.retired_bytes[(side, "in")] += stream.byte_count.bytes_in
        self.retired_bytes[(side, "out")] += stream.byte_count.bytes_out

    def tls_failed(self, stream, reason):
        self.tls_failures[(stream_side(stream), stream.stream_kind, bounded(reason, TLS_FAILURES))] += 1

    def authentication_failed(self, stream, reason):
        key = (stream_side(stream), stream.stream_kind, bounded(reason, AUTHENTICATION_FAILURES))
        self.authentication_failures[key] += 1

    def timer_fired(self, stream, name):
        failure = TIMER_FAILURES.get(name)
        if failure is None:
            return
        what, reason = failure
        if what == "tls":
            self.tls_failed(stream, reason)
        else:
            self.authentication_failed(stream, reason)

    def bytes_by_side(self) -> Counter:
        """(side, "in"/"out") -> bytes of every stream, over or live."""
        total = Counter(self.retired_bytes)
        for stream in self.live:
            side = stream_side(stream)
            total[(side, "in")] += stream.byte_count.bytes_in
            total[(side, "out")] += stream.byte_count.bytes_out
        return total

    def open_streams(self) -> Counter:
        """(side, kind, authentication) -> streams connected now ("none": not authenticated yet)."""
        return Counter((stream_side(stream), stream.stream_kind, stream.authentication or "none")
                       for stream in self.live)


def stream_side(stream) -> str:
    """The side a stream talks to ("link" for the pair link)."""
    side = getattr(stream, "side", None)
    return getattr(side, "name", None) or "link"


class ReleaseCounts:
    """The release authority's listener: outcomes and answer latency; referrals go to ``stanzas``."""

    def __init__(self, stanzas: StanzaCounts):
        self.stanzas = stanzas
        self.outcomes: Counter = Counter()
        self.latency = Buckets(RELEASE_BUCKETS)

    def asked(self, kind, direction):
        self.stanzas.referred(kind, direction)

    def answered(self, outcome, seconds):
        self.outcomes[bounded(outcome, RELEASE_OUTCOMES)] += 1
        self.latency.observe(seconds)
