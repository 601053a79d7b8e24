"""Holes found by the hostile review of the IRC pieces (issue 14): each test shows one, as the attacker would use it."""

from dataclasses import replace

import pytest

from guard.core.pipeline import Verdict
from guard.core.policy import compile_policy_text
from guard.core.policy.elements import parse_stanza_text
from guard.edges.irc.bridge import Audit, IrcJoin, IrcNick, IrcPart, IrcSay, MucJoin, MucLeave, MucSay
from guard.edges.irc.labels import BridgeLabels, Refused, Released
from tests.unit.irc.test_bridge import POLICY_PATH, budget, BOT, BRIDGE, ESS, ROOM, Lab, alice_key, irc_jid, joined, left, said

POLICY_TEXT = POLICY_PATH.read_text()
PLAIN_POLICY = ('[policy]\nname = "plain"\n[[rules]]\nid = "all"\nrev = 1\nwhy = "w"\n'
                'verdict = "pass"\nkeep = ["body"]\n')


def alice_on_irc():
    """A bridge whose room has alice, her own IRC connection registered as alice."""
    lab = Lab()
    lab.room(joined("alice"))
    lab.bridge.irc_connected(alice_key(), "alice")
    return lab


def labelled_message(body, label):
    return parse_stanza_text(
        f"<message from='{ROOM}/alice' to='irc.red.example/ops' type='groupchat' id='m1'><body>{body}</body>"
        "<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
        f"{ESS[label]}</esssecuritylabel></label></securitylabel></message>")


def test_another_users_nick_change_heard_by_an_occupants_connection_does_not_rename_the_occupant():
    """Bob's NICK seen on alice's own connection leaves alice's IRC nick alone, so alice's lines never echo back."""
    lab = alice_on_irc()
    lab.irc(b":bob!b@h JOIN #ops")
    assert lab.irc(b":bob!b@h NICK carol", key=alice_key()) == []
    assert lab.irc(b":bob!b@h NICK carol")[0].new_nick == "carol"
    # What alice's connection said in the channel, heard by the bot: our own words, never the room's again.
    assert lab.irc(b":alice!a@h PRIVMSG #ops :Protective Marking: RESTRICTED") == []
    assert lab.irc(b":alice!a@h PRIVMSG #ops :the rota") == []
    (say,) = lab.irc(b":carol!b@h PRIVMSG #ops :carol speaks")
    assert isinstance(say, MucSay) and say.body == "carol speaks"


def test_an_occupants_own_nick_changed_by_the_server_is_followed():
    """A NICK of alice's own connection or of the bot (forced by the server) is its new nick: their echoes stay ours."""
    lab = alice_on_irc()
    assert lab.irc(b":alice!a@h NICK alice_", key=alice_key()) == []
    assert lab.irc(b":alice!a@h NICK alice_") == []
    assert lab.irc(b":alice_!a@h PRIVMSG #ops :our own words") == []
    assert lab.irc(b":xmppgw!x@h NICK Guest42") == []  # the bot's own nick, forced: still the bot
    (kicked,) = lab.irc(b":op!o@h KICK #ops Guest42 :go away")
    assert (kicked.event, lab.bridge.bot_in_channel) == ("bot-kicked", False)


def test_a_relayed_occupant_with_a_long_muc_nick_still_gets_lines_within_the_limit():
    """The bot's <nick> relay of a 600-byte MUC nick writes lines IRC accepts, the nick cut, the text whole."""
    wide = compile_policy_text(POLICY_TEXT.replace('[policy]\n', '[policy]\nresource_max_bytes = 1023\n'), "wide.toml")
    lab = Lab(replace(BRIDGE, max_occupant_connections=0, policy=wide))
    nick = "n" * 600
    lab.room(joined(nick))
    (say,) = lab.room(said(nick, "short words " * 40).replace(f"id='m-{nick}'", "id='m1'"))
    assert say.connection_key == BOT
    assert all(len(line.encode()) <= budget("xmppgw") for line in say.lines)
    assert len(say.lines) < 8
    assert " ".join(line.split("> ", 1)[1].strip() for line in say.lines[1:]) == ("short words " * 40).strip()


def test_a_labelled_message_is_refused_by_a_bridge_policy_that_cannot_read_labels():
    """With no label policy to judge it, a SECRET-labelled room message never reaches IRC (checked sound: the core drops it)."""
    labels = BridgeLabels(compile_policy_text(PLAIN_POLICY, "plain.toml"), "lab.irc.invalid")
    refused = labels.release(labelled_message("the plan", "SECRET"))
    assert isinstance(refused, Refused) and refused.judgement.verdict is Verdict.DROP
    assert isinstance(labels.release(parse_stanza_text(
        f"<message from='{ROOM}/alice' to='irc.red.example/ops' type='groupchat'><body>plain</body></message>")),
        Released)


