"""
Equivalent labels are judged: each must have meaning under the configured
label policies and agree with the label, and each must be releasable; the
sender's equivalents never leave (the guard writes the label it judged).
"""

from guard.core.policy.facts import StanzaFacts
from guard.core.policy.labels import SecurityLabel, read_stanza_label

from .labelled import LABELS_AND_MAPS, RELEASE_RULES, release_policy
from .wire import A_CRYPTO, A_REL_B, NATION_A, RED_TO_BLUE, compile_policy, ess_label, read, utf8_der

A_RESTRICTED_REL_B = ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der(A_REL_B[1]))])
A_SECRET_CRYPTO = ess_label(NATION_A, 4, [(A_CRYPTO[0], utf8_der(A_CRYPTO[1]))])
STANAG = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"


def ess(b64):
    return f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{b64}</esssecuritylabel>"


def stanag(policy, classification):
    return (f"<ConfidentialityLabel xmlns='{STANAG}'><ConfidentialityInformation>"
            f"<PolicyIdentifier>{policy}</PolicyIdentifier><Classification>{classification}</Classification>"
            "</ConfidentialityInformation></ConfidentialityLabel>")


def labelled(label, *equivalents, to="bob@blue.example"):
    """A chat message from red carrying ``label`` (format element XML) and ``equivalents``."""
    more = "".join(f"<equivalentlabel>{e}</equivalentlabel>" for e in equivalents)
    return read(f"<message from='alice@red.example/pc' to='{to}' type='chat'><body>hi</body>"
                f"<securitylabel xmlns='urn:xmpp:sec-label:0'><displaymarking>A RESTRICTED REL B</displaymarking>"
                f"<label>{label}</label>{more}</securitylabel></message>")


def facts_of(stanza, policy=None):
    return StanzaFacts.of(stanza, (policy or release_policy()).labels)


def test_an_equivalent_top_secret_crypto_under_the_same_policy_is_not_released():
    """The issue's case: RESTRICTED REL-B with an equivalent SECRET CRYPTO under the same policy is unreadable, never released."""
    stanza = labelled(ess(A_RESTRICTED_REL_B), ess(A_SECRET_CRYPTO))
    label, why = facts_of(stanza).label
    assert label is None
    assert "equivalent label nation-a:SECRET/CRYPTO contradicts label nation-a:RESTRICTED/REL-B" in why
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("bounce", "label-unreadable")


def test_a_contradicting_equivalent_does_not_satisfy_a_rule_on_the_labels_classification():
    """A rule passing what is at most RESTRICTED does not pass a RESTRICTED label whose equivalent says SECRET."""
    policy = compile_policy('[policy]\nname = "at-most"\ndefault = "drop"\n' + LABELS_AND_MAPS + """
[[rules]]
id = "restricted-or-below"
rev = 1
why = "rank rule"
kind = "message"
label_at_most = "RESTRICTED"
verdict = "pass"
""")
    assert policy.judge(labelled(ess(A_RESTRICTED_REL_B)), RED_TO_BLUE).rule_id == "restricted-or-below"
    assert policy.judge(labelled(ess(A_RESTRICTED_REL_B), ess(A_SECRET_CRYPTO)), RED_TO_BLUE).rule_id == "default"


def test_an_equivalent_under_an_unknown_policy_makes_the_label_unreadable():
    """An equivalent label the configured label policies do not define follows the unreadable-label rule."""
    for equivalent in (ess(ess_label("2.999.77", 1)), ess(ess_label(NATION_A, 3)), stanag("NATION-B", "TOP")):
        stanza = labelled(ess(A_RESTRICTED_REL_B), equivalent)
        label, why = facts_of(stanza).label
        assert label is None and why.startswith("equivalent label: ")
        assert release_policy().judge(stanza, RED_TO_BLUE).rule_id == "label-unreadable"


def test_an_equivalent_above_the_translated_label_contradicts_it():
    """A's RESTRICTED maps to B's PROTECTED: an equivalent B CLASSIFIED says more than the label and makes it unreadable."""
    stanza = labelled(ess(A_RESTRICTED_REL_B), stanag("NATION-B", "CLASSIFIED"))
    label, why = facts_of(stanza).label
    assert label is None
    assert "contradicts" in why and "CLASSIFIED is above PROTECTED" in why


