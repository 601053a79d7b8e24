"""
Leak corpus for labels: a marker hidden in each place a ``<securitylabel/>``
can carry data.  Either the label is unreadable (and never released), or the
label that leaves is the guard's own encoding of the judged value, identical
to what a clean label of the same value produces: nothing of the sender's
survives.
"""

import base64

import pytest
from pyasn1.codec.der import encoder
from pyasn1_modules import rfc2634

from guard.core.policy.facts import StanzaFacts
from guard.core.policy.labels import SecurityLabel, read_stanza_label

from .labelled import release_policy
from .wire import A_REL_B, NATION_A, RED_TO_BLUE, ess_label, read, utf8_der

MARKER = "LEAKMARK"
STANAG = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"
CLEAN = ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der(A_REL_B[1]))])  # A RESTRICTED REL-B
JUDGED = SecurityLabel("nation-a", "RESTRICTED", frozenset({"REL-B"}))


def with_privacy_mark(text):
    """A RESTRICTED REL-B carrying ``text`` as its ESS privacy mark (free text inside the DER), built with pyasn1."""
    label = rfc2634.ESSSecurityLabel()
    label["security-policy-identifier"] = NATION_A
    label["security-classification"] = 2
    label["privacy-mark"]["utf8String"] = text
    category = rfc2634.SecurityCategory()
    category["type"] = A_REL_B[0]
    category["value"] = utf8_der(A_REL_B[1])
    label["security-categories"].setComponentByPosition(0, category)
    return base64.b64encode(encoder.encode(label)).decode("ascii")


def ess(b64, attributes=""):
    return f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'{attributes}>{b64}</esssecuritylabel>"


def securitylabel(inner, attributes=""):
    return f"<securitylabel xmlns='urn:xmpp:sec-label:0'{attributes}>{inner}</securitylabel>"


def message_with(label_xml):
    return read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='m1'>"
                f"<body>hi</body>{label_xml}</message>")


READABLE = {
    "displaymarking text": securitylabel(f"<displaymarking>{MARKER}</displaymarking><label>{ess(CLEAN)}</label>"),
    "displaymarking colours": securitylabel(
        f"<displaymarking fgcolor='{MARKER}' bgcolor='{MARKER}'>A</displaymarking><label>{ess(CLEAN)}</label>"),
    "ESS privacy mark in the label": securitylabel(f"<label>{ess(with_privacy_mark(MARKER))}</label>"),
    "ESS privacy mark in an equivalent": securitylabel(
        f"<label>{ess(CLEAN)}</label><equivalentlabel>{ess(with_privacy_mark(MARKER))}</equivalentlabel>"),
    "equivalent label repeating the label": securitylabel(
        f"<label>{ess(CLEAN)}</label>" + f"<equivalentlabel>{ess(CLEAN)}</equivalentlabel>" * 4),
    "white space inside the base64": securitylabel(
        f"<label>{ess(' '.join(CLEAN[i:i + 4] for i in range(0, len(CLEAN), 4)))}</label>"),
    "namespace prefix named after the marker": (
        f"<{MARKER}:securitylabel xmlns:{MARKER}='urn:xmpp:sec-label:0'>"
        f"<{MARKER}:label>{ess(CLEAN)}</{MARKER}:label></{MARKER}:securitylabel>"),
    "unused namespace declaration": securitylabel(f"<label>{ess(CLEAN)}</label>", f" xmlns:m='urn:{MARKER}'"),
}

