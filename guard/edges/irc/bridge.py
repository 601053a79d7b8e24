"""
One bridge's decisions: a MUC room paired with an IRC channel, with no I/O.

The composition root (guard/app/irc.py) feeds the ``Bridge`` what the room
and the channel say and carries out the actions it answers, plain data:
``IrcSay``, ``IrcJoin``, ``IrcPart``, ``IrcTopic``, ``IrcKick``, ``IrcNick``
toward IRC; ``MucJoin``, ``MucLeave``, ``MucNick``, ``MucSay``,
``MucSubject``, ``MucKick`` toward the room; ``BounceToSender`` and ``Audit``.
Time is passed in (``now``, seconds on the caller's clock).

Who is who:

- The gateway hears the room through one occupant of its own, the
  *listener*: ``room@service/<room_nick>``, joined from
  ``<component>/<room localpart>``.  Only stanzas addressed to the listener
  are taken; the copies the room sends to the gateway's other occupants are
  ignored, so each room message is taken once.
- Each real occupant of the room (an XMPP user) gets its own IRC connection
  (``ConnectionKey(network, room, serial)``) under the nick the network's
  ``NickBook`` gives it, while the bridge's ``max_occupant_connections`` and
  the gateway's shared ``ConnectionSlots`` allow; past them its messages are
  relayed by the network's bot connection as ``<nick> text``, and it gets a
  connection as soon as a slot frees.
- Each IRC user in the channel is an occupant the gateway joins as
  ``room@service/<muc nick>``, from ``<irc nick>%<network>@<component>/<room
  localpart>`` (biboumi's scheme for IRC users), where the MUC nick is the
  ``NickBook``'s ``muc_nick_for``.
- Channel events are taken from the network's bot connection only (every
  connection of the gateway in the channel sees them); what concerns one of
  the gateway's own connections (its kick, its loss) from that connection.

No loops: room stanzas from the gateway's own occupants and IRC events
whose source is one of the gateway's own connections (its occupants' nicks
or the bot) are never bridged back.

Settlement: each room message taken is accepted by the shared ``Settlement``
(guard/core/settlement.py, with the books and the audit trail as its
observers) and settles exactly once: delivered when the IRC connection wrote
it (``irc_sent(token)``), bounced to its sender with the guard's own text when
the policy refuses it or the connection is lost first (``irc_lost``), or
dropped (by the policy, audited).  The token of an ``IrcSay`` is the
settlement's ``Parcel``.

Multi-line text: a room message is split for IRC with ``split_text`` within
the budget of the connection that carries it (``privmsg_budget`` with the
longest source prefix the network may give it).  Lines from IRC are joined
back when they look split: a line of the same nick and kind whose text
filled its budget (within ``JOIN_SLACK_BYTES``) waits ``join_window`` seconds
for the next one, which is appended after a space; a line that does not
fill its budget ends the message.  Joined text is bounded by
``joined_message_bytes``.

Kicks, with the rights each side has: an IRC operator's kick of a bridged
XMPP occupant closes that occupant's IRC connection and the room is told; its
later messages bounce (``irc:kicked-on-irc``) until it rejoins the room.  A
room moderator's kick of an IRC user's occupant becomes a KICK on IRC only
when the bot is a channel operator; otherwise it is refused, audited and the
room told why.  An IRC operator's kick of an IRC user removes its occupant
(a MUC kick when the listener is a room moderator, else a leave).

Formatting: IRC's mIRC codes become XEP-0393 styling where the span is clean
and are stripped otherwise; text toward IRC carries no control character.
/me both ways: XEP-0245's ``/me `` prefix <-> CTCP ACTION.  IRC notices reach
the room as messages from the listener (the channel's voice): ``-nick- text``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from twisted.words.xish import domish

from guard.core.addressing import parse_jid
from guard.core.bounce import error_reply
from guard.core.pipeline import Judgement
from guard.core.policy.elements import child_elements, text_of
from guard.core.policy.labels import SecurityLabel
from guard.core.settlement import Deliver, ReturnBounce
from guard.core.vocabulary import DELAY_NS, MUC_ADMIN_NS, MUC_NS, MUC_USER_NS, SERVER_NS
from guard.edges.irc.formatting import formatting_to_styling, text_for_irc, without_controls
from guard.edges.irc.labels import (TOWARD_IRC, BridgeLabels, Labelled, MarkingOnly, Refused, RefusedFromIrc)
from guard.edges.irc.lines import CTCP_ACTION_OVERHEAD, ctcp_action, privmsg_budget, read_ctcp, source_prefix_bytes, split_text
from guard.edges.irc.nicks import Isupport, NickBook, NickBookFull

# The MUC words the bridge reads and writes (XEP-0045).
MUC_NICK_SUFFIX = "[irc]"  # added to an IRC user's MUC nick that an occupant of the room already holds
MUC_NICK_ATTEMPTS = 5
STATUS_SELF = "110"
STATUS_NICK_CHANGED = "303"
STATUS_KICKED = "307"
STATUS_BANNED = "301"
ME_PREFIX = "/me "  # XEP-0245

# What an IRC server may put before a relayed line: the longest host a network gives (a DNS name), and the
# '~' of an unidentified user.
HOST_ALLOWANCE = 63
JOIN_SLACK_BYTES = 32
# Occupant connections one bridge opens at most per CONNECTION_OPEN_SECONDS ([limits] connections_per_minute,
# default CONNECTION_OPENS): XMPP users joining and leaving (or renaming) in a loop would otherwise make the gateway
# connect again and again, and IRC servers throttle or ban an address that does (ngIRCd, hybrid, InspIRCd); past it
# the bot relays, and ``due`` opens the rest later.
CONNECTION_OPENS = 10
CONNECTION_OPEN_SECONDS = 60.0
LEAVING_NICKS = 1024  # nicks of our closed or renamed connections whose leaving the bot has not heard yet
REFUSAL_NOTICE_SECONDS = 2.0  # at most one refusal notice to IRC users per bridge in this time (the rest audited only)
RELAY_NAME_BYTES = 64  # the MUC nick in the bot's <nick> relay (a resourcepart may be 1023 bytes)
LOST_CONDITION = "remote-server-not-found"  # what a message lost with its IRC connection bounces with
# Renames of one occupant (either side) that cross per RENAME_SECONDS ([limits] renames_per_minute): a rename is
# content reaching the other side and, on IRC, a NICK line every connection in the channel sees.
RENAMES = 3
RENAME_SECONDS = 60.0

# The gateway's own rules and texts.
RULE_NOTHING_TO_SAY = "irc:nothing-to-say"
RULE_ONLY_GROUPCHAT = "irc:only-groupchat"
RULE_KICKED_ON_IRC = "irc:kicked-on-irc"
RULE_KICK_REFUSED = "irc:kick-refused"
RULE_CTCP_REFUSED = "irc:ctcp-refused"
RULE_PRIVATE_REFUSED = "irc:private-refused"
RULE_JOINED_TOO_LONG = "irc:joined-too-long"
RULE_JOIN_REFUSED = "irc:join-refused"
RULE_IRC_USERS_FULL = "irc:irc-users-full"
RULE_RENAME_RATE = "irc:rename-rate"
RULE_NICK_REFUSED = "irc:nick-refused"
RENAME_RATE_TEXT = "Renamed too often: the new nick reaches the IRC channel within a minute."
NICK_NOT_ON_IRC_TEXT = "Your room nick is not allowed on the IRC channel; choose another nick to talk there."
KICKED_ON_IRC_TEXT = "You were kicked from the IRC channel; rejoin the room to talk there again."
NOTHING_TO_SAY_TEXT = "the message carries no text the IRC channel can show"
ONLY_GROUPCHAT_TEXT = "Only room messages are bridged to IRC."
KICK_REFUSED_TEXT = "The gateway is not an operator of the IRC channel: {nick} was not kicked there."
# {nick}: a room nick the room already shows; who kicked and why (IRC's words) go to the audit only.
KICKED_FROM_CHANNEL_TEXT = "{nick} was kicked from the IRC channel by an IRC operator."
KICKED_FROM_CHANNEL_REASON = "kicked from the IRC channel by an IRC operator"
PRIVATE_REFUSED_TEXT = "Private messages are not bridged to XMPP."
KICKED_FROM_ROOM_REASON = "kicked from the XMPP room"
LEFT_ROOM_REASON = "left the XMPP room"
XMPP_LOST_REASON = "the XMPP side went away"


IDENTITY_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# -- who ----------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectionKey:
    """Names one IRC connection: the network's bot (``room`` None), or the ``serial``-th occupant of ``room``."""

    network: str
    room: str | None = None
    serial: int = 0

    @property
    def is_bot(self) -> bool:
        return self.room is None


