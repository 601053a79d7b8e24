"""The reference HAG's profile check and the reference release authority's rules, without sockets."""

import pytest

from guard.edges.relay import Parcel
from guard.edges.release import reparse_stanza
from guard.edges.xmlstream import serialise
from guard.reference.authority import Rules, decide
from guard.reference.hag import ReferenceHag
from guard.reference.profile import Profile, ProfileError, ProfileLimits, check_stanza, load_profile

PROFILE = Profile(
    ProfileLimits(stanza_bytes=400, depth=3, elements=5, text_bytes=50),
    {
        ("jabber:server", "message"): frozenset({"from", "to", "id", "type", "xml:lang"}),
        ("jabber:server", "body"): frozenset({"xml:lang"}),
        ("urn:ietf:params:xml:ns:xmpp-stanzas", "*"): frozenset(),
    },
)


def check(xml):
    return check_stanza(xml.encode(), PROFILE)


def test_a_permitted_stanza_passes_rebuilt_from_the_hags_own_parse():
    """Every element and attribute listed: it passes, and what passes is the HAG's own tree."""
    result = check("<message from='a@x' to='b@y' xml:lang='en'><body>hi &amp; bye</body></message>")
    assert result.passed
    assert serialise(result.stanza) == '<message from="a@x" to="b@y" xml:lang="en"><body>hi &amp; bye</body></message>'


@pytest.mark.parametrize("xml, reason", [
    ("<message from='a@x' to='b@y'><x xmlns='urn:example'/></message>", "element not permitted"),
    ("<message from='a@x' to='b@y' secret='1'/>", "attribute not permitted"),
    ("<message from='a@x' to='b@y'><body>" + "x" * 51 + "</body></message>", "text"),
    ("<message from='a@x' to='b@y'><body><body><body/></body></body></message>", "depth"),
    ("<message from='a@x' to='b@y'>" + "<body/>" * 5 + "</message>", "elements"),
    ("<message from='a@x' to='b@y'><body>" + "x" * 400 + "</body></message>", "size"),
    ("<message from='a@x' to='b@y'><body></message>", "not well-formed"),
    ("<message/><message/>", "not exactly one"),
    ("<!DOCTYPE m [<!ENTITY e 'x'>]><message>&e;</message>", "not well-formed"),
    ("<iq from='a@x' to='b@y' type='get'/>", "element not permitted"),
])
def test_anything_outside_the_profile_is_dropped_with_a_reason(xml, reason):
    """The first failed check drops the stanza and names why."""
    result = check(xml)
    assert not result.passed and reason in result.reason


def test_a_wildcard_permits_every_element_of_its_namespace():
    """'urn:ietf:params:xml:ns:xmpp-stanzas *' lets any defined condition through."""
    assert check("<message from='a@x' to='b@y'><body><item-not-found "
                 "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></body></message>").passed


def test_an_empty_profile_is_refused(tmp_path):
    """A profile that permits nothing is a mistake, not a policy."""
    path = tmp_path / "profile.toml"
    path.write_text("[limits]\ndepth = 4\n")
    with pytest.raises(ProfileError, match="elements"):
        load_profile(str(path))


class RecordingLink:
    def __init__(self):
        self.sent = []

    def send(self, parcel):
        self.sent.append(parcel)


class Leg:
    def __init__(self):
        self.link = RecordingLink()


class RecordingAudit:
    def __init__(self, broken=False):
        self.records = []
        self.broken = broken

    def record(self, event, **fields):
        if self.broken:
            from guard.edges.audit import AuditUnavailable

            raise AuditUnavailable("disk full")
        self.records.append((event, fields["direction"], fields["reason"]))


def hag(audit=None):
    reference = ReferenceHag(PROFILE, audit or RecordingAudit())
    reference.add_leg("a", Leg())
    reference.add_leg("b", Leg())
    return reference


def test_the_hag_forwards_permitted_stanzas_to_the_other_leg():
    """A stanza from leg a that fits the profile goes out on leg b."""
    reference = hag()
    reference.crossing("a", reparse_stanza("<message from='a@x' to='b@y'><body>hi</body></message>"))
    assert [serialise(p.stanza) for p in reference.legs["b"].link.sent] == [
        '<message from="a@x" to="b@y"><body>hi</body></message>']
    assert reference.legs["a"].link.sent == []


def test_the_hag_drops_and_audits_what_the_profile_refuses():
    """A stanza outside the profile goes nowhere and is audited with its direction and reason."""
    reference = hag()
    reference.crossing("b", reparse_stanza("<message from='b@y' to='a@x'><x xmlns='urn:example'/></message>"))
    assert reference.legs["a"].link.sent == []
    assert reference.audit.records == [("hag-drop", "b->a", "element not permitted: {urn:example}x")]


