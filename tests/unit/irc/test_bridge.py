"""The bridge's decisions: room stanzas (XML) and IRC lines in, plain actions out; every room message settles once."""

from dataclasses import replace
from pathlib import Path

import pytest

from guard.app.irc_config import BridgeConfig, IrcLimits, NetworkConfig
from guard.core.books import Books
from guard.core.policy import load_policy
from guard.core.policy.elements import parse_stanza_text
from guard.core.policy.labels import SecurityLabel
from guard.core.settlement import Settlement, SettlementObserver
from guard.core.topology import Topology
from guard.edges.irc.bridge import (Audit, BounceToSender, Bridge, ConnectionKey, ConnectionSlots, IrcJoin, IrcKick,
                                    IrcNick, IrcPart, IrcSay, IrcTopic, MucJoin, MucKick, MucLeave, MucNick, MucSay,
                                    MucSubject, build_bridges)
from guard.edges.irc.labels import BridgeLabels
from guard.edges.irc.lines import parse_line, privmsg_budget, source_prefix_bytes
from guard.edges.irc.nicks import Isupport, NickBook

POLICY_PATH = Path(__file__).resolve().parents[3] / "policies" / "irc-bridge.toml"
POLICY = load_policy(str(POLICY_PATH))
ROOM = "ops@conference.red.example"
LISTENER = "irc.red.example/ops"
BOT = ConnectionKey("lab")
UNCLASSIFIED = SecurityLabel("red-national", "UNCLASSIFIED")
RESTRICTED = SecurityLabel("red-national", "RESTRICTED")
ESS = {"RESTRICTED": "MQgCAQIGA4g3AQ==", "SECRET": "MQgCAQQGA4g3AQ=="}
NETWORK = NetworkConfig("lab", "127.0.5.1", 6697, nick="xmppgw", user="xmppgw")
BRIDGE = BridgeConfig(ROOM, "lab", "#ops", "irc-bridge.toml", "lab.irc.invalid",
                      map_markings={"RESTRICTED": RESTRICTED}, policy=POLICY)


class Heard(SettlementObserver):
    """The settlement events the audit trail would record, as (event, rule, condition) tuples."""

    def __init__(self):
        self.events = []

    def stanza_bounced(self, event):
        self.events.append(("bounce", event.rule, event.condition))

    def stanza_dropped(self, event):
        self.events.append(("drop", event.rule, event.condition))

    def stanza_delivered(self, event):
        self.events.append(("deliver", None, None))

    def settled_twice(self, ticket, attempt):
        self.events.append(("twice", attempt, None))


class Lab:
    """One bridge over a settlement with the books and a recording observer."""

    def __init__(self, bridge=BRIDGE, slots=None, nicks=None, joined_message_bytes=16 * 1024, max_irc_users=500):
        self.books, self.heard = Books(), Heard()
        self.settlement = Settlement(Topology({"xmpp": frozenset({"conference.red.example"}),
                                               "irc": frozenset({"irc.red.example", "lab.irc.invalid"})}),
                                     [self.books, self.heard])
        self.nicks = nicks if nicks is not None else NickBook(Isupport(), reserved=("xmppgw",))
        self.bridge = Bridge(bridge, NETWORK, BridgeLabels.for_bridge(bridge), self.settlement, self.nicks,
                             "irc.red.example", slots or ConnectionSlots(10), joined_message_bytes, max_irc_users)

    def room(self, xml, now=0.0):
        """Feed one stanza from the room (presence or message)."""
        stanza = parse_stanza_text(xml)
        if stanza.name == "presence":
            return self.bridge.room_presence(stanza, now)
        return self.bridge.room_message(stanza, None, now)

    def irc(self, raw, key=BOT, now=0.0):
        """Feed one IRC line as the connection ``key`` heard it (what IrcConnections reports as an event)."""
        message = parse_line(raw)
        nick, params, bridge = message.source_nick, message.params, self.bridge
        if message.command == "JOIN":
            return bridge.irc_joined(key, params[0], nick, now)
        if message.command == "PART":
            return bridge.irc_parted(key, params[0], nick, params[1] if len(params) > 1 else "", now)
        if message.command == "QUIT":
            return bridge.irc_quit(key, nick, params[0] if params else "", now)
        if message.command == "KICK":
            return bridge.irc_kicked(key, params[0], params[1], nick, params[2] if len(params) > 2 else "", now)
        if message.command == "NICK":
            return bridge.irc_nick_changed(key, nick, params[0], now)
        if message.command == "TOPIC":
            return bridge.irc_topic(key, params[0], nick, params[1], now)
        if message.command == "MODE":
            return bridge.irc_mode(key, params[0], params[1], params[2:], now)
        if message.command == "353":
            return bridge.irc_names(key, params[2], params[3].split(), now)
        if message.command in ("PRIVMSG", "NOTICE"):
            return bridge.irc_message(key, params[0], nick, message.command.lower(), params[1], message.source, now)
        raise AssertionError(message.command)

    def summary(self):
        return (self.books.accepted, self.books.delivered, self.books.bounced, self.books.dropped,
                self.settlement.in_flight)


