"""
Properties of label reading, checked with hypothesis: mutated DER is either
unreadable or read as exactly what the guard would write for that value, and
a ``<securitylabel/>`` assembled from any mix of parts either is unreadable or
leaves as the guard's own label, carrying none of the sender's text.
"""

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.core.policy.facts import StanzaFacts
from guard.core.policy.labels import NO_LABEL, LabelFormatError, LabelMeaningError, read_ess, read_stanza_label

from .labelled import release_policy
from .wire import A_CRYPTO, A_REL_B, NATION_A, RED_TO_BLUE, ess_label, read, utf8_der

POLICY = release_policy()
SEEDS = [
    base64.b64decode(ess_label(NATION_A, classification, categories))
    for classification in (1, 2, 4)
    for categories in ([], [(A_REL_B[0], utf8_der(A_REL_B[1]))],
                       [(A_REL_B[0], utf8_der(A_REL_B[1])), (A_CRYPTO[0], utf8_der(A_CRYPTO[1]))])
]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def members(der):
    """The TLVs inside a short-form DER SET (every seed is short form)."""
    body, found = der[2:], []
    while body:
        size = 2 + body[1]
        found.append(body[:size])
        body = body[size:]
    return found


def der_set(parts, long_form=False):
    body = b"".join(parts)
    return b"\x31" + (b"\x81" if long_form else b"") + bytes([len(body)]) + body


@st.composite
def mutated_der(draw):
    """A canonical label with its SET members reordered, repeated or given a long-form length, then bytes changed."""
    parts = members(draw(st.sampled_from(SEEDS)))
    parts = draw(st.permutations(parts))
    if draw(st.booleans()):
        parts = parts + [draw(st.sampled_from(parts))]
    der = bytearray(der_set(parts, long_form=draw(st.booleans())))
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.integers(0, len(der)))
        action = draw(st.sampled_from(("replace", "insert", "delete")))
        byte = draw(st.integers(0, 255))
        if action == "replace" and where < len(der):
            der[where] = byte
        elif action == "insert":
            der.insert(where, byte)
        elif where < len(der):
            del der[where]
    return bytes(der)


def guard_written_der(label):
    """The DER the guard writes for ``label`` under its policy."""
    written = POLICY.labels.outgoing_label(NO_LABEL, label)
    b64 = next(e for e in written.elements() if e.name == "label").firstChildElement()
    return base64.b64decode(str(b64))


@SETTINGS
@given(mutated_der())
def test_mutated_der_is_unreadable_or_exactly_what_the_guard_writes(der):
    """A readable ESS label with meaning, however it was reordered, repeated or lengthened, is byte for byte the guard's own encoding of its value: no second reading exists."""
    try:
        wire = read_ess(base64.b64encode(der).decode("ascii"))
    except LabelFormatError:
        return
    try:
        label = POLICY.labels.meaning(wire, "red.example")
    except LabelMeaningError:
        return
    assert guard_written_der(label) == der


MARKER = "LEAKMARK"
CLEAN_LABEL = f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{ess_label(NATION_A, 1)}</esssecuritylabel>"
PARTS = [
    f"<displaymarking>{MARKER}</displaymarking>",
    f"<displaymarking fgcolor='{MARKER}'>A</displaymarking>",
    f"<label>{CLEAN_LABEL}</label>",
    f"<label note='{MARKER}'>{CLEAN_LABEL}</label>",
    f"<label>{MARKER}</label>",
    "<label/>",
    f"<equivalentlabel>{CLEAN_LABEL}</equivalentlabel>",
    f"<equivalentlabel>{MARKER}{CLEAN_LABEL}</equivalentlabel>",
    f"<equivalentlabel><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{ess_label(NATION_A, 4)}"
    "</esssecuritylabel></equivalentlabel>",
    f"<{MARKER}/>",
    f"<x xmlns='urn:{MARKER}'/>",
    MARKER,
    "\n  ",
]


@SETTINGS
@given(st.lists(st.sampled_from(PARTS), max_size=8), st.sampled_from(["", f" a='{MARKER}'"]))
def test_any_securitylabel_is_unreadable_or_leaves_without_the_senders_text(parts, attributes):
    """Whatever parts a sender assembles, the label is unreadable or what leaves is built by the guard and holds no marker."""
    stanza = read("<message from='alice@red.example/pc' to='bob@blue.example' type='chat'><body>hi</body>"
                  f"<securitylabel xmlns='urn:xmpp:sec-label:0'{attributes}>{''.join(parts)}</securitylabel></message>")
    facts = StanzaFacts.of(stanza, POLICY.labels)
    label = facts.label[0]
    if label is None:
        assert POLICY.judge(stanza, RED_TO_BLUE).verdict.value == "bounce"
        return
    leaving = POLICY.labels.outgoing_label(facts.stanza_label, label).toXml()
    assert MARKER not in leaving
    assert read_stanza_label(read(f"<message from='a@b.example' to='c@d.example'>{leaving}</message>")).problem is None
