"""Translation between two nations' label policies: what leaves, and that a label with no mapping does not pass."""

from guard.core.policy.labels import read_stanza_label, WireLabel

from .labelled import release_policy, translate_everything
from .wire import A_CRYPTO, A_REL_B, NATION_A, RED_TO_BLUE, ess_label, ess_xml, read, stanag_xml, utf8_der

STANAG = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"


def message_with(label_xml):
    """A chat message from red to blue carrying ``label_xml``."""
    return read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='chat'><body>hi</body>{label_xml}</message>")


def test_a_restricted_ess_label_leaves_as_nation_b_protected_in_stanag_4774():
    """A's RESTRICTED REL-B (ESS) is rewritten to B's PROTECTED (STANAG 4774), marking and all; A's own label is gone."""
    incoming = message_with(ess_xml(ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))]), marking="A RESTRICTED REL B"))
    judgement = release_policy().judge(incoming, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id, judgement.actions) == ("pass", "release", ("translate:a-to-b",))
    leaving = judgement.stanza
    assert read_stanza_label(leaving).label == WireLabel("stanag4774", "NATION-B", "PROTECTED", frozenset())
    xml = leaving.toXml()
    assert "<displaymarking>B PROTECTED</displaymarking>" in xml
    assert "A RESTRICTED" not in xml and "esssecuritylabel" not in xml
    assert f"xmlns='{STANAG}'" in xml and "<body>hi</body>" in xml


def test_the_emitted_label_reads_back_on_the_far_side():
    """What the guard writes is a label the guard itself (and so the far side's policy) can read and place."""
    judgement = release_policy().judge(message_with(ess_xml(ess_label(NATION_A, 1))), RED_TO_BLUE)
    leaving = read(judgement.stanza.toXml())
    marked = read_stanza_label(leaving)
    label = release_policy().labels.meaning(marked.label, "red.example")
    assert (label.policy, label.classification) == ("nation-b", "OPEN")


def test_keep_original_carries_the_source_label_as_an_equivalent():
    """With keep_original the far side also gets A's label as <equivalentlabel/>, re-encoded by A's policy."""
    judgement = translate_everything("a-to-b-keeping").judge(message_with(ess_xml(ess_label(NATION_A, 2))), RED_TO_BLUE)
    marked = read_stanza_label(read(judgement.stanza.toXml()))
    assert marked.label.policy_identifier == "NATION-B"
    assert marked.equivalents == (WireLabel("ess", NATION_A, "2", frozenset()),)


def test_a_classification_with_no_mapping_does_not_pass():
    """SECRET has no equivalent in nation B: translating it bounces, whatever the rule's verdict would have been."""
    judgement = translate_everything().judge(message_with(ess_xml(ess_label(NATION_A, 4))), RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id, judgement.condition) == (
        "bounce", "translate-all", "policy-violation")
    assert judgement.text == "The security label cannot be translated for the far side."
    assert "no mapping for classification SECRET" in judgement.notes[-1]


def test_a_category_with_no_mapping_does_not_pass():
    """CRYPTO has no equivalent in nation B: the label cannot be translated and the message does not pass."""
    label = ess_label(NATION_A, 2, [(A_CRYPTO[0], utf8_der(A_CRYPTO[1]))])
    judgement = translate_everything().judge(message_with(ess_xml(label)), RED_TO_BLUE)
    assert judgement.verdict.value == "bounce"
    assert "no mapping for category CRYPTO" in judgement.notes[-1]


def test_a_label_already_under_the_target_policy_does_not_pass_a_one_way_map():
    """A map from A to B does not apply to a B label: it does not pass rather than leave unchanged."""
    judgement = translate_everything().judge(message_with(stanag_xml("NATION-B", "OPEN")), RED_TO_BLUE)
    assert judgement.verdict.value == "bounce"
    assert "maps nation-a, not nation-b" in judgement.notes[-1]


def test_an_unreadable_label_does_not_pass_translation():
    """Translation needs a label with meaning: garbage in the label bounces."""
    judgement = translate_everything().judge(message_with(ess_xml("!!")), RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.condition) == ("bounce", "policy-violation")


def test_an_unlabelled_message_is_translated_from_the_senders_default():
    """An unlabelled message leaves carrying the translation of its sender's default label."""
    stanza = read("<message from='alice@red.example/pc' to='bob@blue.example'><body>x</body></message>")
    judgement = translate_everything().judge(stanza, RED_TO_BLUE)
    assert read_stanza_label(judgement.stanza).label == WireLabel("stanag4774", "NATION-B", "OPEN", frozenset())
