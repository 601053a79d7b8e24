"""Bounces answer the sender without echoing the payload, and never answer errors or results."""

from twisted.words.xish import domish

from guard.core.bounce import error_reply, may_bounce
from guard.edges.xmlstream import serialise


def message(**attributes):
    element = domish.Element(("jabber:server", "message"))
    for name, value in attributes.items():
        element[name] = value
    element.addElement("body", content="the secret plans")
    return element


def test_error_reply_swaps_addresses_and_drops_the_payload():
    """The reply goes back to the sender, keeps the id, carries the condition and none of the body."""
    reply = error_reply(message(**{"from": "romeo@red.example/a", "to": "juliet@blue.example", "id": "m1"}),
                        "remote-server-not-found", "no route")
    assert serialise(reply) == (
        '<message type="error" from="juliet@blue.example" to="romeo@red.example/a" id="m1">'
        '<error type="cancel"><remote-server-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">no route</text></error></message>'
    )


def test_unknown_condition_becomes_undefined_condition():
    """A policy naming a condition RFC 6120 does not define still yields a valid error."""
    reply = error_reply(message(**{"from": "a@red.example", "to": "b@blue.example"}), "made-up")
    assert reply.firstChildElement().firstChildElement().name == "undefined-condition"


def test_errors_and_results_are_never_bounced():
    """Bouncing an error or an iq result could loop between servers, so it is refused."""
    assert not may_bounce(message(type="error"))
    result = domish.Element(("jabber:server", "iq"))
    result["type"] = "result"
    assert not may_bounce(result)
    request = domish.Element(("jabber:server", "iq"))
    request["type"] = "get"
    assert may_bounce(request)
    assert may_bounce(message(type="chat"))


def test_every_condition_the_guard_bounces_with_has_its_own_constant_text():
    """Each condition the relay uses for its own bounces maps to a fixed text; unknown ones to a fixed default."""
    from guard.core.bounce import DEFAULT_GUARD_TEXT, GUARD_TEXTS, guard_text
    from guard.core.vocabulary import STANZA_ERROR_CONDITIONS

    for condition in ("internal-server-error", "policy-violation", "remote-server-not-found",
                      "remote-server-timeout", "resource-constraint", "service-unavailable"):
        assert guard_text(condition) == GUARD_TEXTS[condition]
        assert condition in STANZA_ERROR_CONDITIONS
    assert guard_text("conflict") == DEFAULT_GUARD_TEXT


def test_peer_detail_is_bounded_and_escaped():
    """A peer's text for the log and audit is cut to 512 characters and shows control and format characters escaped."""
    from guard.core.bounce import peer_detail

    assert peer_detail("got <x/>\n\u202eevil\x00") == "got <x/>\\n\\u202eevil\\x00"
    long = peer_detail("a" * 10_000)
    assert long == "a" * 512 + "..."
    assert peer_detail(None) == ""
