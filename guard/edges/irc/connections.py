"""
The gateway's IRC connections: one bot connection per network, which joins
every bridged channel and hears everything said there, and one connection per
bridged MUC occupant, so that IRC users see real nicks join, speak and part.

Occupant connections are capped per bridge and in total (bots included, as
the server counts them). Past a cap, an occupant is *relayed*: the bot says
``<nick> text`` (``* nick text`` for an action) for it. When a slot frees,
the longest-relayed occupant that fits gets its own connection; until that
connection has joined the channel, the bot goes on relaying for it, so no
message waits on a connection that is still registering.

Events reach the listener (``IIrcEvents``) once: channel events from the bot
only (every occupant connection sees the same channel), never about our own
occupants' nicks (their joins, messages and parts are the echo of what the
room did), except a kick, which the bridge must mirror. From an occupant's
connection only its own state (connected, connection_lost) and messages
addressed to its nick pass. Tokens (``sent``/``lost``) pass from every
connection: each was taken by exactly one of them.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field

from twisted.logger import Logger
from zope.interface import implementer

from guard.edges.irc.client import (
    ConnectionLimits,
    IIrcEvents,
    IrcConnection,
    IrcIdentity,
    IrcServer,
)
from guard.edges.irc.lines import privmsg_budget, source_prefix_bytes, split_text

log = Logger()

HOST_BYTES = 63  # the longest host a network may show in the bot's prefix (what we assume, not knowing it)
RELAY_REFUSALS = ("bridge-cap", "total-cap", "network-cap")


@dataclass(frozen=True)
class NetworkPlan:
    """One network: its server, the bot's identity, and how many occupant connections it may hold."""

    server: IrcServer
    bot: IrcIdentity
    max_connections: int = 64  # occupants' connections on this network (the bot not counted)


@dataclass(frozen=True)
class ConnectionsConfig:
    networks: dict[str, NetworkPlan]
    per_bridge: int = 32  # occupant connections one bridge may open
    total: int = 256  # every connection the gateway opens, bots included
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)

    def __post_init__(self):
        if self.per_bridge < 0 or self.total < len(self.networks):
            raise ValueError("per_bridge >= 0 and total >= one bot per network")


@dataclass
class _Bridge:
    name: str
    network: str
    channel: str
    key: str | None = None


@dataclass
class _Occupant:
    bridge: str
    occupant: object
    nick: str
    connection: IrcConnection | None = None


@implementer(IIrcEvents)
class _Heard:
    """What one connection tells, handed to IrcConnections with which connection it was."""

    def __init__(self, owner: "IrcConnections", who: _Occupant | None, network: str):
        self._owner, self._who, self._network = owner, who, network

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self._owner._heard(self._who, self._network, name, args)


