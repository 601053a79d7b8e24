"""
Labels are read strictly: ESS labels must be canonical DER (they encode back
to exactly the bytes received), STANAG 4774 labels and ``<securitylabel/>``
hold only the elements and attributes their format defines, each once, and
both are bounded.  A label read any other way is unreadable and never released.
"""

import base64

import pytest

from guard.core.policy.labels import (
    MAX_EQUIVALENT_LABELS, MAX_SECURITYLABEL_BYTES, SecurityLabel, WireLabel, read_stanza_label,
)

from .labelled import release_policy
from .wire import A_CRYPTO, A_REL_B, NATION_A, RED_TO_BLUE, ess_label, ess_xml, read, stanag_xml, utf8_der

STANAG = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"

# DER pieces, written out by hand so that the tests do not depend on the encoder under test.
POLICY_OID = bytes.fromhex("060388370a")  # OBJECT IDENTIFIER 2.999.10 (nation A)
UNCLASSIFIED = bytes.fromhex("020101")  # INTEGER 1
RESTRICTED = bytes.fromhex("020102")  # INTEGER 2
SECRET = bytes.fromhex("020104")  # INTEGER 4


def der_set(*members, length=None):
    """A DER SET with ``members`` in the order given (short-form length unless ``length`` is given)."""
    body = b"".join(members)
    return b"\x31" + (length if length is not None else bytes([len(body)])) + body


def b64(der):
    return base64.b64encode(der).decode("ascii")


def message_with(label_xml, to="bob@blue.example"):
    """A chat message from red to ``to`` carrying ``label_xml``."""
    return read(f"<message from='alice@red.example/pc' to='{to}' type='chat'><body>hi</body>{label_xml}</message>")


def judged(label_xml):
    """(verdict, rule id) of the release policy on a message carrying ``label_xml``."""
    judgement = release_policy().judge(message_with(label_xml), RED_TO_BLUE)
    return judgement.verdict.value, judgement.rule_id


def test_canonical_der_written_by_hand_is_read():
    """SET{INTEGER 1, OID} is canonical DER (members sorted by tag): it is read as nation A UNCLASSIFIED and released."""
    canonical = der_set(UNCLASSIFIED, POLICY_OID)
    assert b64(canonical) == ess_label(NATION_A, 1)
    assert read_stanza_label(message_with(ess_xml(b64(canonical)))).label == WireLabel("ess", NATION_A, "1")
    assert judged(ess_xml(b64(canonical))) == ("pass", "release")


@pytest.mark.parametrize("der", [
    pytest.param(der_set(POLICY_OID, SECRET, UNCLASSIFIED), id="duplicate-classification-last-wins"),
    pytest.param(der_set(SECRET, UNCLASSIFIED, POLICY_OID), id="duplicate-classification-sorted"),
    pytest.param(der_set(POLICY_OID, UNCLASSIFIED), id="unsorted-set"),
    pytest.param(der_set(UNCLASSIFIED, POLICY_OID, length=b"\x81\x08"), id="long-form-length"),
    pytest.param(der_set(bytes.fromhex("02020001"), POLICY_OID), id="padded-integer"),
    pytest.param(der_set(UNCLASSIFIED, bytes.fromhex("06048088370a")), id="padded-oid-arc"),
])
def test_a_label_that_is_not_canonical_der_is_unreadable_and_never_released(der):
    """pyasn1 reads these as UNCLASSIFIED, a strict consumer may not: a label that does not re-encode to the bytes received is unreadable."""
    marked = read_stanza_label(message_with(ess_xml(b64(der))))
    assert marked.label is None
    assert "canonical DER" in marked.problem or "not DER" in marked.problem
    assert judged(ess_xml(b64(der))) == ("bounce", "label-unreadable")


def test_base64_with_non_zero_padding_bits_is_unreadable():
    """Two base64 texts for the same DER (stray bits in the last character) are not both accepted: only the canonical one is."""
    canonical = ess_label(NATION_A, 1)
    assert canonical.endswith("Cg==")
    stray_bits = canonical[:-3] + "h=="
    assert base64.b64decode(stray_bits) == base64.b64decode(canonical)
    marked = read_stanza_label(message_with(ess_xml(stray_bits)))
    assert (marked.label, marked.problem) == (None, "ESS label is not canonical base64")
    assert judged(ess_xml(stray_bits)) == ("bounce", "label-unreadable")


