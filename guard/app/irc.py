"""
The IRC gateway's composition root (``guard-irc --config irc.toml``, or
``python -m guard.app.irc --config irc.toml [--check]``), beside
``guard.app.service``: it wires the XEP-0114 component
(``guard.edges.irc.component``), the IRC connections
(``guard.edges.irc.connections``), the bridges' decisions
(``guard.edges.irc.bridge``, ``labels``) and the carrier whose far side is IRC
(``guard.edges.irc.carrier``), around a ``Settlement`` observed by the
books, the audit trail and the metrics, so that the books balance as they
do in the guard: every room message taken toward IRC, and every IRC message
taken toward the room, is accepted, judged and settled exactly once.

Addresses the gateway uses on the XMPP side (all in the component domain):

- the bridge's own occupant, through which it hears the room:
  ``<component>/<room>`` joined as the bridge's ``room_nick``;
- one occupant per IRC nick in the channel:
  ``<escaped nick>%<network>@<component>``, joined as the MUC nick the
  network's nick book gives (``NickBook.muc_nick_for``).

A room message refused toward IRC bounces to its sender's real JID (the room
shows real JIDs to the bridge's occupant, or the bounce cannot be addressed:
then it is counted and audited as a lost bounce, never sent to the occupant
JID, which MUC services punish by kicking the bridge).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
from dataclasses import dataclass, replace

from twisted.logger import Logger
from zope.interface import implementer

from guard.core.addressing import parse_jid
from guard.core.books import Books
from guard.core.pipeline import Direction, Judgement
from guard.core.settlement import Deliver, ReturnBounce, Settlement
from guard.core.vocabulary import DELAY_NS, MUC_USER_NS, SERVER_NS
from guard.edges.audit import AuditObserver
from guard.edges.carriers import ICarrierOwner
from guard.edges.irc.carrier import REFUSED_CONDITION, IrcCarrier, IrcRelease
from guard.edges.irc.bridge import (REFUSAL_NOTICE_SECONDS, STATUS_BANNED, STATUS_KICKED, STATUS_NICK_CHANGED, STATUS_SELF,
                                    Audit, BounceToSender, IrcJoin, IrcKick, IrcNick, IrcPart, IrcSay, IrcTopic,
                                    MucJoin, MucKick, MucLeave, MucNick, MucSay, MucSubject, build_bridges)
from guard.edges.irc.component import ComponentDialler, ComponentStreamFactory, NotSent
from guard.edges.metrics import StanzaCounts

log = Logger()
RULE_UNCONFIRMED = "irc:delivery-unconfirmed"  # written to IRC, the server's answer never came (in doubt)


# The rules the gateway's own settlements name (beside the bridge policy's rule ids).
FROM_IRC_RULE = "irc:from-irc"  # what said on IRC reaches the room under (labelled by the bridge's policy)
NO_REAL_JID = "the sender's real JID is not known to the bridge: the bounce cannot be addressed"

EXIT_OK = 0
EXIT_CONFIG = 2


# -- what the room says about its occupants ------------------------------------------------

@dataclass(frozen=True)
class RoomPresence:
    """What an occupant presence from a room says, read strictly (anything else: None)."""

    room: str
    nick: str
    available: bool
    real_jid: str | None = None  # the occupant's real JID, when the room shows it
    own: bool = False  # status 110: about one of the gateway's own occupants
    new_nick: str | None = None  # status 303: the occupant is now called this
    kicked: bool = False  # status 307 (or 301, banned)
    error: str | None = None  # a presence error (our join was refused): its condition


def read_room_presence(stanza, room_service: str) -> RoomPresence | None:
    """An occupant presence from ``room@room_service/nick``, or None when the stanza is not one."""
    if stanza.name != "presence":
        return None
    sender = parse_jid(stanza.getAttribute("from"))
    if sender is None or sender.host != room_service or not sender.user or not sender.resource:
        return None
    room = f"{sender.user}@{sender.host}"
    kind = stanza.getAttribute("type")
    if kind == "error":
        condition = next((child.name for error in stanza.elements(SERVER_NS, "error")
                          for child in error.elements() if child.name != "text"), "undefined-condition")
        return RoomPresence(room, sender.resource, False, error=condition)
    if kind not in (None, "unavailable"):
        return None
    codes, real_jid, new_nick = set(), None, None
    for x in stanza.elements(MUC_USER_NS, "x"):
        for child in x.elements():
            if child.uri != MUC_USER_NS:
                continue
            if child.name == "status" and child.getAttribute("code"):
                codes.add(child["code"])
            elif child.name == "item":
                jid = parse_jid(child.getAttribute("jid"))
                real_jid = jid.full() if jid is not None else None
                new_nick = child.getAttribute("nick")
    return RoomPresence(room, sender.resource, kind is None, real_jid, STATUS_SELF in codes,
                        new_nick if STATUS_NICK_CHANGED in codes else None, bool(codes & {STATUS_KICKED, STATUS_BANNED}))


def write_json_atomically(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2, sort_keys=True, default=str)
    os.replace(temporary, path)



# -- the gateway ------------------------------------------------------------------

XMPP_SIDE = "xmpp"
IRC_SIDE = "irc"
TOWARD_ROOM = Direction(IRC_SIDE, XMPP_SIDE)
COMPONENT_DOWN = "remote-server-not-found"  # what a message toward the room bounces with while Prosody is away
STATUS_SECONDS = 5.0  # how often the status file is rewritten
SHUTDOWN_FLUSH_SECONDS = 0.3  # what was written at stop gets this long to leave before the process ends
FROM_IRC_NOT_DELIVERED = "The gateway could not deliver your message to the XMPP room."
# The bot's FROM_IRC_NOT_DELIVERED notices (each waits in its bounded queue before the room messages it relays):
# at most one per IRC nick in this time, and one per bridge in REFUSAL_NOTICE_SECONDS; the rest are lost bounces.
NOT_DELIVERED_NOTICE_SECONDS = 60.0
NOTICE_RATE_LIMITED = "the IRC user was told recently: notices are rate-limited"
SERVICE_NAME = "xmpp-guard IRC gateway"


# What a bridge is asked for each IRC event (the Bridge method, and whether it takes the time).
BRIDGE_EVENTS = {
    "connected": ("irc_connected", False), "connection_lost": ("irc_connection_lost", False),
    "joined": ("irc_joined", True), "parted": ("irc_parted", True), "quit": ("irc_quit", True),
    "kicked": ("irc_kicked", True), "nick_changed": ("irc_nick_changed", True), "topic": ("irc_topic", True),
    "names": ("irc_names", True), "message": ("irc_message", True), "mode": ("irc_mode", True),
}


@dataclass(frozen=True, eq=False)
class TopicToken:
    """What a connection reports back (sent or lost) for a room subject's TOPIC line: the parcel it settles
    (eq=False: two equal subjects are two tokens; a connection keys its tokens by identity)."""

    parcel: object


class ConnectionEvents:
    """The ``IIrcEvents`` listener of one IRC connection: tells the gateway which connection (``key``) heard what."""

    def __init__(self, gateway, key):
        self.gateway = gateway
        self.key = key

    def connected(self, network, occupant, nick):
        self.gateway.irc_event(self.key, "connected", nick)

    def connection_lost(self, network, occupant, reason):
        self.gateway.irc_event(self.key, "connection_lost", reason)

    def joined(self, network, channel, nick):
        self.gateway.irc_event(self.key, "joined", channel, nick)

    def parted(self, network, channel, nick, reason):
        self.gateway.irc_event(self.key, "parted", channel, nick, reason)

    def quit(self, network, nick, reason):
        self.gateway.irc_event(self.key, "quit", nick, reason)

    def kicked(self, network, channel, nick, by, reason):
        self.gateway.irc_event(self.key, "kicked", channel, nick, by, reason)

    def nick_changed(self, network, old, new):
        self.gateway.irc_event(self.key, "nick_changed", old, new)

    def topic(self, network, channel, text, by):
        self.gateway.irc_event(self.key, "topic", channel, by, text)

    def names(self, network, channel, nicks):
        self.gateway.irc_event(self.key, "names", channel, nicks)

    def mode(self, network, channel, modes, arguments):
        self.gateway.irc_event(self.key, "mode", channel, modes, arguments)

    def message(self, network, target, nick, kind, text, tags):
        self.gateway.irc_event(self.key, "message", target, nick, kind, text, None)

    def sent(self, token):
        if isinstance(token, TopicToken):
            self.gateway.delivered(token.parcel)
        elif token is not None:
            self.gateway.carrier.sent(token)

    def refused(self, token, reason):
        if isinstance(token, TopicToken):
            self.gateway.undeliverable(token.parcel, REFUSED_CONDITION, f"the IRC server refused it: {reason}")
        elif token is not None:
            self.gateway.carrier.refused_by_irc(token, reason)

    def unconfirmed(self, token, reason):
        if isinstance(token, TopicToken):
            self.gateway.delivered_unconfirmed(token.parcel, reason)
        elif token is not None:
            self.gateway.carrier.unconfirmed(token, reason)

    def lost(self, token, reason):
        if isinstance(token, TopicToken):
            self.gateway.undeliverable(token.parcel, "remote-server-not-found", reason)
        elif token is not None:
            self.gateway.carrier.lost(token, reason)


@implementer(ICarrierOwner)
class IrcGateway:
    """
    The running gateway, with no reactor of its own: ``clock`` (callLater,
    seconds), ``irc_connector(server, factory) -> Deferred`` (each IRC
    connection) and ``component_endpoint`` (Prosody's component port) are
    injected.  It executes what the bridges decide, settles every message
    each way in one ``Settlement`` (books, audit trail, counts) and keeps
    the facts the status file, the metrics and the management page show.
    """

    def __init__(self, config, clock, irc_connector, component_endpoint, audit, random_source=random.random):
        from collections import Counter

        self.config = config
        self.clock = clock
        self.audit = audit
        self.random = random_source
        self.irc_connector = irc_connector
        self.books = Books()
        self.counts = StanzaCounts(clock)
        self.settlement = Settlement(config.topology, (self.books, AuditObserver(audit), self.counts),
                                     config.settings.audit_failure == "stop")
        self.bridges = build_bridges(config, self.settlement)
        self.counts.rules_in_force(rule.id for bridge in config.bridges for rule in getattr(bridge.policy, "rules", ()))
        self.by_room = {bridge.room: bridge for bridge in self.bridges}
        self.carrier = IrcCarrier(self, self._say)
        self.component = None  # the open component stream, or None
        self.dialler = ComponentDialler(component_endpoint,
                                        ComponentStreamFactory(self, config.xmpp.component, config.xmpp.secret, clock),
                                        clock, random_source)
        self.connections: dict = {}  # ConnectionKey -> IrcConnection
        self.real_jids: dict[str, str] = {}  # occupant JID (room/nick) -> the real JID the room showed
        self.refusals = Counter()  # rule -> refusals the bridges audited (beside the settlement's)
        self.actions = Counter()  # action kind -> how many were carried out
        self.held_bytes = 0
        self.told_at: dict = {}  # (room, folded IRC nick) -> when the bot last told it, oldest first
        self.notice_due: dict[str, float] = {}  # room -> when its bridge's next such notice may go
        self.irc_congested = False
        self.started = clock.seconds()
        self._ids = 0
        self._due_call = None
        self.stopping = False
        self.policy_reloads = 0  # reloads that swapped the bridges' policies in

    # -- lifecycle ------------------------------------------------------------------

    def reload_policies(self, load=None) -> bool:
        """
        SIGHUP (and the management page's reload): read the configuration
        file again and swap in every bridge's policy and label settings
        (FLOT, ``map_markings``, checked against the new policy), all or
        none.  A configuration or policy that does not load, or that no
        longer names every running bridge (room, network, channel), is
        refused and logged (the checker names the file, line and rule); the
        policies in force stay.  Other keys take effect at the next start.
        Room messages already released to an IRC connection leave as judged.
        """
        from guard.edges.audit import AuditUnavailable
        from guard.edges.irc.labels import BridgeLabels

        from .config import ConfigError
        from .irc_config import load_irc_config

        try:
            fresh = (load or load_irc_config)(self.config.path)
        except ConfigError as problem:
            log.error("policy reload refused, the policies in force stay: {problem}", problem=str(problem))
            return False
        wanted = {(bridge.room, bridge.network, bridge.channel): bridge for bridge in fresh.bridges}
        missing = [bridge.room for bridge in self.bridges if (bridge.room, bridge.network, bridge.channel) not in wanted]
        if missing:
            log.error("policy reload refused, the policies in force stay: {path} no longer bridges {rooms} "
                      "(bridges change at the next start)", path=self.config.path, rooms=missing)
            return False
        labels = {bridge.room: BridgeLabels.for_bridge(wanted[(bridge.room, bridge.network, bridge.channel)])
                  for bridge in self.bridges}
        for bridge in self.bridges:
            bridge.labels = labels[bridge.room]
        self.counts.rules_in_force(rule.id for bridge in fresh.bridges for rule in getattr(bridge.policy, "rules", ()))
        self.policy_reloads += 1
        files = sorted({bridge.policy_path for bridge in fresh.bridges})
        log.info("policies reloaded: {files}", files=files)
        try:
            self.audit.record("policy-reload", rule="guard:policy-reload", rev=1, config=self.config.path, files=files)
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}", problem=str(problem))
            self.settlement.halt(f"audit trail unavailable: {problem}")
        return True

    def start(self) -> None:
        """Dial Prosody, and connect every network's bot (it joins every bridged channel of its network)."""
        self.dialler.start()
        for name, network in self.config.networks.items():
            bot = None
            for bridge in self.bridges:
                if bridge.network == name:
                    bot = bridge.bot_key
                    self._open_connection(bot, network.nick).join(bridge.channel)
            if bot is None:
                log.warn("irc {network}: no bridge uses this network; not connecting", network=name)

    def stop(self) -> None:
        """Stop at once: what waits for IRC bounces, every connection quits, the component stream closes."""
        self.stopping = True
        if self._due_call is not None and self._due_call.active():
            self._due_call.cancel()
        self.carrier.shut_down()
        for connection in list(self.connections.values()):
            connection.stop()
        if self.component is not None:
            self.component.close()
        self.dialler.stop()

    # -- the XMPP side (the component stream's owner) --------------------------------------

    def component_opened(self, stream) -> None:
        self.component = stream
        for bridge in self.bridges:
            self._run(bridge, bridge.xmpp_ready())

    def component_closed(self, stream, condition) -> None:
        if stream is not self.component:
            return
        self.component = None
        self.real_jids.clear()
        for bridge in self.bridges:
            self._run(bridge, bridge.xmpp_lost())

    def stanza_arrived(self, stream, element, size) -> None:
        """A stanza from Prosody to the component: a room's presence or message to a bridge, or nothing we serve."""
        try:
            self._from_xmpp(element, size)
        except Exception:  # noqa: BLE001 - a fault is logged; a room message was settled by the bridge or not taken
            log.failure("irc gateway: a fault on a stanza from the XMPP side")

    def _from_xmpp(self, element, size) -> None:
        sender = parse_jid(element.getAttribute("from"))
        room = sender.userhost() if sender is not None else None
        bridge = self.by_room.get(room)
        now = self.clock.seconds()
        if element.name == "iq":
            self._answer_iq(element)
            return
        if bridge is None:
            if element.getAttribute("type") == "error":
                log.info("irc gateway: an error from {sender}", sender=element.getAttribute("from"))
            return
        if element.name == "presence":
            if element.getAttribute("to") == bridge.listener_jid:
                self._note_real_jid(element)
            self._run(bridge, bridge.room_presence(element, now))
        elif element.name == "message":
            if element.getAttribute("type") == "error":
                log.info("irc gateway: the room {room} refused a message of ours", room=room)
                return
            if next(element.elements(DELAY_NS, "delay"), None) is not None:
                return  # history replayed by the room: said before the bridge listened
            self._run(bridge, bridge.room_message(element, size, now))
        self._schedule_due()

    def _note_real_jid(self, element) -> None:
        presence = read_room_presence(element, self.config.xmpp.room_service)
        if presence is None or presence.error is not None:
            return
        occupant = f"{presence.room}/{presence.nick}"
        if presence.available and presence.real_jid:
            self.real_jids[occupant] = presence.real_jid
        elif not presence.available:
            real = self.real_jids.pop(occupant, None)
            if presence.new_nick and real:
                self.real_jids[f"{presence.room}/{presence.new_nick}"] = real

    def _answer_iq(self, element) -> None:
        """IQs to the component: nothing is served; a get or set gets service-unavailable (never a result)."""
        from guard.core.bounce import error_reply

        if element.getAttribute("type") in ("get", "set"):
            self._send(error_reply(element, "service-unavailable"))

    def _send(self, element) -> bool:
        """Write ``element`` on the component stream: False when it is not open (or the stanza cannot be written)."""
        if self.component is None or not self.component.is_open:
            return False
        try:
            self.component.send(element)
        except NotSent as problem:
            log.warn("irc gateway: not written to the XMPP side: {reason}", reason=problem.reason)
            return False
        return True

    def _next_id(self) -> str:
        self._ids += 1
        return f"irc-gw-{self._ids}"

    # -- the IRC side ------------------------------------------------------------------------

    def _open_connection(self, key, nick):
        """The IRC connection of ``key``, opened (as ``nick``) if it is not yet."""
        from guard.edges.irc.client import IrcConnection, IrcIdentity

        connection = self.connections.get(key)
        if connection is None:
            network = self.config.networks[key.network]
            connection = IrcConnection(irc_server(network), IrcIdentity(nick, network.user, network.realname),
                                       self.clock, self.irc_connector, ConnectionEvents(self, key), occupant=key,
                                       limits=connection_limits(self.config.limits), random=self.random)
            self.connections[key] = connection
            connection.start()
        return connection

    def _close_connection(self, key) -> None:
        connection = self.connections.pop(key, None)
        if connection is not None:
            connection.stop()

    def _bridges_for(self, key) -> list:
        if key.room is not None:
            bridge = self.by_room.get(key.room)
            return [bridge] if bridge is not None else []
        return [bridge for bridge in self.bridges if bridge.network == key.network]

    def irc_event(self, key, event, *args) -> None:
        """What one IRC connection heard, to each bridge it concerns, and the actions they answer carried out."""
        if self.stopping:
            return
        now = self.clock.seconds()
        if event in ("connected", "joined", "names") and key.room is None:
            # The server's 005 lines follow its 001 ("connected") and always precede the reply to our JOIN.
            self._adopt_isupport(key)
        for bridge in self._bridges_for(key):
            try:
                actions = self._ask_bridge(bridge, key, event, args, now)
            except Exception:  # noqa: BLE001 - a fault in one decision is logged; nothing was taken
                log.failure("irc gateway: a fault on the IRC event {event}", event=event)
                continue
            self._run(bridge, actions)
        self._schedule_due()

    def _adopt_isupport(self, key) -> None:
        """The bot heard its network's ISUPPORT: the nick book follows it (NICKLEN, CASEMAPPING, LINELEN),
        keeping every mapping it already gave (the same IRC nick for the same MUC nick)."""
        from guard.edges.irc.nicks import NickBook

        connection = self.connections.get(key)
        isupport = getattr(getattr(connection, "protocol", None), "isupport", None)
        bridges = [bridge for bridge in self.bridges if bridge.network == key.network]
        if isupport is None or not bridges or bridges[0].nicks.isupport == isupport:
            return
        network = self.config.networks[key.network]
        book = NickBook(isupport, reserved=(network.nick,), max_entries=self.config.limits.nick_book_entries)
        dropped = book.load(bridges[0].nicks.dump())
        if dropped:
            log.warn("irc {network}: {dropped} nick mappings do not fit the server's rules and were dropped",
                     network=key.network, dropped=dropped)
        for bridge in bridges:
            bridge.nicks = book

    @staticmethod
    def _ask_bridge(bridge, key, event, args, now) -> list:
        method, timed = BRIDGE_EVENTS[event]
        return getattr(bridge, method)(key, *args, now=now) if timed else getattr(bridge, method)(key, *args)

    def _schedule_due(self) -> None:
        """Lines held while they may be the start of a split IRC message are said when their window passes."""
        wake = min((at for at in (bridge.wake_at() for bridge in self.bridges) if at is not None), default=None)
        if self._due_call is not None and self._due_call.active():
            self._due_call.cancel()
        self._due_call = None
        if wake is not None and not self.stopping:
            self._due_call = self.clock.callLater(max(0.0, wake - self.clock.seconds()), self._due)

    def _due(self) -> None:
        self._due_call = None
        now = self.clock.seconds()
        for bridge in self.bridges:
            self._run(bridge, bridge.due(now))
        self._schedule_due()

    # -- carrying out what a bridge decided ----------------------------------------------------

    def _run(self, bridge, actions) -> None:
        for action in actions:
            self.actions[type(action).__name__] += 1
            try:
                self._carry_out(bridge, action)
            except Exception:  # noqa: BLE001 - one action's fault does not stop the others
                log.failure("irc gateway: a fault carrying out {action}", action=type(action).__name__)
                self._settle_faulted(action)

    def _settle_faulted(self, action) -> None:
        """A room message (or subject) whose action faulted bounces (internal-server-error) if still in flight:
        never left in flight for ever."""
        token = getattr(action, "token", None) if isinstance(action, (IrcSay, IrcTopic)) else None
        if token is None or not self.settlement.is_open(token.ticket):
            return
        try:
            self.undeliverable(token, "internal-server-error", "a fault carrying out the action")
        except Exception:  # noqa: BLE001 - the fault is logged; the books show the message in flight
            log.failure("irc gateway: a fault bouncing a message whose action faulted")

    def _carry_out(self, bridge, action) -> None:
        if isinstance(action, IrcSay):
            self._irc_say(action)
        elif isinstance(action, IrcJoin):
            self._open_connection(action.connection_key, action.nick).join(action.channel)
        elif isinstance(action, IrcPart):
            connection = self.connections.get(action.connection_key)
            if connection is not None:
                connection.part(action.channel, action.reason)
                if action.close:
                    self._close_connection(action.connection_key)
        elif isinstance(action, IrcTopic):
            self._irc_topic(action)
        elif isinstance(action, IrcKick):
            connection = self.connections.get(action.connection_key)
            if connection is not None:
                connection.kick(action.channel, action.nick, action.reason)
        elif isinstance(action, IrcNick):
            self._irc_nick(action)
        elif isinstance(action, (MucJoin, MucLeave, MucNick)):
            self._send(action.stanza(SERVER_NS))
        elif isinstance(action, (MucSay, MucSubject)):
            self._to_room(action.stanza(SERVER_NS))
        elif isinstance(action, MucKick):
            self._send(action.stanza(SERVER_NS, self._next_id()))
        elif isinstance(action, BounceToSender):
            self._bounce_to_sender(action.reply)
        elif isinstance(action, Audit):
            self._audit(action)
        else:
            log.error("irc gateway: an action it does not know: {action!r}", action=action)

    def _irc_say(self, action) -> None:
        kind = "notice" if action.notice else "privmsg"
        if action.token is None:  # the gateway's own notices: nothing accepted rides on them
            connection = self.connections.get(action.connection_key)
            if connection is not None:
                connection.say(action.target, list(action.lines), None, kind)
            return
        release = IrcRelease(action.connection_key, action.target, tuple(action.lines), action.notice)
        self.carrier.carry(replace(action.token, stanza=release))

    def _say(self, release, token) -> str | None:
        """The carrier's hand-over: the lines of one parcel to its connection; a refusal reason or None."""
        connection = self.connections.get(release.connection)
        if connection is None:
            return "not-connected"
        return connection.say(release.target, list(release.lines), token, "notice" if release.notice else "privmsg")

    def _irc_topic(self, action) -> None:
        """A room subject: settled when the connection reports its TOPIC line written (or lost), never when queued."""
        connection = self.connections.get(action.connection_key)
        token = None if action.token is None else TopicToken(action.token)
        refusal = "not-connected" if connection is None else connection.set_topic(action.channel, action.topic, token)
        if action.token is not None and refusal is not None:
            self.undeliverable(action.token, "remote-server-timeout", f"the topic was not taken: {refusal}")

    def _irc_nick(self, action) -> None:
        """An occupant's MUC nick changed: a NICK line on its IRC connection, behind what waits (no reconnection)."""
        connection = self.connections.get(action.connection_key)
        if connection is None:
            return
        refusal = connection.change_nick(action.nick)
        if refusal is not None:
            log.warn("irc gateway: the rename of an occupant's connection was refused: {reason}", reason=refusal)

    def _to_room(self, stanza) -> None:
        """A message (or subject) said on IRC, toward the room: accepted, passed with the IRC side's label, written."""
        stanza["id"] = self._next_id()
        size = len(stanza.toXml().encode("utf-8"))
        pair = (self.config.xmpp.component, self.config.xmpp.room_service)
        ticket = self.settlement.accept(stanza, pair, size, TOWARD_ROOM, 0, self.clock.seconds())
        if self.settlement.halted_reason is not None:
            self._settled(self.settlement.refused_while_halted(ticket))
            return
        decision = self.settlement.judged(ticket, Judgement.passed(stanza, FROM_IRC_RULE), referable=False)
        if isinstance(decision, Deliver):
            if self._send(decision.parcel.stanza):
                self.settlement.delivered(decision.parcel)
            else:
                self.undeliverable(decision.parcel, COMPONENT_DOWN, "the component stream is not open")
        else:
            self._settled(decision)

    def _settled(self, decision) -> None:
        """Our error reply the settlement answered with: to the XMPP sender, or to the IRC user as a notice."""
        if isinstance(decision, ReturnBounce):
            if decision.side == XMPP_SIDE:
                self._bounce_to_sender(decision.parcel.stanza, decision.parcel)
            else:
                self._notify_irc_user(decision.parcel)
        elif isinstance(decision, Deliver):  # never expected from a bounce: fail closed
            self.settlement.bounce_lost(decision.parcel, "an unexpected delivery")

    def _bounce_to_sender(self, reply, parcel=None) -> None:
        """
        Our error reply to a room message goes to its sender's real JID,
        never to the occupant JID (a room kicks the occupant that bounces
        errors to it); a sender whose real JID the room did not show cannot
        be told: the bounce is counted and audited as lost.
        """
        from guard.core.settlement import Parcel

        parcel = parcel or Parcel(reply, None)
        real = self.real_jids.get(reply.getAttribute("to"))
        if real is None:
            self.settlement.bounce_lost(parcel, NO_REAL_JID)
            return
        reply["to"] = real
        if not self._send(reply):
            self.settlement.bounce_lost(parcel, "the component stream is not open")

    def _notify_irc_user(self, parcel) -> None:
        """An IRC user's message did not reach the room: the bot tells them (the gateway's own text), at most once
        per NOT_DELIVERED_NOTICE_SECONDS per nick and once per REFUSAL_NOTICE_SECONDS per bridge; a bounce not told
        is counted and audited as lost."""
        recipient = parcel.stanza.getAttribute("to")
        now = self.clock.seconds()
        while self.told_at and next(iter(self.told_at.values())) <= now - NOT_DELIVERED_NOTICE_SECONDS:
            del self.told_at[next(iter(self.told_at))]
        for bridge in self.bridges:
            for user in bridge.irc_users.values():
                if user.jid != recipient:
                    continue
                told = (bridge.room, bridge.fold(user.irc_nick))
                if told in self.told_at or now < self.notice_due.get(bridge.room, now):
                    self.settlement.bounce_lost(parcel, NOTICE_RATE_LIMITED)
                    return
                connection = self.connections.get(bridge.bot_key)
                if connection is not None and connection.say(user.irc_nick, [FROM_IRC_NOT_DELIVERED], None,
                                                             "notice") is None:
                    self.told_at[told] = now
                    self.notice_due[bridge.room] = now + REFUSAL_NOTICE_SECONDS
                    return
        self.settlement.bounce_lost(parcel, "the IRC user could not be told")

    def _audit(self, action) -> None:
        from guard.core.bounce import peer_detail
        from guard.edges.audit import AuditUnavailable

        self.refusals[action.rule] += 1
        try:
            self.audit.record(action.event, rule=action.rule, rev=1, room=action.room, detail=peer_detail(action.detail))
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}", problem=str(problem))
            self.settlement.halt(f"audit trail unavailable: {problem}")

    # -- ICarrierOwner (the IRC carrier) ------------------------------------------------------

    def delivered(self, parcel) -> None:
        self.settlement.delivered(parcel)

    def delivered_unconfirmed(self, parcel, reason) -> None:
        """Written to IRC, the server's answer never came (its checkpoint timed out, or the connection ended):
        the text left the guard, so it is settled delivered, and audited as unconfirmed (in doubt)."""
        from guard.core.bounce import peer_detail
        from guard.edges.audit import AuditUnavailable

        self.settlement.delivered(parcel)
        original = getattr(parcel, "original", None)
        try:
            self.audit.record("delivery-unconfirmed", rule=RULE_UNCONFIRMED, rev=1,
                              id=original.getAttribute("id") if original is not None else None,
                              detail=peer_detail(reason))
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}", problem=str(problem))
            self.settlement.halt(f"audit trail unavailable: {problem}")

    def undeliverable(self, parcel, condition, text) -> None:
        self._settled(self.settlement.undeliverable(parcel, condition, text))

    def congested(self, carrier, reason) -> None:
        self.irc_congested = True
        log.warn("irc gateway: the IRC queue is full: room messages bounce until it drains")

    def decongested(self, carrier, reason) -> None:
        self.irc_congested = False

    def judged_again(self, parcel):
        return parcel if parcel.ticket is None or self.settlement.is_open(parcel.ticket) else None

    def count_held(self, amount) -> None:
        self.held_bytes += amount

    def count_freed(self, amount) -> None:
        self.held_bytes -= amount

    # -- what the status file, the metrics and the page read -----------------------------------

    def describe(self) -> dict:
        now = self.clock.seconds()
        component = self.component.describe() if self.component is not None else None
        return {
            "service": {"name": SERVICE_NAME, "started": self.started, "uptime": max(0.0, now - self.started),
                        "policy_reloads": self.policy_reloads,
                        "state": "halted" if self.settlement.halted_reason else "running",
                        "halted_reason": self.settlement.halted_reason},
            "books": self.books.summary(),
            "settlement": self.settlement.summary(),
            "component": component,
            "component_attempts": self.dialler.attempts,
            "carrier": self.carrier.describe(),
            "held_bytes": self.held_bytes,
            "bridges": [describe_bridge(bridge) for bridge in self.bridges],
            "connections": [dict(connection.describe(), key=describe_key(key))
                            for key, connection in sorted(self.connections.items(), key=lambda item: describe_key(item[0]))],
            "refusals": dict(self.refusals),
            "rules": {f"{direction} {rule} {verdict}": count
                      for (direction, rule, verdict), count in sorted(self.counts.rules.items())},
        }