def test_an_equivalent_placed_through_a_map_into_the_labels_policy_must_not_be_above_it():
    """A B OPEN label with an equivalent A RESTRICTED (which maps to B PROTECTED) is a contradiction; A UNCLASSIFIED is not."""
    above = facts_of(labelled(stanag("NATION-B", "OPEN"), ess(ess_label(NATION_A, 2)))).label
    assert above[0] is None and "PROTECTED is above OPEN" in above[1]
    agreeing = facts_of(labelled(stanag("NATION-B", "OPEN"), ess(ess_label(NATION_A, 1)))).label
    assert agreeing == (SecurityLabel("nation-b", "OPEN"), "label nation-b:OPEN (equivalents nation-a:UNCLASSIFIED)")


def test_an_equivalent_the_gateway_is_not_cleared_for_makes_the_stanza_not_releasable():
    """B PROTECTED agrees with A RESTRICTED REL-B, but the gateway is cleared under nation A only: not releasable."""
    stanza = labelled(ess(A_RESTRICTED_REL_B), stanag("NATION-B", "PROTECTED"))
    facts = facts_of(stanza)
    assert facts.label[0] == SecurityLabel("nation-a", "RESTRICTED", frozenset({"REL-B"}))
    ok, why = facts.releasable
    assert not ok
    assert why == "equivalent label nation-b:PROTECTED: gateway: nation-b:PROTECTED has no equivalent under nation-a"
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("bounce", "not-releasable")


def test_every_label_releasable_releases_and_the_senders_equivalent_does_not_leave():
    """With the gateway also cleared under nation B, label and equivalent are both releasable; what leaves holds only the guard's label."""
    gateway_b = LABELS_AND_MAPS.replace(
        'gateway_clearance = { policy = "nation-a", classification = "RESTRICTED", categories = ["REL-B"] }',
        'gateway_clearance = [{ policy = "nation-a", classification = "RESTRICTED", categories = ["REL-B"] },'
        ' { policy = "nation-b", classification = "PROTECTED" }]')
    assert gateway_b != LABELS_AND_MAPS
    policy = compile_policy('[policy]\nname = "release-b"\n' + gateway_b + RELEASE_RULES)
    stanza = labelled(ess(A_RESTRICTED_REL_B), stanag("NATION-B", "PROTECTED"))
    assert facts_of(stanza, policy).releasable[0] is True
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict.value, judgement.rule_id) == ("pass", "release")
    leaving = read_stanza_label(read(judgement.stanza.toXml()))
    assert leaving.equivalents == ()
    assert leaving.label.policy_identifier == "NATION-B"


def test_one_label_not_releasable_to_the_receiver_refuses_them_all():
    """Each label is judged for the receiver: one not releasable refuses the lot and names that label; no label at all is not releasable."""
    labels = release_policy().labels
    unclassified = SecurityLabel("nation-a", "UNCLASSIFIED")
    restricted = SecurityLabel("nation-a", "RESTRICTED", frozenset({"REL-B"}))
    assert labels.all_releasable((unclassified,), "muc.blue.example")[0] is True
    ok, why = labels.all_releasable((unclassified, restricted), "muc.blue.example")
    assert (ok, why) == (False, "equivalent label nation-a:RESTRICTED/REL-B: "
                                "muc.blue.example: RESTRICTED is above UNCLASSIFIED")
    assert labels.all_releasable((), "muc.blue.example") == (False, "no label")


def test_the_guards_own_translated_label_with_its_equivalent_reads_back_as_consistent():
    """What a keep_original translation writes (B's label, A's original as equivalent) is itself a readable, consistent label."""
    from .labelled import translate_everything

    judgement = translate_everything("a-to-b-keeping").judge(labelled(ess(ess_label(NATION_A, 2))), RED_TO_BLUE)
    back = read(judgement.stanza.toXml())
    label, why = facts_of(back).label
    assert label == SecurityLabel("nation-b", "PROTECTED")
    assert why == "label nation-b:PROTECTED (equivalents nation-a:RESTRICTED)"