def test_a_category_repeated_in_the_set_is_unreadable():
    """DER allows equal SET OF members; a label naming the same category twice is still refused rather than folded into one."""
    category = bytes.fromhex("300b800488370a0181030c0142")  # [0] 2.999.10.1, [1] UTF8String "B"
    categories = b"\x31" + bytes([2 * len(category)]) + category + category
    der = der_set(RESTRICTED, POLICY_OID, categories)
    marked = read_stanza_label(message_with(ess_xml(b64(der))))
    assert (marked.label, marked.problem) == (None, "ESS category repeated")


def test_canonical_categories_are_read_in_any_order_they_were_built():
    """pyasn1 sorts SET OF categories when encoding: a label built with CRYPTO first still reads as both categories."""
    built = ess_label(NATION_A, 2, [(A_CRYPTO[0], utf8_der(A_CRYPTO[1])), (A_REL_B[0], utf8_der(A_REL_B[1]))])
    marked = read_stanza_label(message_with(ess_xml(built)))
    assert marked.problem is None
    assert release_policy().labels.meaning(marked.label, "red.example") == SecurityLabel(
        "nation-a", "RESTRICTED", frozenset({"REL-B", "CRYPTO"}))


UNCLASSIFIED_B64 = ess_label(NATION_A, 1)
ESS_INNER = f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{UNCLASSIFIED_B64}</esssecuritylabel>"


def securitylabel(inner, attributes=""):
    return f"<securitylabel xmlns='urn:xmpp:sec-label:0'{attributes}>{inner}</securitylabel>"


@pytest.mark.parametrize("label_xml, problem", [
    (securitylabel(f"<label>{ESS_INNER}</label>", " note='x'"), "unexpected attribute on securitylabel"),
    (securitylabel(f"<label note='x'>{ESS_INNER}</label>"), "unexpected attribute on label"),
    (securitylabel(f"<label xmlns:p='urn:p' p:note='x'>{ESS_INNER}</label>"), "unexpected attribute on label"),
    (securitylabel(f"<displaymarking note='x'>A</displaymarking><label>{ESS_INNER}</label>"),
     "unexpected attribute on displaymarking"),
    (securitylabel(f"<displaymarking>A</displaymarking><displaymarking>B</displaymarking><label>{ESS_INNER}</label>"),
     "more than one displaymarking"),
    (securitylabel(f"<displaymarking>A<b>x</b></displaymarking><label>{ESS_INNER}</label>"),
     "elements inside displaymarking"),
    (securitylabel(f"x<label>{ESS_INNER}</label>"), "text inside securitylabel"),
    (securitylabel(f"<label>{ESS_INNER}</label><note>x</note>"), "unexpected element inside securitylabel"),
    (securitylabel(f"<label>{ESS_INNER}</label><x xmlns='urn:example'/>"), "unexpected element inside securitylabel"),
    (securitylabel(f"<label>x{ESS_INNER}</label>"), "text inside label"),
    (securitylabel(f"<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0' n='1'>{UNCLASSIFIED_B64}"
                   "</esssecuritylabel></label>"), "unexpected attribute on esssecuritylabel"),
    (securitylabel(f"<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{UNCLASSIFIED_B64}<x/>"
                   "</esssecuritylabel></label>"), "elements inside esssecuritylabel"),
    (securitylabel(f"<label>{ESS_INNER}</label><equivalentlabel/>"), "empty equivalentlabel"),
    (securitylabel(f"<label>{ESS_INNER}</label><equivalentlabel>x{ESS_INNER}</equivalentlabel>"),
     "text inside equivalentlabel"),
    (securitylabel(f"<label>{ESS_INNER}</label>" + f"<equivalentlabel>{ESS_INNER}</equivalentlabel>" * 5),
     "more than 4 equivalentlabel elements"),
])
def test_anything_but_the_xep_0258_parts_makes_a_securitylabel_unreadable(label_xml, problem):
    """Only one optional displaymarking (text, fgcolor/bgcolor), one label and equivalentlabels, without attributes or stray text, are a readable label."""
    marked = read_stanza_label(message_with(label_xml))
    assert (marked.label, marked.problem) == (None, problem)
    assert judged(label_xml) == ("bounce", "label-unreadable")