UNREADABLE = {
    "attribute on securitylabel": securitylabel(f"<label>{ess(CLEAN)}</label>", f" note='{MARKER}'"),
    "attribute on label": securitylabel(f"<label note='{MARKER}'>{ess(CLEAN)}</label>"),
    "attribute on esssecuritylabel": securitylabel(f"<label>{ess(CLEAN, f' note={chr(39)}{MARKER}{chr(39)}')}</label>"),
    "namespaced attribute on displaymarking": securitylabel(
        f"<displaymarking xmlns:p='urn:p' p:x='{MARKER}'>A</displaymarking><label>{ess(CLEAN)}</label>"),
    "extra child of securitylabel": securitylabel(f"<label>{ess(CLEAN)}</label><note>{MARKER}</note>"),
    "foreign child of securitylabel": securitylabel(
        f"<label>{ess(CLEAN)}</label><x xmlns='urn:example'>{MARKER}</x>"),
    "text inside securitylabel": securitylabel(f"{MARKER}<label>{ess(CLEAN)}</label>"),
    "text beside the label format": securitylabel(f"<label>{MARKER}{ess(CLEAN)}</label>"),
    "element inside displaymarking": securitylabel(
        f"<displaymarking>A<b>{MARKER}</b></displaymarking><label>{ess(CLEAN)}</label>"),
    "trailing bytes after the DER": securitylabel(
        f"<label>{ess(base64.b64encode(base64.b64decode(CLEAN) + MARKER.encode()).decode())}</label>"),
    "non-canonical DER (long-form length)": securitylabel(
        f"<label>{ess(base64.b64encode(bytes([0x31, 0x81]) + base64.b64decode(CLEAN)[1:]).decode())}</label>"),
    "equivalent under a policy nobody defines": securitylabel(
        f"<label>{ess(CLEAN)}</label><equivalentlabel>{ess(ess_label('2.999.77', 1))}</equivalentlabel>"),
    "equivalent above the label": securitylabel(
        f"<label>{ess(CLEAN)}</label><equivalentlabel>{ess(ess_label(NATION_A, 4))}</equivalentlabel>"),
    "extra element in a STANAG 4774 label": securitylabel(
        f"<label><ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>"
        "<PolicyIdentifier>NATION-B</PolicyIdentifier><Classification>OPEN</Classification>"
        f"<Note>{MARKER}</Note></ConfidentialityInformation></ConfidentialityLabel></label>"),
    "attribute in a STANAG 4774 label": securitylabel(
        f"<label><ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>"
        f"<PolicyIdentifier URI='{MARKER}'>NATION-B</PolicyIdentifier><Classification>OPEN</Classification>"
        "</ConfidentialityInformation></ConfidentialityLabel></label>"),
}


def test_every_readable_case_arrives_different_from_the_clean_label():
    """Each readable label of the corpus differs from the clean one as received, so leaving identical to it is a real claim."""
    clean = message_with(securitylabel(f"<label>{ess(CLEAN)}</label>")).toXml()
    arrived = {message_with(label_xml).toXml() for label_xml in READABLE.values()}
    assert clean not in arrived and len(arrived) == len(READABLE)


@pytest.mark.parametrize("label_xml", READABLE.values(), ids=READABLE.keys())
def test_a_readable_label_leaves_as_the_guards_own_encoding_of_the_judged_value(label_xml):
    """outgoing_label and the translated label are byte for byte what a clean label of the same value gives."""
    policy = release_policy()
    stanza = message_with(label_xml)
    facts = StanzaFacts.of(stanza, policy.labels)
    assert facts.label[0] == JUDGED
    leaving = policy.labels.outgoing_label(facts.stanza_label, facts.label[0]).toXml()
    clean = message_with(securitylabel(f"<label>{ess(CLEAN)}</label>"))
    clean_facts = StanzaFacts.of(clean, policy.labels)
    assert leaving == policy.labels.outgoing_label(clean_facts.stanza_label, clean_facts.label[0]).toXml()
    assert MARKER not in leaving
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("pass", "release")
    assert judgement.stanza.toXml() == policy.judge(clean, RED_TO_BLUE).stanza.toXml()
    assert MARKER not in judgement.stanza.toXml()


def test_the_label_that_leaves_is_the_canonical_der_of_the_judged_value():
    """Known answer: A RESTRICTED REL-B leaves as this DER, whatever privacy mark the sender's encoding held."""
    policy = release_policy()
    facts = StanzaFacts.of(message_with(securitylabel(f"<label>{ess(with_privacy_mark(MARKER))}</label>")), policy.labels)
    leaving = policy.labels.outgoing_label(facts.stanza_label, facts.label[0])
    written = read_stanza_label(read(f"<message from='a@b.example' to='c@d.example'>{leaving.toXml()}</message>"))
    # SET { INTEGER 2, OID 2.999.10, SET OF { SEQUENCE { [0] 2.999.10.1, [1] UTF8String "B" } } }
    expected = bytes.fromhex("3117" "020102" "060388370a" "310d" "300b" "800488370a01" "8103" "0c0142")
    assert f">{base64.b64encode(expected).decode()}</esssecuritylabel>" in leaving.toXml()
    assert written.label == facts.stanza_label.label
    assert written.equivalents == ()
    assert leaving.toXml().count("<displaymarking") == 1 and "A RESTRICTED REL B" in leaving.toXml()


@pytest.mark.parametrize("label_xml", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_label_hiding_the_marker_where_no_data_belongs_is_unreadable_and_not_released(label_xml):
    """Stray attributes, elements, text, bytes or contradicting equivalents make the label unreadable: it bounces and nothing leaves."""
    policy = release_policy()
    stanza = message_with(label_xml)
    assert StanzaFacts.of(stanza, policy.labels).label[0] is None
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("bounce", "label-unreadable")