class ConnectionSlots:
    """
    IRC connections occupants may open: at most ``total`` here, and only
    while ``parent`` (the gateway's count, when this is a network's) has one
    too.  Shared by every bridge that draws on it.
    """

    def __init__(self, total: int, parent: "ConnectionSlots | None" = None):
        if total < 0:
            raise ValueError("total must not be negative")
        self.total = total
        self.parent = parent
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.total:
            return False
        if self.parent is not None and not self.parent.take():
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        if self.used > 0:
            self.used -= 1
            if self.parent is not None:
                self.parent.give_back()


@dataclass
class XmppOccupant:
    """A real occupant of the room: its IRC nick and, while it has one, its own connection."""

    muc_nick: str
    irc_nick: str | None  # None: the NickBook is full, the bot relays it
    key: ConnectionKey
    connected: bool = False  # holds a connection slot (its own connection is open or opening)
    kicked_on_irc: bool = False
    # The nick its own connection registered with (the server's word, from ``irc_connected``): only that nick
    # is the gateway's own on IRC; until then an IRC user holding ``irc_nick`` is that IRC user.
    nick_on_irc: str | None = None
    registered: bool = False  # its own connection is registered now (not connecting, registering or reconnecting)
    # The room nick IRC knows it by: the last one the bridge policy passed (``Labels.release_nick``), used for its
    # IRC nick and the bot's ``<nick>`` relay; None while its nick is refused or a rename waits for the rate.
    shown_nick: str | None = None
    nick_refusal: str | None = None  # the rule that keeps its nick off IRC (its messages bounce meanwhile)
    renamed_at: list = field(default_factory=list)  # when it renamed in the last RENAME_SECONDS (bounded)
    nick_due: float | None = None  # a rename held by the rate crosses then

    @property
    def speaks_on_irc(self) -> bool:
        """Whether its messages go on its own connection: the bot relays them until that connection is registered."""
        return self.connected and self.registered


@dataclass
class IrcUser:
    """An IRC user in the channel and the occupant the gateway joins the room as for it, from ``jid`` (fixed
    for the occupant's life, so that a NICK on IRC is a nick change in the room, XEP-0045 7.6)."""

    irc_nick: str
    muc_nick: str
    jid: str
    in_room: bool = True
    conflicts: int = 0  # nicks the room refused (409) for it
    refused: bool = False  # its nick was refused (``nick_from_irc``): kept out of the room until it takes another
    renamed_at: list = field(default_factory=list)  # when its renames crossed in the last RENAME_SECONDS (bounded)


@dataclass
class PendingLines:
    """IRC lines from one nick held while they may be the start of a longer message."""

    kind: str
    parts: list
    size: int
    due: float


# -- actions ------------------------------------------------------------------

@dataclass(frozen=True)
class IrcSay:
    """Write ``lines`` to ``target`` on the connection ``connection_key`` (PRIVMSG, or NOTICE); ``token`` is
    reported back by the connection exactly once (sent or lost) and brought to ``Bridge.irc_sent``/``irc_lost``."""

    connection_key: ConnectionKey
    target: str
    lines: tuple[str, ...]
    token: object = None
    notice: bool = False


@dataclass(frozen=True)
class IrcJoin:
    """Open (if needed) the connection ``connection_key`` as ``nick`` and join ``channel`` (and keep it joined)."""

    connection_key: ConnectionKey
    channel: str
    nick: str


@dataclass(frozen=True)
class IrcPart:
    """Leave ``channel`` with the gateway's ``reason``; ``close``: then close the connection (an occupant's)."""

    connection_key: ConnectionKey
    channel: str
    reason: str
    close: bool = True


@dataclass(frozen=True)
class IrcTopic:
    connection_key: ConnectionKey
    channel: str
    topic: str
    token: object = None


@dataclass(frozen=True)
class IrcKick:
    connection_key: ConnectionKey
    channel: str
    nick: str
    reason: str


@dataclass(frozen=True)
class IrcNick:
    connection_key: ConnectionKey
    nick: str


@dataclass(frozen=True)
class MucJoin:
    """Join ``room`` as ``as_nick`` from ``from_jid`` (a presence to ``room/as_nick``)."""

    room: str
    as_nick: str
    from_jid: str

    def stanza(self, uri: str) -> domish.Element:
        presence = domish.Element((uri, "presence"))
        presence["from"], presence["to"] = self.from_jid, f"{self.room}/{self.as_nick}"
        history = presence.addElement((MUC_NS, "x")).addElement("history")
        history["maxstanzas"] = "0"  # the room's history is not the conversation to bridge
        return presence


@dataclass(frozen=True)
class MucLeave:
    room: str
    as_nick: str
    from_jid: str
    status: str | None = None

    def stanza(self, uri: str) -> domish.Element:
        presence = domish.Element((uri, "presence"))
        presence["from"], presence["to"], presence["type"] = self.from_jid, f"{self.room}/{self.as_nick}", "unavailable"
        if self.status:
            presence.addElement("status", content=self.status)
        return presence


@dataclass(frozen=True)
class MucNick:
    """Change the occupant ``as_nick`` (joined from ``from_jid``) to ``new_nick`` (XEP-0045 7.6)."""

    room: str
    as_nick: str
    from_jid: str
    new_nick: str

    def stanza(self, uri: str) -> domish.Element:
        presence = domish.Element((uri, "presence"))
        presence["from"], presence["to"] = self.from_jid, f"{self.room}/{self.new_nick}"
        return presence


@dataclass(frozen=True)
class MucSay:
    """A groupchat message to ``room`` from the occupant ``as_nick`` (joined from ``from_jid``), labelled."""

    room: str
    as_nick: str
    from_jid: str
    body: str
    label: SecurityLabel | None = None
    securitylabel: domish.Element | None = field(default=None, compare=False)

    def stanza(self, uri: str) -> domish.Element:
        return _groupchat(uri, self.from_jid, self.room, "body", self.body, self.securitylabel)


@dataclass(frozen=True)
class MucSubject:
    """Set the room's subject as the occupant ``as_nick`` (joined from ``from_jid``), labelled."""

    room: str
    as_nick: str
    from_jid: str
    subject: str
    label: SecurityLabel | None = None
    securitylabel: domish.Element | None = field(default=None, compare=False)

    def stanza(self, uri: str) -> domish.Element:
        return _groupchat(uri, self.from_jid, self.room, "subject", self.subject, self.securitylabel)


@dataclass(frozen=True)
class MucKick:
    """Kick ``nick`` from ``room`` (a MUC admin request from the listener, a room moderator)."""

    room: str
    nick: str
    from_jid: str
    reason: str

    def stanza(self, uri: str, stanza_id: str) -> domish.Element:
        iq = domish.Element((uri, "iq"))
        iq["from"], iq["to"], iq["type"], iq["id"] = self.from_jid, self.room, "set", stanza_id
        item = iq.addElement((MUC_ADMIN_NS, "query")).addElement("item")
        item["nick"], item["role"] = self.nick, "none"
        item.addElement("reason", content=self.reason)
        return iq


