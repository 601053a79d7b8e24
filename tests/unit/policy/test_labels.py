"""Security labels: reading ESS, STANAG 4774, empty and slixmpp-made labels; meaning, dominance and clearances."""

import base64

import pytest

from guard.core.policy.labels import (
    Clearance, LabelMeaningError, SecurityLabel, WireLabel, read_stanza_label,
)

from .labelled import release_policy
from .wire import A_REL_B, NATION_A, RED_TO_BLUE, ess_label, ess_xml, read, stanag_xml, utf8_der

REL_B = ("ess", A_REL_B[0], utf8_der(A_REL_B[1]).hex())


def message_with(label_xml, to="bob@blue.example"):
    """A chat message from red to ``to`` carrying ``label_xml``."""
    return read(f"<message from='alice@red.example/pc' to='{to}' type='chat'><body>hi</body>{label_xml}</message>")


def test_an_ess_label_built_with_pyasn1_is_read():
    """Base64 DER ESSSecurityLabel made by pyasn1 yields its policy OID, classification and categories."""
    b64 = ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der(A_REL_B[1]))])
    marked = read_stanza_label(message_with(ess_xml(b64, marking="A RESTRICTED REL B")))
    assert (marked.count, marked.problem) == (1, None)
    assert marked.label == WireLabel("ess", NATION_A, "2", frozenset({REL_B}))


def test_an_ess_label_without_classification_is_read_but_means_nothing():
    """The classification is optional in ESS; a label without one cannot be given meaning and is not valid."""
    marked = read_stanza_label(message_with(ess_xml(ess_label(NATION_A))))
    assert marked.label == WireLabel("ess", NATION_A, None, frozenset())
    with pytest.raises(LabelMeaningError, match="no classification"):
        release_policy().labels.meaning(marked.label, "red.example")


def test_a_stanag_4774_label_is_read():
    """A STANAG 4774 ConfidentialityLabel yields its PolicyIdentifier, Classification and categories."""
    marked = read_stanza_label(message_with(stanag_xml("NATION-B", "PROTECTED", [("Releasable to", "A")])))
    assert marked.label == WireLabel("stanag4774", "NATION-B", "PROTECTED",
                                     frozenset({("stanag4774", "Releasable to", "A")}))


def test_an_empty_label_is_the_default_label_of_the_sender():
    """``<label/>`` with nothing inside means the sending peer's default label."""
    marked = read_stanza_label(message_with("<securitylabel xmlns='urn:xmpp:sec-label:0'><label/></securitylabel>"))
    assert marked.label == WireLabel("default")
    labels = release_policy().labels
    assert labels.meaning(marked.label, "red.example") == SecurityLabel("nation-a", "UNCLASSIFIED")
    assert labels.meaning(marked.label, "other.example") == SecurityLabel("nation-a", "SECRET")


def test_a_label_as_slixmpp_sends_it_is_read():
    """The XML slixmpp's xep_0258 plugin writes (jabber:client message, displaymarking, ESS label, equivalent) is understood."""
    slixmpp = pytest.importorskip("slixmpp")
    from slixmpp.plugins.xep_0258 import stanza as xep_0258
    from slixmpp.xmlstream import register_stanza_plugin

    register_stanza_plugin(slixmpp.Message, xep_0258.SecurityLabel)
    message = slixmpp.Message()
    message["from"], message["to"], message["type"] = "alice@red.example/pc", "bob@blue.example", "chat"
    message["body"] = "hi"
    message["security_label"]["display_marking"]["value"] = "A RESTRICTED REL B"
    message["security_label"]["display_marking"]["fgcolor"] = "black"
    # ESSLabel's set_value stores bytes, which slixmpp 1.17 cannot serialise; clients set the base64 text.
    message["security_label"]["label"]["ess"].xml.text = ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))])
    equivalent = message["security_label"].add_equivalent(xep_0258.ESSLabel())
    equivalent["ess"].xml.text = ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))])
    wire = str(message)
    assert wire.startswith('<message xmlns="jabber:client"') and "<equivalentlabel>" in wire
    stanza = read(wire)
    marked = read_stanza_label(stanza)
    assert marked.label == WireLabel("ess", NATION_A, "2", frozenset({REL_B}))
    assert marked.equivalents == (marked.label,)
    assert release_policy().judge(stanza, RED_TO_BLUE).rule_id == "release"