def test_a_text_of_only_control_characters_is_dropped_not_delivered_as_a_bare_flot():
    """A body that is nothing but control characters says nothing on IRC: dropped (nothing-to-say), no FLOT alone."""
    lab = Lab()
    lab.room(joined("alice"))
    assert lab.room(said("alice", "\x85\x9b\u200b".replace("\u200b", "") + "\n\n")) == []
    assert lab.heard.events == [("drop", "irc:nothing-to-say", None)]
    assert lab.summary() == (1, 0, 0, 1, 0)


def test_private_messages_flooding_an_occupants_connection_get_few_notices_so_its_queue_stays_free():
    """An IRC user's 300 private lines to alice's nick get one refusal notice per interval; each is audited."""
    lab = Lab()
    lab.room(joined("alice"))
    actions = [action for n in range(300)
               for action in lab.irc(b":carol!c@h PRIVMSG alice :psst %d" % n, key=alice_key(), now=n / 100)]
    notices = [action for action in actions if isinstance(action, IrcSay)]
    audits = [action for action in actions if isinstance(action, Audit)]
    assert [notice.lines for notice in notices] == [("Private messages are not bridged to XMPP.",)] * 2
    assert len(audits) == 300


def test_the_room_refusing_the_join_of_an_irc_user_with_capitals_in_its_nick_is_matched_and_retried():
    """Carol's occupant joins from the JID as the room prepares it (carol%...), so the room's 409 reaches her retry."""
    lab = Lab()
    (join,) = lab.irc(b":Carol!c@h JOIN #ops")
    assert join == MucJoin(ROOM, "Carol", "carol%lab@irc.red.example/ops~1")
    (again,) = lab.room("<presence from='ops@conference.red.example/Carol' to='carol%lab@irc.red.example/ops~1' "
                        "type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                        "</error></presence>")
    assert again == MucJoin(ROOM, "Carol[irc2]", "carol%lab@irc.red.example/ops~1")


def test_an_xmpp_occupant_taking_an_irc_users_nick_neither_mutes_it_nor_takes_its_kick():
    """XMPP "Carol" (IRC nick Carol, the same as carol by IRC's case folding) joining while IRC carol talks: until
    Carol's connection registers (as Carol|2), IRC carol is still IRC carol: heard in the room, and an operator's
    kick of her is hers, not the occupant's."""
    lab = Lab()
    lab.irc(b":carol!c@h JOIN #ops")
    assert lab.room(joined("Carol")) == [IrcJoin(alice_key(), "#ops", "Carol")]
    (say,) = lab.irc(b":carol!c@h PRIVMSG #ops :still me")
    assert isinstance(say, MucSay) and say.body == "still me"
    assert lab.irc(b":op!o@h KICK #ops carol :spam") == [MucLeave(ROOM, "carol", irc_jid("carol"))]
    lab.bridge.irc_connected(alice_key(), "Carol|2")
    assert lab.irc(b":Carol|2!c@h PRIVMSG #ops :the occupant's own line") == []
    (kicked, *_) = lab.irc(b":op!o@h KICK #ops Carol|2 :behave")
    assert kicked == IrcPart(alice_key(), "#ops", "kicked from the XMPP room")


def test_a_private_message_to_the_listener_never_reaches_the_channel_even_under_a_permissive_policy():
    """A bridge policy that passes every message still cannot publish an occupant's private message on IRC."""
    permissive = compile_policy_text(POLICY_TEXT.split("# --- rules")[0] + (
        '[[rules]]\nid = "everything"\nrev = 1\nwhy = "careless"\nverdict = "pass"\nkeep = ["body"]\n'), "careless.toml")
    lab = Lab(replace(BRIDGE, policy=permissive))
    lab.room(joined("alice"))
    (bounce,) = lab.room(said("alice", "just between us").replace("type='groupchat'", "type='chat'"))
    assert (bounce.condition, bounce.text) == ("service-unavailable", "Only room messages are bridged to IRC.")
    assert lab.heard.events == [("bounce", "irc:only-groupchat", "service-unavailable")]
    assert lab.summary() == (1, 0, 1, 0, 0)



def test_what_an_occupant_said_just_before_leaving_never_comes_back_from_the_bot_under_the_irc_label():
    """Alice says a RESTRICTED line and leaves at once; the bot hears her lines after the bridge closed her
    connection: they are ours (not the room's again as <alice> text, UNCLASSIFIED) until the bot hears her part."""
    lab = alice_on_irc()
    (say,) = lab.room(said("alice", "the rota", label="RESTRICTED"))
    assert say.lines == ("Protective Marking: RESTRICTED", "the rota")
    assert lab.room(left("alice")) == [IrcPart(alice_key(), "#ops", "left the XMPP room")]
    assert lab.irc(b":alice!a@h PRIVMSG #ops :Protective Marking: RESTRICTED") == []
    assert lab.irc(b":alice!a@h PRIVMSG #ops :the rota") == []
    assert lab.irc(b":alice!a@h PART #ops :left the XMPP room") == []
    assert lab.irc(b":alice!x@elsewhere JOIN #ops") == [MucJoin(ROOM, "alice", irc_jid("alice"))]
    (hers,) = lab.irc(b":alice!x@elsewhere PRIVMSG #ops :another alice")
    assert hers.body == "another alice"


def renamed_by_nick(lab):
    """The occupant's own connection hears its NICK first; the bot hears it after alice's last line."""
    assert lab.irc(b":alice!a@h NICK alicia", key=alice_key()) == []
    return b":alice!a@h NICK alicia"


def renamed_by_reconnecting(lab):
    """guard-irc renames by reconnecting as the new nick; the old connection quits after its last line."""
    assert lab.bridge.irc_connected(alice_key(), "alicia") == []
    return b":alice!a@h QUIT :xmpp-guard gateway closing"


@pytest.mark.parametrize("rename", [renamed_by_nick, renamed_by_reconnecting])
def test_a_renamed_occupants_lines_under_its_old_nick_stay_ours_until_the_bot_hears_it_go(rename):
    """Alice renamed alicia: a line the bot hears from alice after the bridge took the new nick is still ours."""
    lab = alice_on_irc()
    assert lab.room(left("alice", "303", new_nick="alicia")) == [IrcNick(alice_key(), "alicia")]
    gone = rename(lab)
    assert lab.irc(b":alice!a@h PRIVMSG #ops :said before the rename") == []
    assert lab.irc(gone) == []
    assert lab.irc(b":alicia!a@h PRIVMSG #ops :said after it") == []
    assert lab.bridge.leaving == {}


def test_two_irc_users_the_server_tells_apart_are_two_occupants_even_if_rfc1459_would_fold_them_together():
    """On an ascii-casemapping server (ngIRCd) bob[ and bob{ are two users: bob{ never speaks as bob['s occupant."""
    lab = Lab()
    assert lab.irc(b":bob[!b@h JOIN #ops") == [MucJoin(ROOM, "bob[", irc_jid("bob["))]
    (join,) = lab.irc(b":bob{!x@elsewhere JOIN #ops")
    assert join.as_nick == "bob{" and join.from_jid != irc_jid("bob[")
    (say,) = lab.irc(b":bob{!x@elsewhere PRIVMSG #ops :I am not bob[")
    assert (say.as_nick, say.from_jid) == (join.as_nick, join.from_jid)
    assert lab.irc(b":bob{!x@elsewhere QUIT :bye") == [MucLeave(ROOM, "bob{", join.from_jid)]
    (still,) = lab.irc(b":bob[!b@h PRIVMSG #ops :still here")
    assert still.as_nick == "bob["


def test_an_occupant_joining_and_leaving_in_a_loop_opens_few_connections_and_the_rest_come_later():
    """Thirty joins and leaves in a minute open ten connections; then the bot relays, and due() opens one later."""
    lab = Lab()
    opened = [action for n in range(30) for action in lab.room(joined(f"churn{n}"), now=n) + lab.room(
        left(f"churn{n}"), now=n + 0.5) if isinstance(action, IrcJoin)]
    assert len(opened) == 10
    lab.room(joined("alice"), now=30)
    (say,) = lab.room(said("alice", "relayed for now"), now=30)
    assert say.connection_key == BOT
    assert lab.bridge.wake_at() == 60.0 and lab.bridge.due(59.9) == []
    assert lab.bridge.due(60.0) == [IrcJoin(alice_key(31), "#ops", "alice")]


def test_the_xmpp_side_going_away_gives_no_slot_on_to_occupants_that_are_leaving_too():
    """Component lost with alice connected and bob relayed: alice parts; bob is not connected only to part."""
    lab = Lab(replace(BRIDGE, max_occupant_connections=1))
    lab.room(joined("alice"))
    lab.room(joined("bob"))
    assert lab.bridge.xmpp_lost() == [IrcPart(alice_key(1), "#ops", "the XMPP side went away")]


def test_the_connections_a_bridge_opens_per_minute_come_from_the_configuration():
    """[limits] connections_per_minute reaches every bridge build_bridges makes, and bounds the opens as the default does."""
    from guard.app.irc_config import GatewaySettings, IrcConfig, IrcLimits, XmppConfig
    from guard.core.settlement import Settlement
    from guard.edges.irc.bridge import build_bridges
    from tests.unit.irc.test_bridge import NETWORK

    config = IrcConfig("irc.toml", GatewaySettings(), XmppConfig("irc.red.example", "tcp:host=127.0.0.1:port=5347",
                                                                 False, None, "s", "conference.red.example"),
                       {"lab": NETWORK}, (BRIDGE,), IrcLimits(connections_per_minute=3))
    (bridge,) = build_bridges(config, Settlement(config.topology))
    assert bridge.connection_opens == 3
    lab = Lab()
    lab.bridge.connection_opens = 3
    opened = [action for n in range(6) for action in lab.room(joined(f"churn{n}"), now=n) + lab.room(
        left(f"churn{n}"), now=n + 0.5) if isinstance(action, IrcJoin)]
    assert len(opened) == 3