def joined(nick, role="participant"):
    return (f"<presence from='{ROOM}/{nick}' to='{LISTENER}'><x xmlns='http://jabber.org/protocol/muc#user'>"
            f"<item affiliation='none' role='{role}'/></x></presence>")


def left(nick, *codes, new_nick=None):
    item = f"<item affiliation='none' role='none'{'' if new_nick is None else f' nick={new_nick!r}'}/>"
    statuses = "".join(f"<status code='{code}'/>" for code in codes)
    return (f"<presence from='{ROOM}/{nick}' to='{LISTENER}' type='unavailable'>"
            f"<x xmlns='http://jabber.org/protocol/muc#user'>{item}{statuses}</x></presence>")


def said(nick, body, label=None, to=LISTENER, extra=""):
    marked = "" if label is None else (
        "<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
        f"{ESS[label]}</esssecuritylabel></label></securitylabel>")
    return (f"<message from='{ROOM}/{nick}' to='{to}' type='groupchat' id='m-{nick}'>"
            f"<body>{body}</body>{extra}{marked}</message>")


def irc_jid(nick, serial=1):
    """The JID the gateway joins the room from for the ``serial``-th IRC user it saw, first known as ``nick``."""
    return f"{nick}%lab@irc.red.example/ops~{serial}"


def alice_key(serial=1):
    return ConnectionKey("lab", ROOM, serial)


def budget(nick):
    return privmsg_budget("#ops", source_prefix_bytes(nick, "~xmppgw", "h" * 63))


@pytest.fixture
def lab():
    return Lab()


# -- occupants of the room on IRC ------------------------------------------------

def test_a_room_occupant_gets_its_own_irc_connection_under_its_nick(lab):
    """A real occupant joining the room opens an IRC connection as the same nick and joins the channel."""
    assert lab.room(joined("alice")) == [IrcJoin(alice_key(), "#ops", "alice")]
    assert lab.room(joined("alice")) == []  # a presence update is not a second join


def test_an_over_long_or_invalid_muc_nick_is_escaped_and_stable(lab):
    """A MUC nick IRC cannot carry becomes the NickBook's deterministic escape, the same on every join."""
    (first,) = lab.room(joined("Ünïcode person"))
    lab.room(left("Ünïcode person"))
    (again,) = lab.room(joined("Ünïcode person"))
    assert first.nick == again.nick and len(first.nick) <= 9 and first.nick != "Ünïcode person"


def test_a_room_message_goes_to_irc_with_its_flot_on_the_occupants_connection_and_settles_on_sent(lab):
    """The released text leaves on the occupant's own connection, its FLOT first; the token settles it delivered."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    (say,) = lab.room(said("alice", "hello there"))
    assert (say.connection_key, say.target, say.lines) == (alice_key(), "#ops",
                                                           ("Protective Marking: UNCLASSIFIED", "hello there"))
    assert lab.summary() == (1, 0, 0, 0, 1)
    assert lab.bridge.irc_sent(say.token) == []
    assert lab.summary() == (1, 1, 0, 0, 0)
    lab.bridge.irc_sent(say.token)
    assert lab.heard.events == [("deliver", None, None), ("twice", "delivered", None)]
    assert lab.summary() == (1, 1, 0, 0, 0)


def test_a_secret_message_bounces_to_its_sender_with_policy_violation_and_is_audited(lab):
    """A label not releasable to the channel: nothing reaches IRC, the sender gets our error, the audit the rule."""
    lab.room(joined("alice"))
    (bounce,) = lab.room(said("alice", "the plan", label="SECRET"))
    assert isinstance(bounce, BounceToSender)
    assert (bounce.condition, bounce.text) == ("policy-violation",
                                               "The message's security label is not releasable to the IRC channel.")
    assert bounce.reply.toXml() == (
        "<message xmlns='jabber:server' type='error' from='irc.red.example/ops' to='ops@conference.red.example/alice' "
        "id='m-alice'><error type='modify'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>The message's security label is not releasable to "
        "the IRC channel.</text></error></message>")
    assert "the plan" not in bounce.reply.toXml()
    assert lab.heard.events == [("bounce", "label-not-releasable", "policy-violation")]
    assert lab.summary() == (1, 0, 1, 0, 0)


def test_a_restricted_message_carries_its_marking_and_the_flot_can_be_a_prefix():
    """A RESTRICTED message reaches IRC marked RESTRICTED; with position "prefix" the FLOT starts the line."""
    lab = Lab(replace(BRIDGE, flot_position="prefix", flot_template="[{marking}]"))
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    (say,) = lab.room(said("alice", "the rota", label="RESTRICTED"))
    assert say.lines == ("[RESTRICTED] the rota",)


def test_a_long_or_multi_line_message_is_split_within_the_connections_budget(lab):
    """Every IRC line fits the occupant's PRIVMSG budget; newlines start lines; no word is lost."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    words = " ".join(f"word{n}" for n in range(300))
    (say,) = lab.room(said("alice", f"first line\n{words}"))
    assert say.lines[:2] == ("Protective Marking: UNCLASSIFIED", "first line")
    assert all(len(line.encode()) <= budget("alice") for line in say.lines)
    assert " ".join(say.lines[2:]) == words and len(say.lines) > 4


