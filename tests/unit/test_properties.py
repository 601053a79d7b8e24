"""
Properties of the whole inbound path, checked with hypothesis on generated
stanzas: the stream parser, then the addressing checks, then the policy.

For any stanza a peer may send on a stream authenticated for
red.example -> blue.example:

- it is refused with an RFC 6120 stream error (by the parser or the
  addressing checks) and never reaches a policy; or
- it is judged by the policy exactly once, the judgement is well formed, the
  stanza the policy was given is not changed, and what passes re-serialises to
  well-formed XML that parses back to the same tree: parse(serialise(x)) == x;
- what passes carries only the parts its deciding rule allows (its shapes,
  its folding profile's, an error's type and condition, the guard's label)
  and is no larger than what arrived plus what the guard adds;
- a stanza that is judged was sent from an authenticated domain to a domain
  the guard fronts on this side: never to a domain of the same side (hairpin).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from guard.core.accepted import accept
from guard.core.addressing import Addressed, Misaddressed, check_addressing, parse_jid
from guard.core.pipeline import AllowAll, Direction, Judgement, Verdict, judge_fail_closed
from guard.core.policy import load_policy
from guard.core.vocabulary import STREAM_ERROR_CONDITIONS
from guard.edges.xmlstream import StreamFault, StreamParser, serialise
from tests.unit.policy.allowed import disallowed_parts, size_problem
from tests.trees import tree

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example' version='1.0'>"
)
RED_DOMAINS = frozenset({"red.example", "conference.red.example"})
FRONTED = frozenset({"blue.example", "conference.blue.example"})
AUTHENTICATED = frozenset({("red.example", "blue.example")})
RED_TO_BLUE = Direction("red", "blue")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])



class Parsed:
    """What a StreamParser made of some bytes: elements, or the stream error it ended with."""

    def __init__(self, data: bytes):
        self.elements: list[domish.Element] = []
        self.sizes: list[int] = []
        self.fault: str | None = None

        def received(element, size):
            self.elements.append(element)
            self.sizes.append(size)

        parser = StreamParser(lambda header: None, received, lambda: None)
        try:
            parser.feed(data)
        except StreamFault as fault:
            self.fault = fault.condition


class CountingPolicy:
    """Wraps a policy and counts how often it is asked."""

    def __init__(self, inner):
        self.inner = inner
        self.asked = 0

    def judge(self, stanza, direction):
        self.asked += 1
        return self.inner.judge(stanza, direction)

    def judge_accepted(self, accepted, direction):
        self.asked += 1
        judge_accepted = getattr(self.inner, "judge_accepted", None)
        if judge_accepted is None:
            return self.inner.judge(accepted.element, direction)
        return judge_accepted(accepted, direction)


def _policy_directions():
    found = [pytest.param(AllowAll(), RED_TO_BLUE, id="AllowAll")]
    for path in sorted((PROJECT_ROOT / "policies").glob("*.toml")):
        if path.name.endswith(".tests.toml"):
            continue
        policy = load_policy(path)
        sides = getattr(policy, "sides", None)
        direction = Direction(*sides) if sides else RED_TO_BLUE
        found.append(pytest.param(policy, direction, id=path.stem))
    return found


POLICIES = _policy_directions()


# -- generated stanzas, written the way the wire looks ---------------------

def quote(value: str) -> str:
    return "'" + value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;") + "'"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


DOMAINS = st.sampled_from([
    "red.example", "conference.red.example", "blue.example", "conference.blue.example",
    "evil-red.example", "red.example.evil", "RED.example", "blue.example.", "bl ue.example", "example",
    "xn--red-xyz.example", "blue..example", "127.0.0.1", "[::1]", "réd.example",
])
# Mostly printable text (so that stanzas get as far as the policy), sometimes anything at all.
WORDS = st.one_of(
    *[st.text(alphabet="abcxyz09 <>&'\"/@.-é\u00a0", max_size=10)] * 6,
    *[st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)] * 2,
    st.text(max_size=12),
)
MADE_UP_ADDRESSES = st.one_of(
    st.builds(lambda local, domain, resource: (f"{local}@" if local else "") + domain + (f"/{resource}" if resource else ""),
              st.one_of(st.none(), st.sampled_from(["romeo", "juliet", "x"]), WORDS), DOMAINS,
              st.one_of(st.none(), st.sampled_from(["pc", "a/b"]), WORDS)),
    WORDS,
)
SENDERS = st.one_of(st.sampled_from(["romeo@red.example/pc", "red.example", "romeo@red.example"]), MADE_UP_ADDRESSES)
RECIPIENTS = st.one_of(st.sampled_from(["juliet@blue.example", "blue.example", "juliet@blue.example/tablet"]),
                       MADE_UP_ADDRESSES)
ADDRESSES = st.one_of(SENDERS, RECIPIENTS)
LABEL = ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
         "MQgCAQEGA4g3AQ==</esssecuritylabel></label></securitylabel>")


@st.composite
def children(draw, depth=0):
    kind = draw(st.sampled_from(["body", "label", "forwarded", "element", "text", "error"] if depth < 2
                                else ["body", "label", "text"]))
    if kind == "body":
        return f"<body>{escape(draw(WORDS))}</body>"
    if kind == "label":
        return LABEL
    if kind == "text":
        return escape(draw(WORDS))
    if kind == "error":
        condition = draw(st.sampled_from(["bad-request", "not-allowed", "x"]))
        return f"<error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    if kind == "forwarded":
        inner = "".join(draw(st.lists(children(depth + 1), max_size=3)))
        return (f"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from={quote(draw(ADDRESSES))}"
                f" to={quote(draw(ADDRESSES))}>{inner}</message></forwarded>")
    name = draw(st.sampled_from(["x", "query", "active", "html", "stream"]))
    namespace = draw(st.sampled_from(["urn:example", "jabber:iq:version", "http://etherx.jabber.org/streams",
                                      "jabber:server", ""]))
    attribute = draw(st.one_of(st.none(), WORDS))
    inner = "".join(draw(st.lists(children(depth + 1), max_size=3)))
    declared = f" xmlns={quote(namespace)}" if namespace else ""
    extra = f" a={quote(attribute)}" if attribute is not None else ""
    return f"<{name}{declared}{extra}>{inner}</{name}>"


@st.composite
def stanzas(draw) -> str:
    """A stanza as a peer would write it on a server stream: half well addressed, half often wrong on purpose."""
    plausible = draw(st.booleans())
    name = draw(st.sampled_from(["message", "message", "presence", "iq"] + ([] if plausible else ["foo"])))
    attributes = []
    for key, addresses in (("from", SENDERS), ("to", RECIPIENTS)):
        if plausible:
            value = draw(st.sampled_from(["romeo@red.example/pc", "red.example"] if key == "from"
                                         else ["juliet@blue.example", "blue.example"]))
        else:
            value = draw(st.one_of(addresses, addresses, addresses, st.none()))
        if value is not None:
            attributes.append(f"{key}={quote(value)}")
    kind = draw(st.sampled_from([None, "chat", "groupchat", "error", "get", "set", "result", "subscribe", "weird"]))
    if kind is not None:
        attributes.append(f"type={quote(kind)}")
    if draw(st.booleans()):
        attributes.append(f"id={quote(draw(WORDS))}")
    namespace = None if plausible else draw(st.sampled_from([None] * 3 + ["jabber:client", "urn:example"]))
    if namespace:
        attributes.append(f"xmlns={quote(namespace)}")
    body = "".join(draw(st.lists(children(), max_size=4)))
    opened = " ".join([name] + attributes)
    return f"<{opened}>{body}</{name}>"


# -- properties --------------------------------------------------------------

@pytest.mark.parametrize("policy,direction", POLICIES)
@SETTINGS
@given(xml=stanzas())
def test_any_stanza_is_refused_with_a_stream_error_or_judged_once(policy, direction, xml):
    """Every stanza ends in an RFC 6120 stream error, or is judged exactly once; what passes re-parses equal, holds only allowed parts and does not grow."""
    parsed = Parsed(HEADER + xml.encode("utf-8"))
    if parsed.fault is not None:
        assert parsed.fault in STREAM_ERROR_CONDITIONS
        return
    assert len(parsed.elements) == 1
    (stanza,) = parsed.elements
    addressed = check_addressing(stanza, AUTHENTICATED, FRONTED)
    counting = CountingPolicy(policy)
    if isinstance(addressed, Misaddressed):
        assert addressed.condition in STREAM_ERROR_CONDITIONS
        return
    assert isinstance(addressed, Addressed)
    before = serialise(stanza)
    (size,) = parsed.sizes
    judgement, problem = judge_fail_closed(counting, stanza, direction, accept(stanza, addressed, size, direction))

    assert problem is None, problem
    assert counting.asked == 1
    assert isinstance(judgement, Judgement) and isinstance(judgement.verdict, Verdict)
    assert serialise(stanza) == before, "the policy changed the stanza it was given"
    if judgement.verdict is Verdict.PASS:
        text = serialise(judgement.stanza)
        again = Parsed(HEADER + text.encode("utf-8"))
        assert again.fault is None, (again.fault, text)
        assert [tree(element) for element in again.elements] == [tree(judgement.stanza)]
        assert disallowed_parts(policy, judgement, stanza) == []
        assert size_problem(serialise, judgement, stanza, size) is None
    elif judgement.verdict is Verdict.BOUNCE:
        assert judgement.condition


@SETTINGS
@given(xml=stanzas())
def test_judged_stanzas_come_from_an_authenticated_domain_and_never_hairpin(xml):
    """A stanza that passes addressing was sent by an authenticated domain to a fronted (far-side) domain."""
    parsed = Parsed(HEADER + xml.encode("utf-8"))
    for stanza in parsed.elements:
        addressed = check_addressing(stanza, AUTHENTICATED, FRONTED)
        if isinstance(addressed, Addressed):
            assert addressed.pair in AUTHENTICATED
            assert addressed.recipient.host in FRONTED
            assert addressed.recipient.host not in RED_DOMAINS
            assert stanza.uri == "jabber:server" and stanza.name in ("message", "presence", "iq")


@SETTINGS
@given(xml=stanzas())
def test_parse_serialise_parse_is_the_identity(xml):
    """Whatever the parser accepts comes back equal after serialise -> parse: parse(serialise(x)) == x."""
    parsed = Parsed(HEADER + xml.encode("utf-8"))
    for element in parsed.elements:
        again = Parsed(HEADER + serialise(element).encode("utf-8"))
        assert again.fault is None
        assert [tree(each) for each in again.elements] == [tree(element)]


@SETTINGS
@given(text=st.one_of(ADDRESSES, st.text(max_size=40)))
def test_parse_jid_is_all_or_nothing_and_stable(text):
    """parse_jid gives None or a JID whose full form parses back to the same JID."""
    parsed = parse_jid(text)
    if parsed is not None:
        assert parse_jid(parsed.full()) == parsed
        assert parsed.host and all(parsed.host.split("."))


@pytest.mark.parametrize("sender", ["evil-red.example", "red.example.evil", "ed.example", "blue.example",
                                    "conference.red.example"])
def test_a_stanza_from_a_domain_not_authenticated_on_the_stream_is_refused(sender):
    """A stanza whose from is a domain this stream did not authenticate is refused with invalid-from."""
    (stanza,) = Parsed(HEADER + f"<message from='x@{sender}' to='juliet@blue.example'><body>hi</body></message>"
                       .encode()).elements

    assert check_addressing(stanza, AUTHENTICATED, FRONTED) == Misaddressed(
        "invalid-from", f"{sender} is not authenticated on this stream")


@pytest.mark.parametrize("recipient", ["mercutio@red.example", "room@conference.red.example", "x@blue.example.evil"])
def test_a_stanza_to_a_domain_the_guard_does_not_front_is_refused(recipient):
    """A stanza to a domain on the sender's own side (or anywhere not fronted) is refused with host-unknown."""
    (stanza,) = Parsed(HEADER + f"<message from='romeo@red.example' to='{recipient}'><body>hi</body></message>"
                       .encode()).elements

    assert check_addressing(stanza, AUTHENTICATED, FRONTED).condition == "host-unknown"