def test_without_an_audit_trail_the_hag_forwards_nothing_more():
    """A drop that cannot be recorded halts the HAG: later permitted stanzas are dropped too."""
    reference = hag(RecordingAudit(broken=True))
    reference.crossing("a", reparse_stanza("<message from='a@x' to='b@y'><x xmlns='urn:example'/></message>"))
    reference.crossing("a", reparse_stanza("<message from='a@x' to='b@y'><body>hi</body></message>"))
    assert reference.halted and reference.legs["b"].link.sent == []


def test_the_hag_bounces_back_what_the_far_leg_gave_up_on():
    """When leg b gives up (down too long), the sender on leg a gets an error reply."""
    reference = hag()
    original = reparse_stanza("<message from='a@x/r' to='b@y' id='m1'><body>hi</body></message>")
    reference.undeliverable("b", Parcel(original, original), "remote-server-timeout", "down")
    (reply,) = reference.legs["a"].link.sent
    assert reply.stanza.getAttribute("type") == "error" and reply.stanza.getAttribute("to") == "a@x/r"


def test_what_the_far_leg_said_never_reaches_the_hags_bounce():
    """The text a leg gives with its failure goes to the audit record only; the bounce carries the guard's own text."""
    reference = hag()
    original = reparse_stanza("<message from='a@x/r' to='b@y' id='m2'><body>hi</body></message>")
    reference.undeliverable("b", Parcel(original, original), "remote-server-timeout", "FAR-SIDE-MARKER")
    (reply,) = reference.legs["a"].link.sent
    assert "FAR-SIDE-MARKER" not in serialise(reply.stanza)


def request(body, version=1):
    stanza = f"<message from='romeo@red.example' to='juliet@blue.example'><body>{body}</body></message>"
    return {"version": version, "id": "abc", "direction": "red->blue", "rule": "r", "stanza": stanza}


def test_the_authority_releases_denies_and_redacts_by_its_rules():
    """Plain text is released, a deny word denies, a redact word releases with changes."""
    rules = Rules(deny_words=("secret",), redact_words=("Verona",))
    assert decide(request("hello"), rules)["decision"] == "release"
    assert decide(request("a secret"), rules)["decision"] == "deny"
    changed = decide(request("in Verona"), rules)
    assert changed["decision"] == "release-with-changes" and "in [redacted]" in changed["stanza"]
    assert changed["id"] == "abc"


def test_the_authority_denies_what_it_cannot_read():
    """An unknown version or an unparseable stanza is denied."""
    assert decide(request("hi", version=2), Rules())["decision"] == "deny"
    assert decide({"version": 1, "id": "x", "stanza": "<message"}, Rules())["decision"] == "deny"


VERSION_QUERY = ("<iq from='romeo@red.example/a' to='juliet@blue.example/b' type='get' id='v1'>"
                 "<query xmlns='jabber:iq:version'/></iq>")


def test_an_iq_the_hag_refuses_is_answered_with_an_error_to_its_sender():
    """A XEP-0092 version query outside the profile: the sender gets not-allowed back on its own leg,
    with the HAG's constant text and nothing of the query; the refusal is audited."""
    reference = hag()
    reference.crossing("a", reparse_stanza(VERSION_QUERY))
    assert reference.legs["b"].link.sent == []
    (answer,) = reference.legs["a"].link.sent
    assert answer.original is None
    assert serialise(answer.stanza) == (
        '<iq type="error" from="juliet@blue.example/b" to="romeo@red.example/a" id="v1"><error type="cancel">'
        '<not-allowed xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">refused by the High Assurance Guard</text></error></iq>')
    assert reference.audit.records == [("hag-drop", "a->b", "element not permitted: {jabber:server}iq")]


@pytest.mark.parametrize("xml", [
    "<iq from='romeo@red.example/a' to='juliet@blue.example/b' type='result' id='r1'>"
    "<query xmlns='jabber:iq:version'/></iq>",
    "<message from='romeo@red.example/a' to='juliet@blue.example' type='error' id='e1'>"
    "<x xmlns='urn:example'/></message>",
])
def test_errors_and_iq_results_the_hag_refuses_are_never_answered(xml):
    """RFC 6120 8.3.1: no error in answer to an error or an iq result; the refusal is still audited."""
    reference = hag()
    reference.crossing("a", reparse_stanza(xml))
    assert reference.legs["a"].link.sent == [] and reference.legs["b"].link.sent == []
    assert [record[0] for record in reference.audit.records] == ["hag-drop"]


def test_a_halted_hag_answers_what_it_no_longer_forwards():
    """Without an audit trail the HAG forwards nothing, and says so to each sender with service-unavailable."""
    reference = hag(RecordingAudit(broken=True))
    reference.crossing("a", reparse_stanza("<message from='a@x/r' to='b@y' id='m1'><x xmlns='urn:example'/></message>"))
    reference.crossing("a", reparse_stanza("<message from='a@x/r' to='b@y' id='m2'><body>hi</body></message>"))
    conditions = [answer.stanza.error.firstChildElement().name for answer in reference.legs["a"].link.sent]
    assert conditions == ["not-allowed", "service-unavailable"] and reference.legs["b"].link.sent == []