def test_me_from_the_room_is_a_ctcp_action(lab):
    """XEP-0245 "/me waves" leaves as CTCP ACTION on the occupant's connection, after the FLOT line."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    (say,) = lab.room(said("alice", "/me waves"))
    assert say.lines == ("Protective Marking: UNCLASSIFIED", "\x01ACTION waves\x01")


def test_control_characters_from_xmpp_never_reach_irc(lab):
    """C1 controls (XML allows them, C0 it does not) are removed and a tab is a space before IRC sees the text."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    (say,) = lab.room(said("alice", "\x9b31mred\x9b0m\tand a tab"))
    assert say.lines[1] == "31mred0m and a tab"


def test_past_the_bridges_cap_the_bot_relays_and_a_freed_slot_is_given_on():
    """With one connection per bridge, bob is relayed by the bot as <bob>; when alice leaves, bob gets hers."""
    lab = Lab(replace(BRIDGE, max_occupant_connections=1))
    assert lab.room(joined("alice")) == [IrcJoin(alice_key(1), "#ops", "alice")]
    assert lab.room(joined("bob")) == []
    (say,) = lab.room(said("bob", "hi"))
    assert (say.connection_key, say.lines) == (BOT, ("<bob> Protective Marking: UNCLASSIFIED", "<bob> hi"))
    (action,) = lab.room(said("bob", "/me nods"))
    assert action.lines[1] == "* bob nods"
    assert all(len(line.encode()) <= budget("xmppgw") for line in say.lines)
    assert lab.room(left("alice")) == [IrcPart(alice_key(1), "#ops", "left the XMPP room"),
                                       IrcJoin(alice_key(2), "#ops", "bob")]


def test_the_gateways_total_is_shared_between_bridges():
    """ConnectionSlots caps occupants' connections over every bridge; freeing one lets another bridge use it."""
    slots = ConnectionSlots(1)
    first = Lab(slots=slots)
    second = Lab(replace(BRIDGE, room="dev@conference.red.example", channel="#dev"), slots=slots)
    assert first.room(joined("alice")) == [IrcJoin(alice_key(), "#ops", "alice")]
    presence = joined("bob").replace(ROOM, "dev@conference.red.example").replace(LISTENER, "irc.red.example/dev")
    assert second.bridge.room_presence(parse_stanza_text(presence)) == []
    first.room(left("alice"))
    assert slots.used == 0 and slots.take() and not slots.take()


def test_an_occupant_leaving_or_kicked_from_the_room_leaves_irc(lab):
    """Leaving the room parts the channel and closes the connection; a room kick says so in the part reason."""
    lab.room(joined("alice"))
    lab.room(joined("bob"))
    assert lab.room(left("alice")) == [IrcPart(alice_key(1), "#ops", "left the XMPP room")]
    assert lab.room(left("bob", "307")) == [IrcPart(alice_key(2), "#ops", "kicked from the XMPP room")]
    assert lab.room(left("carol")) == []


def test_an_occupants_nick_change_changes_its_irc_nick(lab):
    """MUC status 303 (nick changed) becomes NICK on the occupant's connection, by the NickBook."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    assert lab.room(left("alice", "303", new_nick="alicia")) == [IrcNick(alice_key(), "alicia")]
    (say,) = lab.room(said("alicia", "it is me"))
    assert say.connection_key == alice_key()


# -- IRC users in the room ---------------------------------------------------------

def test_irc_joins_parts_and_quits_are_occupants_joining_and_leaving(lab):
    """An IRC user's JOIN makes the gateway join the room as it; PART and QUIT make it leave."""
    carol = irc_jid("carol")
    assert lab.irc(b":carol!c@h JOIN #ops") == [MucJoin(ROOM, "carol", carol)]
    assert lab.irc(b":carol!c@h JOIN #ops") == []
    assert lab.irc(b":carol!c@h PART #ops :bye") == [MucLeave(ROOM, "carol", carol)]
    lab.irc(b":dave!d@h JOIN #ops")
    assert lab.irc(b":dave!d@h QUIT :gone") == [MucLeave(ROOM, "dave", irc_jid("dave", 2))]
    assert lab.irc(b":erin!e@h JOIN #elsewhere") == []


def test_names_brings_the_channel_in_and_tells_whether_the_bot_is_an_operator(lab):
    """RPL_NAMREPLY joins every IRC user (prefixes removed) and records the bot's operator status."""
    actions = lab.irc(b":server 353 xmppgw = #ops :@xmppgw +carol dave")
    assert actions == [MucJoin(ROOM, "carol", irc_jid("carol")),
                       MucJoin(ROOM, "dave", irc_jid("dave", 2))]
    assert lab.bridge.bot_is_op
    lab.irc(b":op!o@h MODE #ops -o xmppgw")
    assert not lab.bridge.bot_is_op
    lab.irc(b":op!o@h MODE #ops +vo carol xmppgw")
    assert lab.bridge.bot_is_op


