"""
Abbreviation of the configured domains on the constrained link
(guard/edges/constrained/abbreviation.py): the exact inverse for every
stanza, one written form per address, and the bytes it saves.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from guard.core.policy.elements import parse_stanza_text, seal
from guard.core.vocabulary import SERVER_NS
from guard.edges.constrained.abbreviation import Abbreviation, read_form, written_form
from guard.edges.link.wire import LINK_NS
from guard.edges.xmlstream import StreamParser, serialise
from tests.trees import tree

RED, BLUE = "red.example", "blue.example"
RED_HALF, BLUE_HALF = Abbreviation(RED, BLUE), Abbreviation(BLUE, RED)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='blue.example' from='red.example' version='1.0'>"
)


def stanza(text):
    return parse_stanza_text(text)


def test_the_configured_domains_go_without_saying():
    """From the near domain and to the far domain, the domains are left out; subdomains keep only their own labels."""
    chat = stanza("<message from='alice@red.example/field' to='bob@blue.example' type='chat' id='c1'>"
                  "<body>on my way</body></message>")
    assert serialise(RED_HALF.shorten(chat)) == (
        '<message from="alice@/field" to="bob@" type="chat" id="c1"><body>on my way</body></message>')
    groupchat = stanza("<message from='ops@muc.red.example/alice' to='carol@blue.example/radio' type='groupchat'/>")
    assert serialise(RED_HALF.shorten(groupchat)) == '<message from="ops@muc./alice" to="carol@/radio" type="groupchat"/>'
    ping = stanza("<iq from='red.example' to='blue.example' id='p' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert serialise(RED_HALF.shorten(ping)) == '<iq from="" to="" id="p" type="get"><ping xmlns="urn:xmpp:ping"/></iq>'


def test_the_peer_half_reads_back_exactly_what_was_meant():
    """The blue half's expand gives back the red half's stanza, attribute for attribute and child for child."""
    chat = stanza("<message from='alice@red.example/field' to='bob@blue.example' type='chat'><body>hi</body></message>")
    assert tree(BLUE_HALF.expand(RED_HALF.shorten(chat))) == tree(chat)


@pytest.mark.parametrize("address, default, written", [
    ("alice@red.example/field", RED, "alice@/field"),
    ("red.example", RED, ""),
    ("red.example/x@y/z", RED, "/x@y/z"),
    ("ops@muc.red.example", RED, "ops@muc."),
    ("alice@green.example/r", RED, "alice@green.example/r"),
    ("alice@/r", RED, ":alice@/r"),  # not a JID, but written exactly
    ("alice@muc./r", RED, ":alice@muc./r"),
    ("", RED, ":"),
    (":x", RED, "::x"),
    ("alice@xred.example", RED, "alice@xred.example"),
    ("alice@.red.example", RED, "alice@.red.example"),
])
def test_each_address_has_one_written_form(address, default, written):
    """Known answers: the written form of an address, and the address read back from it."""
    assert written_form(address, default) == written
    assert read_form(written, default) == address


@pytest.mark.parametrize("written, meant", [
    (":alice@red.example", None),  # the red domain goes without saying: escaping it is not the written form
    (":red.example/r", None),
    (":bob@blue.example", None),  # nothing to escape in it
    ("alice@muc", "alice@muc"),
    (":", ""),
    ("::", ":"),
])
def test_a_form_shorten_would_not_write_is_refused(written, meant):
    """expand refuses a written form that is not the one form of its address (an escape where none was needed)."""
    element = domish.Element((SERVER_NS, "message"))
    element["from"] = written
    expanded = BLUE_HALF.expand(element)
    assert (expanded if expanded is None else expanded["from"]) == meant


def test_recipients_of_a_merged_groupchat_message_are_abbreviated_too():
    """The link's recipient list names JIDs of the far side: their domain goes without saying, and comes back."""
    merged = stanza(f"<message from='ops@muc.red.example/alice' to='carol@blue.example' type='groupchat'>"
                    f"<body>status?</body><recipients xmlns='{LINK_NS}'><to jid='carol@blue.example/radio'/>"
                    f"<to jid='dave@blue.example/pc'/><to jid='eve@green.example'/></recipients></message>")
    short = RED_HALF.shorten(merged)
    assert serialise(short).endswith(
        f'<recipients xmlns="{LINK_NS}"><to jid="carol@/radio"/><to jid="dave@/pc"/>'
        f'<to jid="eve@green.example"/></recipients></message>')
    assert tree(BLUE_HALF.expand(short)) == tree(merged)


