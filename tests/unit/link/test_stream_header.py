"""The link stream's header decision on plain values: only the peer half's jabber:server 1.0 header addressed to us."""

import pytest

from guard.edges.link.stream import refuse_link_header
from guard.edges.xmlstream import StreamParser


def header(xml):
    found = []
    StreamParser(found.append, lambda element, size: None, lambda: None).feed(xml.encode())
    return found[0]


GOOD = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
        "from='half-b' to='half-a' version='1.0'>")


def test_the_peer_halfs_header_is_accepted():
    """jabber:server, version 1.0, from the peer half to this half: nothing to refuse."""
    assert refuse_link_header(header(GOOD), "half-a", "half-b") is None


@pytest.mark.parametrize("change, refusal", [
    (("xmlns='jabber:server'", "xmlns='jabber:client'"), ("invalid-namespace", "the link stream uses jabber:server")),
    (("version='1.0'", "version='1.1'"), ("unsupported-version", "the link stream is version 1.0")),
    ((" version='1.0'", ""), ("unsupported-version", "the link stream is version 1.0")),
    (("from='half-b'", "from='half-x'"), ("invalid-from", "the header does not name the peer half")),
    (("to='half-a'", "to='half-x'"), ("host-unknown", "the header does not name this half")),
])
def test_any_other_header_is_refused_with_its_condition(change, refusal):
    """Another namespace, version, sender or receiver each has its own condition and constant text."""
    assert refuse_link_header(header(GOOD.replace(*change)), "half-a", "half-b") == refusal