class IrcConnections:
    """One bot per network, one connection per bridged occupant within the caps, the bot relaying past them."""

    def __init__(self, config: ConnectionsConfig, clock, connector, listener, random=_random.random):
        self.config = config
        self.clock = clock
        self.connector = connector
        self.listener = listener
        self.random = random
        self.bots: dict[str, IrcConnection] = {}
        self.bridges: dict[str, _Bridge] = {}
        self.occupants: dict[tuple[str, object], _Occupant] = {}  # (bridge, occupant) -> its entry
        self.refusals: dict[str, int] = {}
        for name, plan in config.networks.items():
            self.bots[name] = IrcConnection(plan.server, plan.bot, clock, connector, _Heard(self, None, name),
                                            occupant=None, limits=config.limits, random=random)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for bot in self.bots.values():
            bot.start()

    def stop(self) -> None:
        for entry in self.occupants.values():
            if entry.connection is not None:
                entry.connection.stop()
        for bot in self.bots.values():
            bot.stop()

    # -- what the bridges ask -------------------------------------------------

    def add_bridge(self, bridge: str, network: str, channel: str, key: str | None = None) -> str | None:
        """The bot joins ``channel`` for ``bridge`` (now or once registered, and after every reconnection)."""
        if network not in self.bots:
            raise KeyError(f"unknown IRC network {network!r}")
        self.bridges[bridge] = _Bridge(bridge, network, channel, key)
        return self.bots[network].join(channel, key)

    def occupant_joined(self, bridge: str, occupant, nick: str) -> str:
        """``occupant`` of ``bridge`` appears on IRC as ``nick``: "connection" (its own) or "relayed" (through the bot)."""
        entry = self.occupants.get((bridge, occupant))
        if entry is None:
            entry = self.occupants[(bridge, occupant)] = _Occupant(bridge, occupant, nick)
        if entry.connection is not None:
            return "connection"
        refusal = self._slot_refusal(bridge)
        if refusal is not None:
            self._count(refusal)
            log.info("irc: {occupant} on {bridge} relayed by the bot ({why})", occupant=str(occupant)[:100],
                     bridge=bridge, why=refusal)
            return "relayed"
        self._open(entry)
        return "connection"

    def occupant_left(self, bridge: str, occupant, reason: str = "") -> None:
        """``occupant`` left the room: its connection quits; a freed slot goes to the longest-relayed occupant."""
        entry = self.occupants.pop((bridge, occupant), None)
        if entry is None or entry.connection is None:
            return
        entry.connection.stop()
        self._promote()

    def say(self, bridge: str, occupant, texts: list[str], token, kind: str = "privmsg") -> str | None:
        """Say ``texts`` in the bridge's channel as ``occupant`` (own connection when it has joined, else the bot)."""
        plan = self.bridges[bridge]
        entry = self.occupants.get((bridge, occupant))
        connection = entry.connection if entry is not None else None
        if connection is not None and self._in_channel(connection, plan.channel):
            return connection.say(plan.channel, texts, token, kind)
        nick = entry.nick if entry is not None else str(occupant)
        return self._relay(plan, nick, texts, token, kind)

    def set_topic(self, bridge: str, occupant, text: str) -> str | None:
        """Set the channel's topic as ``occupant`` when it has its own connection there, else as the bot."""
        plan = self.bridges[bridge]
        entry = self.occupants.get((bridge, occupant))
        connection = entry.connection if entry is not None else None
        if connection is None or not self._in_channel(connection, plan.channel):
            connection = self.bots[plan.network]
        return connection.set_topic(plan.channel, text)

    # -- relaying through the bot --------------------------------------------

    def _relay(self, plan: _Bridge, nick: str, texts: list[str], token, kind: str) -> str | None:
        bot = self.bots[plan.network]
        prefix = f"* {nick} " if kind == "action" else f"<{nick}> "
        try:
            budget = privmsg_budget(plan.channel, source_prefix_bytes(bot.nick, bot.identity.user, "h" * HOST_BYTES),
                                    command="NOTICE" if kind == "notice" else "PRIVMSG")
            room = budget - len(prefix.encode("utf-8"))
            lines = [prefix + piece for text in texts for piece in split_text(text, room)]
        except ValueError:
            return self._count("invalid-line")
        if not lines:
            return self._count("invalid-line")
        return bot.say(plan.channel, lines, token, "notice" if kind == "notice" else "privmsg")

    # -- slots ----------------------------------------------------------------

    def _open_connections(self) -> list[_Occupant]:
        return [entry for entry in self.occupants.values() if entry.connection is not None]

    def _slot_refusal(self, bridge: str) -> str | None:
        opened = self._open_connections()
        network = self.bridges[bridge].network
        if sum(1 for entry in opened if entry.bridge == bridge) >= self.config.per_bridge:
            return "bridge-cap"
        if len(opened) + len(self.bots) >= self.config.total:
            return "total-cap"
        if sum(1 for entry in opened if self.bridges[entry.bridge].network == network) >= \
                self.config.networks[network].max_connections:
            return "network-cap"
        return None

    def _open(self, entry: _Occupant) -> None:
        plan = self.bridges[entry.bridge]
        network = self.config.networks[plan.network]
        identity = IrcIdentity(entry.nick, network.bot.user, network.bot.realname)
        entry.connection = IrcConnection(network.server, identity, self.clock, self.connector,
                                         _Heard(self, entry, plan.network), occupant=entry.occupant,
                                         limits=self.config.limits, random=self.random)
        entry.connection.join(plan.channel, plan.key)
        entry.connection.start()

    def _promote(self) -> None:
        """Give freed slots to relayed occupants, longest-relayed first (dict order is arrival order)."""
        for entry in list(self.occupants.values()):
            if entry.connection is None and self._slot_refusal(entry.bridge) is None:
                log.info("irc: {occupant} on {bridge} gets its own connection (a slot freed)",
                         occupant=str(entry.occupant)[:100], bridge=entry.bridge)
                self._open(entry)

    def _in_channel(self, connection: IrcConnection, channel: str) -> bool:
        protocol = connection.protocol
        return (connection.registered and protocol is not None
                and protocol.isupport.fold(channel) in protocol.channels)

    def _count(self, reason: str) -> str:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return reason

    # -- events ---------------------------------------------------------------

    def _ours(self, network: str, nick: str) -> bool:
        """Whether ``nick`` on ``network`` is one of our connections (an occupant's or the bot)."""
        bot = self.bots[network]
        fold = bot.protocol.isupport.fold if bot.protocol is not None else str.lower
        if fold(nick) == fold(bot.nick):
            return True
        return any(entry.connection is not None and fold(entry.connection.nick) == fold(nick)
                   for entry in self.occupants.values() if self.bridges[entry.bridge].network == network)

    def _heard(self, who: _Occupant | None, network: str, name: str, args: tuple) -> None:
        if name in ("sent", "refused", "unconfirmed", "lost"):  # a message's settlement, whichever connection
            getattr(self.listener, name)(*args)
            return
        if name in ("connected", "connection_lost"):
            getattr(self.listener, name)(*args)
            return
        if who is not None:
            if name == "message" and args[1] == who.connection.nick:
                self.listener.message(*args)  # addressed to this occupant's nick: only its connection hears it
            return
        if name in ("joined", "parted", "quit", "message") and self._ours(network, args[2] if name in (
                "joined", "parted", "message") else args[1]):
            return
        if name == "nick_changed" and (self._ours(network, args[1]) or self._ours(network, args[2])):
            return
        if name == "topic" and args[3] is not None and self._ours(network, args[3]):
            return
        getattr(self.listener, name)(*args)

    # -- for metrics and management -------------------------------------------

    def describe(self) -> dict:
        connections = list(self.bots.values()) + [entry.connection for entry in self._open_connections()]
        described = [connection.describe() for connection in connections]
        refusals = dict(self.refusals)
        for item in described:
            for reason, count in item["refusals"].items():
                refusals[reason] = refusals.get(reason, 0) + count
        return {
            "connections": len(connections),
            "registered": sum(1 for item in described if item["registered"]),
            "bots": {name: bot.describe() for name, bot in self.bots.items()},
            "occupant_connections": len(connections) - len(self.bots),
            "relayed": sum(1 for entry in self.occupants.values() if entry.connection is None),
            "queue_lines": sum(item["queue_lines"] for item in described),
            "queue_bytes": sum(item["queue_bytes"] for item in described),
            "refusals": refusals,
            "per_bridge": {name: sum(1 for entry in self._open_connections() if entry.bridge == name)
                           for name in self.bridges},
        }
