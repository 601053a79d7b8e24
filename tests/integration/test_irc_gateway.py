"""
The IRC gateway against real peers: Prosody (MUC, the component
irc.red.example) with slixmpp clients in the room, ngIRCd over TLS with a
raw IRC client in the channel, and guard-irc as its own process between them.

Read like a play: "alice says in the room ...", "carol sees on IRC ...".
One lab for the module (it takes the lab lock); each test uses its own
people so that what one test leaves behind does not confuse the next.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from guard.lab.clients import ClientError

from .irc_lab import (BOT_NICK, CHANNEL, FLOOD_CHANNEL, FLOOD_ROOM, GATEWAY_ADDRESS, METRICS_PORT, MODERATOR, ROOM,
                      IrcGatewayLab, LabError)
from .labs import started

RESTRICTED = "MQgCAQIGA4g3AQ=="  # ESS: policy 2.999.1, classification 2 (RESTRICTED)
SECRET = "MQgCAQQGA4g3AQ=="  # ESS: policy 2.999.1, classification 4 (SECRET)
WAIT = 20.0
TRANSCRIPT = Path(__file__).resolve().parents[2] / "run" / "irc-transcript.txt"  # beside the lab PKI; not committed


def labelled(room: str, body: str, ess: str, stanza_id: str) -> str:
    """A groupchat message carrying an XEP-0258 label, as a client writes it."""
    return (f"<message to='{room}' type='groupchat' id='{stanza_id}'><body>{body}</body>"
            "<securitylabel xmlns='urn:xmpp:sec-label:0'><label>"
            f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{ess}</esssecuritylabel>"
            "</label></securitylabel></message>")


@pytest.fixture(scope="module")
def irc_lab(tmp_path_factory):
    """Prosody, ngIRCd and the gateway, for the whole module."""
    laboratory = IrcGatewayLab(tmp_path_factory.mktemp("irc-lab"))

    def bridged():
        # Both the component and the bot are in: the bot's JOIN of #ops is what a client in the channel sees first.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status = laboratory.status()
            except (OSError, ValueError):
                status = {}
            component = status.get("component") or {}
            bridges = status.get("bridges") or []
            if component.get("state") == "open" and bridges and all(b["bot_in_channel"] for b in bridges):
                return
            time.sleep(0.2)
        raise LabError("the gateway did not attach to Prosody and join its channels within 30 s")

    yield started(laboratory, "the IRC gateway lab", ready=bridged)
    laboratory.stop()


@pytest.fixture
def people(irc_lab, client_loop):
    """(The lab's log tails go with a failed test's report: conftest.) Opens XMPP users (joined to a room) and raw IRC clients (in a channel); closes all of them afterwards."""
    opened = []

    class People:
        def xmpp(self, user, room=ROOM, nick=None):
            client = irc_lab.xmpp_client(client_loop, user).connect()
            opened.append(client.disconnect)
            client.join_room(room, nick or user)
            return client

        def irc(self, nick, channel=CHANNEL):
            client = irc_lab.irc_client(nick)
            opened.append(client.close)
            client.join(channel)
            return client

    yield People()
    for close in reversed(opened):
        try:
            close()
        except (ClientError, OSError):
            pass


def wait_privmsg(client, channel, nick, text, start=0, timeout=WAIT):
    return client.wait_for(lambda line: line.command == "PRIVMSG" and line.params[0].lower() == channel.lower()
                           and line.nick == nick and line.text == text, timeout, f"<{nick}> {text!r}", start)


def test_messages_and_actions_cross_both_ways(people):
    """alice's message and /me reach IRC from her own nick with the FLOT first; carol's message and ACTION reach the room labelled."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining #ops")
    mark = carol.mark()
    alice.send_message(ROOM, "good morning", type="groupchat")
    flot = wait_privmsg(carol, CHANNEL, "alice", "Protective Marking: UNCLASSIFIED", mark)
    wait_privmsg(carol, CHANNEL, "alice", "good morning", carol.lines.index(flot))
    alice.send_message(ROOM, "/me waves", type="groupchat")
    wait_privmsg(carol, CHANNEL, "alice", "\x01ACTION waves\x01", mark)
    alice.wait_for_occupant(ROOM, "carol")
    carol.say(CHANNEL, "morning alice")
    said = alice.wait_for_groupchat(ROOM, "carol", "morning alice")
    assert "<displaymarking" in said.xml and ">UNCLASSIFIED</displaymarking>" in said.xml
    carol.say(CHANNEL, "\x01ACTION waves back\x01")
    alice.wait_for_groupchat(ROOM, "carol", "/me waves back")