def describe_key(key) -> str:
    return key.network if key.room is None else f"{key.network}/{key.room}/{key.serial}"


def describe_bridge(bridge) -> dict:
    return {"room": bridge.room, "network": bridge.network, "channel": bridge.channel,
            "occupants": len(bridge.occupants),
            "occupant_connections": sum(1 for occupant in bridge.occupants.values() if occupant.connected),
            "irc_users": len(bridge.irc_users), "bot_in_channel": bridge.bot_in_channel,
            "bot_is_op": bridge.bot_is_op}


def irc_server(network):
    """The IrcServer an irc.toml network describes."""
    from guard.edges.irc.client import IrcServer, SaslCredentials

    sasl = None
    if network.sasl == "plain":
        with open(network.sasl_password_file, encoding="utf-8") as source:
            sasl = SaslCredentials("PLAIN", network.sasl_user, source.readline(4096).strip())
    elif network.sasl == "external":
        sasl = SaslCredentials("EXTERNAL")
    flood = flood_rate(network.flood_burst, network.flood_interval)
    return IrcServer(network.name, network.host, network.port, network.tls, network.tls_verify, network.ca,
                     server_name=network.server_name, client_certificate=network.client_certificate,
                     client_key=network.client_key, sasl=sasl, flood=flood, charset_fallback=network.charset)