def test_the_xep_0258_parts_with_white_space_and_colours_are_readable():
    """Indentation between elements, a coloured displaymarking and equivalents up to the limit are a readable label."""
    label_xml = securitylabel(
        "\n  <displaymarking fgcolor='black' bgcolor='yellow'>A UNCLASSIFIED</displaymarking>\n"
        f"  <label>\n    {ESS_INNER}\n  </label>\n"
        + f"  <equivalentlabel>{ESS_INNER}</equivalentlabel>\n" * MAX_EQUIVALENT_LABELS)
    marked = read_stanza_label(message_with(label_xml))
    assert marked.problem is None
    assert marked.equivalents == (marked.label,) * MAX_EQUIVALENT_LABELS
    assert judged(label_xml) == ("pass", "release")


def test_a_securitylabel_over_its_byte_limit_is_unreadable():
    """The names, attributes and text inside one securitylabel are bounded in bytes: one byte over and the label is unreadable."""
    overhead = len("securitylabel") + len("displaymarking") + len("label") + len("esssecuritylabel") + len(UNCLASSIFIED_B64)
    room = MAX_SECURITYLABEL_BYTES - overhead

    def with_marking(size):
        return securitylabel(f"<displaymarking>{'é' * (size // 2)}{'x' * (size % 2)}</displaymarking>"
                             f"<label>{ESS_INNER}</label>")

    assert read_stanza_label(message_with(with_marking(room))).problem is None
    marked = read_stanza_label(message_with(with_marking(room + 1)))
    assert marked.problem == f"securitylabel larger than {MAX_SECURITYLABEL_BYTES} bytes"
    assert judged(with_marking(room + 1)) == ("bounce", "label-unreadable")


def stanag(information, root="ConfidentialityLabel"):
    """A securitylabel holding a STANAG 4774 label with ``information`` as its ConfidentialityInformation content."""
    if root == "ConfidentialityLabel":
        body = f"<ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>{information}" \
               "</ConfidentialityInformation></ConfidentialityLabel>"
    else:
        body = f"<{root} xmlns='{STANAG}'>{information}</{root}>"
    return securitylabel(f"<label>{body}</label>")


OPEN = "<PolicyIdentifier>NATION-B</PolicyIdentifier><Classification>OPEN</Classification>"
REL_A = "<Category TagName='Releasable to' Type='PERMISSIVE'><GenericValue>A</GenericValue></Category>"


@pytest.mark.parametrize("label_xml, problem", [
    (stanag(OPEN + "<Note>x</Note>"), "unexpected element inside STANAG 4774 ConfidentialityInformation"),
    (stanag(OPEN + "<x xmlns='urn:example'/>"), "unexpected element inside STANAG 4774 ConfidentialityInformation"),
    (stanag(OPEN + "text"), "text inside ConfidentialityInformation"),
    (stanag(OPEN + "<PolicyIdentifier>NATION-B</PolicyIdentifier>"), "needs exactly one PolicyIdentifier"),
    (stanag(OPEN + "<Classification>OPEN</Classification>"), "needs exactly one Classification"),
    (stanag("<PolicyIdentifier URI='urn:x'>NATION-B</PolicyIdentifier><Classification>OPEN</Classification>"),
     "unexpected attribute on PolicyIdentifier"),
    (stanag("<PolicyIdentifier>NATION-B</PolicyIdentifier><Classification>OPEN<b/></Classification>"),
     "elements inside Classification"),
    (stanag(OPEN + REL_A + REL_A), "STANAG 4774 Category repeated"),
    (stanag(OPEN + "<Category TagName='Releasable to'><GenericValue>A</GenericValue>"
            "<GenericValue>A</GenericValue></Category>"), "STANAG 4774 GenericValue repeated"),
    (stanag(OPEN + "<Category TagName='Releasable to' Note='x'><GenericValue>A</GenericValue></Category>"),
     "unexpected attribute on Category"),
    (stanag(OPEN + "<Category TagName='Releasable to' Type='SOMETIMES'><GenericValue>A</GenericValue></Category>"),
     "STANAG 4774 Category of unknown Type"),
    (stanag(OPEN + "<Category TagName='Releasable to'>x<GenericValue>A</GenericValue></Category>"),
     "text inside Category"),
    (stanag(OPEN + "<Category TagName='Releasable to'><GenericValue n='1'>A</GenericValue></Category>"),
     "unexpected attribute on GenericValue"),
    (stanag(OPEN + "<Category TagName='Releasable to'><GenericValue> </GenericValue></Category>"),
     "GenericValue must not be empty"),
    (stanag(OPEN + "<Category TagName=' Releasable to'><GenericValue>A</GenericValue></Category>"),
     "STANAG 4774 Category without a TagName"),
    (stanag(f"<ConfidentialityInformation>{OPEN}</ConfidentialityInformation>", root="Label"),
     "unknown STANAG 4774 element"),
    (securitylabel(f"<label><ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>{OPEN}"
                   f"</ConfidentialityInformation><ConfidentialityInformation>{OPEN}"
                   "</ConfidentialityInformation></ConfidentialityLabel></label>"),
     "needs exactly one ConfidentialityInformation"),
    (securitylabel(f"<label><ConfidentialityLabel xmlns='{STANAG}' Version='1'><ConfidentialityInformation>{OPEN}"
                   "</ConfidentialityInformation></ConfidentialityLabel></label>"),
     "unexpected attribute on ConfidentialityLabel"),
    (securitylabel(f"<label><ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>{OPEN}"
                   "</ConfidentialityInformation><CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime>"
                   "</ConfidentialityLabel></label>"),
     "unexpected element inside STANAG 4774 ConfidentialityLabel"),
])
def test_a_stanag_4774_label_with_anything_unknown_or_repeated_is_unreadable(label_xml, problem):
    """Unknown elements or attributes, repeated parts and text where none belongs make a STANAG 4774 label unreadable."""
    marked = read_stanza_label(message_with(label_xml))
    assert marked.label is None
    assert problem in marked.problem
    assert judged(label_xml) == ("bounce", "label-unreadable")


