"""
The carrier whose far side is IRC (``ICarrier``, ``guard.edges.carriers``):
room messages the bridge judged and released leave through the IRC
connections, and each settles exactly once with the owner (the gateway's
settlement, ``guard.app.irc``).

What leaves is never the stanza that arrived: the bridge builds an
``IrcRelease`` (the IRC lines, the FLOT first when the label policy gives
one) from what its label policy released, and that is the parcel's stanza.
Every parcel handed to the IRC connections (all its lines, one message) is
a token the connections report back exactly once: ``sent(token)`` when the
IRC server took it (written, and a checkpoint PONG came back with no error
naming its channel), ``refused(token, reason)`` when the server answered it
with such an error (404 on a moderated channel: bounced, ``forbidden``),
``unconfirmed(token, reason)`` when it was written but the answer never came
(delivered in doubt, audited), ``lost(token, reason)`` when its connection
died before it was written (a netsplit, a kill, a restart).  A lost parcel is
bounced to its XMPP sender with the guard's own text (what IRC said goes to
the log and the audit only): nothing accepted is lost silently.

Bounded in parcels and in bytes (the UTF-8 bytes of the lines waiting to be written): a
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
# What a message the IRC server refused (404 ERR_CANNOTSENDTOCHAN, ...) bounces with.
REFUSED_CONDITION = "forbidden"
# What a parcel the carrier cannot take (full, or nothing to say) bounces with.
FULL_CONDITION = "resource-constraint"
MALFORMED_CONDITION = "internal-server-error"
STOPPING_CONDITION = "service-unavailable"

CONGESTION = "irc-queue"


@dataclass(frozen=True)
class IrcRelease:
    """What leaves for IRC, built by the bridge from what its label policy released: ``lines`` (the FLOT first)
    are texts of at most one IRC line each, said to ``target`` (the channel) on the IRC connection ``connection``
    (the occupant's own, or the bot's relaying it); ``notice``: as NOTICEs."""

    connection: object
    target: str
    lines: tuple[str, ...]
    notice: bool = False

    @property
    def size(self) -> int:
        return sum(len(line.encode("utf-8")) for line in self.lines)


@dataclass(frozen=True)
class CarrierLimits:
    parcels: int = 1000  # parcels waiting for their lines to be written
    bytes: int = 1024 * 1024  # UTF-8 bytes of the lines waiting


@dataclass(frozen=True, eq=False)
class ParcelToken:
    """What the IRC connections report back for one parcel (its identity is the token)."""

    parcel: object = field(repr=False)
    size: int


@implementer(ICarrier)
class IrcCarrier:
    """
    Hands released room messages to the IRC connections and settles each
    with ``owner`` (an ``ICarrierOwner``).  ``say(release, token)`` gives the
    lines of one parcel to the connections: None when taken (then they call
    ``sent(token)`` or ``lost(token, reason)`` on this carrier exactly once),
    or a reason when not taken (then the parcel bounces at once).
    """

    def __init__(self, owner, say, pairs=(), limits: CarrierLimits = CarrierLimits()):
        self.owner = owner
        self._say = say
        self.pairs = tuple(pairs)
        self.limits = limits
        self._waiting: set[ParcelToken] = set()
        self._waiting_bytes = 0
        self._congested = False
        self._stopped = False
        self.counts = {"carried": 0, "delivered": 0, "lost": 0, "refused": 0, "refused_by_irc": 0, "unconfirmed": 0}

    # -- ICarrier --------------------------------------------------------------

    def carry(self, parcel) -> None:
        try:
            self._carry(parcel)
        except Exception:  # noqa: BLE001 - a fault here bounces the parcel: never raises, never silent
            log.failure("irc carrier: a fault while carrying a parcel")
            for token in [token for token in self._waiting if token.parcel is parcel]:
                self._forget(token)
            self.owner.undeliverable(parcel, MALFORMED_CONDITION, "a fault in the IRC carrier")

    def bounce_waiting(self, condition, text) -> None:
        """What was handed over is the connections' to report (within the shutdown grace); nothing else waits."""

    def waiting(self) -> int:
        return len(self._waiting)

    def shut_down(self) -> None:
        """Stop: every parcel still waiting for IRC is settled as undeliverable now; later reports are ignored."""
        self._stopped = True
        for token in list(self._waiting):
            self._forget(token)
            self.owner.undeliverable(token.parcel, STOPPING_CONDITION, "the gateway stopped before IRC took it")

    def describe(self) -> dict:
        return {"kind": "irc", "waiting": len(self._waiting), "waiting_bytes": self._waiting_bytes,
                "congested": self._congested, **self.counts}

    @property
    def waiting_bytes(self) -> int:
        return self._waiting_bytes

    # -- what the IRC connections report --------------------------------------

    def sent(self, token) -> None:
        """Every line of the parcel of ``token`` was written to the IRC server."""
        if self._reported(token):
            self.counts["delivered"] += 1
            self.owner.delivered(token.parcel)

    def refused_by_irc(self, token, reason) -> None:
        """The IRC server answered the parcel of ``token`` with an error naming its channel (``reason``: the
        numeric and channel, for the log and the audit): bounced with the guard's own text."""
        if self._reported(token):
            self.counts["refused_by_irc"] += 1
            self.owner.undeliverable(token.parcel, REFUSED_CONDITION, f"the IRC server refused it: {reason}")

    def unconfirmed(self, token, reason) -> None:
        """The parcel of ``token`` was written but the IRC server's answer never came: delivered in doubt."""
        if self._reported(token):
            self.counts["unconfirmed"] += 1
            self.owner.delivered_unconfirmed(token.parcel, reason)

    def lost(self, token, reason) -> None:
        """The parcel of ``token`` was not (wholly) written (``reason``: IRC's words, for the log and the audit)."""
        if self._reported(token):
            self.counts["lost"] += 1
            self.owner.undeliverable(token.parcel, LOST_CONDITION, reason)

    # -- the steps -------------------------------------------------------------

    def _carry(self, parcel) -> None:
        if self._stopped:
            self.owner.undeliverable(parcel, STOPPING_CONDITION, "the gateway is stopping")
            return
        release = parcel.stanza
        if not isinstance(release, IrcRelease) or not release.lines:
            self.owner.undeliverable(parcel, MALFORMED_CONDITION, "nothing the IRC side can say")
            return
        size = release.size
        if len(self._waiting) + 1 > self.limits.parcels or self._waiting_bytes + size > self.limits.bytes:
            self.counts["refused"] += 1
            if self._waiting:
                self._set_congested(True)
            self.owner.undeliverable(parcel, FULL_CONDITION, "the IRC queue is full")
            return
        parcel = self.owner.judged_again(parcel)
        if parcel is None:
            return
        token = ParcelToken(parcel, size)
        self._waiting.add(token)
        self._waiting_bytes += size
        self.owner.count_held(size)
        self.counts["carried"] += 1
        refusal = self._say(parcel.stanza, token)
        if refusal is not None:
            if self._reported(token):
                self.counts["lost"] += 1
                self.owner.undeliverable(parcel, LOST_CONDITION, f"not taken by the IRC connections: {refusal}")
            return
        if len(self._waiting) >= self.limits.parcels or self._waiting_bytes >= self.limits.bytes:
            self._set_congested(True)

    def _reported(self, token) -> bool:
        """Whether ``token`` is one this carrier waits for (then it waits no more); a second report is logged."""
        if token not in self._waiting:
            log.warn("irc carrier: a report for a parcel it does not wait for ({token!r})", token=token)
            return False
        self._forget(token)
        return True

    def _forget(self, token) -> None:
        self._waiting.discard(token)
        self._waiting_bytes -= token.size
        self.owner.count_freed(token.size)
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
