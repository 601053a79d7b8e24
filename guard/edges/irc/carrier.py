"""
The carrier whose far side is IRC (``ICarrier``, ``guard.edges.carriers``):
room messages the bridge judged and released leave through the IRC
connections, and each settles exactly once with the owner (the gateway's
settlement, ``guard.app.irc``).

What leaves is never the stanza that arrived: the bridge builds an
``IrcRelease`` (the IRC lines, the FLOT first when the label policy gives
one) from what its label policy released, and that is the parcel's stanza.
Every line handed to the IRC connections is a token the connections report
back exactly once: ``sent(token)`` when it was written to the IRC server,
``lost(token, reason)`` when its connection died first (a netsplit, a kill,
a restart).  A parcel is delivered when all its lines were sent, and
bounced to its XMPP sender with the guard's own text as soon as one of them
is lost (what IRC said goes to the log and the audit only): nothing
accepted is lost silently.

Bounded in parcels and in bytes (the UTF-8 bytes of the lines waiting): a
parcel over either bound is not taken (resource-constraint), and the
carrier says ``congested`` until the waiting lines drain below half of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger
from zope.interface import implementer

from guard.edges.carriers import ICarrier

log = Logger()

# What a lost line bounces with: the IRC side could not take it (a netsplit, a kill, a restart).
LOST_CONDITION = "remote-server-timeout"
# What a parcel the carrier cannot take (full, or nothing to say) bounces with.
FULL_CONDITION = "resource-constraint"
MALFORMED_CONDITION = "internal-server-error"
STOPPING_CONDITION = "service-unavailable"

CONGESTION = "irc-queue"


@dataclass(frozen=True)
class IrcRelease:
    """What leaves for IRC, built by the bridge from what its label policy released: ``lines`` are texts of at
    most one IRC line each, said in ``channel`` of ``network`` by the connection of ``nick`` (the MUC occupant)."""

    bridge: str
    network: str
    channel: str
    nick: str
    lines: tuple[str, ...]
    action: bool = False  # /me: the lines are CTCP ACTIONs

    @property
    def size(self) -> int:
        return sum(len(line.encode("utf-8")) for line in self.lines)


@dataclass(frozen=True)
class CarrierLimits:
    parcels: int = 1000  # parcels waiting for their lines to be written
    bytes: int = 1024 * 1024  # UTF-8 bytes of the lines waiting


@dataclass(eq=False)
class _Waiting:
    """One parcel whose lines the connections hold: how many are not yet reported, and whether one was lost."""

    parcel: object
    size: int
    unreported: set = field(default_factory=set)  # the indexes of the lines handed over and not yet reported
    lost: bool = False
    handing_over: bool = True  # lines are still being handed over: not complete even if all so far were reported


@dataclass(frozen=True, eq=False)
class LineToken:
    """What the connections report back for one line (identity is the token)."""

    waiting: _Waiting = field(repr=False)
    index: int


@implementer(ICarrier)
class IrcCarrier:
    """
    Hands released room messages to the IRC connections and settles each
    with ``owner`` (an ``ICarrierOwner``).  ``say(release, line_index, token)``
    gives one line to the connections, which later call ``sent(token)`` or
    ``lost(token, reason)`` on this carrier exactly once; it raises when the
    line cannot be taken at all (then the parcel bounces at once).
    """

    def __init__(self, owner, say, pairs=(), limits: CarrierLimits = CarrierLimits()):
        self.owner = owner
        self._say = say
        self.pairs = tuple(pairs)
        self.limits = limits
        self._waiting: set[_Waiting] = set()
        self._waiting_bytes = 0
        self._congested = False
        self._stopped = False
        self.counts = {"carried": 0, "delivered": 0, "lost": 0, "refused": 0, "lines": 0}

    # -- ICarrier --------------------------------------------------------------

    def carry(self, parcel) -> None:
        try:
            self._carry(parcel)
        except Exception:  # noqa: BLE001 - a fault here bounces the parcel: never raises, never silent
            log.failure("irc carrier: a fault while carrying a parcel")
            self._give_up(parcel, MALFORMED_CONDITION, "a fault in the IRC carrier")

    def bounce_waiting(self, condition, text) -> None:
        """Lines already handed over are the connections' to report; nothing else waits here."""

    def waiting(self) -> int:
        return len(self._waiting)

    def shut_down(self) -> None:
        """Stop: every parcel still waiting for its lines is settled as undeliverable now."""
        self._stopped = True
        for waiting in list(self._waiting):
            if not waiting.lost:
                self._settle_lost(waiting, STOPPING_CONDITION, "the gateway stopped before IRC took it")
            self._forget(waiting)

    def describe(self) -> dict:
        return {"kind": "irc", "waiting": len(self._waiting), "waiting_bytes": self._waiting_bytes,
                "congested": self._congested, **self.counts}

    @property
    def waiting_bytes(self) -> int:
        return self._waiting_bytes

    # -- what the IRC connections report --------------------------------------

    def sent(self, token) -> None:
        """The line of ``token`` was written to the IRC server."""
        waiting = self._reported(token)
        if waiting is None:
            return
        self.counts["lines"] += 1
        self._complete(waiting)

    def _complete(self, waiting) -> None:
        """Once every line handed over was reported: delivered, or (lost) forgotten."""
        if waiting.unreported or waiting.handing_over or waiting not in self._waiting:
            return
        if waiting.lost:
            self._forget(waiting)
        else:
            self._finish(waiting)
            self.counts["delivered"] += 1
            self.owner.delivered(waiting.parcel)

    def lost(self, token, reason) -> None:
        """The line of ``token`` will never be written (``reason``: IRC's words, for the log and the audit)."""
        waiting = self._reported(token)
        if waiting is None:
            return
        if not waiting.lost:
            self._settle_lost(waiting, LOST_CONDITION, reason)
        self._complete(waiting)

    # -- the steps -------------------------------------------------------------

    def _carry(self, parcel) -> None:
        if self._stopped:
            self._give_up(parcel, STOPPING_CONDITION, "the gateway is stopping")
            return
        release = parcel.stanza
        if not isinstance(release, IrcRelease) or not release.lines:
            self._give_up(parcel, MALFORMED_CONDITION, "nothing the IRC side can say")
            return
        size = release.size
        if len(self._waiting) + 1 > self.limits.parcels or self._waiting_bytes + size > self.limits.bytes:
            self.counts["refused"] += 1
            if self._waiting:
                self._set_congested(True)
            self._give_up(parcel, FULL_CONDITION, "the IRC queue is full")
            return
        parcel = self.owner.judged_again(parcel)
        if parcel is None:
            return
        waiting = _Waiting(parcel, size)
        self._waiting.add(waiting)
        self._waiting_bytes += size
        self.owner.count_held(size)
        self.counts["carried"] += 1
        for index in range(len(release.lines)):
            if waiting.lost:
                break  # the rest is never handed over: the parcel is already bounced
            waiting.unreported.add(index)
            try:
                self._say(release, index, LineToken(waiting, index))
            except Exception as problem:  # noqa: BLE001 - the connections cannot take it: bounce, never silent
                waiting.unreported.discard(index)
                if not waiting.lost:
                    self._settle_lost(waiting, LOST_CONDITION, f"not taken by the IRC connections: {problem}")
        waiting.handing_over = False
        self._complete(waiting)
        if len(self._waiting) >= self.limits.parcels or self._waiting_bytes >= self.limits.bytes:
            self._set_congested(True)

    def _reported(self, token):
        """The parcel ``token`` stands for, once per token; None (logged) for a token reported twice or unknown."""
        waiting = getattr(token, "waiting", None)
        if waiting is None or token.index not in waiting.unreported:
            log.warn("irc carrier: a report for a line it does not wait for ({token!r})", token=token)
            return None
        waiting.unreported.discard(token.index)
        return waiting

    def _settle_lost(self, waiting, condition, reason) -> None:
        waiting.lost = True
        self.counts["lost"] += 1
        self._release_bytes(waiting)
        self.owner.undeliverable(waiting.parcel, condition, reason)

    def _give_up(self, parcel, condition, reason) -> None:
        self.owner.undeliverable(parcel, condition, reason)

    def _release_bytes(self, waiting) -> None:
        """The bytes of a lost parcel no longer count (its remaining reports are only awaited)."""
        if waiting.size:
            self.owner.count_freed(waiting.size)
            self._waiting_bytes -= waiting.size
            waiting.size = 0
        self._maybe_decongest()

    def _finish(self, waiting) -> None:
        self._release_bytes(waiting)
        self._forget(waiting)

    def _forget(self, waiting) -> None:
        self._waiting.discard(waiting)
        self._maybe_decongest()

    def _maybe_decongest(self) -> None:
        if self._congested and len(self._waiting) <= self.limits.parcels // 2 \
                and self._waiting_bytes <= self.limits.bytes // 2:
            self._set_congested(False)

    def _set_congested(self, congested: bool) -> None:
        if congested == self._congested:
            return
        self._congested = congested
        if congested:
            self.owner.congested(self, CONGESTION)
        else:
            self.owner.decongested(self, CONGESTION)