@dataclass(frozen=True)
class BounceToSender:
    """The room message ``stanza`` was settled as bounced: send ``reply`` (our error, ``condition`` and ``text``)."""

    stanza: domish.Element
    condition: str
    text: str | None
    reply: domish.Element = field(compare=False, default=None)


@dataclass(frozen=True)
class Audit:
    """An event the audit trail records that is not the settlement of a room message (those the settlement
    records): ``event``, the ``rule`` that decided, ``detail`` (a peer's words, for the audit only)."""

    event: str
    rule: str
    room: str
    detail: str = ""


# -- the bridge ---------------------------------------------------------------

class Bridge:
    """The decisions of one room <-> channel bridge; every method answers a list of actions."""

    def __init__(self, bridge, network, labels: BridgeLabels, settlement, nicks: NickBook, component: str,
                 slots: ConnectionSlots, joined_message_bytes: int = 16 * 1024, max_irc_users: int = 500,
                 connection_opens: int = CONNECTION_OPENS, renames: int = RENAMES):
        self.room = bridge.room
        self.channel = bridge.channel
        self.network = network.name
        self.network_config = network
        self.room_nick = bridge.room_nick
        self.max_connections = bridge.max_occupant_connections
        self.join_window = bridge.join_window
        self.labels = labels
        self.settlement = settlement
        self.nicks = nicks
        self.component = component
        self.slots = slots
        self.joined_message_bytes = joined_message_bytes
        self.max_irc_users = max_irc_users
        self.connection_opens = connection_opens
        self.renames = renames
        self.room_local = self.room.split("@", 1)[0]
        self.listener_jid = f"{component}/{self.room_local}"
        self.bot_key = ConnectionKey(self.network)
        self.bot_nick = network.nick
        self.occupants: dict[str, XmppOccupant] = {}  # muc nick -> occupant
        self.irc_users: dict[str, IrcUser] = {}  # fold(irc nick) -> IRC user
        self.pending: dict[str, PendingLines] = {}  # fold(irc nick) -> lines held
        self.marked_next: dict[str, tuple[SecurityLabel, float]] = {}  # fold(irc nick) -> (label, until)
        self.bot_is_op = False
        self.listener_is_moderator = False
        self.bot_in_channel = False
        self.room_subject: str | None = None  # the subject the room has, as far as the bridge knows
        self._serials = itertools.count(1)
        self._user_serials = itertools.count(1)
        self._connections = 0
        self._notice_due = float("-inf")  # when the gateway may next send a refusal notice to IRC
        # fold(nick) of occupants' connections closed or renamed: lines the bot still hears from them (written
        # before, relayed after) are ours until the bot hears that nick leave (PART, QUIT, KICK, NICK), or join anew.
        self.leaving: dict[str, None] = {}
        self._opened_at: list[float] = []  # when the bridge opened its last occupant connections (CONNECTION_OPENS at most)

    # -- names --------------------------------------------------------------

    def fold(self, nick: str) -> str:
        """``nick`` (or a channel) as the bridge tells IRC users apart: ASCII case only, the narrowest casemapping.
        Folding wider than the server (rfc1459 on an ascii server: ``bob[`` and ``bob{`` are two users there)
        would let one IRC user speak as another's occupant; the NickBook still folds widely when it gives nicks."""
        return nick.translate(IDENTITY_FOLD)

    def irc_user_jid(self, irc_nick: str) -> str:
        """A new JID for the occupant of an IRC user: ``nick%network@component/room-localpart~serial`` (the
        nick hex-encoded where it cannot be a localpart); unique for the bridge's life."""
        resource = f"{self.room_local}~{next(self._user_serials)}"
        candidate = parse_jid(f"{irc_nick}%{self.network}@{self.component}/{resource}")
        if candidate is not None and not set(irc_nick) & set("/@%"):
            # As prepared (``Carol`` -> ``carol``): the room answers (a refused join, an error) to that form.
            return candidate.full()
        return f"{irc_nick.encode('utf-8').hex()[:64]}%{self.network}@{self.component}/{resource}"

    def _new_irc_user(self, irc_nick: str) -> IrcUser:
        user = IrcUser(irc_nick, self._free_muc_nick(self.nicks.muc_nick_for(irc_nick)), self.irc_user_jid(irc_nick))
        self.irc_users[self.fold(irc_nick)] = user
        return user

    def _rename_allowed(self, times: list, now: float) -> bool:
        """Whether one more rename fits ``renames`` per ``RENAME_SECONDS`` (``times``: when the last ones crossed,
        kept to at most ``renames`` entries); counted when allowed."""
        times[:] = [at for at in times if at > now - RENAME_SECONDS][-self.renames:]
        if len(times) >= self.renames:
            return False
        times.append(now)
        return True

    def _free_muc_nick(self, wanted: str, skip: IrcUser | None = None) -> str:
        """``wanted``, or ``wanted[irc]``, ``wanted[irc2]``...: a MUC nick no occupant the bridge knows holds."""
        taken = set(self.occupants) | {self.room_nick} | {u.muc_nick for u in self.irc_users.values() if u is not skip}
        candidate, number = wanted, 1
        while candidate in taken and number <= MUC_NICK_ATTEMPTS:
            candidate = f"{wanted}{MUC_NICK_SUFFIX}" if number == 1 else f"{wanted}{MUC_NICK_SUFFIX[:-1]}{number}]"
            number += 1
        return candidate

    def _own_irc_nick(self, irc_nick: str) -> bool:
        """Whether ``irc_nick`` is one of the gateway's own connections in this channel (the bot, an occupant)."""
        folded = self.fold(irc_nick)
        if folded == self.fold(self.bot_nick) or folded in self.leaving:
            return True
        return any(o.connected and o.nick_on_irc is not None and self.fold(o.nick_on_irc) == folded
                   for o in self.occupants.values())

    def _left_channel(self, nick: str | None) -> None:
        """``nick`` was one of our connections' and may still speak in what the bot hears: ours until it leaves."""
        if nick is None:
            return
        self.leaving[self.fold(nick)] = None
        while len(self.leaving) > LEAVING_NICKS:
            del self.leaving[next(iter(self.leaving))]

    def _occupant_by_irc_nick(self, irc_nick: str) -> XmppOccupant | None:
        """The occupant whose own connection registered as ``irc_nick`` (the server's word), or None."""
        folded = self.fold(irc_nick)
        for occupant in self.occupants.values():
            if occupant.nick_on_irc is not None and self.fold(occupant.nick_on_irc) == folded:
                return occupant
        return None

    def _occupant_by_key(self, key: ConnectionKey) -> XmppOccupant | None:
        for occupant in self.occupants.values():
            if occupant.key == key:
                return occupant
        return None

    def _gateway_says(self, text: str) -> MucSay:
        """The gateway's own words in the room, from the listener, under the IRC side's default label."""
        label = self.labels.default_label
        return MucSay(self.room, self.room_nick, self.listener_jid, text, label, self.labels.securitylabel(label))

    def _ours(self, channel: str) -> bool:
        return self.fold(channel) == self.fold(self.channel)

    # -- the room -----------------------------------------------------------

    def xmpp_ready(self) -> list:
        """The component is connected: join the room as the listener and as every IRC user in the channel."""
        actions = [MucJoin(self.room, self.room_nick, self.listener_jid)]
        for user in self.irc_users.values():
            if user.refused:
                continue
            user.in_room = True
            actions.append(MucJoin(self.room, user.muc_nick, user.jid))
        return actions

    def xmpp_lost(self) -> list:
        """The component connection is gone: every XMPP occupant's IRC connection leaves (they rejoin when the
        room tells the listener about them again)."""
        actions = []
        for occupant in list(self.occupants.values()):
            actions.extend(self._occupant_gone(occupant, XMPP_LOST_REASON, now=None))
        self.listener_is_moderator = False
        return actions

    def room_presence(self, stanza: domish.Element, now: float = 0.0) -> list:
        """A presence from the room to the gateway: an occupant joined, left, was kicked or changed nick; or the
        room refused to let one of the gateway's IRC users in."""
        if stanza.getAttribute("type") == "error":
            return self._join_refused(stanza)
        if stanza.getAttribute("to") != self.listener_jid:
            return []
        sender = parse_jid(stanza.getAttribute("from"))
        if sender is None or sender.userhost() != self.room or not sender.resource:
            return []
        nick = sender.resource
        statuses, item = _muc_user(stanza)
        unavailable = stanza.getAttribute("type") == "unavailable"
        if stanza.getAttribute("type") not in (None, "unavailable"):
            return []
        if STATUS_SELF in statuses or nick == self.room_nick:
            self.listener_is_moderator = not unavailable and item.get("role") == "moderator"
            return []
        user = self._irc_user_by_muc_nick(nick)
        if user is not None:
            return self._irc_users_occupant_presence(user, unavailable, statuses, item)
        occupant = self.occupants.get(nick)
        if not unavailable:
            return [] if occupant is not None else self._occupant_joined(nick, now)
        if occupant is None:
            return []
        if STATUS_NICK_CHANGED in statuses and item.get("nick"):
            return self._occupant_renamed(occupant, item["nick"], now)
        reason = KICKED_FROM_ROOM_REASON if STATUS_KICKED in statuses or STATUS_BANNED in statuses else LEFT_ROOM_REASON
        return self._occupant_gone(occupant, reason, now)

    def _join_refused(self, stanza: domish.Element) -> list:
        """The room refused an IRC user's occupant: a nick conflict (409) is tried again under another nick, a
        bounded number of times; anything else leaves the IRC user out of the room, audited."""
        user = next((u for u in self.irc_users.values() if u.jid == stanza.getAttribute("to")), None)
        sender = parse_jid(stanza.getAttribute("from"))
        if user is None or sender is None or sender.userhost() != self.room or sender.resource != user.muc_nick:
            return []
        condition, _ = _error_of(stanza)
        if condition == "conflict" and user.conflicts < MUC_NICK_ATTEMPTS:
            user.conflicts += 1
            user.muc_nick = f"{self.nicks.muc_nick_for(user.irc_nick)}{MUC_NICK_SUFFIX[:-1]}{user.conflicts + 1}]"
            return [MucJoin(self.room, user.muc_nick, user.jid)]
        user.in_room = False
        return [Audit("join-refused", RULE_JOIN_REFUSED, self.room, f"{user.irc_nick}: {condition}")]

    def _irc_user_by_muc_nick(self, muc_nick: str) -> IrcUser | None:
        for user in self.irc_users.values():
            if user.muc_nick == muc_nick and user.in_room:
                return user
        return None

    def _occupant_joined(self, muc_nick: str, now: float) -> list:
        occupant = XmppOccupant(muc_nick, None, ConnectionKey(self.network, self.room, next(self._serials)))
        self.occupants[muc_nick] = occupant
        return self._cross_nick(occupant, now)

    def _cross_nick(self, occupant: XmppOccupant, now: float) -> list:
        """
        The occupant's room nick toward IRC, judged by the bridge policy (``release_nick``): passed, it
        becomes the occupant's IRC nick (a NICK on its connection, or a connection opened) and its relay
        name; refused, it does not cross: the occupant is parted from IRC, its messages bounce until it
        takes a nick the policy passes, it gets the presence error and the audit trail a record.
        """
        occupant.nick_due = None
        verdict = self.labels.release_nick(self.room, occupant.muc_nick)
        if isinstance(verdict, Refused):
            actions = self._withdraw_nick(occupant, verdict.rule_id)
            return actions + self._nick_error(occupant.muc_nick, verdict.condition or "policy-violation",
                                              verdict.own_text or NICK_NOT_ON_IRC_TEXT) + [
                Audit("nick-refused", verdict.rule_id, self.room, occupant.muc_nick)]
        if occupant.shown_nick is not None:
            self.nicks.release(occupant.shown_nick)
        occupant.shown_nick, occupant.nick_refusal = occupant.muc_nick, None
        try:
            occupant.irc_nick = self.nicks.irc_nick_for(occupant.muc_nick)
        except (NickBookFull, ValueError):
            occupant.irc_nick = None  # no IRC nick to be had: the bot relays this occupant
            return self._disconnect(occupant, LEFT_ROOM_REASON)
        if occupant.connected:
            return [IrcNick(occupant.key, occupant.irc_nick)]
        return self._connect(occupant, now)

    def _withdraw_nick(self, occupant: XmppOccupant, rule: str) -> list:
        """The occupant has no nick IRC may see now: its connection parts, its messages bounce (``rule``)."""
        if occupant.shown_nick is not None:
            self.nicks.release(occupant.shown_nick)
        occupant.shown_nick = occupant.irc_nick = None
        occupant.nick_refusal = rule
        return self._disconnect(occupant, LEFT_ROOM_REASON)

    def _nick_error(self, muc_nick: str, condition: str, text: str) -> list:
        """The presence error the occupant ``muc_nick`` gets for a nick that did not cross (the guard's text)."""
        presence = domish.Element((SERVER_NS, "presence"))
        presence["from"], presence["to"] = f"{self.room}/{muc_nick}", self.listener_jid
        return [BounceToSender(presence, condition, text, error_reply(presence, condition, text))]

    def _may_open(self, now: float) -> bool:
        """Whether the bridge may open one more occupant connection now (``CONNECTION_OPENS`` per window)."""
        while self._opened_at and self._opened_at[0] <= now - CONNECTION_OPEN_SECONDS:
            del self._opened_at[0]
        return len(self._opened_at) < self.connection_opens

    def _connect(self, occupant: XmppOccupant, now: float) -> list:
        """Give ``occupant`` its own IRC connection if both caps and the rate of opening allow it (else the bot
        relays it)."""
        if (occupant.connected or occupant.kicked_on_irc or occupant.irc_nick is None
                or self._connections >= self.max_connections or not self._may_open(now)):
            return []
        if not self.slots.take():
            return []
        self._opened_at.append(now)
        self._connections += 1
        occupant.connected = True
        return [IrcJoin(occupant.key, self.channel, occupant.irc_nick)]

    def _disconnect(self, occupant: XmppOccupant, reason: str) -> list:
        if not occupant.connected:
            return []
        occupant.connected = occupant.registered = False
        self._left_channel(occupant.nick_on_irc)
        occupant.nick_on_irc = None
        self._connections -= 1
        self.slots.give_back()
        return [IrcPart(occupant.key, self.channel, reason)]

    def _occupant_gone(self, occupant: XmppOccupant, reason: str, now: float | None) -> list:
        """``occupant`` left: its connection goes, and (``now`` known: not the whole room going) its slot is given on."""
        del self.occupants[occupant.muc_nick]
        if occupant.shown_nick is not None:
            self.nicks.release(occupant.shown_nick)
        actions = self._disconnect(occupant, reason)
        return actions if now is None else actions + self._promote_relayed(now)

    def _relayed(self) -> list:
        """Occupants the bot relays that could have a connection of their own (in arrival order)."""
        return [o for o in self.occupants.values()
                if not o.connected and not o.kicked_on_irc and o.irc_nick is not None and o.shown_nick is not None]

    def _promote_relayed(self, now: float) -> list:
        """A slot freed: the first occupant the bot relays gets its own connection."""
        for occupant in self._relayed():
            return self._connect(occupant, now)
        return []

    def _occupant_renamed(self, occupant: XmppOccupant, new_muc_nick: str, now: float) -> list:
        """The occupant's new room nick crosses as a join's does (``_cross_nick``), at most ``renames`` a minute:
        past it the rename does not cross (parted from IRC, its messages bounce) until the minute allows, audited."""
        del self.occupants[occupant.muc_nick]
        occupant.muc_nick = new_muc_nick
        self.occupants[new_muc_nick] = occupant
        if not self._rename_allowed(occupant.renamed_at, now):
            actions = self._withdraw_nick(occupant, RULE_RENAME_RATE)
            occupant.nick_due = occupant.renamed_at[0] + RENAME_SECONDS
            return actions + self._nick_error(new_muc_nick, "resource-constraint", RENAME_RATE_TEXT) + [
                Audit("rename-refused", RULE_RENAME_RATE, self.room, new_muc_nick)]
        return self._cross_nick(occupant, now)

    def _irc_users_occupant_presence(self, user: IrcUser, unavailable, statuses, item) -> list:
        """Presence about the gateway's own occupant for an IRC user: only a room moderator's kick matters."""
        if not unavailable or not (STATUS_KICKED in statuses or STATUS_BANNED in statuses):
            return []
        user.in_room = False
        reason = item.get("reason") or KICKED_FROM_ROOM_REASON
        if self.bot_is_op:
            return [IrcKick(self.bot_key, self.channel, user.irc_nick, KICKED_FROM_ROOM_REASON),
                    Audit("kick", "irc:kick-relayed", self.room, f"{user.irc_nick}: {reason}")]
        text = KICK_REFUSED_TEXT.format(nick=user.muc_nick)
        return [self._gateway_says(text),
                Audit("kick-refused", RULE_KICK_REFUSED, self.room, f"{user.irc_nick}: the bot is not a channel op")]

    def room_message(self, stanza: domish.Element, size: int | None = None, now: float = 0.0) -> list:
        """A message from the room to the listener: taken, judged, and said on IRC or settled otherwise."""
        if stanza.getAttribute("to") != self.listener_jid or stanza.getAttribute("type") == "error":
            return []
        sender = parse_jid(stanza.getAttribute("from"))
        if sender is None or sender.userhost() != self.room or not sender.resource:
            return []
        nick = sender.resource
        if nick == self.room_nick or self._irc_user_by_muc_nick(nick) is not None:
            return []  # our own occupants: never bridged back
        if any(child.uri == DELAY_NS for child in child_elements(stanza)):
            return []  # history replayed to the listener on joining: said before, not said now
        subject = _only_subject(stanza)
        if subject is not None and subject == self.room_subject:
            return []  # the room restating its subject (on joining), or the echo of one we set
        if size is None:
            size = len(stanza.toXml().encode("utf-8"))
        ticket = self.settlement.accept(stanza, (sender.host, self.component), size, TOWARD_IRC, 0, now)
        if self.settlement.halted_reason is not None:
            return self._settled(self.settlement.refused_while_halted(ticket))
        try:
            return self._carry(ticket, stanza, nick, size)
        except Exception:  # noqa: BLE001 - a fault in the gateway: the message bounces, it never passes
            if not self.settlement.is_open(ticket):
                return []
            return self._settled(self.settlement.fault(ticket))

    def _carry(self, ticket, stanza, nick, size) -> list:
        occupant = self.occupants.get(nick)
        if occupant is not None and occupant.kicked_on_irc:
            return self._settled(self.settlement.judged(ticket, Judgement.bounced(
                stanza, RULE_KICKED_ON_IRC, "forbidden", text=KICKED_ON_IRC_TEXT)))
        shown = self._shown_nick(occupant, nick)
        if shown is None:
            rule = (occupant.nick_refusal if occupant is not None else None) or RULE_NICK_REFUSED
            text = RENAME_RATE_TEXT if rule == RULE_RENAME_RATE else NICK_NOT_ON_IRC_TEXT
            return self._settled(self.settlement.judged(ticket, Judgement.bounced(
                stanza, rule, "resource-constraint" if rule == RULE_RENAME_RATE else "policy-violation", text=text)))
        released = self.labels.release(stanza, size)
        if isinstance(released, Refused):
            return self._settled(self.settlement.judged(ticket, released.judgement))
        if stanza.getAttribute("type") != "groupchat":
            # A private message to the listener never goes to the channel, whatever the bridge policy passed.
            return self._settled(self.settlement.judged(ticket, Judgement.bounced(
                stanza, RULE_ONLY_GROUPCHAT, "service-unavailable", text=ONLY_GROUPCHAT_TEXT)))
        if released.subject is not None and released.text is None:
            return self._topic_from_room(ticket, released, occupant)
        if not _says_something(released.text):
            self.settlement.drop(ticket, RULE_NOTHING_TO_SAY, 1, NOTHING_TO_SAY_TEXT)
            return []
        decision = self.settlement.judged(ticket, released.judgement)
        if not isinstance(decision, Deliver):
            return self._settled(decision)
        key, lines = self._lines_for(shown, occupant, released)
        if not lines:
            self.settlement.delivered(decision.parcel)
            return []
        return [IrcSay(key, self.channel, tuple(lines), token=decision.parcel)]

    def _shown_nick(self, occupant: XmppOccupant | None, nick: str) -> str | None:
        """The room nick IRC may see for the sender ``nick``: its occupant's judged nick, or (an occupant the
        bridge did not see join) ``nick`` if the policy passes it now; None: no nick of it may reach IRC."""
        if occupant is not None:
            return occupant.shown_nick
        return None if isinstance(self.labels.release_nick(self.room, nick), Refused) else nick

    def _topic_from_room(self, ticket, released, occupant) -> list:
        self.room_subject = released.subject
        decision = self.settlement.judged(ticket, released.judgement)
        if not isinstance(decision, Deliver):
            return self._settled(decision)
        key = occupant.key if occupant is not None and occupant.speaks_on_irc else self.bot_key
        topic = without_controls(text_for_irc(released.subject)).replace("\n", " ")
        if released.marking is not None:
            topic = f"{self.labels.flot.render(released.marking)} {topic}"
        budget = self._budget(self.bot_nick if key.is_bot else occupant.irc_nick, "TOPIC")
        return [IrcTopic(key, self.channel, split_text(topic, budget)[0] if topic else "", token=decision.parcel)]

    def _budget(self, irc_nick: str, command: str = "PRIVMSG") -> int:
        prefix = source_prefix_bytes(irc_nick, "~" + self.network_config.user, "h" * HOST_ALLOWANCE)
        return privmsg_budget(self.channel, prefix, command=command, line_bytes=self.nicks.isupport.linelen)

    def _lines_for(self, muc_nick: str, occupant: XmppOccupant | None, released) -> tuple[ConnectionKey, list]:
        """
        The connection and the IRC lines of a released message: on the
        occupant's own connection, or on the bot's as ``<nick> text`` (``*
        nick text`` for an action).  The FLOT is its own first line or
        prefixes the first line; a text starting with ``/me `` is an action
        (CTCP ACTION on the occupant's connection).
        """
        text = text_for_irc(released.text or "")
        action = text.startswith(ME_PREFIX)
        if action:
            text = text[len(ME_PREFIX):]
        flot = None if released.marking is None else text_for_irc(self.labels.flot.render(released.marking))
        if flot is not None and self.labels.flot.position == "prefix":
            text, flot = f"{flot} {text}", None
        own = occupant is not None and occupant.speaks_on_irc
        key = occupant.key if own else self.bot_key
        nick = occupant.irc_nick if own else self.bot_nick
        name = relay_name(muc_nick)
        budget = self._budget(nick)
        lines = []
        if flot is not None:
            relay = "" if own else f"<{name}> "
            lines += [relay + piece for piece in split_text(flot, max(4, budget - len(relay.encode("utf-8"))))]
        relay = "" if own else (f"* {name} " if action else f"<{name}> ")
        room = budget - len(relay.encode("utf-8")) - (CTCP_ACTION_OVERHEAD if action and own else 0)
        for piece in split_text(text, max(4, room)):
            lines.append(ctcp_action(piece) if action and own else relay + piece)
        return key, lines

    def _settled(self, decision) -> list:
        """What the settlement answered, as actions: our error back to the sender, or nothing (dropped)."""
        if isinstance(decision, ReturnBounce):
            reply = decision.parcel.stanza
            condition, text = _error_of(reply)
            original = decision.parcel.original if decision.parcel.original is not None else reply
            return [BounceToSender(original, condition, text, reply)]
        return []

    # -- what the IRC connections report about room messages ------------------

    def irc_sent(self, token) -> list:
        """The connection wrote the message of ``token``: delivered."""
        self.settlement.delivered(token)
        return []

    def irc_lost(self, token, reason: str) -> list:
        """The connection died before writing ``token``'s message: bounced to its sender (our text)."""
        decision = self.settlement.undeliverable(token, LOST_CONDITION, reason)
        if isinstance(decision, ReturnBounce):
            reply = decision.parcel.stanza
            condition, text = _error_of(reply)
            return [BounceToSender(token.original, condition, text, reply)]
        return []

    # -- the channel ----------------------------------------------------------

    def _from_bot(self, key: ConnectionKey, channel: str | None = None) -> bool:
        return key == self.bot_key and (channel is None or self._ours(channel))

    def irc_joined(self, key: ConnectionKey, channel: str, nick: str, now: float = 0.0) -> list:
        """``nick`` joined the channel (seen by the bot): an IRC user's occupant joins the room."""
        if not self._from_bot(key, channel):
            return []
        if self.fold(nick) == self.fold(self.bot_nick):
            self.bot_in_channel = True
            return []
        self.leaving.pop(self.fold(nick), None)  # a nick joining is not one of ours leaving
        if self._own_irc_nick(nick) or self.fold(nick) in self.irc_users:
            return []
        if len(self.irc_users) >= self.max_irc_users:
            # Past the bound no state is kept for it: what it says is relayed by the listener as <nick> text.
            return [Audit("irc-user-relayed", RULE_IRC_USERS_FULL, self.room, nick)]
        user = self._new_irc_user(nick)
        judged = self.labels.nick_from_irc(nick)
        if isinstance(judged, RefusedFromIrc):
            user.in_room, user.refused = False, True
            return self._notice(self.bot_key, nick, judged.own_text, now) + [
                Audit("nick-refused", judged.rule_id, self.room, judged.detail)]
        return [MucJoin(self.room, user.muc_nick, user.jid)]

    def irc_names(self, key: ConnectionKey, channel: str, names, now: float = 0.0) -> list:
        """RPL_NAMREPLY: ``names`` as the server lists them (with their prefixes, e.g. ``@op``, ``+voiced``)."""
        if not self._from_bot(key, channel):
            return []
        prefixes = set(self.nicks.isupport.prefixes().values()) if hasattr(self.nicks.isupport, "prefixes") else set()
        prefixes |= set("~&@%+")
        actions = []
        for name in names:
            nick = name.lstrip("".join(prefixes))
            if not nick:
                continue
            if self.fold(nick) == self.fold(self.bot_nick):
                self.bot_in_channel = True
                self.bot_is_op = "@" in name[:len(name) - len(nick)]
                continue
            actions.extend(self.irc_joined(key, channel, nick, now))
        return actions

    def irc_mode(self, key: ConnectionKey, channel: str, modes: str, arguments, now: float = 0.0) -> list:
        """A channel MODE: only whether the bot is a channel operator (``+o``/``-o`` on its nick) matters."""
        if not self._from_bot(key, channel):
            return []
        arguments = list(arguments)
        always, when_set = _modes_with_arguments(self.nicks.isupport)
        adding = True
        for letter in modes:
            if letter in "+-":
                adding = letter == "+"
                continue
            takes = letter in always or (adding and letter in when_set)
            argument = arguments.pop(0) if takes and arguments else None
            if letter == "o" and argument is not None and self.fold(argument) == self.fold(self.bot_nick):
                self.bot_is_op = adding
        return []

    def irc_parted(self, key: ConnectionKey, channel: str, nick: str, reason: str = "", now: float = 0.0) -> list:
        if not self._from_bot(key, channel):
            return []
        if self.fold(nick) == self.fold(self.bot_nick):
            self.bot_in_channel = self.bot_is_op = False
            return []
        self.leaving.pop(self.fold(nick), None)
        return self._irc_user_gone(nick)

    def irc_quit(self, key: ConnectionKey, nick: str, reason: str = "", now: float = 0.0) -> list:
        if not self._from_bot(key):
            return []
        self.leaving.pop(self.fold(nick), None)
        return self._irc_user_gone(nick)

    def _irc_user_gone(self, nick: str) -> list:
        user = self.irc_users.pop(self.fold(nick), None)
        self.pending.pop(self.fold(nick), None)
        self.marked_next.pop(self.fold(nick), None)
        if user is None or not user.in_room:
            return []
        return [MucLeave(self.room, user.muc_nick, user.jid)]

    def irc_kicked(self, key: ConnectionKey, channel: str, nick: str, by: str, reason: str = "",
                   now: float = 0.0) -> list:
        """A KICK in the channel: of an XMPP occupant's connection, of the bot, or of an IRC user."""
        if not self._ours(channel):
            return []
        occupant = self._occupant_by_irc_nick(nick)
        if occupant is not None and occupant.connected:
            if key not in (occupant.key, self.bot_key):
                return []
            if key == self.bot_key and occupant.kicked_on_irc:
                return []
            occupant.kicked_on_irc = True
            text = KICKED_FROM_CHANNEL_TEXT.format(nick=occupant.muc_nick)
            actions = self._disconnect(occupant, KICKED_FROM_ROOM_REASON) + self._promote_relayed(now)
            if key == self.bot_key:
                self.leaving.pop(self.fold(nick), None)  # the bot heard it leave: nothing more comes from it
            return actions + [self._gateway_says(text),
                              Audit("kicked-on-irc", RULE_KICKED_ON_IRC, self.room, f"{nick} by {by}: {reason}")]
        if not self._from_bot(key):
            return []
        if self.fold(nick) == self.fold(self.bot_nick):
            self.bot_in_channel = self.bot_is_op = False
            return [Audit("bot-kicked", RULE_KICKED_ON_IRC, self.room, f"by {by}: {reason}")]
        self.leaving.pop(self.fold(nick), None)
        user = self.irc_users.pop(self.fold(nick), None)
        if user is None or not user.in_room:
            return []
        if self.listener_is_moderator:
            return [MucKick(self.room, user.muc_nick, self.listener_jid, KICKED_FROM_CHANNEL_REASON),
                    Audit("kicked-on-irc", RULE_KICKED_ON_IRC, self.room, f"{nick} by {by}: {reason}")]
        return [MucLeave(self.room, user.muc_nick, user.jid)]

    def irc_nick_changed(self, key: ConnectionKey, old: str, new: str, now: float = 0.0) -> list:
        """NICK: an IRC user's occupant follows it; an occupant's own connection that got another nick is noted."""
        occupant = self._occupant_by_key(key)
        if occupant is not None:
            # Every connection in the channel hears every NICK: only its own (forced by the server) renames it.
            if occupant.nick_on_irc is not None and self.fold(old) == self.fold(occupant.nick_on_irc):
                self._left_channel(old)
                occupant.irc_nick = occupant.nick_on_irc = new
            return []
        if not self._from_bot(key):
            return []
        if self.fold(old) == self.fold(self.bot_nick):
            self.bot_nick = new
            return []
        own = self._own_irc_nick(old) or self._own_irc_nick(new)
        self.leaving.pop(self.fold(old), None)
        if own:
            return []
        user = self.irc_users.pop(self.fold(old), None)
        if user is None:
            return []
        user.irc_nick = new
        self.irc_users[self.fold(new)] = user
        # The new nick crosses to the room only if judged (``nick_from_irc``) and within ``renames`` a minute;
        # otherwise its occupant keeps the room nick it has (or, refused on joining, stays out), audited.
        judged = self.labels.nick_from_irc(new)
        if isinstance(judged, RefusedFromIrc):
            return self._notice(self.bot_key, new, judged.own_text, now) + [
                Audit("nick-refused", judged.rule_id, self.room, judged.detail)]
        if not self._rename_allowed(user.renamed_at, now):
            return [Audit("rename-refused", RULE_RENAME_RATE, self.room, f"{old} -> {new}")]
        old_muc_nick = user.muc_nick
        user.muc_nick = self._free_muc_nick(self.nicks.muc_nick_for(new), skip=user)
        if user.refused:
            user.refused, user.in_room = False, True
            return [MucJoin(self.room, user.muc_nick, user.jid)]
        if not user.in_room or user.muc_nick == old_muc_nick:
            return []
        return [MucNick(self.room, old_muc_nick, user.jid, user.muc_nick)]

    def irc_topic(self, key: ConnectionKey, channel: str, nick: str | None, topic: str, now: float = 0.0) -> list:
        """The channel's topic (set by ``nick``, or read on joining): the room's subject, from that IRC user."""
        if not self._from_bot(key, channel) or (nick is not None and self._own_irc_nick(nick)):
            return []
        labelled = self.labels.from_irc(formatting_to_styling(topic))
        if isinstance(labelled, RefusedFromIrc):
            return [Audit("topic-refused", labelled.rule_id, self.room, f"{nick}: {labelled.detail}")]
        if isinstance(labelled, MarkingOnly):
            labelled = Labelled("", labelled.label, mapped=True)
        if labelled.text == self.room_subject:
            return []  # the topic found on (re)joining the channel, the room has it already
        self.room_subject = labelled.text
        user = self.irc_users.get(self.fold(nick)) if nick is not None else None
        as_nick, from_jid = ((user.muc_nick, user.jid) if user is not None and user.in_room
                             else (self.room_nick, self.listener_jid))
        return [MucSubject(self.room, as_nick, from_jid, labelled.text, labelled.label,
                           self.labels.securitylabel(labelled.label))]

    def irc_message(self, key: ConnectionKey, target: str, nick: str, kind: str, text: str, source: str | None = None,
                    now: float = 0.0) -> list:
        """
        A PRIVMSG, ACTION or NOTICE: to the channel (heard by the bot) it
        reaches the room; a private one to an occupant's connection is
        refused with a notice.  ``source`` is ``nick!user@host`` when known
        (for the budget a split line filled).
        """
        if self._own_irc_nick(nick):
            return []
        if not self._ours(target):
            if key.is_bot or self._occupant_by_key(key) is None or kind == "notice":
                return []
            return self._notice(key, nick, PRIVATE_REFUSED_TEXT, now) + [
                Audit("private-refused", RULE_PRIVATE_REFUSED, self.room, nick)]
        if not self._from_bot(key, target):
            return []
        if kind == "privmsg":
            ctcp = read_ctcp(text)
            if ctcp is not None:
                if ctcp[0] != "ACTION":
                    return [Audit("ctcp-refused", RULE_CTCP_REFUSED, self.room, f"{nick}: {ctcp[0] or '?'}")]
                kind, text = "action", ctcp[1]
        folded = self.fold(nick)
        actions = self.due(now)
        if kind == "notice" and folded not in self.irc_users:
            return actions + self._to_room(nick, "notice", without_controls(text), now)
        if folded not in self.irc_users:
            return actions + self._to_room(nick, kind, text, now)  # no occupant of its own: no lines held for it
        if kind == "notice":
            return actions + self._to_room(nick, "notice", without_controls(text), now)
        budget = self._budget_of(source or nick, target)
        filled = len(text.encode("utf-8")) >= budget - JOIN_SLACK_BYTES
        held = self.pending.get(folded)
        if held is not None and held.kind == kind:
            held.parts.append(text)
            held.size += len(text.encode("utf-8")) + 1
            if filled and held.size < self.joined_message_bytes and now < held.due + self.join_window:
                held.due = now + self.join_window
                return actions
            del self.pending[folded]
            return actions + self._to_room(nick, kind, " ".join(held.parts), now)
        if held is not None:
            actions += self._flush(folded, now)
        if filled and self.join_window > 0:
            self.pending[folded] = PendingLines(kind, [text], len(text.encode("utf-8")), now + self.join_window)
            return actions
        return actions + self._to_room(nick, kind, text, now)

    def _notice(self, key: ConnectionKey, nick: str, text: str, now: float) -> list:
        """The gateway's own notice to an IRC user, at most one per ``REFUSAL_NOTICE_SECONDS`` for the bridge:
        IRC users choose how often they are refused, and each notice waits in a connection's bounded queue
        before that connection's room messages."""
        if now < self._notice_due:
            return []
        self._notice_due = now + REFUSAL_NOTICE_SECONDS
        return [IrcSay(key, nick, (text,), notice=True)]

    def _budget_of(self, source: str, target: str) -> int:
        nick, _, rest = source.partition("!")
        user, _, host = rest.partition("@")
        prefix = source_prefix_bytes(nick, user or "~" + "u" * 10, host or "h" * HOST_ALLOWANCE)
        try:
            return privmsg_budget(target, prefix, line_bytes=self.nicks.isupport.linelen)
        except ValueError:
            return 4

    def due(self, now: float) -> list:
        """Held IRC lines whose window has passed, said in the room now; relayed occupants the rate of opening
        held back get their connections."""
        actions = []
        for folded in [f for f, held in self.pending.items() if held.due <= now]:
            actions += self._flush(folded, now)
        for occupant in [o for o in self.occupants.values() if o.nick_due is not None and o.nick_due <= now]:
            if self._rename_allowed(occupant.renamed_at, now):
                actions += self._cross_nick(occupant, now)
            else:
                occupant.nick_due = occupant.renamed_at[0] + RENAME_SECONDS
        while True:
            opened = self._promote_relayed(now)
            if not opened:
                return actions
            actions += opened

    def wake_at(self) -> float | None:
        """When ``due`` next has something to do (None: nothing is held or waits for the rate of opening)."""
        times = [held.due for held in self.pending.values()]
        times += [o.nick_due for o in self.occupants.values() if o.nick_due is not None]
        if (self._relayed() and len(self._opened_at) >= self.connection_opens
                and self._connections < self.max_connections):
            times.append(self._opened_at[0] + CONNECTION_OPEN_SECONDS)
        return min(times, default=None)

    def _flush(self, folded: str, now: float) -> list:
        held = self.pending.pop(folded, None)
        user = self.irc_users.get(folded)
        if held is None or user is None:
            return []
        return self._to_room(user.irc_nick, held.kind, " ".join(held.parts), now)

    def _to_room(self, nick: str, kind: str, text: str, now: float) -> list:
        """IRC text said in the room: by the IRC user's occupant, or, for an IRC user without one (past
        ``max_irc_users``, or not seen joining), by the listener as ``<nick> text`` (``* nick text``)."""
        folded = self.fold(nick)
        user = self.irc_users.get(folded)
        if user is not None and not user.in_room:
            return []  # kept out of the room (a room moderator's kick, a refused join)
        name = without_controls(nick)
        if kind == "notice" or user is None:
            # The nick is shown in the text (-nick- or <nick>): judged as it is shown, as a joining nick is.
            shown = self.labels.nick_from_irc(name)
            if isinstance(shown, RefusedFromIrc):
                return self._notice(self.bot_key, nick, shown.own_text, now) + [
                    Audit("nick-refused", shown.rule_id, self.room, shown.detail)]
        text = formatting_to_styling(text)
        if len(text.encode("utf-8")) > self.joined_message_bytes:
            return [Audit("refused", RULE_JOINED_TOO_LONG, self.room, f"{nick}: {len(text.encode('utf-8'))} bytes")]
        labelled = self.labels.from_irc(text)
        if isinstance(labelled, RefusedFromIrc):
            return self._notice(self.bot_key, nick, labelled.own_text, now) + [
                Audit("refused", labelled.rule_id, self.room, f"{nick}: {labelled.detail}")]
        if isinstance(labelled, MarkingOnly):
            if user is not None:
                self.marked_next[folded] = (labelled.label, now + max(self.join_window, 1.0))
            return []
        label = labelled.label
        marked = self.marked_next.pop(folded, None)
        if marked is not None and now <= marked[1] and not labelled.mapped:
            label = marked[0]
        body = labelled.text
        if kind == "notice":
            body = f"-{name}- {body}"
        elif user is None:
            body = f"* {name} {body}" if kind == "action" else f"<{name}> {body}"
        elif kind == "action":
            body = ME_PREFIX + body
        as_nick, from_jid = (self.room_nick, self.listener_jid) if kind == "notice" or user is None \
            else (user.muc_nick, user.jid)
        return [MucSay(self.room, as_nick, from_jid, body, label, self.labels.securitylabel(label))]

    def irc_connected(self, key: ConnectionKey, nick: str) -> list:
        """A connection registered as ``nick`` (a connection may have needed another nick than asked)."""
        if key == self.bot_key:
            self.bot_nick = nick
            return []
        occupant = self._occupant_by_key(key)
        if occupant is not None and occupant.connected:
            if occupant.nick_on_irc is not None and self.fold(occupant.nick_on_irc) != self.fold(nick):
                self._left_channel(occupant.nick_on_irc)  # reconnected under another nick (a rename by reconnecting)
            occupant.irc_nick = occupant.nick_on_irc = nick
            occupant.registered = True
        return []

    def irc_connection_lost(self, key: ConnectionKey, reason: str = "") -> list:
        """
        A connection is gone (it reconnects by itself): for the bot, every
        IRC user's occupant leaves the room (the bot's NAMES brings them back
        after it rejoins); an occupant's messages go through the bot meanwhile.
        """
        if key == self.bot_key:
            self.bot_in_channel = self.bot_is_op = False
            self.leaving.clear()  # the bot rejoins and reads NAMES afresh: no line before it is heard again
            actions = []
            for folded in list(self.irc_users):
                actions += self._irc_user_gone(self.irc_users[folded].irc_nick)
            return actions + [Audit("connection-lost", "irc:connection-lost", self.room, reason)]
        occupant = self._occupant_by_key(key)
        if occupant is not None:
            occupant.registered = False  # it reconnects by itself; the bot relays it meanwhile
        return []