def test_a_strict_stanag_4774_label_with_white_space_is_read():
    """Indentation between elements and around values is XML white space, not content: the label is read."""
    label_xml = stanag(f"\n  <PolicyIdentifier> NATION-B </PolicyIdentifier>\n  <Classification>OPEN</Classification>\n"
                       f"  {REL_A}\n")
    assert read_stanza_label(message_with(label_xml)).label == WireLabel(
        "stanag4774", "NATION-B", "OPEN", frozenset({("stanag4774", "Releasable to", "A")}))
    assert read_stanza_label(message_with(stanag_xml("NATION-B", "OPEN"))).problem is None


def test_der_with_an_eight_byte_long_form_length_is_unreadable_not_a_crash():
    """pyasn1 raises OverflowError (not PyAsn1Error) on a huge long-form length: the label is unreadable all the same."""
    import base64

    from guard.core.policy.labels import LabelFormatError, read_ess

    der = (b'1&1\r0\x0b\x80\x04\x887\n\x01\x81\x03\x0c\x01B\x06\x03\x887\n\x02\x01\x011\r0\x0b'
           b'\x80\x88\x80\n\x01\x81\x03\x0c\x01B')
    with pytest.raises(LabelFormatError):
        read_ess(base64.b64encode(der).decode("ascii"))


def test_a_securitylabel_over_its_byte_limit_is_unreadable_when_the_wire_size_is_known():
    """With the stanza's wire size given (as the stream parser gives it) the label's bytes are still bounded: a stanza longer than the budget has its label counted, one byte over is unreadable."""
    overhead = len("securitylabel") + len("displaymarking") + len("label") + len("esssecuritylabel") + len(UNCLASSIFIED_B64)
    room = MAX_SECURITYLABEL_BYTES - overhead
    for size, problem in ((room, None), (room + 1, f"securitylabel larger than {MAX_SECURITYLABEL_BYTES} bytes")):
        stanza = message_with(securitylabel(f"<displaymarking>{'x' * size}</displaymarking><label>{ESS_INNER}</label>"))
        wire_size = len(stanza.toXml().encode("utf-8"))
        assert wire_size > MAX_SECURITYLABEL_BYTES
        assert read_stanza_label(stanza, wire_size).problem == problem


def test_a_stanza_within_the_label_budget_reads_its_label_as_without_a_size():
    """A stanza no longer than the label budget cannot hold a label over it: read with its wire size it reads as without."""
    stanza = message_with(securitylabel(f"<displaymarking>SECRET</displaymarking><label>{ESS_INNER}</label>"))
    wire_size = len(stanza.toXml().encode("utf-8"))
    assert wire_size <= MAX_SECURITYLABEL_BYTES
    assert read_stanza_label(stanza, wire_size) == read_stanza_label(stanza)
    assert read_stanza_label(stanza).problem is None
