"""
Refusal texts from s2s/decisions.py are the guard's own constant strings: a
refusal of the far server's header becomes the bounce text of every stanza
waiting for that stream, so nothing the peer wrote may be in it.  What the
peer wrote goes to Refusal.detail, bounded and escaped, for the log.
"""

import pytest
from twisted.words.xish import domish

from guard.edges.s2s.decisions import (
    VERIFY_ID_BYTES,
    AuthenticationOffer,
    KeyToCheck,
    NotServed,
    Refusal,
    authentication_offer,
    dialback_settled,
    external_identity,
    judge_dialback_request,
    refuse_another_stream,
    refuse_connection,
    refuse_dialback_request,
    refuse_inbound_header,
    refuse_outbound_header,
    refuse_sasl_mechanism,
    refuse_verify_request,
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


# -- the inbound stream's decisions, plain values in and out ----------------------------

class Verdict:
    """A peer certificate's verdict as the decisions read it: which domains it proves, and its problem."""

    def __init__(self, proves=(), problem=None):
        self.domains, self.problem = frozenset(proves), problem

    def proves(self, domain):
        return domain in self.domains


@pytest.mark.parametrize("authentication, verdict, offer", [
    ("certificate", Verdict(proves={"red.example"}), AuthenticationOffer(external=True, dialback=False)),
    ("certificate", Verdict(problem="expired"), AuthenticationOffer(external=False, dialback=False, problem="expired")),
    ("certificate", Verdict(proves={"other.example"}),
     AuthenticationOffer(external=False, dialback=False, problem="subjectAltName does not match")),
    ("certificate", None, AuthenticationOffer(external=False, dialback=False, problem="no certificate")),
    ("dialback", Verdict(proves={"red.example"}), AuthenticationOffer(external=False, dialback=True)),
    ("dialback", None, AuthenticationOffer(external=False, dialback=True)),
])
def test_the_mechanism_offered_follows_the_side_and_the_certificate(authentication, verdict, offer):
    """A certificate side offers EXTERNAL only when the certificate proves the stream's from; a dialback side offers dialback only."""
    assert authentication_offer(authentication, verdict, "red.example") == offer


@pytest.mark.parametrize("authentication, mechanism, refusal", [
    ("certificate", "EXTERNAL", None),
    ("certificate", "PLAIN", Refusal("invalid-mechanism", "only EXTERNAL is offered")),
    ("certificate", None, Refusal("invalid-mechanism", "only EXTERNAL is offered")),
    ("dialback", "EXTERNAL", Refusal("invalid-mechanism", "this side authenticates with dialback")),
])
def test_only_sasl_external_on_a_certificate_side_is_taken(authentication, mechanism, refusal):
    """SASL <auth/> is refused on a dialback side, and for any mechanism but EXTERNAL."""
    assert refuse_sasl_mechanism(authentication, mechanism) == refusal


@pytest.mark.parametrize("already_sends_as, streams_from, refused", [
    (False, 0, False), (False, 1, False), (False, 2, True), (False, 3, True), (True, 2, False), (True, 9, False),
])
def test_streams_per_domain_counts_other_streams_and_not_one_that_already_sends_as_the_domain(
        already_sends_as, streams_from, refused):
    """At streams_per_domain other streams for a domain, another is refused; a stream already sending as it adds none."""
    refusal = refuse_another_stream("red.example", already_sends_as, streams_from, limit=2)
    assert refusal == (Refusal("policy-violation", "too many streams from red.example") if refused else None)


def test_connections_per_address_refuses_the_connection_past_the_limit_with_conflict():
    """With ``limit`` connections already open from an address, the next is refused with conflict; fewer pass."""
    assert refuse_connection(1, limit=2) is None
    assert refuse_connection(2, limit=2) == Refusal("conflict", "too many connections from this address")
    assert refuse_connection(0, limit=1) is None


def test_inbound_counts_count_by_address_and_by_proved_domain_and_forget_what_is_gone():
    """Counts follow streams as they connect, prove domains and close, and keep no key once nothing is open."""
    from guard.edges.s2s.counts import InboundCounts

    counts = InboundCounts()
    counts.connected("127.0.1.1")
    counts.connected("127.0.1.1")
    counts.connected("127.0.1.2")
    counts.proved("red.example")
    assert counts.from_address["127.0.1.1"] == 2 and counts.sending_as["red.example"] == 1
    counts.disconnected("127.0.1.1")
    counts.disconnected("127.0.1.1")
    counts.disconnected("127.0.1.2")
    counts.closed_proving({"red.example"})
    assert counts.from_address == {} and counts.sending_as == {}


@pytest.mark.parametrize("attributes, authentication, decision", [
    ({"from": "red.example", "to": "blue.example"}, "dialback",
     KeyToCheck("red.example", "blue.example", "b4835385f37fe2895af6c196b59097b1")),
    ({"from": "red.example", "to": "blue.example"}, "certificate",
     Refusal("not-authorized", "this side authenticates with certificates")),
    ({"from": "red.example", "to": "green.example"}, "dialback",
     NotServed("red.example", "green.example", Refusal(
         "host-unknown", "dialback for a domain this guard does not serve", "to green.example"))),
    ({"from": "blue.example", "to": "blue.example"}, "dialback",
     Refusal("invalid-from", "dialback from a domain not of this side", "from blue.example")),
    ({"from": "red.example"}, "dialback", Refusal("improper-addressing", "dialback needs from and to domains")),
])
def test_a_dialback_request_is_checked_refused_or_answered_with_an_error(attributes, authentication, decision):
    """A <db:result/> on a dialback side for a fronted domain is checked; one for a domain not served is a
    dialback error (the stream stays open); anything else is a stream error."""
    assert judge_dialback_request(dialback_result(**attributes), authentication, FRONTED, HOSTED) == decision


def test_a_dialback_request_without_a_key_or_with_a_huge_one_is_refused():
    """A <db:result/> must carry a key of at most 1024 characters."""
    empty = domish.Element(("jabber:server:dialback", "result"))
    empty["from"], empty["to"] = "red.example", "blue.example"
    huge = dialback_result(**{"from": "red.example", "to": "blue.example"})
    huge.addContent("k" * 1024)
    for element in (empty, huge):
        assert judge_dialback_request(element, "dialback", FRONTED, HOSTED) == Refusal(
            "bad-format", "a dialback key is required")


@pytest.mark.parametrize("verdict, settled", [
    ("valid", "confirmed"), ("invalid", "denied"), ("error", "failed"), ("anything else", "failed"),
])
def test_the_authoritative_answer_settles_a_dialback_request(verdict, settled):
    """valid confirms, invalid denies, and any other answer is a dialback error (never a confirmation)."""
    assert dialback_settled(verdict) == settled


@pytest.mark.parametrize("asking, claimed, stream_id, refusal", [
    ("red.example", "blue.example", "s-1", None),
    ("blue.example", "blue.example", "s-1",
     Refusal("invalid-from", "a db:verify must come from a domain of this side")),
    (None, "blue.example", "s-1", Refusal("invalid-from", "a db:verify must come from a domain of this side")),
    ("red.example", "red.example", "s-1",
     Refusal("host-unknown", "a db:verify must name a domain served through this guard")),
    ("red.example", "blue.example", "", Refusal("policy-violation", "a db:verify needs a stream id of at most 128 bytes")),
    ("red.example", "blue.example", "i" * VERIFY_ID_BYTES, None),
    ("red.example", "blue.example", "é" * 65,
     Refusal("policy-violation", "a db:verify needs a stream id of at most 128 bytes")),
])
def test_a_db_verify_is_answered_only_for_our_domains_and_a_short_id(asking, claimed, stream_id, refusal):
    """What a db:verify answer echoes is bounded and known: our domains, and an id of at most 128 bytes."""
    assert refuse_verify_request(asking, claimed, stream_id, FRONTED, HOSTED) == refusal
