"""IrcConnections on bytes: the bot per network, occupant connections within the caps, relaying past them, events once."""

from __future__ import annotations

from twisted.internet.task import Clock

from guard.edges.irc.client import ConnectionLimits, FloodRate, IrcIdentity, IrcServer
from guard.edges.irc.connections import ConnectionsConfig, IrcConnections, NetworkPlan
from tests.unit.irc.test_client import Connector, Recorder, drop, feed, written

FAST = FloodRate(burst_lines=50, seconds_per_line=0.01)
SERVER = IrcServer("lab", "irc.lab.example", 6697, flood=FAST)


def gateway(per_bridge=2, total=4, max_connections=64):
    clock, connector, recorder = Clock(), Connector(), Recorder()
    config = ConnectionsConfig({"lab": NetworkPlan(SERVER, IrcIdentity("bot"), max_connections)},
                               per_bridge=per_bridge, total=total, limits=ConnectionLimits())
    connections = IrcConnections(config, clock, connector, recorder, random=lambda: 0.5)
    connections.start()
    return connections, clock, connector, recorder


def register(protocol, nick: str, clock) -> bytes:
    """The server's side of a registration: no capabilities, 001, and the flood budget refilled; what was written."""
    feed(protocol, b":s CAP * LS :multi-prefix", b":s 001 " + nick.encode() + b" :Welcome")
    clock.advance(1)
    return written(protocol)


def join(protocol, nick: str, channel: bytes = b"#ops") -> None:
    feed(protocol, b":" + nick.encode() + b"!u@h JOIN " + channel)


def bot_in_channel():
    connections, clock, connector, recorder = gateway()
    bot = connector.protocols[0]
    register(bot, "bot", clock)
    connections.add_bridge("ops", "lab", "#ops")
    clock.advance(1)
    assert written(bot) == b"JOIN #ops\r\n"
    join(bot, "bot")
    recorder.events.clear()
    return connections, clock, connector, recorder, bot


def alice_in_channel():
    """The bot and occupant "a" (alice, on her own connection) both in #ops; events cleared."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    connections.occupant_joined("ops", "a", "alice")
    alice = connector.protocols[1]
    register(alice, "alice", clock)
    join(alice, "alice")
    recorder.events.clear()
    return connections, clock, connector, recorder, bot, alice


def test_each_occupant_gets_its_own_connection_that_joins_the_channel():
    """An occupant opens a connection registered as its nick, which joins the bridge's channel."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    assert connections.occupant_joined("ops", "romeo@red.example", "romeo") == "connection"
    romeo = connector.protocols[1]
    assert b"NICK romeo\r\n" in written(romeo)
    assert register(romeo, "romeo", clock).endswith(b"CAP END\r\nJOIN #ops\r\n")
    assert recorder.events == [("connected", "lab", "romeo@red.example", "romeo")]


def test_past_the_bridge_cap_the_bot_relays_as_nick_text():
    """The third occupant of a bridge capped at two is relayed by the bot as '<nick> text', an action as '* nick text'."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    assert connections.occupant_joined("ops", "a", "alice") == "connection"
    assert connections.occupant_joined("ops", "b", "bob") == "connection"
    assert connections.occupant_joined("ops", "c", "carol") == "relayed"
    assert len(connector.protocols) == 3
    assert connections.say("ops", "c", ["hello"], token="t1") is None
    assert connections.say("ops", "c", ["waves"], token="t2", kind="action") is None
    clock.advance(1)
    assert written(bot) == b"PRIVMSG #ops :<carol> hello\r\nPRIVMSG #ops :* carol waves\r\nPING guard-1\r\n"
    feed(bot, b":irc.lab.example PONG irc.lab.example :guard-1")
    assert recorder.events == [("sent", "t1"), ("sent", "t2")]
    assert connections.describe()["refusals"] == {"bridge-cap": 1}


def test_past_the_total_cap_the_bot_relays():
    """With total = 2 (the bot and one occupant), the second occupant is relayed (total-cap)."""
    connections, clock, connector, recorder = gateway(per_bridge=10, total=2)
    register(connector.protocols[0], "bot", clock)
    connections.add_bridge("ops", "lab", "#ops")
    assert connections.occupant_joined("ops", "a", "alice") == "connection"
    assert connections.occupant_joined("ops", "b", "bob") == "relayed"
    assert connections.describe()["refusals"] == {"total-cap": 1}


def test_a_relayed_occupant_gets_a_connection_when_a_slot_frees_and_speaks_through_it_once_joined():
    """When an occupant leaves, the relayed one gets its own connection; the bot relays for it until that one joined."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    connections.occupant_joined("ops", "a", "alice")
    connections.occupant_joined("ops", "b", "bob")
    assert connections.occupant_joined("ops", "c", "carol") == "relayed"
    connections.occupant_left("ops", "a")
    assert len(connector.protocols) == 4
    carol = connector.protocols[3]
    assert b"NICK carol\r\n" in written(carol)
    connections.say("ops", "c", ["still relayed"], token=1)
    clock.advance(1)
    assert written(bot) == b"PRIVMSG #ops :<carol> still relayed\r\nPING guard-1\r\n"
    assert register(carol, "carol", clock).endswith(b"JOIN #ops\r\n")
    join(carol, "carol")
    connections.say("ops", "c", ["my own voice"], token=2)
    clock.advance(1)
    assert written(carol) == b"PRIVMSG #ops :my own voice\r\nPING guard-1\r\n"
    assert connections.describe()["relayed"] == 0