ENVELOPE_TEXT = st.one_of(st.text(alphabet="abcXYZ09-é", max_size=8), st.text(alphabet="abcXYZ09-é", min_size=30, max_size=70))
HIGH_TO_LOW = load_policy(PROJECT_ROOT / "policies" / "high-to-low.toml")


@SETTINGS
@given(stanza_id=ENVELOPE_TEXT, sender_resource=ENVELOPE_TEXT, local=ENVELOPE_TEXT, recipient_resource=ENVELOPE_TEXT)
def test_the_texts_an_envelope_carries_unjudged_cross_only_within_their_bounds(
        stanza_id, sender_resource, local, recipient_resource):
    """A presence HIGH sends to LOW passes only when its id, the recipient's localpart and both resources are each at most 64 UTF-8 bytes, and then carries exactly them."""
    sender = "romeo@red.example" + (f"/{sender_resource}" if sender_resource else "")
    recipient = (f"{local}@" if local else "") + "blue.example" + (f"/{recipient_resource}" if recipient_resource else "")
    xml = f"<presence from='{sender}' to='{recipient}' id='{stanza_id}'/>"
    parsed = Parsed(HEADER + xml.encode("utf-8"))
    if parsed.fault is not None or not parsed.elements:
        return
    (stanza,) = parsed.elements
    addressed = check_addressing(stanza, AUTHENTICATED, FRONTED)
    if not isinstance(addressed, Addressed):
        return
    (size,) = parsed.sizes
    judgement, problem = judge_fail_closed(HIGH_TO_LOW, stanza, RED_TO_BLUE, accept(stanza, addressed, size, RED_TO_BLUE))
    assert problem is None
    parts = (stanza_id, addressed.recipient.user or "", addressed.sender.resource or "", addressed.recipient.resource or "")
    within = all(len(part.encode("utf-8")) <= 64 for part in parts)
    assert (judgement.verdict is Verdict.PASS) is within, (judgement.verdict, judgement.rule_id, parts)
    if within:
        leaving = judgement.stanza
        assert (leaving.getAttribute("id"), leaving.getAttribute("to")) == (stanza_id, addressed.recipient.full())