def test_joins_and_parts_cross_both_ways(people):
    """bob joining and leaving the room is a JOIN and a PART on IRC; dave joining and leaving #ops is an occupant coming and going."""
    grace = people.irc("grace")
    alice = people.xmpp("alice")
    bob = people.xmpp("bob")
    grace.wait_for(lambda line: line.command == "JOIN" and line.nick == "bob", WAIT, "bob joining #ops")
    bob.leave_room(ROOM, "bob")
    grace.wait_for(lambda line: line.command in ("PART", "QUIT") and line.nick == "bob", WAIT, "bob leaving")
    dave = people.irc("dave")
    alice.wait_for_occupant(ROOM, "dave")
    dave.send(f"PART {CHANNEL} :done")
    alice.wait_for_occupant(ROOM, "dave", "unavailable")


def test_a_nick_collision_and_an_over_long_nick_get_their_own_irc_nicks(people, irc_lab):
    """An IRC user (not in the channel) already called erin, and a room nick over NICKLEN (9): each gets a valid nick of its own."""
    other_erin = irc_lab.irc_client("erin")  # on the network, not in #ops: the room does not know it
    watcher = people.irc("watcher")
    mark = watcher.mark()
    people.xmpp("erin")
    people.xmpp("averyveryverylongnickname")
    joined = set()
    deadline = time.monotonic() + WAIT
    while len(joined) < 2 and time.monotonic() < deadline:
        joined = {line.nick for line in watcher.lines[mark:] if line.command == "JOIN" and line.nick != "erin"}
        time.sleep(0.2)
    assert len(joined) == 2, joined
    assert all(len(nick) <= 9 for nick in joined) and "erin" not in joined
    other_erin.close()


def test_the_topic_crosses_both_ways(people):
    """alice's room subject becomes the channel topic; the topic an IRC operator sets becomes the room's subject."""
    frank = people.irc("frank")
    alice = people.xmpp("alice")
    frank.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    mark = frank.mark()
    alice.set_subject(ROOM, "release on friday")
    topic = frank.wait_for(lambda line: line.command == "TOPIC", WAIT, "a TOPIC", mark)
    assert topic.text.endswith("release on friday") and "UNCLASSIFIED" in topic.text
    frank.send("OPER labop lab-oper-password")
    frank.wait_for(lambda line: line.command == "381", WAIT, "RPL_YOUREOPER")
    frank.send(f"MODE {CHANNEL} +o frank")
    frank.send(f"TOPIC {CHANNEL} :from irc with love")
    alice.wait_for_message(lambda m: "<subject>from irc with love</subject>" in m.xml, WAIT, "the subject from IRC")


