"""
Scenarios between real Prosody servers, written like a play: Romeo lives on
red.example, Juliet on blue.example, and every stanza they exchange crosses
whatever stands between the two sides (nothing, a dumb relay, or the guard).

Each scenario runs once per lab configuration (see conftest.py); select with
``-m direct``, ``-m relay`` or ``-m guard``.
"""

from __future__ import annotations

import uuid

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:8]}"


def test_message_red_to_blue(romeo, juliet):
    """A chat message Romeo sends from red arrives at Juliet on blue with its body intact."""
    body = unique("But soft, what light through yonder window breaks?")
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='m1'><body>{body}</body></message>")

    received = juliet.wait_for_body(ROMEO, body)

    assert received.type == "chat"


def test_message_blue_to_red(romeo, juliet):
    """A chat message Juliet sends from blue arrives at Romeo on red with its body intact."""
    body = unique("Wherefore art thou Romeo?")
    juliet.send_xml(f"<message to='{ROMEO}' type='chat' id='m2'><body>{body}</body></message>")

    received = romeo.wait_for_body(JULIET, body)

    assert received.type == "chat"


def test_iq_to_a_nonexistent_user_bounces_back_across(romeo):
    """An iq to a user blue does not have comes back to Romeo as service-unavailable from blue."""
    condition = romeo.iq_error_condition("nobody@blue.example")

    assert condition == "service-unavailable"


def test_message_to_a_nonexistent_user_bounces_back_across(romeo):
    """A message to a user blue does not have comes back to Romeo as an error message."""
    romeo.send_xml(
        "<message to='nobody@blue.example' type='chat' id='m3'><body>Is anyone there?</body></message>"
    )

    bounce = romeo.wait_for_error("nobody@blue.example")

    assert bounce.error_condition == "service-unavailable"


def test_presence_subscription_and_presence_both_ways(romeo, juliet):
    """Romeo and Juliet subscribe to each other across the sides and then see each other online."""
    romeo.send_xml(f"<presence to='{JULIET}' type='subscribe'/>")

    # slixmpp approves and subscribes back automatically on both sides.
    romeo.wait_for_subscription(JULIET, "both")
    juliet.wait_for_subscription(ROMEO, "both")
    romeo.wait_for_presence(JULIET, "available")
    juliet.wait_for_presence(ROMEO, "available")


def test_iq_round_trip_between_clients(romeo, juliet):
    """A software-version iq from Romeo reaches Juliet's full JID on blue and her answer comes back."""
    answer = romeo.software_version(juliet.full_jid)

    assert answer["name"] == "Slixmpp"


def test_iq_round_trip_to_the_far_server(romeo, juliet):
    """Each side's client pings the other side's server and gets a result back."""
    romeo.ping("blue.example")
    juliet.ping("red.example")


def test_far_server_reports_its_version(romeo):
    """A software-version iq from Romeo to blue.example itself is answered by blue's Prosody."""
    answer = romeo.software_version("blue.example")

    assert answer["name"] == "Prosody"


def test_muc_join_across_and_groupchat_seen_by_the_joiner(romeo, juliet):
    """Romeo joins a room on conference.blue.example and sees Juliet's and his own groupchat messages."""
    room = f"{unique('balcony')}@conference.blue.example"
    juliet.join_room(room, "Juliet")
    romeo.join_room(room, "Romeo")

    juliet_says = unique("O Romeo, Romeo")
    juliet.send_xml(f"<message to='{room}' type='groupchat' id='g1'><body>{juliet_says}</body></message>")
    romeo.wait_for_groupchat(room, "Juliet", juliet_says)

    romeo_says = unique("I take thee at thy word")
    romeo.send_xml(f"<message to='{room}' type='groupchat' id='g2'><body>{romeo_says}</body></message>")
    romeo.wait_for_groupchat(room, "Romeo", romeo_says)
    juliet.wait_for_groupchat(room, "Romeo", romeo_says)