def flood_rate(burst, interval):
    """The token bucket of a network's connections: ngIRCd's rate, with the configured burst (lines) and interval
    (seconds per line) in place of its own where set."""
    from guard.edges.irc.client import NGIRCD_RATE

    changes = {}
    if burst is not None:
        changes["burst_lines"] = burst
    if interval is not None:
        changes["seconds_per_line"] = interval
    return replace(NGIRCD_RATE, **changes)


def connection_limits(limits):
    """The per-connection limits an irc.toml [limits] table sets."""
    from guard.edges.irc.client import ConnectionLimits

    return ConnectionLimits(queue_lines=limits.queue_lines, queue_bytes=limits.queue_bytes)


# -- metrics ---------------------------------------------------------------------------------

METRICS_PREFIX = "xmpp_guard_irc_"


class IrcCollector:
    """Reads the gateway at each scrape: books, stanzas, refusals by rule, the component, bridges, connections, queues."""

    def __init__(self, gateway):
        self.gateway = gateway

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gateway = self.gateway
        facts = gateway.describe()
        books = facts["books"]
        for name in ("accepted", "delivered", "bounced", "dropped"):
            yield CounterMetricFamily(METRICS_PREFIX + "books_" + name, f"Messages the gateway {name} (each settles once).",
                                      value=books[name])
        yield GaugeMetricFamily(METRICS_PREFIX + "books_in_flight", "Accepted messages not settled yet.",
                                value=books["in_flight"])
        yield GaugeMetricFamily(METRICS_PREFIX + "relaying_halted", "1 while the audit trail stops the gateway.",
                                value=1 if facts["service"]["halted_reason"] else 0)
        stanzas = CounterMetricFamily(METRICS_PREFIX + "stanzas", "Messages decided, by direction, kind and verdict.",
                                      labels=["direction", "kind", "verdict"])
        for (direction, kind, verdict), count in sorted(gateway.counts.decisions.items()):
            stanzas.add_metric([direction, kind, verdict], count)
        yield stanzas
        refusals = CounterMetricFamily(METRICS_PREFIX + "refusals", "Messages and events refused, by the rule that "
                                       "decided (the bridge policies' rules and the gateway's own).", labels=["rule"])
        by_rule = dict(gateway.refusals)
        for (_, rule, verdict), count in gateway.counts.rules.items():
            if verdict in ("bounced", "dropped"):
                by_rule[rule] = by_rule.get(rule, 0) + count
        for rule, count in sorted(by_rule.items()):
            refusals.add_metric([rule], count)
        yield refusals
        yield GaugeMetricFamily(METRICS_PREFIX + "component_up", "1 while the component stream to Prosody is open.",
                                value=1 if facts["component"] and facts["component"]["state"] == "open" else 0)
        yield CounterMetricFamily(METRICS_PREFIX + "component_attempts", "Connections attempted to Prosody's "
                                  "component port.", value=facts["component_attempts"])
        bridges = GaugeMetricFamily(METRICS_PREFIX + "bridge_members", "Who each bridge joins, by room, channel and "
                                    "what (room occupants, their IRC connections, IRC users in the room).",
                                    labels=["room", "channel", "member"])
        for bridge in facts["bridges"]:
            for member in ("occupants", "occupant_connections", "irc_users"):
                bridges.add_metric([bridge["room"], bridge["channel"], member], bridge[member])
        yield bridges
        yield GaugeMetricFamily(METRICS_PREFIX + "bridges", "Bridges configured.", value=len(facts["bridges"]))
        connections = GaugeMetricFamily(METRICS_PREFIX + "connections", "IRC connections, by network, kind (bot or "
                                        "occupant) and whether registered.", labels=["network", "kind", "registered"])
        lines = GaugeMetricFamily(METRICS_PREFIX + "queue_lines", "Lines waiting on the IRC connections (flood "
                                  "control), by network.", labels=["network"])
        queued = GaugeMetricFamily(METRICS_PREFIX + "queue_bytes", "Bytes waiting on the IRC connections, by network.",
                                   labels=["network"])
        tally, waiting_lines, waiting_bytes = {}, {}, {}
        for connection in facts["connections"]:
            network = connection["network"]
            kind = "bot" if connection["occupant"] is None or "/" not in connection["key"] else "occupant"
            key = (network, kind, "yes" if connection["registered"] else "no")
            tally[key] = tally.get(key, 0) + 1
            waiting_lines[network] = waiting_lines.get(network, 0) + connection.get("queue_lines", 0)
            waiting_bytes[network] = waiting_bytes.get(network, 0) + connection.get("queue_bytes", 0)
        for key, count in sorted(tally.items()):
            connections.add_metric(list(key), count)
        for network in sorted(waiting_lines):
            lines.add_metric([network], waiting_lines[network])
            queued.add_metric([network], waiting_bytes[network])
        yield connections
        yield lines
        yield queued
        carrier = facts["carrier"]
        yield GaugeMetricFamily(METRICS_PREFIX + "carrier_waiting", "Room messages handed to IRC and not yet written.",
                                value=carrier["waiting"])
        yield GaugeMetricFamily(METRICS_PREFIX + "carrier_waiting_bytes", "Their bytes.", value=carrier["waiting_bytes"])