def test_irc_messages_reach_the_room_labelled_with_the_irc_sides_default(lab):
    """A PRIVMSG is said by the IRC user's occupant, with the IRC side's default label written by the gateway."""
    lab.irc(b":carol!c@h JOIN #ops")
    (say,) = lab.irc(b":carol!c@h PRIVMSG #ops :hello \x02room\x02")
    assert say == MucSay(ROOM, "carol", irc_jid("carol"), "hello *room*", UNCLASSIFIED)
    assert ">UNCLASSIFIED</displaymarking>" in say.securitylabel.toXml()
    stanza = say.stanza("jabber:component:accept").toXml()
    assert stanza.startswith("<message xmlns='jabber:component:accept' from='carol%lab@irc.red.example/ops~1' "
                             "to='ops@conference.red.example' type='groupchat'><body>hello *room*</body>")


def test_an_irc_action_is_me_and_a_notice_comes_from_the_channel(lab):
    """CTCP ACTION becomes "/me ..."; a NOTICE is said by the gateway's own occupant as -nick- text."""
    lab.irc(b":carol!c@h JOIN #ops")
    (action,) = lab.irc(b":carol!c@h PRIVMSG #ops :\x01ACTION waves\x01")
    assert action.body == "/me waves" and action.as_nick == "carol"
    (notice,) = lab.irc(b":carol!c@h NOTICE #ops :server maintenance")
    assert (notice.as_nick, notice.from_jid, notice.body) == ("irc", LISTENER, "-carol- server maintenance")


def test_other_ctcp_is_refused_and_audited(lab):
    """A CTCP other than ACTION is not bridged; the audit records it."""
    lab.irc(b":carol!c@h JOIN #ops")
    assert lab.irc(b":carol!c@h PRIVMSG #ops :\x01VERSION\x01") == [
        Audit("ctcp-refused", "irc:ctcp-refused", ROOM, "carol: VERSION")]


def test_a_flot_typed_on_irc_is_text_unless_mapped_and_a_mapped_one_labels(lab):
    """An unmapped FLOT stays in the body under the default label; a mapped one becomes the label and leaves the text."""
    lab.irc(b":carol!c@h JOIN #ops")
    (text,) = lab.irc(b":carol!c@h PRIVMSG #ops :Protective Marking: SECRET plans")
    assert (text.body, text.label) == ("Protective Marking: SECRET plans", UNCLASSIFIED)
    (mapped,) = lab.irc(b":carol!c@h PRIVMSG #ops :Protective Marking: RESTRICTED the rota")
    assert (mapped.body, mapped.label) == ("the rota", RESTRICTED)
    assert lab.irc(b":carol!c@h PRIVMSG #ops :Protective Marking: RESTRICTED", now=1.0) == []
    (next_line,) = lab.irc(b":carol!c@h PRIVMSG #ops :the rota again", now=1.2)
    assert (next_line.body, next_line.label) == ("the rota again", RESTRICTED)
    (later,) = lab.irc(b":carol!c@h PRIVMSG #ops :and now", now=1.3)
    assert later.label == UNCLASSIFIED


def test_a_mapping_above_the_clearance_is_refused_on_irc_with_a_notice():
    """A marking mapped above the IRC side's clearance is refused: not bridged, the user told, the audit told."""
    lab = Lab(replace(BRIDGE, map_markings={"SECRET": SecurityLabel("red-national", "SECRET")}))
    lab.irc(b":carol!c@h JOIN #ops")
    notice, audit = lab.irc(b":carol!c@h PRIVMSG #ops :Protective Marking: SECRET plans")
    assert notice == IrcSay(BOT, "carol", ("That marking is above what this channel is cleared for; the message was "
                                           "not bridged.",), notice=True)
    assert (audit.rule, audit.event) == ("irc:marking-above-clearance", "refused")


def line_of(nick, text):
    return f":{nick}!c@h PRIVMSG #ops :{text}".encode()


def test_irc_lines_that_filled_their_budget_are_joined_back(lab):
    """A line that filled the sender's budget waits for the next; the rest is appended, after a space, as one message."""
    lab.irc(b":carol!c@h JOIN #ops")
    full = privmsg_budget("#ops", source_prefix_bytes("carol", "c", "h"))
    first = "a" * (full - 10)
    assert lab.irc(line_of("carol", first), now=0.0) == []
    assert lab.bridge.wake_at() == 0.5
    (say,) = lab.irc(line_of("carol", "the end"), now=0.3)
    assert say.body == first + " the end"
    (short,) = lab.irc(line_of("carol", "short"), now=1.0)
    assert short.body == "short"


def test_a_held_line_is_said_when_its_window_passes(lab):
    """A full line with nothing after it is said alone once the join window is over (``due``)."""
    lab.irc(b":carol!c@h JOIN #ops")
    full = privmsg_budget("#ops", source_prefix_bytes("carol", "c", "h"))
    lab.irc(line_of("carol", "b" * full), now=0.0)
    assert lab.bridge.due(0.4) == []
    (say,) = lab.bridge.due(0.5)
    assert say.body == "b" * full and lab.bridge.wake_at() is None