DEFAULT_CHANMODES = "beI,k,l,imnpst"  # RFC 2811's channel modes, by ISUPPORT CHANMODES' four kinds


def _modes_with_arguments(isupport) -> tuple[set, set]:
    """The channel modes that always take an argument (lists, keys, membership prefixes) and those that take one
    only when set (limits), from the server's ISUPPORT CHANMODES and PREFIX (RFC 2811's when it did not say)."""
    kinds = (isupport.tokens.get("CHANMODES") or DEFAULT_CHANMODES).split(",") + ["", "", ""]
    return set(kinds[0]) | set(kinds[1]) | set(isupport.prefixes()) | {"o", "v"}, set(kinds[2])


def _says_something(text: str | None) -> bool:
    """Whether ``text`` leaves anything but white space for IRC once control characters and ``/me`` are gone."""
    shown = text_for_irc(text or "")
    if shown.startswith(ME_PREFIX):
        shown = shown[len(ME_PREFIX):]
    return bool(shown.strip())


def relay_name(muc_nick: str) -> str:
    """The name the bot's ``<nick> text`` relay shows for ``muc_nick``: no control character, at most
    ``RELAY_NAME_BYTES`` UTF-8 bytes (cut on a code point), so the text keeps the room a line has."""
    name = without_controls(muc_nick).encode("utf-8", errors="replace")
    return name[:RELAY_NAME_BYTES].decode("utf-8", errors="ignore")