def irc_registry(gateway):
    """A Prometheus registry with the gateway's collector and the process collector."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    registry.register(IrcCollector(gateway))
    ProcessCollector(registry=registry)
    return registry


# -- the management page's view of the gateway ------------------------------------------------

def gateway_snapshot(gateway) -> dict:
    """What the management page shows of the gateway, in the guard's snapshot shape plus an "irc" part."""
    import guard

    facts = gateway.describe()
    service = dict(facts["service"], name=SERVICE_NAME, version=guard.__version__)
    component = facts["component"]
    by_rule = dict(gateway.refusals)
    for (_, rule, verdict), count in gateway.counts.rules.items():
        if verdict in ("bounced", "dropped"):
            by_rule[rule] = by_rule.get(rule, 0) + count
    return {
        "service": service,
        "books": facts["books"],
        "sides": {XMPP_SIDE: {"peers": [component] if component else []}},
        "carriers": [],
        "pair_link": None,
        "release_authority": None,
        "policies": [{"direction": f"{XMPP_SIDE}->{IRC_SIDE}", "file": bridge.policy_path,
                      "name": getattr(bridge.policy, "name", None), "loaded": gateway.started, "digest": None,
                      "cases": {"passed": 0, "failed": 0}} for bridge in gateway.config.bridges],
        "irc": {"bridges": facts["bridges"], "connections": facts["connections"], "refusals_by_rule": by_rule,
                "carrier": facts["carrier"]},
    }


