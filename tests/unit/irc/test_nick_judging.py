"""Nicks are content: judged by the bridge policy both ways, rate-limited per occupant, never disguised by bidi
or invisible characters; and message text loses its overrides and isolates both ways."""

from guard.edges.irc.bridge import (Audit, BounceToSender, IrcJoin, IrcNick, IrcPart, IrcSay, MucJoin, MucNick,
                                    MucSay)
from guard.edges.irc.labels import BridgeLabels, nick_presence
from guard.edges.irc.nicks import Isupport, NickBook
from tests.unit.irc.test_bridge import BOT, BRIDGE, ROOM, UNCLASSIFIED, Lab, alice_key, irc_jid, joined, left, said

REFUSED_BY_POLICY = "That room nick is not allowed on the IRC channel."
NOT_ON_IRC = "Your room nick is not allowed on the IRC channel; choose another nick to talk there."


def presence_error(nick, condition, text):
    kind = "wait" if condition == "resource-constraint" else "modify"
    return (f"<presence xmlns='jabber:server' type='error' from='irc.red.example/ops' to='{ROOM}/{nick}'>"
            f"<error type='{kind}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            f"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{text}</text></error></presence>")


def registered(lab, nick="alice", serial=1):
    lab.room(joined(nick))
    lab.bridge.irc_connected(alice_key(serial), nick)


# -- XMPP -> IRC ------------------------------------------------------------------

def test_a_nick_is_judged_as_the_occupants_presence_under_it():
    """The policy sees a nick as a presence from room/nick with a muc#user item naming it, toward the IRC side."""
    assert nick_presence(ROOM, "alice", "lab.irc.invalid").toXml() == (
        "<presence xmlns='jabber:server' from='ops@conference.red.example/alice' to='lab.irc.invalid'>"
        "<x xmlns='http://jabber.org/protocol/muc#user'><item nick='alice'/></x></presence>")
    labels = BridgeLabels.for_bridge(BRIDGE)
    assert labels.release_nick(ROOM, "alice").rule_id == "room-message-release"
    assert labels.release_nick(ROOM, "TopSecretPlan").rule_id == "nick-no-marking"


def test_a_joining_occupant_whose_nick_the_policy_refuses_gets_no_connection_and_its_messages_bounce():
    """A refused nick does not cross: no IRC connection, a presence error, an audit record; its messages bounce."""
    lab = Lab()
    actions = lab.room(joined("TopSecretPlan"))
    assert [type(a) for a in actions] == [BounceToSender, Audit]
    assert actions[0].reply.toXml() == presence_error("TopSecretPlan", "policy-violation", REFUSED_BY_POLICY)
    assert actions[1] == Audit("nick-refused", "nick-no-marking", ROOM, "TopSecretPlan")
    (bounce,) = lab.room(said("TopSecretPlan", "hello"))
    assert (bounce.condition, bounce.text) == ("policy-violation", NOT_ON_IRC)
    assert lab.heard.events == [("bounce", "nick-no-marking", "policy-violation")]
    assert lab.summary() == (1, 0, 1, 0, 0)


def test_a_rename_the_policy_refuses_parts_the_occupant_from_irc_until_it_takes_a_nick_that_passes():
    """Renaming to a refused nick sends no NICK: the connection parts, the occupant is told and audited; its
    messages bounce (never relayed under the refused nick); a later acceptable nick connects it again."""
    lab = Lab()
    registered(lab)
    actions = lab.room(left("alice", "303", new_nick="SecretAgent"), now=1.0)
    assert [type(a) for a in actions] == [IrcPart, BounceToSender, Audit]
    assert actions[0] == IrcPart(alice_key(), "#ops", "left the XMPP room")
    assert actions[1].reply.toXml() == presence_error("SecretAgent", "policy-violation", REFUSED_BY_POLICY)
    assert actions[2] == Audit("nick-refused", "nick-no-marking", ROOM, "SecretAgent")
    (bounce,) = lab.room(said("SecretAgent", "who am I"), now=2.0)
    assert isinstance(bounce, BounceToSender) and bounce.condition == "policy-violation"
    assert lab.room(left("SecretAgent", "303", new_nick="alice2"), now=3.0) == [IrcJoin(alice_key(), "#ops", "alice2")]


def test_a_nick_with_a_bidi_override_or_an_invisible_character_does_not_cross():
    """RLO, isolates and zero-width characters in a room nick disguise who speaks: the JID's resourceprep refuses or
    removes them before the bridge sees the nick, and the nick judgement refuses any left (irc:nick-invisible)."""
    labels = BridgeLabels.for_bridge(BRIDGE)
    for nick in ("bob\u202eevil", "\u2067alice\u2069", "ad\u200bmin", "mal\u200flory", "a\u2028b"):
        refused = labels.release_nick(ROOM, nick)
        assert (refused.rule_id, refused.condition) == ("irc:nick-invisible", "policy-violation"), nick
        assert all(a.nick.isascii() for a in Lab().room(joined(nick)) if isinstance(a, IrcJoin)), nick


def test_renames_past_the_rate_do_not_cross_until_the_minute_allows():
    """Three renames a minute cross; the fourth parts the occupant (resource-constraint, audited), its messages
    bounce, and the held nick crosses when the oldest rename is a minute old."""
    lab = Lab()
    registered(lab)
    assert lab.room(left("alice", "303", new_nick="a1"), now=0.0) == [IrcNick(alice_key(), "a1")]
    assert lab.room(left("a1", "303", new_nick="a2"), now=1.0) == [IrcNick(alice_key(), "a2")]
    assert lab.room(left("a2", "303", new_nick="a3"), now=2.0) == [IrcNick(alice_key(), "a3")]
    actions = lab.room(left("a3", "303", new_nick="a4"), now=3.0)
    assert [type(a) for a in actions] == [IrcPart, BounceToSender, Audit]
    assert actions[1].reply.toXml() == presence_error(
        "a4", "resource-constraint", "Renamed too often: the new nick reaches the IRC channel within a minute.")
    assert actions[2] == Audit("rename-refused", "irc:rename-rate", ROOM, "a4")
    (bounce,) = lab.room(said("a4", "still here"), now=4.0)
    assert bounce.condition == "resource-constraint"
    assert lab.bridge.wake_at() == 60.0
    assert lab.bridge.due(59.0) == []
    assert lab.bridge.due(60.0) == [IrcJoin(alice_key(), "#ops", "a4")]


def test_the_bots_relay_shows_only_a_judged_nick():
    """An occupant relayed by the bot is named by its judged nick; a sender the bridge never saw join is judged
    before its nick is shown, and bounces if refused."""
    lab = Lab()
    lab.room(joined("alice"))  # her connection is not registered yet: the bot relays her
    (say,) = lab.room(said("alice", "hi"))
    assert say.connection_key == BOT and say.lines[-1] == "<alice> hi"
    (bounce,) = lab.room(said("SecretSquirrel", "hi"))
    assert isinstance(bounce, BounceToSender) and bounce.condition == "policy-violation"


# -- IRC -> XMPP ------------------------------------------------------------------

def test_an_irc_nick_with_a_bidi_override_stays_out_of_the_room_and_is_audited():
    """A lax server's nick holding U+202E never becomes a room occupant: audited, the IRC user told."""
    lab = Lab()
    actions = lab.bridge.irc_joined(BOT, "#ops", "bob\u202eevil", 0.0)
    assert [type(a) for a in actions] == [IrcSay, Audit]
    assert actions[0].notice and actions[0].lines == (
        "Room nicks with invisible or bidirectional formatting characters do not reach IRC.",)
    assert actions[1].rule == "irc:nick-invisible"
    assert lab.bridge.xmpp_ready() == [MucJoin(ROOM, "irc", "irc.red.example/ops")]
    (rejoined,) = lab.bridge.irc_nick_changed(BOT, "bob\u202eevil", "bob", 1.0)
    assert (type(rejoined), rejoined.as_nick) == (MucJoin, "bob")


def test_an_irc_nick_escapes_when_it_holds_an_invisible_character():
    """NickBook.muc_nick_for escapes a nick with a format character: resourceprep would map ZWSP to nothing and let
    a lax server's "bo<ZWSP>b" speak in the room as "bob"."""
    book = NickBook(Isupport())
    assert book.muc_nick_for("bo\u200bb").startswith("irc|")
    assert book.muc_nick_for("bob\u202eevil").startswith("irc|")
    assert book.muc_nick_for("Zo\u00eb") == "Zo\u00eb"


def test_irc_renames_past_the_rate_keep_the_occupants_room_nick():
    """An IRC user's fourth NICK in a minute does not rename its occupant (audited); its messages still reach the
    room under the nick the room knows."""
    lab = Lab()
    lab.irc(b":carol!c@h JOIN #ops")
    jid = irc_jid("carol")
    assert lab.irc(b":carol!c@h NICK c1", now=0.0) == [MucNick(ROOM, "carol", jid, "c1")]
    assert lab.irc(b":c1!c@h NICK c2", now=1.0) == [MucNick(ROOM, "c1", jid, "c2")]
    assert lab.irc(b":c2!c@h NICK c3", now=2.0) == [MucNick(ROOM, "c2", jid, "c3")]
    assert lab.irc(b":c3!c@h NICK c4", now=3.0) == [Audit("rename-refused", "irc:rename-rate", ROOM, "c3 -> c4")]
    (say,) = lab.irc(b":c4!c@h PRIVMSG #ops :hello", now=4.0)
    assert say == MucSay(ROOM, "c3", jid, "hello", UNCLASSIFIED)
    assert lab.irc(b":c4!c@h NICK c5", now=61.0) == [MucNick(ROOM, "c3", jid, "c5")]


# -- message text -----------------------------------------------------------------

def test_bidi_overrides_and_isolates_leave_room_text_and_marks_stay():
    """Toward IRC: LRE..RLO, LRI..PDI, ZWSP, WJ and BOM are removed; RLM, LRM, ZWJ, ZWNJ kept; U+2028 breaks a line."""
    lab = Lab()
    registered(lab)
    body = "pay \u202eevil\u202c \u2066x\u2069 \u200bword\ufeff \u05e9\u05dc\u05d5\u05dd\u200f \u200d\u200c end\u2028next"
    (say,) = lab.room(said("alice", body))
    assert say.lines[1:] == ("pay evil x word \u05e9\u05dc\u05d5\u05dd\u200f \u200d\u200c end", "next")


def test_bidi_overrides_from_irc_bytes_never_reach_the_room():
    """From IRC (UTF-8 bytes): RLO, isolates and ZWSP removed, U+2029 a space, RLM kept."""
    lab = Lab()
    lab.irc(b":carol!c@h JOIN #ops")
    line = ":carol!c@h PRIVMSG #ops :a\u202eb\u2067c\u2069 d\u200be\u2029f\u200f".encode("utf-8")
    (say,) = lab.irc(line)
    assert say.body == "abc de f\u200f"


def test_the_relay_name_of_an_irc_user_without_an_occupant_loses_its_overrides():
    """A nick the listener relays as <nick> text carries no bidi override into the room."""
    lab = Lab(max_irc_users=1)
    lab.irc(b":carol!c@h JOIN #ops")
    raw = ":dave\u202e!d@h PRIVMSG #ops :hi".encode("utf-8")
    (say,) = lab.irc(raw)
    assert say.body == "<dave> hi"



def test_a_nick_shown_in_relayed_text_is_judged_as_a_joining_nick_is():
    """An IRC user without an occupant (relayed as <nick> text) and any notice (-nick- text) show the nick in the
    room: a nick holding a marking the bridge maps does not cross that way either (the IRC user told, audited)."""
    lab = Lab(max_irc_users=1)
    lab.irc(b":carol!c@h JOIN #ops")
    for line in (b":Restricted!r@h PRIVMSG #ops :hi", b":Re\xe2\x80\x8bstricted!r@h NOTICE #ops :hi"):
        actions = lab.irc(line, now=10.0)
        assert [type(action) for action in actions] in ([IrcSay, Audit], [Audit]), line
        assert actions[-1].rule == "irc:nick-marking", line
    (say,) = lab.irc(b":dave!d@h PRIVMSG #ops :hi", now=20.0)
    assert say.body == "<dave> hi"


def test_a_notice_from_an_occupant_whose_rename_was_refused_does_not_show_the_refused_nick():
    """An IRC user whose NICK to a marking was refused keeps its room nick; its notices, which show the IRC nick,
    do not cross under the refused one."""
    lab = Lab()
    lab.irc(b":carol!c@h JOIN #ops")
    lab.irc(b":carol!c@h NICK RESTRICTED", now=1.0)
    actions = lab.irc(b":RESTRICTED!c@h NOTICE #ops :hello", now=100.0)
    assert not any(isinstance(action, MucSay) for action in actions)
    assert actions[-1] == Audit("nick-refused", "irc:nick-marking", ROOM, actions[-1].detail)
    (say,) = lab.irc(b":RESTRICTED!c@h PRIVMSG #ops :hello", now=101.0)
    assert say == MucSay(ROOM, "carol", irc_jid("carol"), "hello", UNCLASSIFIED)
