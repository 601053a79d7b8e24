"""Folding: messages stripped and message kinds dropped; presence reduced to a few states and an allow-list."""

import pytest

from guard.core.pipeline import Verdict
from guard.core.policy import PolicyError

from .wire import RED_TO_BLUE, compile_policy, read

FOLDING = """
[policy]
name = "folding"

[shapes.avatar-hash]
element = "{vcard-temp:x:update}x"
children = ["avatar-photo"]

[shapes.avatar-photo]
element = "{vcard-temp:x:update}photo"
text = true

[folding.plain]
message.keep = ["body", "thread"]
message.drop_types = ["headline", "groupchat"]
message.drop_if_only = ["{http://jabber.org/protocol/chatstates}*", "{urn:xmpp:receipts}*"]

[folding.two-states]
presence.states = ["available", "unavailable"]

[folding.three-states]
presence.states = ["available", "away", "unavailable"]
presence.keep = ["avatar-hash"]

[[rules]]
id = "fold-messages"
rev = 1
why = "plain text only"
kind = "message"
verdict = "fold"
fold = "plain"

[[rules]]
id = "fold-presence-two"
rev = 1
why = "on or off"
kind = "presence"
to_domain = "blue.example"
verdict = "fold"
fold = "two-states"

[[rules]]
id = "fold-presence-three"
rev = 1
why = "on, away or off, with avatar"
kind = "presence"
verdict = "fold"
fold = "three-states"
"""


def fold(xml):
    """The judgement of the folding policy on ``xml``."""
    return compile_policy(FOLDING).judge(read(xml), RED_TO_BLUE)


def test_message_folding_keeps_only_the_profiles_shapes():
    """Only the kept body and thread leave (with the id): XHTML-IM, chat states, receipts, OOB and the subject do not."""
    judgement = fold("""
    <message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='m7'>
      <subject>plans</subject>
      <body>meet at noon</body>
      <thread>t1</thread>
      <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><b>meet</b></body></html>
      <active xmlns='http://jabber.org/protocol/chatstates'/>
      <request xmlns='urn:xmpp:receipts'/>
      <x xmlns='jabber:x:oob'><url>https://red.example/plan.pdf</url></x>
    </message>""")
    assert (judgement.verdict, judgement.rule_id, judgement.actions) == (Verdict.PASS, "fold-messages", ("fold:plain",))
    assert judgement.stanza.toXml() == (
        "<message xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' id='m7' type='chat'>"
        "<body>meet at noon</body><thread>t1</thread></message>")


@pytest.mark.parametrize("message_type", ["headline", "groupchat"])
def test_message_folding_drops_whole_message_types(message_type):
    """A message type named in drop_types is folded away entirely: dropped, citing the rule."""
    judgement = fold(f"<message xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' type='{message_type}'><body>news</body></message>")
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "fold-messages")
    assert f"message type {message_type}" in judgement.text


def test_a_chat_state_only_message_is_folded_away():
    """A message holding nothing but chat states and receipts carries no content across: dropped."""
    judgement = fold("""
    <message from='alice@red.example/pc' to='bob@blue.example' type='chat'>
      <thread>t1</thread>
      <composing xmlns='http://jabber.org/protocol/chatstates'/>
      <received xmlns='urn:xmpp:receipts' id='m6'/>
    </message>""")
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "fold-messages")
    assert "only elements that are folded away" in judgement.text


PRESENCE = """
<presence from='alice@red.example/pc' to='bob@{domain}'>
  <show>{show}</show>
  <status>In the ops room</status>
  <priority>5</priority>
  <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://red.example' ver='abc='/>
  <x xmlns='vcard-temp:x:update'><photo>0123abcd</photo></x>
  <idle xmlns='urn:xmpp:idle:1' since='2026-11-24T10:00:00Z'/>
</presence>"""


@pytest.mark.parametrize("domain, show, expected", [
    ("blue.example", "dnd", "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example'/>"),
    ("blue.example", "away", "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example'/>"),
    ("muc.blue.example", "chat",
     "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@muc.blue.example'>"
     "<x xmlns='vcard-temp:x:update'><photo>0123abcd</photo></x></presence>"),
    ("muc.blue.example", "xa",
     "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@muc.blue.example'><show>away</show>"
     "<x xmlns='vcard-temp:x:update'><photo>0123abcd</photo></x></presence>"),
    ("muc.blue.example", "dnd",
     "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@muc.blue.example'><show>away</show>"
     "<x xmlns='vcard-temp:x:update'><photo>0123abcd</photo></x></presence>"),
])
def test_presence_is_reduced_to_the_profiles_states_and_allow_list(domain, show, expected):
    """Show values fall back to the profile's states; status, priority, caps and idle go; only allow-listed children stay."""
    judgement = fold(PRESENCE.format(domain=domain, show=show))
    assert judgement.verdict is Verdict.PASS
    assert judgement.stanza.toXml() == expected