def reload_action(gateway):
    """The management page's reload ([management] allow_reload): the configuration checked as ``--check`` checks
    it, then the bridges' policies swapped in (``IrcGateway.reload_policies``)."""
    from guard.app.management.site import ReloadAction

    from .config import ConfigError
    from .irc_config import load_irc_config

    def checked():
        config = load_irc_config(gateway.config.path)
        return f"{len(config.bridges)} bridge policies"

    return ReloadAction(checked, gateway.reload_policies, ConfigError)


def management_page(gateway, management, reactor):
    """The guard's management site over the gateway's snapshot (a reload swaps the bridges' policies in)."""
    from guard.app.config import read_token
    from guard.app.management.access import Access
    from guard.app.management.refusals import recent_refusals
    from guard.app.management.site import ManagementPage

    def counts():
        totals = {}
        for (direction, _, verdict), count in gateway.counts.decisions.items():
            series = f"{direction} {verdict}"
            totals[series] = totals.get(series, 0) + count
        return totals

    return ManagementPage(
        Access(read_token(management.token_file) if management.token_file is not None else None, reactor.seconds),
        snapshot_of=lambda: gateway_snapshot(gateway),
        counts_of=counts,
        refusals_of=lambda: recent_refusals(gateway.config.settings.audit_path),
        clock=reactor.seconds,
        reload=reload_action(gateway) if management.allow_reload else None,
        tls=management.tls,
        client_certificates=management.client_ca is not None,
    )