def test_joined_text_is_bounded_in_bytes():
    """Joining stops at joined_message_bytes: what is held is said, and a text over the bound is refused, audited."""
    lab = Lab(joined_message_bytes=1000)
    lab.irc(b":carol!c@h JOIN #ops")
    full = privmsg_budget("#ops", source_prefix_bytes("carol", "c", "h"))
    lab.irc(line_of("carol", "c" * full), now=0.0)
    lab.irc(line_of("carol", "d" * full), now=0.1)
    (audit,) = lab.irc(line_of("carol", "e" * full), now=0.2)
    assert audit.rule == "irc:joined-too-long" and lab.bridge.pending == {}


# -- no loops -------------------------------------------------------------------

def test_the_gateways_own_occupants_and_connections_are_never_bridged_back(lab):
    """Echoes are not taken: the room repeating our IRC users, copies to our other occupants, our own IRC nicks."""
    lab.irc(b":carol!c@h JOIN #ops")
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")
    assert lab.room(said("carol", "echo of carol")) == []
    assert lab.room(said("irc", "echo of the listener")) == []
    assert lab.room(said("alice", "a copy", to=irc_jid("carol"))) == []
    assert lab.summary() == (0, 0, 0, 0, 0)
    assert lab.irc(b":alice!a@h JOIN #ops") == []
    assert lab.irc(b":alice!a@h PRIVMSG #ops :from our own connection") == []
    assert lab.irc(b":xmppgw!x@h PRIVMSG #ops :from the bot") == []
    assert lab.irc(b":carol!c@h PRIVMSG #ops :heard twice", key=alice_key()) == []
    assert lab.room(joined("carol").replace("role='participant'", "role='participant'")) == []


# -- kicks ----------------------------------------------------------------------

def test_an_irc_kick_of_a_bridged_occupant_closes_its_connection_and_tells_the_room(lab):
    """The occupant's IRC connection goes, the room is told, and its later messages bounce until it rejoins."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")
    actions = lab.irc(b":op!o@h KICK #ops alice :behave")
    assert actions == [IrcPart(alice_key(), "#ops", "kicked from the XMPP room"),
                       MucSay(ROOM, "irc", LISTENER, "alice was kicked from the IRC channel by an IRC operator.", UNCLASSIFIED),
                       Audit("kicked-on-irc", "irc:kicked-on-irc", ROOM, "alice by op: behave")]
    (bounce,) = lab.room(said("alice", "let me back"))
    assert (bounce.condition, bounce.text) == (
        "forbidden", "You were kicked from the IRC channel; rejoin the room to talk there again.")
    assert lab.heard.events == [("bounce", "irc:kicked-on-irc", "forbidden")]
    lab.room(left("alice"))
    assert lab.room(joined("alice")) == [IrcJoin(alice_key(2), "#ops", "alice")]


def test_a_room_kick_of_an_irc_user_kicks_on_irc_only_when_the_bot_is_an_operator(lab):
    """Without channel operator rights the kick is refused with a reason in the room; with them it is a KICK."""
    lab.irc(b":carol!c@h JOIN #ops")
    lab.irc(b":dave!d@h JOIN #ops")
    refused = lab.room(left("carol", "307"))
    assert refused == [MucSay(ROOM, "irc", LISTENER,
                              "The gateway is not an operator of the IRC channel: carol was not kicked there.",
                              UNCLASSIFIED),
                       Audit("kick-refused", "irc:kick-refused", ROOM, "carol: the bot is not a channel op")]
    lab.irc(b":op!o@h MODE #ops +o xmppgw")
    assert lab.room(left("dave", "307"))[0] == IrcKick(BOT, "#ops", "dave", "kicked from the XMPP room")


def test_an_irc_kick_of_an_irc_user_removes_its_occupant(lab):
    """An IRC operator's kick of an IRC user: a MUC kick when the listener moderates the room, else it leaves."""
    lab.irc(b":carol!c@h JOIN #ops")
    lab.irc(b":dave!d@h JOIN #ops")
    assert lab.irc(b":op!o@h KICK #ops carol :spam") == [MucLeave(ROOM, "carol", irc_jid("carol"))]
    lab.room(joined("irc", role="moderator").replace("<item", "<status code='110'/><item"))
    assert lab.irc(b":op!o@h KICK #ops dave :spam") == [
        MucKick(ROOM, "dave", LISTENER, "kicked from the IRC channel by an IRC operator"),
        Audit("kicked-on-irc", "irc:kicked-on-irc", ROOM, "dave by op: spam")]


# -- nicks and topics -------------------------------------------------------------