def test_unavailable_presence_stays_unavailable_and_loses_its_status():
    """Going offline crosses as a bare unavailable presence."""
    judgement = fold("<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' type='unavailable'><status>bye, off to HQ</status></presence>")
    assert judgement.stanza.toXml() == "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' type='unavailable'/>"


def test_a_subscription_request_keeps_only_allow_listed_children():
    """Subscription presence carries no state; folding removes every child not on the allow-list."""
    judgement = fold("<presence xmlns='jabber:server' from='alice@red.example' to='bob@blue.example' type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>Alice of Ops</nick></presence>")
    assert judgement.stanza.toXml() == "<presence xmlns='jabber:server' from='alice@red.example' to='bob@blue.example' type='subscribe'/>"


def test_a_folding_profile_without_the_rules_kind_is_refused():
    """A rule that folds presence with a message-only profile is refused by the checker, naming the rule."""
    with pytest.raises(PolicyError, match="rule wrong-profile: can never match: folding profile plain does not fold"):
        compile_policy(FOLDING.replace('id = "fold-presence-two"', 'id = "wrong-profile"').replace(
            'fold = "two-states"', 'fold = "plain"'))


def test_unknown_keys_in_a_folding_profile_are_refused():
    """A misspelt folding key is reported under the profile's name."""
    with pytest.raises(PolicyError, match="folding profile plain message: unknown key 'strips'"):
        compile_policy(FOLDING.replace("message.keep =", "message.strips ="))


def test_an_unknown_presence_state_is_refused():
    """Presence states are a closed list (available, away, xa, dnd, chat, unavailable)."""
    with pytest.raises(PolicyError, match="presence.states lists states"):
        compile_policy(FOLDING.replace('["available", "unavailable"]', '["available", "busy"]'))


@pytest.mark.parametrize("xml", [
    "<presence from='alice@red.example/pc' to='bob@blue.example'>ATTACK AT DAWN<show>away</show></presence>",
    "<message from='alice@red.example/pc' to='bob@blue.example' type='chat'>ATTACK AT DAWN<body>hi</body></message>",
])
def test_text_directly_inside_a_folded_stanza_does_not_cross(xml):
    """Text outside any child element means nothing in XMPP; folding leaves it behind so it cannot carry a message."""
    judgement = fold(xml)
    assert judgement.verdict is Verdict.PASS
    assert "ATTACK" not in judgement.stanza.toXml()


def test_a_presence_error_keeps_its_error_when_folded():
    """Folding a presence error keeps the <error/> it is about and drops everything else."""
    judgement = fold("""<presence from='alice@red.example/pc' to='bob@blue.example' type='error'><status>x</status><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>""")
    assert judgement.stanza.toXml() == (
        "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' type='error'>"
        "<error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>")


def test_an_error_message_type_a_profile_drops_is_folded_away():
    """message.drop_types = ["error"] holds for errors too, although errors leave reduced rather than folded."""
    judgement = compile_policy(FOLDING.replace('message.drop_types = ["headline", "groupchat"]',
                                               'message.drop_types = ["headline", "groupchat", "error"]')).judge(
        read("<message from='alice@red.example/pc' to='bob@blue.example' type='error'>"
             "<error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id, judgement.text) == (
        Verdict.DROP, "fold-messages", "folded away: message type error is folded away")



@pytest.mark.parametrize("xml, expected", [
    ("<presence from='alice@red.example/pc' to='bob@muc.blue.example' secret='TOP SECRET'><show>away</show></presence>",
     "<presence xmlns='jabber:server' from='alice@red.example/pc' to='bob@muc.blue.example'><show>away</show></presence>"),
    ("<presence from='alice@red.example' to='bob@blue.example' type='subscribe' leak='TOP SECRET'/>",
     "<presence xmlns='jabber:server' from='alice@red.example' to='bob@blue.example' type='subscribe'/>"),
    ("<message from='alice@red.example/pc' to='bob@blue.example' type='chat' leak='TOP SECRET'>"
     "<body leak='TOP SECRET'>hi</body></message>",
     "<message xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' type='chat'><body>hi</body></message>"),
])
def test_a_folded_stanza_is_built_new_without_the_attributes_it_arrived_with(xml, expected):
    """Folding copies no attribute of the stanza or of a kept child: only from, to, id, type, xml:lang and what shapes name."""
    assert fold(xml).stanza.toXml() == expected