# -- the process ---------------------------------------------------------------------------------

def component_endpoint(reactor, xmpp):
    """Prosody's component port: the ``connect`` endpoint string, wrapped in TLS verified against ``ca`` when ``tls``
    (the certificate must name the host ``connect`` gives)."""
    from twisted.internet.endpoints import clientFromString, wrapClientTLS

    from guard.edges.irc.component import component_tls_options

    endpoint = clientFromString(reactor, xmpp.connect)
    if not xmpp.tls:
        return endpoint
    host = next((part[len("host="):] for part in xmpp.connect.split(":") if part.startswith("host=")), xmpp.component)
    return wrapClientTLS(component_tls_options(xmpp.ca, host), endpoint)


class IrcGatewayService:
    """guard-irc: the gateway, its audit trail, status file, metrics and management page, on a reactor."""

    def __init__(self, config, reactor):
        from guard.edges.audit import AuditLog, AuditUnavailable
        from guard.edges.irc.client import endpoint_connector

        from .config import ConfigError

        self.config = config
        self.reactor = reactor
        try:
            self.audit = AuditLog(config.settings.audit_path, level=config.settings.audit_level)
        except AuditUnavailable as problem:
            raise ConfigError(f"{config.path}: gateway.audit: cannot open the audit trail: {problem}") from problem
        self.gateway = IrcGateway(config, reactor, endpoint_connector(reactor),
                                  component_endpoint(reactor, config.xmpp), self.audit)
        self.registry = irc_registry(self.gateway)
        self._ports = []
        self._status_loop = None

    def start(self):
        """Record the start, connect both sides, listen for metrics and the page, write the status every few seconds."""
        from twisted.internet import defer
        from twisted.internet.task import LoopingCall

        from guard.edges.audit import AuditUnavailable

        try:
            self.audit.record("start", rule="guard:start", rev=1, config=self.config.path,
                              directions=[str(Direction(XMPP_SIDE, IRC_SIDE)), str(TOWARD_ROOM)])
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE at start: {problem}", problem=str(problem))
            if self.config.settings.audit_failure == "stop":
                self.gateway.settlement.halt(f"audit trail unavailable: {problem}")
        self.gateway.start()
        self._status_loop = LoopingCall(self.write_status)
        self._status_loop.clock = self.reactor
        self._status_loop.start(STATUS_SECONDS, now=True)
        return defer.ensureDeferred(self._listen())

    async def _listen(self):
        from twisted.internet.endpoints import serverFromString

        from guard.app.metrics import metrics_site

        listen = self.config.settings.metrics_listen
        if listen is not None:
            self._ports.append(await serverFromString(self.reactor, listen).listen(metrics_site(self.registry)))
            log.info("metrics: serving /metrics on {listen}", listen=listen)
        management = self.config.management
        if management is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from guard.app.management import tls_options
            from guard.app.management.site import at_most_connections, management_site

            factory = management_site(management_page(self.gateway, management, self.reactor), self.reactor)
            if management.tls:
                factory = TLSMemoryBIOFactory(tls_options(management.certificate, management.key, management.client_ca),
                                              False, factory, clock=self.reactor)
            self._ports.append(await serverFromString(self.reactor, management.listen).listen(
                at_most_connections(factory)))
            log.info("management page: listening on {listen}", listen=management.listen)

    def stop(self):
        """Stop the gateway (what waits bounces), write the status and the books, close the trail and the ports."""
        from twisted.internet import defer
        from twisted.internet.task import deferLater

        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        self.gateway.stop()
        self.write_status()
        log.info("books at shutdown: {books}", books=self.gateway.books.summary())
        self.audit.close()
        # The bounces, QUITs and the stream's end were written: give them a moment to reach the wire.
        closing = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        closing.append(deferLater(self.reactor, SHUTDOWN_FLUSH_SECONDS, lambda: None))
        return defer.gatherResults(closing)

    def write_status(self):
        path = self.config.settings.status_path
        if path is None:
            return
        try:
            write_json_atomically(path, self.gateway.describe())
        except OSError as problem:
            log.warn("status file {path}: {problem}", path=path, problem=str(problem))


