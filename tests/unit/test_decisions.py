"""
Refusal texts from s2s/decisions.py are the guard's own constant strings: a
refusal of the far server's header becomes the bounce text of every stanza
waiting for that stream, so nothing the peer wrote may be in it.  What the
peer wrote goes to Refusal.detail, bounded and escaped, for the log.
"""

import pytest
from twisted.words.xish import domish

from guard.edges.s2s.decisions import (
    external_identity,
    refuse_dialback_request,
    refuse_inbound_header,
    refuse_outbound_header,
)
from guard.core.bounce import PEER_DETAIL_CHARACTERS, peer_detail
from guard.edges.xmlstream import STREAMS_NS, StreamHeader

# What a hostile peer writes where a domain belongs: a line break to forge a
# log line, a terminal escape, a right-to-left override, and far too much of it.
MARKER = "LEAKED\n2026-12-01 audit: released\x1b[2J\u202e" + "A" * 5000


def header(**attributes) -> StreamHeader:
    return StreamHeader(
        name="stream",
        uri=STREAMS_NS,
        default_namespace="jabber:server",
        prefixes={"stream": STREAMS_NS},
        attributes={"version": "1.0", "id": "s1", **attributes},
    )


def dialback_result(**attributes) -> domish.Element:
    element = domish.Element(("jabber:server:dialback", "result"))
    for key, value in attributes.items():
        element[key] = value
    element.addContent("b4835385f37fe2895af6c196b59097b1")
    return element


FRONTED = frozenset({"blue.example"})
HOSTED = frozenset({"red.example"})

REFUSALS = {
    "far header from another domain": lambda: refuse_outbound_header(
        header(**{"from": MARKER, "to": "red.example"}), "blue.example"),
    "far header from a well-formed other domain": lambda: refuse_outbound_header(
        header(**{"from": "LEAKED.example", "to": "red.example"}), "blue.example"),
    "inbound header to a domain not fronted": lambda: refuse_inbound_header(
        header(**{"from": "red.example", "to": "LEAKED.example"}), FRONTED, HOSTED),
    "inbound header from a domain not hosted": lambda: refuse_inbound_header(
        header(**{"from": "LEAKED.example", "to": "blue.example"}), FRONTED, HOSTED),
    "dialback to a domain not fronted": lambda: refuse_dialback_request(
        dialback_result(**{"from": "red.example", "to": "LEAKED.example"}), None, FRONTED, HOSTED),
    "dialback from a domain not hosted": lambda: refuse_dialback_request(
        dialback_result(**{"from": "LEAKED.example", "to": "blue.example"}), None, FRONTED, HOSTED),
    "SASL EXTERNAL for a domain not hosted": lambda: external_identity(
        "", header(**{"from": "LEAKED.example", "to": "blue.example"}), None, HOSTED),
}


@pytest.mark.parametrize("refuse", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_text_holds_nothing_the_peer_wrote(refuse):
    """Each refusal that names a peer's value keeps it out of the text and puts it, escaped, in the detail."""
    refusal = refuse()
    assert "leaked" not in refusal.text.lower()
    assert "leaked" in refusal.detail.lower()
    assert refusal.detail.isprintable()


def test_detail_is_bounded_and_escaped():
    """The detail shows at most PEER_DETAIL_CHARACTERS of what the peer wrote, control and format characters escaped."""
    refusal = refuse_outbound_header(header(**{"from": MARKER, "to": "red.example"}), "blue.example")
    assert (refusal.condition, refusal.text) == ("invalid-from", "the far server answered for another domain")
    assert refusal.detail == "expected blue.example, got " + peer_detail(MARKER)
    assert "\\n2026-12-01" in refusal.detail and "\\x1b" in refusal.detail and "\\u202e" in refusal.detail
    assert len(refusal.detail) < 2 * PEER_DETAIL_CHARACTERS