def test_a_restricted_message_is_released_with_its_flot(people):
    """A RESTRICTED message (the channel's clearance) reaches IRC with its own first line 'Protective Marking: RESTRICTED'."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    mark = carol.mark()
    alice.send_xml(labelled(ROOM, "the rota for next week", RESTRICTED, "r1"))
    flot = wait_privmsg(carol, CHANNEL, "alice", "Protective Marking: RESTRICTED", mark)
    text = wait_privmsg(carol, CHANNEL, "alice", "the rota for next week", mark)
    assert carol.lines.index(flot) < carol.lines.index(text)


def test_a_secret_message_is_refused_with_its_error_and_audit_record(people, irc_lab):
    """SECRET is above the channel's clearance: alice gets policy-violation, the trail a record, IRC nothing."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    mark = carol.mark()
    stanza_id = f"s-{uuid.uuid4().hex[:8]}"
    alice.send_xml(labelled(ROOM, "the plan", SECRET, stanza_id))
    error = alice.wait_for_message(lambda m: m.type == "error" and m.id == stanza_id, WAIT, "the bounce")
    assert '<policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"' in error.xml, error.xml
    assert "the plan" not in error.xml
    alice.send_message(ROOM, "after the secret", type="groupchat")
    wait_privmsg(carol, CHANNEL, "alice", "after the secret", mark)
    assert not [line for line in carol.privmsgs(CHANNEL, mark) if "the plan" in line.text]
    records = [record for record in irc_lab.audit_records() if record.get("id") == stanza_id]
    assert [(record["event"], record["condition"]) for record in records] == [("bounce", "policy-violation")]
    assert records[0]["rule"] in ("label-not-releasable", "irc:label-not-releasable")
    with urllib.request.urlopen(f"http://{GATEWAY_ADDRESS}:{METRICS_PORT}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert f'xmpp_guard_irc_refusals_total{{rule="{records[0]["rule"]}"}}' in metrics
    assert "xmpp_guard_irc_component_up 1.0" in metrics


def test_a_flot_typed_on_irc_is_text_not_a_label(people):
    """carol types 'Protective Marking: SECRET': the room gets it as text, labelled UNCLASSIFIED (the IRC side's default)."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    alice.wait_for_occupant(ROOM, "carol")
    carol.say(CHANNEL, "Protective Marking: SECRET")
    carol.say(CHANNEL, "the real plan")
    marking = alice.wait_for_groupchat(ROOM, "carol", "Protective Marking: SECRET")
    assert ">UNCLASSIFIED</displaymarking>" in marking.xml and "SECRET</displaymarking>" not in marking.xml
    text = alice.wait_for_groupchat(ROOM, "carol", "the real plan")
    assert ">UNCLASSIFIED</displaymarking>" in text.xml


def test_a_room_moderators_kick_of_an_irc_user_is_a_kick_on_irc_by_the_operator_bot(people, irc_lab):
    """An IRC operator makes the bot a channel operator (MODE +o, heard by the gateway); mona, a room moderator, kicks
    oscar's occupant from the room; the bot kicks oscar from #ops."""
    opal = people.irc("opal")
    opal.send("OPER labop lab-oper-password")
    opal.wait_for(lambda line: line.command == "381", WAIT, "RPL_YOUREOPER")
    opal.send(f"MODE {CHANNEL} +o {BOT_NICK}")
    deadline = time.monotonic() + WAIT
    while not all(bridge["bot_is_op"] for bridge in irc_lab.status()["bridges"] if bridge["channel"] == CHANNEL):
        assert time.monotonic() < deadline, "the gateway never knew its bot as an operator of #ops"
        time.sleep(0.5)
    oscar = people.irc("oscar")
    mona = people.xmpp(MODERATOR)
    mona.wait_for_occupant(ROOM, "oscar")
    mark = oscar.mark()
    mona.send_xml(f"<iq type='set' to='{ROOM}' id='kick-oscar'><query xmlns='http://jabber.org/protocol/muc#admin'>"
                  "<item nick='oscar' role='none'><reason>off topic</reason></item></query></iq>")
    kick = oscar.wait_for(lambda line: line.command == "KICK" and line.params[1:2] == ["oscar"], WAIT,
                          "oscar kicked from #ops", mark)
    assert kick.nick == BOT_NICK and kick.params[0].lower() == CHANNEL


def test_a_message_ngircd_refuses_on_a_moderated_channel_bounces_to_its_sender(people, irc_lab):
    """An IRC operator makes #ops moderated (+m): bob's unvoiced connection gets 404 for his message; bob gets the
    guard's forbidden error, the trail a bounce naming 404, the books no delivery; once -m, he is heard again."""
    opal = people.irc("opal")
    bob = people.xmpp("bob")
    opal.wait_for(lambda line: line.command == "JOIN" and line.nick == "bob", WAIT, "bob's own connection joining")
    opal.send("OPER labop lab-oper-password")
    opal.wait_for(lambda line: line.command == "381", WAIT, "RPL_YOUREOPER")
    mark = opal.mark()
    opal.send(f"MODE {CHANNEL} +m")
    opal.wait_for(lambda line: line.command == "MODE" and line.params[1:2] == ["+m"], WAIT, "#ops moderated", mark)
    try:
        stanza_id = f"m-{uuid.uuid4().hex[:8]}"
        bob.send_xml(f"<message to='{ROOM}' type='groupchat' id='{stanza_id}'><body>unheard words</body></message>")
        error = bob.wait_for_message(lambda m: m.type == "error" and m.id == stanza_id, WAIT, "the bounce")
        assert '<forbidden xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"' in error.xml, error.xml
        assert "unheard words" not in error.xml and "Cannot send" not in error.xml
        assert not [line for line in opal.privmsgs(CHANNEL, mark) if "unheard words" in line.text]
        records = [record for record in irc_lab.audit_records() if record.get("id") == stanza_id]
        assert [record["event"] for record in records] == ["pass", "bounce"], records
        assert records[1]["condition"] == "forbidden" and "404 #ops" in records[1]["detail"], records[1]
    finally:
        opal.send(f"MODE {CHANNEL} -m")
        opal.wait_for(lambda line: line.command == "MODE" and line.params[1:2] == ["-m"], WAIT, "#ops open again", mark)
    mark = opal.mark()
    bob.send_message(ROOM, "heard again", type="groupchat")
    wait_privmsg(opal, CHANNEL, "bob", "heard again", mark)


def test_ngircd_restarted_mid_conversation(people, irc_lab):
    """ngIRCd is killed and started again: the gateway reconnects and rejoins; the conversation goes on both ways."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    alice.send_message(ROOM, "before the restart", type="groupchat")
    wait_privmsg(carol, CHANNEL, "alice", "before the restart")
    seen = len(alice.presences)
    irc_lab.ngircd.restart()
    carol_again = people.irc("carol")
    carol_again.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", 60, "alice rejoining")
    mark = carol_again.mark()
    alice.send_message(ROOM, "after the restart", type="groupchat")
    wait_privmsg(carol_again, CHANNEL, "alice", "after the restart", mark, timeout=30)
    alice.wait_for_occupant(ROOM, "carol", "unavailable", after=seen)  # the bot's connection went with ngIRCd
    alice.wait_for_occupant(ROOM, "carol", after=seen, timeout=30)  # and came back: carol is in the room again
    carol_again.say(CHANNEL, "welcome back")
    alice.wait_for_groupchat(ROOM, "carol", "welcome back", timeout=30)


def test_prosody_restarted_mid_conversation(people, irc_lab, client_loop):
    """Prosody is killed and started again: the component attaches again, the gateway rejoins the room; both ways work."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    alice.wait_for_occupant(ROOM, "carol")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    carol.say(CHANNEL, "before prosody goes")
    alice.wait_for_groupchat(ROOM, "carol", "before prosody goes")
    before = carol.mark()
    irc_lab.prosody.kill()
    carol.wait_for(lambda line: line.command in ("PART", "QUIT") and line.nick == "alice", WAIT,
                   "alice's IRC connection leaving with the XMPP side", before)
    irc_lab.prosody.restart()
    alice_again = people.xmpp("alice")
    alice_again.wait_for_occupant(ROOM, "carol", timeout=60)
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", 60, "alice joining again", before)
    mark = carol.mark()
    alice_again.send_message(ROOM, "prosody is back", type="groupchat")
    wait_privmsg(carol, CHANNEL, "alice", "prosody is back", mark, timeout=30)
    carol.say(CHANNEL, "so I see")
    alice_again.wait_for_groupchat(ROOM, "carol", "so I see", timeout=30)


def test_a_flood_of_500_room_messages_reaches_irc_in_order_within_the_servers_limits(people, irc_lab):
    """
    500 room messages (100 each from five occupants, FLOT as a prefix) all
    reach #flood, each sender's in order, with no connection killed or
    throttled off by ngIRCd; the books balance.
    """
    watcher = people.irc("flooded", FLOOD_CHANNEL)
    senders = [people.xmpp(user, FLOOD_ROOM) for user in ("henry", "irene", "jack", "kate", "liam")]
    for sender in senders:
        watcher.wait_for(lambda line, nick=sender.jid.user: line.command == "JOIN" and line.nick == nick, WAIT,
                         f"{sender.jid.user} joining #flood")
    mark = watcher.mark()
    for number in range(100):
        for sender in senders:
            sender.send_message(FLOOD_ROOM, f"{sender.jid.user} {number:03d}", type="groupchat")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and len(watcher.privmsgs(FLOOD_CHANNEL, mark)) < 500:
        time.sleep(0.5)
    lines = watcher.privmsgs(FLOOD_CHANNEL, mark)
    assert len(lines) == 500, f"{len(lines)} of 500 reached IRC"
    for sender in senders:
        said = [line.text for line in lines if line.nick == sender.jid.user]
        assert said == [f"Protective Marking: UNCLASSIFIED {sender.jid.user} {number:03d}" for number in range(100)]
    killed = [line for line in watcher.lines[mark:] if line.command in ("QUIT", "KILL") and "flood" in line.text.lower()]
    assert killed == []
    time.sleep(STATUS_PAUSE)
    books = irc_lab.status()["books"]
    assert books["in_flight"] == 0 and books["accepted"] == books["delivered"] + books["bounced"] + books["dropped"]


STATUS_PAUSE = 6.0  # the status file is rewritten every 5 s


def test_transcript_of_a_labelled_conversation_seen_from_both_sides(people):
    """A labelled conversation, written down as the room and the channel each saw it (for the closing note)."""
    carol = people.irc("carol")
    alice = people.xmpp("alice")
    carol.wait_for(lambda line: line.command == "JOIN" and line.nick == "alice", WAIT, "alice joining")
    alice.wait_for_occupant(ROOM, "carol")
    mark, seen = carol.mark(), len(alice.messages)
    alice.send_message(ROOM, "status check, anyone on IRC?", type="groupchat")
    wait_privmsg(carol, CHANNEL, "alice", "status check, anyone on IRC?", mark)
    alice.send_xml(labelled(ROOM, "rota: carol has the night shift", RESTRICTED, "t2"))
    wait_privmsg(carol, CHANNEL, "alice", "rota: carol has the night shift", mark)
    alice.send_xml(labelled(ROOM, "grid reference 4711", SECRET, "t3"))
    alice.wait_for_message(lambda m: m.type == "error" and m.id == "t3", WAIT, "the SECRET bounce")
    carol.say(CHANNEL, "Protective Marking: SECRET")
    carol.say(CHANNEL, "got it, night shift is fine")
    alice.wait_for_groupchat(ROOM, "carol", "got it, night shift is fine")
    sent = {"status check, anyone on IRC?": "no label", "rota: carol has the night shift": "RESTRICTED, as sent",
            "grid reference 4711": "SECRET, as sent"}
    room_side = []
    for message in alice.messages[seen:]:
        marking = message.xml.split("</displaymarking>")[0].rsplit(">", 1)[-1] if "displaymarking" in message.xml \
            else sent.get(message.body, "no label")
        if message.type == "error":
            condition = message.xml.split(' xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"')[0].rsplit("<", 1)[-1]
            room_side.append(f"  [error {condition}] from {message.sender} to alice, for her message {message.id}")
        else:
            room_side.append(f"  <{message.sender.split('/', 1)[-1]}> [{marking}] {message.body}")
    irc_side = [f"  <{line.nick}> {line.text}" for line in carol.privmsgs(CHANNEL, mark)]
    TRANSCRIPT.parent.mkdir(parents=True, exist_ok=True)
    TRANSCRIPT.write_text(
        "A labelled conversation through the xmpp-guard IRC gateway\n"
        f"(room {ROOM}, channel {CHANNEL}; written by tests/integration/test_irc_gateway.py)\n\n"
        "alice sent: 'status check, anyone on IRC?' (unlabelled), 'rota: carol has the night shift' (RESTRICTED),\n"
        "'grid reference 4711' (SECRET); carol typed 'Protective Marking: SECRET' then 'got it, night shift is fine'.\n\n"
        "Seen in the room by alice (XMPP; [label]: the XEP-0258 display marking the gateway wrote, or what alice\n"
        "attached to her own message):\n" + "\n".join(room_side)
        + "\n\nSeen in the channel by carol (IRC):\n" + "\n".join(irc_side) + "\n")
    assert any("RESTRICTED" in line for line in irc_side) and not any("4711" in line for line in irc_side)