def test_an_irc_nick_change_renames_its_occupant(lab):
    """NICK on IRC is a MUC nick change of the IRC user's occupant, from the same JID (XEP-0045 7.6)."""
    lab.irc(b":carol!c@h JOIN #ops")
    assert lab.irc(b":carol!c@h NICK carla") == [MucNick(ROOM, "carol", irc_jid("carol"), "carla")]
    assert MucNick(ROOM, "carol", irc_jid("carol"), "carla").stanza("jabber:component:accept").toXml() == (
        "<presence xmlns='jabber:component:accept' from='carol%lab@irc.red.example/ops~1' "
        "to='ops@conference.red.example/carla'/>")
    (say,) = lab.irc(b":carla!c@h PRIVMSG #ops :renamed")
    assert say.as_nick == "carla"


def test_topic_both_ways(lab):
    """The room's subject becomes the channel's topic with its FLOT; an IRC TOPIC becomes the room's subject."""
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")  # her own connection registered: it speaks for her
    (topic,) = lab.room(f"<message from='{ROOM}/alice' to='{LISTENER}' type='groupchat'>"
                        f"<subject>rota week 49</subject></message>")
    assert isinstance(topic, IrcTopic)
    assert (topic.connection_key, topic.topic) == (alice_key(), "Protective Marking: UNCLASSIFIED rota week 49")
    lab.bridge.irc_sent(topic.token)
    assert lab.summary() == (1, 1, 0, 0, 0)
    lab.irc(b":carol!c@h JOIN #ops")
    (subject,) = lab.irc(b":carol!c@h TOPIC #ops :release on friday")
    assert subject == MucSubject(ROOM, "carol", irc_jid("carol"), "release on friday", UNCLASSIFIED)


# -- losses and restarts ------------------------------------------------------------

def test_a_message_lost_with_its_connection_bounces_to_its_sender(lab):
    """A netsplit or kill before the line was written: the sender gets our error, the books still balance."""
    lab.room(joined("alice"))
    (say,) = lab.room(said("alice", "in flight"))
    (bounce,) = lab.bridge.irc_lost(say.token, "Closing link: killed by a peer's <words>")
    assert (bounce.condition, bounce.text) == ("remote-server-not-found", "the guard could not reach the receiving server")
    assert "killed" not in bounce.reply.toXml()
    assert lab.summary() == (1, 0, 1, 0, 0)
    assert lab.bridge.irc_lost(say.token, "again") == []
    assert lab.summary() == (1, 0, 1, 0, 0)


def test_the_bots_connection_lost_empties_the_room_of_irc_users_and_names_brings_them_back(lab):
    """While the bot is away no IRC user is shown in the room; the NAMES after its rejoin brings them back."""
    lab.irc(b":carol!c@h JOIN #ops")
    actions = lab.bridge.irc_connection_lost(BOT, "connection refused")
    assert actions[0] == MucLeave(ROOM, "carol", irc_jid("carol")) and actions[1].event == \
        "connection-lost"
    assert lab.irc(b":server 353 xmppgw = #ops :xmppgw carol") == [MucJoin(ROOM, "carol", irc_jid("carol", 2))]


def test_the_xmpp_side_restarting_parts_occupants_and_rejoins_the_room(lab):
    """Prosody gone: occupants' connections part; back: the listener and every IRC user join the room again."""
    lab.room(joined("alice"))
    lab.irc(b":carol!c@h JOIN #ops")
    assert lab.bridge.xmpp_lost() == [IrcPart(alice_key(), "#ops", "the XMPP side went away")]
    assert lab.bridge.xmpp_ready() == [MucJoin(ROOM, "irc", LISTENER),
                                       MucJoin(ROOM, "carol", irc_jid("carol"))]
    assert lab.room(joined("alice")) == [IrcJoin(alice_key(2), "#ops", "alice")]


def test_a_private_message_to_an_occupants_connection_is_refused_with_a_notice(lab):
    """Private IRC messages are not bridged: the sender gets the gateway's notice, the audit a record."""
    lab.room(joined("alice"))
    assert lab.irc(b":carol!c@h PRIVMSG alice :psst", key=alice_key()) == [
        IrcSay(alice_key(), "carol", ("Private messages are not bridged to XMPP.",), notice=True),
        Audit("private-refused", "irc:private-refused", ROOM, "carol")]


def test_a_message_with_nothing_to_say_is_dropped_and_audited(lab):
    """A room message the policy leaves with no text (a chat state) settles as dropped under the gateway's rule."""
    lab.room(joined("alice"))
    assert lab.room(f"<message from='{ROOM}/alice' to='{LISTENER}' type='groupchat'>"
                    f"<active xmlns='http://jabber.org/protocol/chatstates'/></message>") == []
    assert lab.heard.events == [("drop", "irc:nothing-to-say", None)]
    assert lab.summary() == (1, 0, 0, 1, 0)


