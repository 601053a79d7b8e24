"""Addressing checks: every stanza is refused with the right stream error unless its from and to hold."""

import pytest
from twisted.words.xish import domish

from guard.core.addressing import Addressed, Misaddressed, check_addressing, parse_jid
from guard.edges.xmlstream import StreamParser

PAIRS = {("red.example", "blue.example")}
FRONTED = frozenset({"blue.example", "conference.blue.example"})


def stanza(xml: str) -> domish.Element:
    found = []
    parser = StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None)
    parser.feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        + xml.encode()
    )
    (element,) = found
    return element


def test_well_addressed_stanza_is_accepted():
    """A message from the authenticated domain to a fronted domain it authenticated for passes."""
    verdict = check_addressing(
        stanza("<message from='romeo@red.example/orchard' to='juliet@blue.example'><body>hi</body></message>"),
        PAIRS, FRONTED,
    )
    assert isinstance(verdict, Addressed)
    assert verdict.pair == ("red.example", "blue.example")
    assert verdict.sender.full() == "romeo@red.example/orchard"


@pytest.mark.parametrize("xml, condition", [
    ("<message to='juliet@blue.example'/>", "improper-addressing"),
    ("<message from='romeo@red.example'/>", "improper-addressing"),
    ("<message from='romeo@@red.example' to='juliet@blue.example'/>", "invalid-from"),
    ("<message from='romeo@red.example' to='juliet@blue example'/>", "improper-addressing"),
    ("<message from='mallory@evil.example' to='juliet@blue.example'/>", "invalid-from"),
    ("<message from='romeo@red.example.evil.example' to='juliet@blue.example'/>", "invalid-from"),
    ("<message from='romeo@red.example' to='nurse@red.example'/>", "host-unknown"),
    ("<message from='romeo@red.example' to='someone@green.example'/>", "host-unknown"),
    ("<message from='romeo@red.example' to='room@conference.blue.example'/>", "improper-addressing"),
    ("<foo from='romeo@red.example' to='juliet@blue.example'/>", "unsupported-stanza-type"),
])
def test_misaddressed_stanzas_are_refused(xml, condition):
    """Missing, malformed, unauthenticated, hairpinned, unknown and unauthenticated-pair addresses each get their stream error."""
    verdict = check_addressing(stanza(xml), PAIRS, FRONTED)
    assert isinstance(verdict, Misaddressed)
    assert verdict.condition == condition


def test_stanza_in_another_namespace_is_not_a_stanza():
    """A <message/> outside jabber:server is refused rather than relayed."""
    element = domish.Element(("jabber:client", "message"))
    element["from"], element["to"] = "romeo@red.example", "juliet@blue.example"
    assert check_addressing(element, PAIRS, FRONTED) == Misaddressed(
        "unsupported-stanza-type", "jabber:client message is not a stanza"
    )


@pytest.mark.parametrize("text", ["", None, "@red.example", "romeo@", "a" * 1024 + "@red.example",
                                  "romeo@red.example/" + "r" * 1024, "romeo@red..example",
                                  "romeo@red.example/", "red.example.", "romeo@" + "x" * 64 + ".example"])
def test_malformed_jids_are_none(text):
    """Empty parts, oversized parts and bad domains never parse to a JID."""
    assert parse_jid(text) is None


def test_the_parsed_jid_memory_is_bounded_in_bytes():
    """Only addresses of at most 128 characters are remembered: a peer sending long, unique ones leaves nothing behind, and a short one is parsed once."""
    from guard.core import addressing

    before = addressing._remembered_jid.cache_info().currsize
    for n in range(50):
        long_text = f"{'u' * 500}@red.example/{'r' * 500}{n}"
        assert parse_jid(long_text).resource == "r" * 500 + str(n)
    assert addressing._remembered_jid.cache_info().currsize == before
    short = "someone-new-7f3@red.example/pc"
    assert parse_jid(short) is parse_jid(short)
    assert addressing._remembered_jid.cache_info().currsize <= addressing.JID_CACHE_SIZE


def test_a_remembered_addressing_is_still_judged_against_each_stream():
    """An addressing that held on one stream is refused on a stream that authenticated another pair, with the same error as the first time."""
    xml = "<message from='romeo@red.example/orchard' to='juliet@blue.example'/>"
    assert isinstance(check_addressing(stanza(xml), PAIRS, FRONTED), Addressed)
    other_stream = {("green.example", "blue.example")}
    assert check_addressing(stanza(xml), other_stream, FRONTED) == Misaddressed(
        "invalid-from", "red.example is not authenticated on this stream")
    assert check_addressing(stanza(xml), PAIRS, frozenset({"conference.blue.example"})) == Misaddressed(
        "host-unknown", "blue.example is not served through this guard")
    assert check_addressing(stanza(xml), {("red.example", "conference.blue.example")}, FRONTED) == Misaddressed(
        "improper-addressing", "red.example did not authenticate to blue.example on this stream")


def test_the_remembered_addressings_are_bounded_in_entries_and_text():
    """Only (from, to) texts of at most 128 characters each are remembered, and never more than ADDRESSED_CACHE_SIZE pairs."""
    from guard.core import addressing

    long_from = f"{'u' * 200}@red.example"
    assert isinstance(check_addressing(stanza(f"<message from='{long_from}' to='juliet@blue.example'/>"),
                                       PAIRS, FRONTED), Addressed)
    assert (long_from, "juliet@blue.example") not in addressing._addressed_by_text
    for n in range(addressing.ADDRESSED_CACHE_SIZE + 10):
        element = domish.Element((None, "message"))
        element.uri = "jabber:server"
        element["from"], element["to"] = f"r{n}@red.example", "juliet@blue.example"
        assert isinstance(check_addressing(element, PAIRS, FRONTED), Addressed)
        assert len(addressing._addressed_by_text) <= addressing.ADDRESSED_CACHE_SIZE
    assert ("r0@red.example", "juliet@blue.example") not in addressing._addressed_by_text