def test_a_sealed_stanza_is_written_abbreviated():
    """The guard's sealed stanzas (their serialisation remembered) are written with the short addresses, not the remembered ones."""
    sealed = seal(stanza("<message from='alice@red.example' to='bob@blue.example'><body>x</body></message>"))
    serialise(sealed)
    assert serialise(RED_HALF.shorten(sealed)) == '<message from="alice@" to="bob@"><body>x</body></message>'
    assert serialise(sealed) == '<message from="alice@red.example" to="bob@blue.example"><body>x</body></message>'


def test_the_ends_must_name_usable_domains():
    """An empty domain, or one with the escape character, cannot be implied."""
    for near, far in (("", BLUE), (RED, ""), ("a:b", BLUE)):
        with pytest.raises(ValueError):
            Abbreviation(near, far)


# -- properties -------------------------------------------------------------------

XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
PARTS = st.sampled_from(["", "alice", "ops", "x.y", ":", "@", "/", ".", "a:b"])
DOMAINS = st.sampled_from([RED, BLUE, "muc.red.example", "muc.blue.example", "green.example", "", ".", "muc.",
                           "xred.example", ".red.example", "red.example.", ":red.example", "[::1]"])


@st.composite
def addresses(draw):
    """Addresses of every shape: JIDs in and out of the configured domains, and values no JID has."""
    if draw(st.booleans()):
        return draw(XML_TEXT)
    local = draw(st.one_of(st.just(None), PARTS, XML_TEXT.filter(lambda text: "/" not in text)))
    resource = draw(st.one_of(st.just(None), PARTS, XML_TEXT))
    return (f"{local}@" if local is not None else "") + draw(DOMAINS) + (f"/{resource}" if resource is not None else "")


@st.composite
def stanzas(draw):
    """A stanza of any kind, with or without from/to, a body and sometimes a recipient list."""
    element = domish.Element((SERVER_NS, draw(st.sampled_from(["message", "presence", "iq"]))))
    for name in ("from", "to"):
        if draw(st.booleans()):
            element[name] = draw(addresses())
    if draw(st.booleans()):
        element.addElement("body", content=draw(XML_TEXT))
    if draw(st.booleans()):
        recipients = element.addElement((LINK_NS, "recipients"))
        for address in draw(st.lists(addresses(), max_size=4)):
            recipients.addElement("to")["jid"] = address
    return element


@SETTINGS
@given(stanzas())
def test_expand_is_the_exact_inverse_of_the_peers_shorten(element):
    """For every stanza, the peer half's expand of what this half shortened is the stanza again."""
    assert tree(BLUE_HALF.expand(RED_HALF.shorten(element))) == tree(element)
    assert tree(RED_HALF.expand(BLUE_HALF.shorten(element))) == tree(element)


@SETTINGS
@given(stanzas())
def test_the_short_form_survives_the_wire(element):
    """Serialised, parsed by the hardened parser on the far end and expanded, the stanza is the one that was shortened."""
    try:
        wire = serialise(RED_HALF.shorten(element)).encode("utf-8")
    except ValueError:
        return  # a value XML 1.0 cannot carry: the serialiser refuses it, shortened or not
    received = []
    parser = StreamParser(lambda header: None, lambda parsed, size: received.append(parsed), lambda: None)
    parser.feed(HEADER + wire)
    assert len(received) == 1
    assert tree(BLUE_HALF.expand(received[0])) == tree(element)


@SETTINGS
@given(st.lists(addresses(), min_size=1, max_size=3))
def test_every_written_form_reads_as_one_address_or_is_refused(values):
    """Whatever a peer writes, expand either refuses it or reads an address that shorten writes exactly so."""
    element = domish.Element((SERVER_NS, "message"))
    element["from"] = values[0]
    if len(values) > 1:
        element["to"] = values[1]
    expanded = BLUE_HALF.expand(element)
    if expanded is not None:
        assert tree(RED_HALF.shorten(expanded)) == tree(element)