def test_build_bridges_shares_nick_books_and_slots_per_network_within_the_gateways_total(tmp_path):
    """Bridges on one network share its NickBook (bounded, the bot reserved) and its slots (max_connections less
    the bot), which draw on the gateway's (total_connections less one bot per network)."""
    from guard.app.irc_config import GatewaySettings, IrcConfig, XmppConfig

    other = replace(NETWORK, name="far", max_connections=2)
    config = IrcConfig("irc.toml", GatewaySettings(), XmppConfig("irc.red.example", "tcp:host=127.0.0.1:port=5347",
                                                                 False, None, "s", "conference.red.example"),
                       {"lab": replace(NETWORK, max_connections=3), "far": other},
                       (BRIDGE, replace(BRIDGE, room="dev@conference.red.example", channel="#dev"),
                        replace(BRIDGE, room="far@conference.red.example", network="far")),
                       IrcLimits(total_connections=5, nick_book_entries=20))
    first, second, far = build_bridges(config, Settlement(config.topology))
    assert first.nicks is second.nicks and first.nicks.max_entries == 20 and far.nicks is not first.nicks
    assert first.nicks.irc_nick_for("xmppgw") != "xmppgw"
    assert first.slots is second.slots and (first.slots.total, far.slots.total) == (2, 1)
    gateway = first.slots.parent
    assert gateway is far.slots.parent and gateway.total == 3
    assert [first.slots.take(), first.slots.take(), first.slots.take()] == [True, True, False]
    assert [far.slots.take(), far.slots.take()] == [True, False] and gateway.used == 3
    first.slots.give_back()
    assert gateway.used == 2 and first.slots.take() and not far.slots.take()


def test_while_the_audit_trail_is_down_every_room_message_bounces(lab):
    """A halted settlement (an audit record could not be written) bounces each message with service-unavailable."""
    lab.room(joined("alice"))
    lab.settlement.stop_on_audit_failure = True
    lab.settlement.halt("audit trail unwritable")
    (bounce,) = lab.room(said("alice", "anyone?"))
    assert (bounce.condition, bounce.text) == ("service-unavailable", "the guard is not relaying")
    assert lab.summary() == (1, 0, 1, 0, 0)


def test_a_fault_while_carrying_bounces_the_message_and_leaves_nothing_in_flight(lab):
    """Any exception after a message was taken settles it as bounced (internal-server-error): fail closed."""
    lab.room(joined("alice"))

    def broken(*arguments):
        raise RuntimeError("a fault in the gateway")

    lab.bridge._lines_for = broken
    (bounce,) = lab.room(said("alice", "hello"))
    assert bounce.condition == "internal-server-error"
    assert lab.summary() == (1, 0, 1, 0, 0)


def test_an_irc_users_nick_held_in_the_room_gets_a_suffix_and_a_refused_join_is_retried():
    """A MUC nick a real occupant holds is not taken; a 409 conflict is retried under another nick, a bounded number
    of times, then the IRC user stays out of the room (audited)."""
    lab = Lab(replace(BRIDGE, max_occupant_connections=0))
    lab.room(joined("bob"))
    assert lab.irc(b":bob!b@h JOIN #ops") == [MucJoin(ROOM, "bob[irc]", irc_jid("bob"))]
    lab.irc(b":carol!c@h JOIN #ops")
    conflict = ("<presence from='ops@conference.red.example/{nick}' to='{jid}' type='error'><error type='cancel'>"
                "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>")
    nick = "carol"
    for attempt in range(2, 7):
        (again,) = lab.room(conflict.format(nick=nick, jid=irc_jid("carol", 2)))
        assert again == MucJoin(ROOM, f"carol[irc{attempt}]", irc_jid("carol", 2))
        nick = again.as_nick
    (audit,) = lab.room(conflict.format(nick=nick, jid=irc_jid("carol", 2)))
    assert (audit.rule, audit.detail) == ("irc:join-refused", "carol: conflict")
    assert lab.irc(b":carol!c@h PRIVMSG #ops :nobody hears me") == []


def test_the_muc_actions_build_their_stanzas():
    """Join, leave, subject and kick actions write the XEP-0045 stanzas the component sends."""
    uri = "jabber:component:accept"
    assert MucJoin(ROOM, "carol", irc_jid("carol")).stanza(uri).toXml() == (
        "<presence xmlns='jabber:component:accept' from='carol%lab@irc.red.example/ops~1' "
        "to='ops@conference.red.example/carol'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/>"
        "</x></presence>")
    assert MucLeave(ROOM, "carol", irc_jid("carol")).stanza(uri).toXml() == (
        "<presence xmlns='jabber:component:accept' from='carol%lab@irc.red.example/ops~1' "
        "to='ops@conference.red.example/carol' type='unavailable'/>")
    assert MucSubject(ROOM, "carol", irc_jid("carol"), "the topic").stanza(uri).toXml() == (
        "<message xmlns='jabber:component:accept' from='carol%lab@irc.red.example/ops~1' "
        "to='ops@conference.red.example' type='groupchat'><subject>the topic</subject></message>")
    assert MucKick(ROOM, "dave", LISTENER, "kicked").stanza(uri, "k1").toXml() == (
        "<iq xmlns='jabber:component:accept' from='irc.red.example/ops' to='ops@conference.red.example' type='set' "
        "id='k1'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='dave' role='none'>"
        "<reason>kicked</reason></item></query></iq>")


def test_connection_slots_are_bounded():
    """ConnectionSlots hands out at most its total and takes back what is given."""
    slots = ConnectionSlots(2)
    assert [slots.take(), slots.take(), slots.take()] == [True, True, False]
    slots.give_back()
    assert slots.take() and slots.used == 2
    with pytest.raises(ValueError):
        ConnectionSlots(-1)