def test_a_leaving_occupant_quits():
    """An occupant that leaves the room quits its IRC connection."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    connections.occupant_joined("ops", "a", "alice")
    alice = connector.protocols[1]
    register(alice, "alice", clock)
    connections.occupant_left("ops", "a")
    assert written(alice).endswith(b"QUIT :xmpp-guard gateway closing\r\n")
    assert connections.describe()["occupant_connections"] == 0


def test_the_relay_splits_lines_that_the_prefix_would_push_past_512_bytes():
    """A text that fits one line on its own is split again when '<nick> ' is put before it by the bot."""
    connections, clock, connector, recorder = gateway(per_bridge=0)
    register(connector.protocols[0], "bot", clock)
    connections.add_bridge("ops", "lab", "#ops")
    connections.occupant_joined("ops", "c", "carol")
    text = " ".join(["word"] * 95)  # 474 bytes: one line from the occupant's own connection
    assert connections.say("ops", "c", [text], token="long") is None
    clock.advance(1)
    lines = written(connector.protocols[0]).split(b"\r\n")[:-1]
    relayed_prefix = len(b":bot!xmppguard@" + b"h" * 63 + b" ")
    assert len(lines) == 4 and all(relayed_prefix + len(line) + 2 <= 512 for line in lines[1:])  # JOIN, 2 lines, PING
    assert lines[1].startswith(b"PRIVMSG #ops :<carol> word") and lines[2].startswith(b"PRIVMSG #ops :<carol> word")
    feed(connector.protocols[0], b":irc.lab.example PONG irc.lab.example :" + lines[3].split()[-1])
    assert recorder.events[-1] == ("sent", "long")


def test_channel_events_come_from_the_bot_only_and_not_about_our_own_occupants():
    """IRC users' events reach the listener once (from the bot); our occupants' own joins and messages are not echoed."""
    connections, clock, connector, recorder, bot, alice = alice_in_channel()
    for protocol in (bot, alice):
        feed(protocol, b":alice!u@h JOIN #ops", b":dave!d@h JOIN #ops", b":alice!u@h PRIVMSG #ops :echo",
             b":dave!d@h PRIVMSG #ops :hi all", b":dave!d@h KICK #ops alice :out")
    feed(alice, b":dave!d@h PRIVMSG alice :psst")
    assert recorder.events == [
        ("joined", "lab", "#ops", "dave"),
        ("message", "lab", "#ops", "dave", "privmsg", "hi all", {}),
        ("kicked", "lab", "#ops", "alice", "dave", "out"),
        ("message", "lab", "alice", "dave", "privmsg", "psst", {}),
    ]


def test_tokens_lost_on_an_occupant_connection_reach_the_listener():
    """A netsplit of an occupant's connection reports its written, unconfirmed tokens in doubt, and its own
    connection_lost; the bot relays the occupant's next message."""
    connections, clock, connector, recorder, bot, alice = alice_in_channel()
    connections.say("ops", "a", ["one"], token="x")
    drop(alice)
    assert recorder.events == [("unconfirmed", "x", "netsplit"), ("connection_lost", "lab", "a", "netsplit")]
    connections.say("ops", "a", ["two"], token="y")
    clock.advance(0.5)
    assert written(bot) == b"PRIVMSG #ops :<alice> two\r\nPING guard-1\r\n"


def test_describe_counts_connections_queues_and_refusals():
    """describe() gives connections, relayed occupants, queue depth in lines and bytes, and refusals by reason."""
    connections, clock, connector, recorder, bot = bot_in_channel()
    connections.occupant_joined("ops", "a", "alice")
    connections.occupant_joined("ops", "b", "bob")
    connections.occupant_joined("ops", "c", "carol")
    connections.say("ops", "a", ["queued until alice is in"], token=1)
    described = connections.describe()
    assert described["connections"] == 3 and described["occupant_connections"] == 2
    assert described["relayed"] == 1 and described["per_bridge"] == {"ops": 2}
    assert described["refusals"] == {"bridge-cap": 1}
    assert described["queue_lines"] == 0  # alice has not joined: the bot took it, and wrote it at once
    for number in range(60):  # the bot has 49 lines of its burst of 50 left, one is a checkpoint PING (after 32): 12 wait
        connections.say("ops", "c", ["n%02d" % number], token=number)
    described = connections.describe()
    assert described["queue_lines"] == 12 and described["queue_bytes"] == 12 * len(b"PRIVMSG #ops :<carol> n00\r\n")
