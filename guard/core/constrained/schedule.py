"""
The bearer schedule: which judged stanza the constrained link writes next,
and when, so that the gateway, not the modem, decides what waits.

No I/O and no clock: every method takes ``now`` (seconds, any origin, never
going back), and the caller (the constrained link) writes what ``next_due``
hands it and wakes up at ``wake_at``.  What the schedule decides:

Classes, served strictly in this order:

1. ``priority``: a message carrying its own XEP-0258 ``<securitylabel/>``
   (a direct child, as the policies judge it) or a flash marker: an XEP-0131
   SHIM header named in ``ScheduleLimits.flash_headers`` (default
   ``Urgency: high``; header names and values compared without case, the
   value trimmed).  Presence and IQs stay in their own class whatever they
   carry: a peer that labels its presence cannot jump a roster ahead of chat.
2. ``chat``: every other message but groupchat (chat, normal, headline, error).
3. ``iq``.
4. ``groupchat``: messages of type groupchat.
5. ``presence``.
6. roster bursts: a new presence item (available or unavailable) beyond
   ``roster_burst`` in ``roster_window_seconds`` is held: it goes only when
   nothing else is due, and never faster than ``roster_share`` of the rate
   (a second token bucket), so the rest of the bearer stays free for what
   arrives during the burst.

Within a class, senders (``Outgoing.sender``) take turns, one item each
(round robin); one sender's items keep their order.  Across classes one
order is kept: a message or IQ never overtakes a presence queued before it
that was sent to a full JID with the same bare ``from`` and bare ``to`` (a
MUC join before the first message to the room; a room's occupant presence
before its subject and history to that occupant).  When the message's turn
comes, that presence leaves in its place (it inherits the message's class).
Presence to a bare JID (roster broadcast) holds nothing back.

Rate: a token bucket in bytes, filled at ``rate_bits_per_second / 8`` up to
``burst_bytes`` (default 0).  An item leaves when the balance is not
negative, whatever its size, and is charged its size: the balance may go
negative, and the debt is what the bearer still has to transmit.  So a big
stanza is never starved, the bytes per second equal the rate, and the bearer
holds at most one stanza beyond ``burst_bytes``: a labelled message arriving
waits at most for the stanza on the air (waiting for a stanza's whole size
in tokens before writing it would double its time on a slow bearer).  The
link tells the schedule what it really wrote (``wrote``: compressed sizes,
``spend``: its own acks and keepalives).

Presence modes (``PRESENCE_MODES``):

- ``all``: every presence crosses.
- ``available``: available and unavailable presence cross reduced to their
  attributes (from, to, type, id, xml:lang), their ``<securitylabel/>`` and
  a MUC occupant's ``<x xmlns='http://jabber.org/protocol/muc#user'/>``
  (without it a far-side client never completes a room join) and a join's
  ``<x xmlns='http://jabber.org/protocol/muc'/>`` (a room answers a join
  without it with an error); show, status,
  priority, caps, avatar hashes, idle, nick and everything else stay behind.
  Probes cross (a far server asks for the state after an outage with them).
- ``directed``: available and unavailable presence cross only when ``to`` is a
  full JID (a resource: a MUC join, an occupant's presence, presence sent to
  one resource).  Presence to a bare JID is the broadcast a server sends to
  each roster contact, and it stays behind, as do probes (they ask for
  broadcast presence).
- ``none``: no presence crosses at all, subscription requests included: the
  operator chose a link without presence.

In every mode but ``none``, subscription presence (subscribe, subscribed,
unsubscribe, unsubscribed) and presence errors cross unchanged: they are
rare, small, and a roster breaks without them.  A presence type outside
RFC 6121 is refused (fail closed), as is a message or IQ type outside RFC
6120/6121 (an IQ of an unknown type is no result to carry without a
deadline).  What stays behind is ``stripped``: the caller settles it as
dropped by the link profile.

Coalescing: while an available or unavailable presence from one ``from`` to
one ``to`` waits, a newer one replaces it (the older parcel is returned as
``superseded``).  The newer one takes the older one's place in the queue,
with its own offer time, when the older one was alone in its item (a contact
who changes often is not sent to the back each time).  So after an outage the queue already is the
snapshot: one presence per (from, to), nothing to replay.

Merging: copies of one stanza (a groupchat message, or any presence) from
one ``from``, identical but for ``to``, offered within
``groupchat_merge_seconds`` of the first copy, become one item with one
recipient per copy, in offer order; the item does not leave before that
window closes.  A copy never joins an item if a later item of the same
sender already holds its recipient (no recipient sees two messages swapped).
A merged item's size is the first copy's plus ``RECIPIENTS_WRAPPER_BYTES``
and, per recipient, its JID's UTF-8 length plus ``RECIPIENT_BYTES`` (an
estimate of the link's recipient list; ``wrote`` corrects it).

IQ deadline: an IQ get or set that cannot be answered within
``iq_deadline_seconds`` (the bearer's debt, then every priority, chat and IQ
byte queued ahead of it at the rate, then itself, the round trip, and an
answer as large as the request) is ``too_late`` at offer: answer it now with
an error.  One that becomes late while it waits comes out of ``expired``.
Results and errors are never refused that way.

Bounds: ``queue_stanzas`` stanzas (every copy counts) and ``queue_bytes``
bytes (the sizes of the queued items) are refused at offer with the bound
named; an item that has waited ``max_wait_seconds`` comes out of
``expired(now)`` for the caller to bounce.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twisted.words.xish import domish

from guard.core.policy.elements import child_elements, clone, text_of
from guard.core.policy.labels import outer_securitylabels
from guard.core.vocabulary import DEFAULT_TYPES, KIND_TYPES, MUC_NS, MUC_USER_NS, SHIM_NS, STANZA_NAMESPACES, XML_LANG


# The classes, in the order they are served; HELD (roster bursts) goes after all of them.
KINDS = ("priority", "chat", "iq", "groupchat", "presence")
HELD = "held"
LANES = KINDS + (HELD,)
# The classes whose queued bytes go before an IQ offered now.
AHEAD_OF_IQ = ("priority", "chat", "iq")

PRESENCE_MODES = ("all", "available", "directed", "none")
STATE_PRESENCE = frozenset({"available", "unavailable"})
SUBSCRIPTION_PRESENCE = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
REDUCED_PRESENCE_ATTRIBUTES = ("from", "to", "type", "id", XML_LANG)

# What offer says.
QUEUED = "queued"
MERGED = "merged"
STRIPPED = "stripped"
REFUSED = "refused"
TOO_LATE = "too_late"

# Why (the schedule's own constant words).
FULL_STANZAS = "queue-stanzas"
FULL_BYTES = "queue-bytes"
UNKNOWN_TYPE = "stanza-type"  # a type RFC 6120/6121 does not define, for any kind of stanza
UNKNOWN_PRESENCE_TYPE = UNKNOWN_TYPE
PRESENCE_MODE = "presence-mode"
IQ_DEADLINE = "iq-deadline"

RECIPIENTS_WRAPPER_BYTES = 64
RECIPIENT_BYTES = 14

DEFAULT_FLASH_HEADERS = (("Urgency", "high"),)

# A balance this close to zero is zero (times computed from a debt land on it up to rounding).
_EPSILON_BYTES = 1e-6


@dataclass(frozen=True)
class ScheduleLimits:
    """The bounds and knobs of one bearer schedule (see the module's text for each)."""

    # Enforced by offer: stanzas waiting (each copy of a merged item counts) and
    # the bytes the waiting items will cost the bearer; past either, REFUSED.
    queue_stanzas: int = 2000
    queue_bytes: int = 1024 * 1024
    # Enforced by expired: seconds an item may wait for the bearer.
    max_wait_seconds: float = 600.0
    # New presence items per window that are not held; the held ones use at
    # most roster_share of the rate (0 < share <= 1).
    roster_burst: int = 8
    roster_window_seconds: float = 10.0
    roster_share: float = 0.5
    # Enforced by offer (TOO_LATE) and expired: how long a requester waits for
    # an IQ answer, and the bearer's round trip spent on it.
    iq_deadline_seconds: float = 60.0
    round_trip_seconds: float = 2.0
    # Bytes the rate may save up while the bearer is idle (0: none).
    burst_bytes: int = 0
    # XEP-0131 headers (name, value) that make a message flash (priority).
    flash_headers: tuple = DEFAULT_FLASH_HEADERS

    def __post_init__(self):
        for name in ("queue_stanzas", "queue_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.roster_burst, int) or isinstance(self.roster_burst, bool) or self.roster_burst < 0:
            raise ValueError(f"roster_burst must be an integer of at least 0, not {self.roster_burst!r}")
        if not isinstance(self.burst_bytes, int) or isinstance(self.burst_bytes, bool) or self.burst_bytes < 0:
            raise ValueError(f"burst_bytes must be an integer of at least 0, not {self.burst_bytes!r}")
        for name in ("max_wait_seconds", "roster_window_seconds", "iq_deadline_seconds"):
            if not _positive_number(getattr(self, name)):
                raise ValueError(f"{name} must be a positive number, not {getattr(self, name)!r}")
        if not _number(self.round_trip_seconds) or self.round_trip_seconds < 0:
            raise ValueError(f"round_trip_seconds must be a number of at least 0, not {self.round_trip_seconds!r}")
        if not _positive_number(self.roster_share) or self.roster_share > 1:
            raise ValueError(f"roster_share must be above 0 and at most 1, not {self.roster_share!r}")
        headers = self.flash_headers
        if isinstance(headers, (str, bytes)) or not isinstance(headers, (tuple, list)) or not all(
            isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(part, str) and part.strip() for part in pair)
            for pair in headers
        ):
            raise ValueError("flash_headers must be a list of [header name, value] pairs of non-empty strings")
        # as read from a config file (lists), kept as tuples
        object.__setattr__(self, "flash_headers", tuple((name, value) for name, value in headers))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _positive_number(value) -> bool:
    return _number(value) and value > 0


@dataclass(frozen=True)
class Outgoing:
    """
    One judged stanza offered to the bearer.  ``parcel`` is the caller's and
    comes back in ``Queued.parcels`` or ``Offered.superseded``; ``size`` is
    its size on the link in bytes; ``sender`` is whom fairness is counted by
    (the link gives the bare JID of ``from``: one turn per account, whatever
    its resources); ``receiver`` is its ``to``, for the caller's
    records: the schedule reads addresses from the element itself.  ``kind``
    is ``classify(element)``.
    """

    parcel: object
    element: domish.Element
    size: int
    sender: str
    receiver: str
    kind: str


@dataclass(eq=False)
class Queued:
    """
    What waits for the bearer and leaves as one write: ``element`` (the copy
    for ``recipients[0]``), ``size`` (bytes it costs the bearer, recipients
    included), and one parcel and one recipient (a ``to``) per copy, in offer
    order.  With more than one recipient the link writes the element once
    with its recipient list.  The other fields are the schedule's.
    """

    parcels: list
    element: domish.Element
    size: int
    recipients: list
    kind: str
    sender: str
    offered_at: float
    due_at: float  # not before its merge window closes
    lane: str
    copy_size: int = 0
    copies: list = field(default_factory=list, repr=False)
    merge_key: tuple | None = field(default=None, repr=False)
    answer_by: float | None = None  # an IQ get/set: the last moment it can leave and be answered in time
    state_presence: bool = False
    waits_for: list = field(default_factory=list, repr=False)  # directed presence that must leave first
    queued: bool = field(default=True, repr=False)
    share_charged: bool = field(default=False, repr=False)


@dataclass(frozen=True)
class Offered:
    """
    What became of an offer: ``outcome`` is QUEUED (``item`` is its new item,
    or the slot it took over), MERGED (``item`` is the item it joined),
    STRIPPED (the presence mode keeps it off the bearer: settle it as
    dropped), REFUSED (``reason`` names the bound) or TOO_LATE (an IQ that
    cannot be answered in time: answer it now with an error).
    ``superseded``: parcels of older presence this one replaced, to be
    settled as dropped.
    """

    outcome: str
    item: Queued | None = None
    superseded: tuple = ()
    reason: str | None = None


@dataclass(frozen=True)
class Due:
    """``item``: write it now (ask again at once); else ``wake_at``: when to ask (and call ``expired``) again, None if nothing waits."""

    item: Queued | None
    wake_at: float | None


class ByteBucket:
    """A token bucket in bytes, filled at ``bytes_per_second`` up to ``capacity``, whose balance may go negative."""

    def __init__(self, bytes_per_second: float, capacity: float) -> None:
        self.bytes_per_second = bytes_per_second
        self.capacity = capacity
        self.balance = float(capacity)
        self._filled_at: float | None = None

    def fill(self, now: float) -> None:
        if self._filled_at is None:
            self._filled_at = now
            return
        if now <= self._filled_at:  # a clock that went back fills nothing
            return
        self.balance = min(self.capacity, self.balance + (now - self._filled_at) * self.bytes_per_second)
        self._filled_at = now

    def ready_at(self, now: float) -> float:
        """When the balance is back to zero (``now`` if it is)."""
        self.fill(now)
        if self.balance >= -_EPSILON_BYTES:
            return now
        return now + (-self.balance) / self.bytes_per_second

    def charge(self, size: float, now: float) -> None:
        """Take ``size`` bytes (a negative size gives them back, never above capacity)."""
        self.fill(now)
        self.balance = min(self.capacity, self.balance - size)


def is_flash(element: domish.Element, flash_headers=DEFAULT_FLASH_HEADERS) -> bool:
    """Whether a stanza carries, as a direct child, an XEP-0131 ``<headers/>`` with one of ``flash_headers``."""
    wanted = {(name.strip().lower(), value.strip().lower()) for name, value in flash_headers}
    if not wanted:
        return False
    for headers in child_elements(element):
        if headers.uri != SHIM_NS or headers.name != "headers":
            continue
        for header in child_elements(headers):
            if header.uri != SHIM_NS or header.name != "header":
                continue
            name = header.attributes.get("name")
            if isinstance(name, str) and (name.strip().lower(), text_of(header).strip().lower()) in wanted:
                return True
    return False


def classify(element: domish.Element, flash_headers=DEFAULT_FLASH_HEADERS) -> str:
    """
    The class of a stanza: "priority" (a message with its own security label
    or a flash header), "chat", "iq", "groupchat" or "presence".  Anything
    but a stanza raises ValueError.
    """
    if element.uri not in STANZA_NAMESPACES:
        raise ValueError(f"not a stanza: an element in namespace {element.uri!r}")
    if element.name == "message":
        if outer_securitylabels(element) or is_flash(element, flash_headers):
            return "priority"
        if _type_of(element) == "groupchat":
            return "groupchat"
        return "chat"
    if element.name == "iq":
        return "iq"
    if element.name == "presence":
        return "presence"
    raise ValueError(f"not a stanza: <{element.name}/>")


_KIND_ELEMENTS = {"priority": "message", "chat": "message", "groupchat": "message", "iq": "iq", "presence": "presence"}


def _type_of(element: domish.Element) -> str:
    value = element.attributes.get("type")
    if value is None:
        return DEFAULT_TYPES.get(element.name, "")
    return value


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


def merged_size(copy_size: int, recipients) -> int:
    """What an item of one copy of ``copy_size`` bytes and these recipients costs the bearer."""
    if not recipients:
        return 0
    if len(recipients) == 1:
        return copy_size
    return copy_size + RECIPIENTS_WRAPPER_BYTES + sum(_utf8_length(jid) + RECIPIENT_BYTES for jid in recipients)


def reduced_presence(element: domish.Element) -> domish.Element:
    """
    A new presence built from what the ``available`` mode lets cross: the
    attributes in REDUCED_PRESENCE_ATTRIBUTES, the ``<securitylabel/>``, the
    MUC occupant ``<x/>`` and the MUC join ``<x/>`` (copied), nothing else.
    """
    reduced = domish.Element((element.uri, "presence"), defaultUri=element.defaultUri)
    for name in REDUCED_PRESENCE_ATTRIBUTES:
        if name in element.attributes:
            reduced.attributes[name] = element.attributes[name]
    labels = outer_securitylabels(element)
    for child in child_elements(element):
        if any(child is label for label in labels) or (child.uri in (MUC_USER_NS, MUC_NS) and child.name == "x"):
            reduced.addChild(clone(child))
    return reduced


def _payload_key(element: domish.Element) -> str:
    """The stanza as XML with its ``to`` left out: equal for copies of one stanza sent to several recipients."""
    copy = clone(element)
    copy.attributes.pop("to", None)
    return copy.toXml()


class BearerSchedule:
    """
    The queue in front of one constrained bearer (see the module's text):
    ``offer`` each judged stanza, write what ``next_due`` hands out, bounce
    what ``expired`` returns.
    """

    def __init__(
        self,
        rate_bits_per_second: float,
        presence_mode: str,
        groupchat_merge_seconds: float,
        limits: ScheduleLimits = ScheduleLimits(),
    ) -> None:
        if not _positive_number(rate_bits_per_second):
            raise ValueError(f"rate_bits_per_second must be a positive number, not {rate_bits_per_second!r}")
        if presence_mode not in PRESENCE_MODES:
            raise ValueError(f"presence_mode must be one of {', '.join(PRESENCE_MODES)}, not {presence_mode!r}")
        if not _number(groupchat_merge_seconds) or groupchat_merge_seconds < 0:
            raise ValueError(f"groupchat_merge_seconds must be a number of at least 0, not {groupchat_merge_seconds!r}")
        if not isinstance(limits, ScheduleLimits):
            raise TypeError("limits must be a ScheduleLimits")
        self.rate_bits_per_second = rate_bits_per_second
        self.presence_mode = presence_mode
        self.merge_seconds = float(groupchat_merge_seconds)
        self.limits = limits
        self._bytes_per_second = rate_bits_per_second / 8.0
        self._bearer = ByteBucket(self._bytes_per_second, limits.burst_bytes)
        self._burst_share = ByteBucket(self._bytes_per_second * limits.roster_share, 0)
        # lane -> sender -> that sender's items in order; a dict's order is the round robin's turn order
        self._lanes: dict[str, dict[str, deque]] = {lane: {} for lane in LANES}
        self._lane_bytes = {lane: 0 for lane in LANES}
        self._open_groups: dict[tuple, Queued] = {}  # merge key -> the item still gathering copies
        self._presence_slots: dict[tuple, Queued] = {}  # (from, to) of available/unavailable -> its item
        self._directed: dict[tuple, Queued] = {}  # (bare from, bare to) -> last presence item sent to a full JID
        # when the last roster_burst + 1 new presence items were made (enough to tell whether the window holds more)
        self._new_presence_times: deque = deque(maxlen=limits.roster_burst + 1)
        self._stanzas = 0
        self._bytes = 0

    # -- what the caller reads ---------------------------------------------------

    @property
    def queued_stanzas(self) -> int:
        """Stanzas waiting (every copy of a merged item counts)."""
        return self._stanzas

    @property
    def queued_bytes(self) -> int:
        """Bytes the waiting items will cost the bearer."""
        return self._bytes

    def classify(self, element: domish.Element) -> str:
        """``classify`` with this schedule's flash headers."""
        return classify(element, self.limits.flash_headers)

    def snapshot_after_outage(self) -> list:
        """
        The presence items waiting, in queue order.  Nothing to do after an
        outage: coalescing kept one available/unavailable presence per (from,
        to) while the bearer was down, so what waits is already the snapshot.
        """
        return [item for lane in ("presence", HELD) for items in self._lanes[lane].values() for item in items]

    def take_all(self) -> list:
        """Take out every waiting item, class by class (the link stopping, or judging all again after a reload)."""
        items = self.queued_items()
        for item in items:
            self._remove(item)
        return items

    def queued_items(self) -> list:
        """Every waiting item, class by class (for a status page; nothing leaves)."""
        return [item for lane in LANES for items in self._lanes[lane].values() for item in items]

    # -- offer ---------------------------------------------------------------

    def offer(self, outgoing: Outgoing, now: float) -> Offered:
        """Take one judged stanza, or say why not (see ``Offered``)."""
        element, size, kind = outgoing.element, outgoing.size, outgoing.kind
        if kind not in _KIND_ELEMENTS or element.name != _KIND_ELEMENTS[kind]:
            raise ValueError(f"kind {kind!r} does not fit <{element.name}/>")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive integer, not {size!r}")

        if _type_of(element) not in KIND_TYPES[element.name]:
            return Offered(REFUSED, reason=UNKNOWN_TYPE)  # fail closed: no class, deadline or mode is guessed for it
        is_presence = element.name == "presence"
        state_presence = False
        if is_presence:
            presence_type = _type_of(element)
            if not self._presence_crosses(element, presence_type):
                return Offered(STRIPPED, reason=PRESENCE_MODE)
            state_presence = presence_type in STATE_PRESENCE
            if state_presence and self.presence_mode == "available":
                reduced = reduced_presence(element)
                size = max(1, size - (_utf8_length(element.toXml()) - _utf8_length(reduced.toXml())))
                element = reduced

        sender_jid = element.attributes.get("from", "")
        to = element.attributes.get("to", "")

        answer_by = None
        if element.name == "iq" and _type_of(element) in ("get", "set"):
            answer_by = now + self.limits.iq_deadline_seconds - self.limits.round_trip_seconds \
                - 2 * size / self._bytes_per_second
            ahead = sum(self._lane_bytes[lane] for lane in AHEAD_OF_IQ)
            leaves_at = self._bearer.ready_at(now) + ahead / self._bytes_per_second
            if leaves_at > answer_by:
                return Offered(TOO_LATE, reason=IQ_DEADLINE)

        older = self._presence_slots.get((sender_jid, to)) if state_presence and to else None

        group = None
        merge_key = None
        mergeable = (is_presence or _type_of(element) == "groupchat") and bool(to) and self.merge_seconds > 0
        if mergeable:
            merge_key = (kind, outgoing.sender, sender_jid, _payload_key(element))
            group = self._open_group(merge_key, now)
            if group is not None:
                left = _without(group.recipients, to) if group is older else group.recipients
                if not left or to in left or self._later_item_holds(group, to):
                    group = None

        # The bounds, as they will be once the older presence is replaced and this one is in.
        stanzas = self._stanzas + 1 - (1 if older is not None else 0)
        total = self._bytes
        if older is not None:
            total += merged_size(older.copy_size, _without(older.recipients, to)) - older.size
        if group is not None:
            before = _without(group.recipients, to) if group is older else group.recipients
            total += merged_size(group.copy_size, before + [to]) - merged_size(group.copy_size, before)
        else:
            total += size
        if stanzas > self.limits.queue_stanzas:
            return Offered(REFUSED, reason=FULL_STANZAS)
        if total > self.limits.queue_bytes:
            return Offered(REFUSED, reason=FULL_BYTES)

        superseded = ()
        slot = None
        if older is not None:
            superseded = (self._take_recipient(older, to),)
            if not older.recipients:
                slot = older
        if group is not None:
            self._add_copy(group, outgoing.parcel, element, to)
            if state_presence:
                self._presence_slots[(sender_jid, to)] = group
            if slot is not None and slot is not group:
                self._remove(slot)
            self._note_order(group, element, is_presence, sender_jid, to)
            return Offered(MERGED, group, superseded)

        if slot is not None:
            item = self._take_over(slot, outgoing.parcel, element, size, to, merge_key, now)
        else:
            lane = kind
            if state_presence and self._beyond_roster_burst(now):
                lane = HELD
            item = Queued(
                parcels=[outgoing.parcel], element=element, size=size, recipients=[to], kind=kind,
                sender=outgoing.sender, offered_at=now, due_at=now + (self.merge_seconds if mergeable else 0.0),
                lane=lane, copy_size=size, copies=[element], merge_key=merge_key, answer_by=answer_by,
                state_presence=state_presence,
            )
            self._lanes[lane].setdefault(outgoing.sender, deque()).append(item)
            self._count(item, +1, item.size)
        if mergeable:
            self._open_groups[merge_key] = item
        if state_presence and to:
            self._presence_slots[(sender_jid, to)] = item
        self._note_order(item, element, is_presence, sender_jid, to)
        return Offered(QUEUED, item, superseded)

    def _note_order(self, item: Queued, element, is_presence: bool, sender_jid: str, to: str) -> None:
        """Remember a presence sent to a full JID; make a message or IQ wait for the one of its bare addresses."""
        key = (_bare(sender_jid), _bare(to))
        if is_presence:
            if "/" in to:
                self._directed[key] = item
            return
        presence_item = self._directed.get(key)
        if presence_item is None:
            return
        if not presence_item.queued:
            del self._directed[key]
            return
        if presence_item is not item and all(presence_item is not known for known in item.waits_for):
            item.waits_for.append(presence_item)

    def _presence_crosses(self, element: domish.Element, presence_type: str) -> bool:
        mode = self.presence_mode
        if mode == "none":
            return False
        if mode == "all" or presence_type in SUBSCRIPTION_PRESENCE or presence_type == "error":
            return True
        if mode == "available":
            return presence_type in STATE_PRESENCE or presence_type == "probe"
        # directed: only presence addressed to one resource
        return presence_type in STATE_PRESENCE and "/" in element.attributes.get("to", "")

    def _beyond_roster_burst(self, now: float) -> bool:
        """Count one new presence item now; whether it is beyond the roster burst of the window."""
        times = self._new_presence_times
        while times and times[0] <= now - self.limits.roster_window_seconds:
            times.popleft()
        times.append(now)
        return len(times) > self.limits.roster_burst

    def _open_group(self, key: tuple, now: float) -> Queued | None:
        group = self._open_groups.get(key)
        if group is not None and group.due_at <= now:
            del self._open_groups[key]
            return None
        return group

    def _later_item_holds(self, group: Queued, to: str) -> bool:
        """Whether an item of the group's sender queued after the group already goes to ``to``."""
        items = self._lanes[group.lane].get(group.sender, ())
        seen = False
        for item in items:
            if seen and to in item.recipients:
                return True
            seen = seen or item is group
        return False

    def _count(self, item: Queued, stanzas: int, size: int) -> None:
        self._stanzas += stanzas
        self._bytes += size
        self._lane_bytes[item.lane] += size

    def _resize(self, item: Queued) -> None:
        size = merged_size(item.copy_size, item.recipients)
        self._count(item, 0, size - item.size)
        item.size = size

    def _add_copy(self, group: Queued, parcel, element: domish.Element, to: str) -> None:
        group.parcels.append(parcel)
        group.recipients.append(to)
        group.copies.append(element)
        self._count(group, 1, 0)
        self._resize(group)

    def _take_recipient(self, item: Queued, to: str):
        """Take the copy for ``to`` out of an item (out of the queue with its last copy, unless it keeps its slot); its parcel."""
        index = item.recipients.index(to)
        parcel = item.parcels.pop(index)
        item.recipients.pop(index)
        item.copies.pop(index)
        self._count(item, -1, 0)
        if item.copies:
            item.element = item.copies[0]
        self._resize(item)
        sender_jid = item.element.attributes.get("from", "")
        if self._presence_slots.get((sender_jid, to)) is item:
            del self._presence_slots[(sender_jid, to)]
        self._forget_directed(item, sender_jid, to)
        return parcel

    def _forget_directed(self, item: Queued, sender_jid: str, to: str) -> None:
        """``item`` no longer holds a copy for the bare JID of ``to``: it holds no message back for it."""
        key = (_bare(sender_jid), _bare(to))
        if self._directed.get(key) is item and (
            not item.queued or all(_bare(recipient) != key[1] for recipient in item.recipients)
        ):
            del self._directed[key]

    def _take_over(self, slot: Queued, parcel, element, size, to, merge_key, now) -> Queued:
        """A newer presence takes the place of the emptied item of the one it replaced."""
        if slot.merge_key is not None and self._open_groups.get(slot.merge_key) is slot:
            del self._open_groups[slot.merge_key]
        slot.parcels, slot.recipients, slot.copies = [parcel], [to], [element]
        slot.element, slot.copy_size, slot.merge_key = element, size, merge_key
        slot.offered_at = now
        slot.due_at = now + (self.merge_seconds if merge_key is not None else 0.0)
        self._count(slot, 1, 0)
        self._resize(slot)
        return slot

    # -- leaving ------------------------------------------------------------------

    def next_due(self, now: float) -> Due:
        """The item to write now, charged to the rate, or when to ask again."""
        if self._bearer.ready_at(now) <= now:
            for lane in KINDS:
                item = self._take_due(lane, now)
                if item is not None:
                    self._bearer.charge(item.size, now)
                    return Due(item, None)
            if self._burst_share.ready_at(now) <= now:
                item = self._take_due(HELD, now)
                if item is not None:
                    self._bearer.charge(item.size, now)
                    self._burst_share.charge(item.size, now)
                    item.share_charged = True
                    return Due(item, None)
        return Due(None, self._wake_at(now))

    def wrote(self, item: Queued, wire_bytes: int, now: float) -> None:
        """The link wrote ``item`` as ``wire_bytes`` on the bearer (compressed, with its own framing): correct the charge."""
        correction = wire_bytes - item.size
        self._bearer.charge(correction, now)
        if item.share_charged:
            self._burst_share.charge(correction, now)

    def backlog_seconds(self, now: float) -> float:
        """Seconds the bearer still needs to carry what was written to it (the rate's debt), 0 when it is idle."""
        return max(0.0, self._bearer.ready_at(now) - now)

    def spend(self, wire_bytes: int, now: float) -> None:
        """The link wrote bytes of its own (acks, keepalives, stream headers): charge them to the rate."""
        self._bearer.charge(wire_bytes, now)

    def expired(self, now: float) -> list:
        """Take out and return the items that waited ``max_wait_seconds``, and the IQs that can no longer be answered in time."""
        found = []
        for lane in LANES:
            for items in self._lanes[lane].values():
                found.extend(item for item in items if self._expires_at(item) <= now)
        for item in found:
            self._remove(item)
        return found

    def next_expiry(self) -> float | None:
        """When the next item will come out of ``expired`` (None if nothing waits)."""
        times = [self._expires_at(item) for lane in LANES for items in self._lanes[lane].values() for item in items]
        return min(times, default=None)

    def _expires_at(self, item: Queued) -> float:
        at = item.offered_at + self.limits.max_wait_seconds
        if item.answer_by is not None:
            at = min(at, item.answer_by)
        return at

    def _take_due(self, lane: str, now: float) -> Queued | None:
        """
        The first sender in turn whose first item is due: take that item and
        send the sender to the back.  An item waiting for a directed presence
        has that presence taken in its place (it inherits the item's class),
        and the sender keeps its turn.
        """
        senders = self._lanes[lane]
        for sender, items in senders.items():
            item = items[0]
            if item.due_at > now:
                continue
            blocker = _first_queued(item.waits_for)
            if blocker is not None:
                if blocker.due_at > now:
                    continue
                self._remove(blocker)
                return blocker
            self._remove(item)
            if sender in senders:  # still has items: its turn comes again after everyone else's
                senders[sender] = senders.pop(sender)
            return item
        return None

    def _remove(self, item: Queued) -> None:
        senders = self._lanes[item.lane]
        items = senders[item.sender]
        items.remove(item)
        if not items:
            del senders[item.sender]
        self._count(item, -len(item.parcels), -item.size)
        item.queued = False
        if item.merge_key is not None and self._open_groups.get(item.merge_key) is item:
            del self._open_groups[item.merge_key]
        sender_jid = item.element.attributes.get("from", "")
        for to in item.recipients:
            if self._presence_slots.get((sender_jid, to)) is item:
                del self._presence_slots[(sender_jid, to)]
            self._forget_directed(item, sender_jid, to)

    def _wake_at(self, now: float) -> float | None:
        bearer_at = self._bearer.ready_at(now)
        times = []
        for lane in LANES:
            for items in self._lanes[lane].values():
                at = max(items[0].due_at, bearer_at)
                blocker = _first_queued(items[0].waits_for)
                if blocker is not None:
                    at = max(at, blocker.due_at)
                elif lane == HELD:
                    at = max(at, self._burst_share.ready_at(now))
                times.append(at)
        expiry = self.next_expiry()
        if expiry is not None:
            times.append(expiry)
        return min(times, default=None)


def _first_queued(items: list) -> Queued | None:
    return next((item for item in items if item.queued), None)


def _bare(jid: str) -> str:
    """A JID without its resource."""
    return jid.partition("/")[0]


def _without(recipients: list, to: str) -> list:
    """``recipients`` without one ``to``."""
    left = list(recipients)
    if to in left:
        left.remove(to)
    return left