def test_an_empty_label_as_slixmpp_sends_it_is_the_default_label():
    """slixmpp writes ``<label />`` for a label with no content: that is the sender's default label."""
    stanza = read('<message xmlns="jabber:client" to="bob@blue.example" from="alice@red.example/pc">'
                  '<body>x</body><securitylabel xmlns="urn:xmpp:sec-label:0"><label /></securitylabel></message>')
    assert read_stanza_label(stanza).label == WireLabel("default")
    assert release_policy().judge(stanza, RED_TO_BLUE).rule_id == "release"


@pytest.mark.parametrize("label_xml, problem", [
    (ess_xml("not base64!"), "not base64"),
    (ess_xml("MAA="), "not DER ESSSecurityLabel"),
    (ess_xml(base64.b64encode(base64.b64decode(ess_label(NATION_A, 1)) + b"\0\0").decode()), "trailing bytes"),
    (ess_xml(""), "empty ESS label"),
    ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label><x xmlns='urn:example:label'/></label></securitylabel>",
     "unknown label format"),
    ("<securitylabel xmlns='urn:xmpp:sec-label:0'><displaymarking>X</displaymarking></securitylabel>",
     "holds 0 label elements"),
    ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label/><label/></securitylabel>", "holds 2 label elements"),
    ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label>SECRET</label></securitylabel>", "text inside label"),
    (stanag_xml("NATION-B", ""), "must not be empty"),
])
def test_unreadable_labels_are_reported_and_bounce(label_xml, problem):
    """A label that cannot be read names its problem and is never released."""
    stanza = message_with(label_xml)
    marked = read_stanza_label(stanza)
    assert problem in marked.problem
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id, judgement.condition) == (
        "bounce", "label-unreadable", "policy-violation")


@pytest.mark.parametrize("label_xml, problem", [
    (ess_xml(ess_label("2.999.77", 1)), "no label policy has identifier '2.999.77'"),
    (ess_xml(ess_label(NATION_A, 3)), "classification '3' is not defined by nation-a"),
    (ess_xml(ess_label(NATION_A, 1, [("2.999.10.9", utf8_der("X"))])), "is not defined by nation-a"),
    (stanag_xml("NATION-B", "TOP"), "classification 'TOP' is not defined by nation-b"),
])
def test_readable_labels_the_policies_do_not_define_are_invalid(label_xml, problem):
    """A well-formed label under an unknown policy, classification or category has no meaning and bounces."""
    policy = release_policy()
    explanation = policy.explain(message_with(label_xml), RED_TO_BLUE)
    assert explanation.judgement.rule_id == "label-unreadable"
    assert any(problem in reason for item in explanation.considered for reason in item.reasons)


A_RESTRICTED_REL_B = SecurityLabel("nation-a", "RESTRICTED", frozenset({"REL-B"}))