def _groupchat(uri, from_jid, room, name, text, securitylabel) -> domish.Element:
    """A groupchat message to ``room`` holding ``text`` in its ``name`` element (body, subject), labelled."""
    message = domish.Element((uri, "message"))
    message["from"], message["to"], message["type"] = from_jid, room, "groupchat"
    message.addElement(name, content=text)
    if securitylabel is not None:
        message.addChild(securitylabel)
    return message


def build_bridges(config, settlement) -> list:
    """
    Every bridge of an irc.toml (guard.app.irc_config.IrcConfig) over one
    ``settlement``: one NickBook per network (bounded by
    ``limits.nick_book_entries``, the bot's nick reserved) and one
    ``ConnectionSlots`` (the network's ``max_connections`` less its bot),
    drawing on one for the whole gateway (``limits.total_connections`` less
    one bot connection per network).
    """
    gateway = ConnectionSlots(config.limits.total_connections - len(config.networks))
    books, slots = {}, {}
    for name, network in config.networks.items():
        books[name] = NickBook(Isupport(), reserved=(network.nick,), max_entries=config.limits.nick_book_entries)
        slots[name] = ConnectionSlots(network.max_connections - 1, parent=gateway)
    return [Bridge(bridge, config.networks[bridge.network], BridgeLabels.for_bridge(bridge), settlement,
                   books[bridge.network], config.xmpp.component, slots[bridge.network],
                   config.limits.joined_message_bytes, config.limits.irc_users_per_bridge,
                   config.limits.connections_per_minute, config.limits.renames_per_minute)
            for bridge in config.bridges]