def test_a_full_nick_book_leaves_the_occupant_to_the_bot():
    """When the NickBook has no entry to give, the occupant gets no connection of its own: the bot relays it."""
    book = NickBook(Isupport(), reserved=("xmppgw",), max_entries=1)
    lab = Lab(nicks=book)
    assert lab.room(joined("alice")) == [IrcJoin(alice_key(), "#ops", "alice")]
    assert lab.room(joined("bob")) == []
    (say,) = lab.room(said("bob", "via the bot"))
    assert say.connection_key == BOT and say.lines[-1] == "<bob> via the bot"


def test_history_and_restated_subjects_are_not_bridged_again(lab):
    """What the room replays on (re)joining (delayed history, its current subject) is not taken a second time."""
    lab.room(joined("alice"))
    delayed = said("alice", "said yesterday", extra="<delay xmlns='urn:xmpp:delay' stamp='2026-11-30T10:00:00Z'/>")
    assert lab.room(delayed) == []
    subject = f"<message from='{ROOM}/alice' to='{LISTENER}' type='groupchat'><subject>rota</subject></message>"
    (topic,) = lab.room(subject)
    assert topic.topic.endswith(" rota")
    assert lab.room(subject) == []
    assert lab.summary() == (1, 0, 0, 0, 1)


def test_the_channels_topic_found_on_rejoining_is_not_set_again(lab):
    """The topic an IRC server sends on every join sets the room's subject once, not on each rejoin."""
    assert len(lab.bridge.irc_topic(BOT, "#ops", None, "release on friday")) == 1
    assert lab.bridge.irc_topic(BOT, "#ops", None, "release on friday") == []
    (changed,) = lab.bridge.irc_topic(BOT, "#ops", None, "release on monday")
    assert (changed.as_nick, changed.subject) == ("irc", "release on monday")


def test_the_split_follows_the_networks_linelen_and_the_bots_registered_nick():
    """ISUPPORT LINELEN sets the budget lines are split to; the bot relays under the nick it registered with."""
    book = NickBook(Isupport(linelen=2048), reserved=("xmppgw",))
    lab = Lab(replace(BRIDGE, max_occupant_connections=0), nicks=book)
    lab.bridge.irc_connected(BOT, "xmppgw1")
    lab.room(joined("bob"))
    (say,) = lab.room(said("bob", "x" * 1800))
    assert say.lines == ("<bob> Protective Marking: UNCLASSIFIED", "<bob> " + "x" * 1800)
    assert lab.irc(b":xmppgw1!x@h PRIVMSG #ops :the bot's own line") == []


def test_past_the_bound_of_irc_users_the_listener_relays_them():
    """Past max_irc_users no occupant (and no state) is made for an IRC user: the listener says <nick> text for it."""
    lab = Lab(max_irc_users=1)
    assert len(lab.irc(b":carol!c@h JOIN #ops")) == 1
    assert lab.irc(b":dave!d@h JOIN #ops") == [Audit("irc-user-relayed", "irc:irc-users-full", ROOM, "dave")]
    assert list(lab.bridge.irc_users) == ["carol"]
    (say,) = lab.irc(b":dave!d@h PRIVMSG #ops :hello")
    assert (say.as_nick, say.from_jid, say.body, say.label) == ("irc", LISTENER, "<dave> hello", UNCLASSIFIED)
    (action,) = lab.irc(b":dave!d@h PRIVMSG #ops :\x01ACTION waves\x01")
    assert action.body == "* dave waves"
    full = privmsg_budget("#ops", source_prefix_bytes("dave", "d", "h"))
    (long_line,) = lab.irc(line_of("dave", "z" * full))
    assert long_line.body == "<dave> " + "z" * full and lab.bridge.pending == {}
    assert lab.irc(b":dave!d@h PRIVMSG #ops :Protective Marking: RESTRICTED") == [] and lab.bridge.marked_next == {}


def test_a_notice_from_someone_not_in_the_channel_still_reaches_the_room(lab):
    """A NOTICE to the channel from a service not in it is said by the listener as -nick- text."""
    (notice,) = lab.irc(b":ChanServ!s@services NOTICE #ops :channel registered")
    assert (notice.as_nick, notice.body) == ("irc", "-ChanServ- channel registered")


def test_the_bridge_and_its_labels_do_no_io():
    """bridge.py and labels.py import the core, the IRC wire and domish only: no sockets, reactor, clock or app."""
    from tests.unit.test_layers import imports_of

    folder = Path(__file__).resolve().parents[3] / "guard" / "edges" / "irc"
    imported = {name for module in ("bridge.py", "labels.py") for name in imports_of(folder / module)}
    outside = {name for name in imported if not name.startswith(("guard.core.", "guard.edges.irc."))}
    assert outside <= {"__future__", "dataclasses", "itertools", "re", "string", "twisted.words.xish.domish"}, outside
    assert "guard.edges.irc.client" not in imported and "guard.edges.irc.connections" not in imported