@pytest.mark.parametrize("clearance, label, dominated, why", [
    (Clearance("nation-a", "SECRET"), SecurityLabel("nation-a", "RESTRICTED"), True, "within"),
    (Clearance("nation-a", "RESTRICTED"), SecurityLabel("nation-a", "RESTRICTED"), True, "within"),
    (Clearance("nation-a", "RESTRICTED"), SecurityLabel("nation-a", "SECRET"), False, "SECRET is above RESTRICTED"),
    (Clearance("nation-a", "SECRET"), SecurityLabel("nation-a", "RESTRICTED", frozenset({"CRYPTO"})), False,
     "lacks restrictive categories ['CRYPTO']"),
    (Clearance("nation-a", "SECRET", frozenset({"CRYPTO"})), SecurityLabel("nation-a", "RESTRICTED", frozenset({"CRYPTO"})),
     True, "within"),
    (Clearance("nation-a", "SECRET"), A_RESTRICTED_REL_B, False, "none of the permissive categories ['REL-B']"),
    (Clearance("nation-a", "RESTRICTED", frozenset({"REL-B"})), A_RESTRICTED_REL_B, True, "within"),
    (Clearance("nation-b", "PROTECTED"), A_RESTRICTED_REL_B, True, "nation-b:PROTECTED within"),
    (Clearance("nation-b", "OPEN"), A_RESTRICTED_REL_B, False, "PROTECTED is above OPEN"),
    (Clearance("nation-b", "CLASSIFIED"), SecurityLabel("nation-a", "SECRET"), False, "no equivalent under nation-b"),
    (Clearance("nation-a", "SECRET"), SecurityLabel("nation-b", "OPEN"), False, "no equivalent under nation-a"),
])
def test_dominance(clearance, label, dominated, why):
    """A clearance dominates a label when its classification is at least the label's and the categories allow it, translating when the policies differ."""
    ok, reason = release_policy().labels.dominates(clearance, label)
    assert ok is dominated
    assert why in reason


@pytest.mark.parametrize("label, to, releasable, why", [
    (A_RESTRICTED_REL_B, "blue.example", True, "gateway and blue.example cleared"),
    (SecurityLabel("nation-a", "UNCLASSIFIED"), "blue.example", True, "cleared"),
    (SecurityLabel("nation-a", "SECRET"), "blue.example", False, "gateway: SECRET is above RESTRICTED"),
    (A_RESTRICTED_REL_B, "muc.blue.example", False, "muc.blue.example: RESTRICTED is above UNCLASSIFIED"),
    (SecurityLabel("nation-a", "UNCLASSIFIED"), "muc.blue.example", True, "cleared"),
    (SecurityLabel("nation-a", "RESTRICTED", frozenset({"REL-B", "CRYPTO"})), "crypto.blue.example", False,
     "gateway: clearance lacks restrictive categories ['CRYPTO']"),
    (A_RESTRICTED_REL_B, "green.example", False, "no clearance is configured for green.example"),
])
def test_clearances_of_gateway_and_peer_must_both_dominate(label, to, releasable, why):
    """A label is releasable only when the gateway's and the receiving peer's (exact or wildcard) clearances both dominate it."""
    ok, reason = release_policy().labels.releasable(label, to)
    assert ok is releasable
    assert why in reason


def test_unlabelled_traffic_takes_the_senders_default_label():
    """An unlabelled message from red counts as red's default (UNCLASSIFIED); from elsewhere as the file's default (SECRET)."""
    policy = release_policy()
    from_red = read("<message from='alice@red.example/pc' to='bob@blue.example'><body>x</body></message>")
    from_other = read("<message from='mallory@other.example' to='bob@blue.example'><body>x</body></message>")
    assert policy.judge(from_red, RED_TO_BLUE).rule_id == "release"
    judgement = policy.judge(from_other, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("bounce", "not-releasable")


def test_labelled_messages_are_released_or_bounced_by_clearance():
    """RESTRICTED REL-B reaches the cleared peer; SECRET bounces with policy-violation citing the rule and its revision."""
    policy = release_policy()
    released = policy.judge(message_with(ess_xml(ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))]))), RED_TO_BLUE)
    assert (released.verdict.value, released.rule_id) == ("pass", "release")
    refused = policy.judge(message_with(ess_xml(ess_label(NATION_A, 4))), RED_TO_BLUE)
    assert (refused.verdict.value, refused.rule_id, refused.rule_rev, refused.condition) == (
        "bounce", "not-releasable", 2, "policy-violation")