def check(path: str) -> int:
    """``--check``: load and check the configuration (each bridge's policy compiled); print OK or the problem."""
    from .config import ConfigError
    from .irc_config import load_irc_config

    try:
        config = load_irc_config(path)
    except ConfigError as problem:
        print(f"guard-irc: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK ({len(config.bridges)} bridge(s), {len(config.networks)} network(s), "
          f"component {config.xmpp.component})")
    return EXIT_OK


def main(argv=None, reactor=None) -> int:
    """The guard-irc command; ``reactor`` is the one it runs on (the command line's composition root supplies
    the process's reactor when it is None)."""
    parser = argparse.ArgumentParser(
        prog="guard-irc",
        description=("The xmpp-guard IRC gateway: MUC rooms bridged to IRC channels, each room message judged by "
                     "its bridge's label policy before it reaches IRC (a first-line marking carries its label), "
                     "everything said on IRC labelled with the IRC side's default label. It connects to Prosody as "
                     "an XEP-0114 component and to each IRC network over TLS, and runs in the foreground until "
                     "SIGTERM or SIGINT. SIGUSR1 rewrites the status file; SIGHUP reloads the bridges' policies (all or "
                     "none: a policy that does not load is logged with its file, line and rule, and the old ones "
                     "stay)."),
        epilog="Example:\n  guard-irc --config deploy/irc/irc.toml --check\n  guard-irc --config deploy/irc/irc.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="the gateway's configuration (TOML; see the sample deploy/irc/irc.toml)")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration (keys, files, each bridge's policy) and exit without starting")
    arguments = parser.parse_args(argv)
    if arguments.check:
        return check(arguments.config)
    if reactor is None:
        from .cli import process_reactor

        reactor = process_reactor()
    return run(arguments.config, reactor)


def run(path: str, reactor) -> int:
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
                                textFileLogObserver)

    from .cli import _quiet_factories
    from .config import ConfigError
    from .irc_config import load_irc_config

    try:
        config = load_irc_config(path)
        gateway = IrcGatewayService(config, reactor)
    except ConfigError as problem:
        print(f"guard-irc: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    level = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
             "error": LogLevel.error}[config.settings.log_level]
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout),
                                    [LogLevelFilterPredicate(defaultLogLevel=level), _quiet_factories])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    stopping, exit_code = [], []

    def stop_once(signum, frame):
        if not stopping:
            stopping.append(signum)
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop_once)
    signal.signal(signal.SIGINT, stop_once)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(gateway.write_status))
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(gateway.gateway.reload_policies))

    def start():
        def failed(failure):
            print(f"guard-irc: cannot start: {failure.getErrorMessage()}", file=sys.stderr)
            exit_code.append(1)
            reactor.stop()

        gateway.start().addErrback(failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stop)
    reactor.run(installSignalHandlers=False)
    return exit_code[0] if exit_code else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