def _muc_user(stanza: domish.Element) -> tuple[set, dict]:
    """The status codes and the item attributes (role, affiliation, nick; reason) of a presence's muc#user x."""
    statuses, item = set(), {}
    for child in child_elements(stanza):
        if child.uri != MUC_USER_NS or child.name != "x":
            continue
        for part in child_elements(child):
            if part.name == "status" and part.getAttribute("code"):
                statuses.add(part["code"])
            elif part.name == "item":
                item = {name: value for name, value in part.attributes.items() if isinstance(name, str)}
                for inner in child_elements(part):
                    if inner.name == "reason":
                        item["reason"] = text_of(inner)
    return statuses, item


def _only_subject(stanza: domish.Element) -> str | None:
    """The text of a message's ``<subject/>`` when it has one and no ``<body/>`` (a subject change), else None."""
    names = {child.name: child for child in child_elements(stanza) if child.uri == stanza.uri}
    if "subject" not in names or "body" in names:
        return None
    return text_of(names["subject"])


def _error_of(reply: domish.Element) -> tuple[str, str | None]:
    """(condition, text) of an error reply the guard built (guard.core.bounce.error_reply)."""
    condition, text = "undefined-condition", None
    for error in child_elements(reply):
        if error.name != "error":
            continue
        for part in child_elements(error):
            if part.name == "text":
                text = text_of(part)
            else:
                condition = part.name
    return condition, text


__all__ = ["Bridge", "ConnectionKey", "ConnectionSlots", "IrcSay", "IrcJoin", "IrcPart", "IrcTopic", "IrcKick",
           "IrcNick", "MucJoin", "MucLeave", "MucNick", "MucSay", "MucSubject", "MucKick", "BounceToSender", "Audit",
           "error_reply"]