def test_bounce_unless_in_a_label_set_also_bounces_an_invalid_label():
    """An invalid label has no value, so ``not = { label_in = ... }`` holds on it and the deny-unless rule refuses it."""
    from .labelled import LABELS_AND_MAPS
    from .wire import compile_policy

    policy = compile_policy('[policy]\nname = "deny-unless"\n' + LABELS_AND_MAPS + """
[sets.labels]
allowed = [{ policy = "nation-a", classification = "UNCLASSIFIED" }]

[[rules]]
id = "deny-unless-allowed"
rev = 1
why = "only UNCLASSIFIED"
kind = "message"
not = { label_in = "$allowed" }
verdict = "bounce"
condition = "policy-violation"

[[rules]]
id = "pass"
rev = 1
why = "the rest"
kind = "message"
verdict = "pass"
""")
    for label in (ess_xml("!!"), ess_xml(ess_label("2.999.77", 1)), ess_xml(ess_label(NATION_A, 4))):
        assert policy.judge(message_with(label), RED_TO_BLUE).rule_id == "deny-unless-allowed"
    assert policy.judge(message_with(ess_xml(ess_label(NATION_A, 1))), RED_TO_BLUE).rule_id == "pass"


def test_an_unreadable_label_never_satisfies_a_permissive_rule_and_always_a_restrictive_one():
    """'pass if not SECRET' does not pass a label the guard cannot read, and 'drop if SECRET' drops it."""
    from .labelled import LABELS_AND_MAPS
    from .wire import compile_policy

    secret = '[sets.labels]\nsecret = [{ policy = "nation-a", classification = "SECRET" }]\n'
    allow_unless = compile_policy('[policy]\nname = "allow-unless"\ndefault = "drop"\n' + LABELS_AND_MAPS + secret + """
[[rules]]
id = "pass-unless-secret"
rev = 1
why = "written as a negation"
kind = "message"
not = { label_in = "$secret" }
verdict = "pass"
""")
    drop_if = compile_policy('[policy]\nname = "drop-if"\n' + LABELS_AND_MAPS + secret + """
[[rules]]
id = "drop-secret"
rev = 1
why = "written positively"
kind = "message"
label_in = "$secret"
verdict = "drop"

[[rules]]
id = "pass-rest"
rev = 1
why = "everything else"
verdict = "pass"
""")
    for unreadable in (ess_xml("!!"), ess_xml(ess_label("2.999.77", 1))):
        assert allow_unless.judge(message_with(unreadable), RED_TO_BLUE).rule_id == "default"
        assert drop_if.judge(message_with(unreadable), RED_TO_BLUE).rule_id == "drop-secret"
    readable = message_with(ess_xml(ess_label(NATION_A, 1)))
    assert allow_unless.judge(readable, RED_TO_BLUE).rule_id == "pass-unless-secret"
    assert drop_if.judge(readable, RED_TO_BLUE).rule_id == "pass-rest"


def test_release_decisions_are_remembered_within_entries_and_bytes():
    """Each (label, receiver) decision is remembered as first made; the memory never passes its entry or byte bound."""
    from pathlib import Path

    from guard.core.policy import load_policy
    from guard.core.policy import labels as label_module

    authority = load_policy(Path(__file__).resolve().parents[3] / "policies" / "high-to-low.toml").labels
    restricted = label_module.SecurityLabel("red-national", "RESTRICTED", frozenset({"REL-BLUE"}))
    secret = label_module.SecurityLabel("red-national", "SECRET")
    first = [authority.releasable(label, "blue.example") for label in (restricted, secret)]
    assert [authority.releasable(label, "blue.example") for label in (restricted, secret)] == first
    assert first[0][0] is True and first[1][0] is False
    for n in range(label_module.RELEASABLE_MEMORY_ENTRIES + 10):
        domain = f"host{n}." + "d" * 200 + ".blue.example"
        assert authority.releasable(restricted, domain) == authority._releasable(restricted, domain)
        assert len(authority.releasable_memory) <= label_module.RELEASABLE_MEMORY_ENTRIES
        assert authority.releasable_memory.used <= label_module.RELEASABLE_MEMORY_BYTES
