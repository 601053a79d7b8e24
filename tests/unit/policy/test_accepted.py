"""The accepted stanza: built once after addressing, read by the policy for kind, type, addresses and wire size."""

import pytest

from guard.core.accepted import AcceptedStanza, NotAccepted, accept, accepted_from_element
from guard.core.addressing import check_addressing
from guard.core.pipeline import AllowAll, Judgement, Verdict, judge_fail_closed
from guard.core.policy import compiled

from .labelled import LABELS_AND_MAPS
from .wire import A_REL_B, NATION_A, RED_TO_BLUE, compile_policy, ess_label, ess_xml, read, utf8_der

PAIRS = frozenset({("red.example", "blue.example")})
FRONTED = frozenset({"blue.example"})

SIZE_POLICY = compile_policy("""
[policy]
name = "size"
[[rules]]
id = "too-large"
rev = 1
why = "large stanzas stay"
larger_than = 1000
verdict = "drop"
[[rules]]
id = "messages"
rev = 1
why = "the rest passes"
kind = "message"
verdict = "pass"
keep = ["body"]
""")


def accepted(xml, size):
    stanza = read(xml)
    return accept(stanza, check_addressing(stanza, PAIRS, FRONTED), size, RED_TO_BLUE)


def test_the_accepted_value_holds_what_addressing_and_the_parser_established():
    """Kind, type (with the kind's default), both JIDs as the strict parser read them, the wire size, the pair and the direction."""
    value = accepted("<message from='Romeo@Red.Example/pc' to='juliet@blue.example'><body>hi</body></message>", 321)
    assert (value.kind, value.type, value.sender.full(), value.recipient.full(), value.size, value.pair,
            value.direction) == ("message", "normal", "romeo@red.example/pc", "juliet@blue.example", 321,
                                 ("red.example", "blue.example"), RED_TO_BLUE)


def test_size_conditions_read_the_size_the_parser_measured():
    """larger_than reads the wire size of the accepted stanza, not a re-serialisation of the tree."""
    xml = "<message from='romeo@red.example' to='juliet@blue.example'><body>hi</body></message>"
    assert SIZE_POLICY.judge_accepted(accepted(xml, 5000), RED_TO_BLUE).rule_id == "too-large"
    assert SIZE_POLICY.judge_accepted(accepted(xml, 100), RED_TO_BLUE).rule_id == "messages"


@pytest.mark.parametrize("sender", ["romeo@red.example.", "romeo@red..example", "@red.example", "romeo@red.example/"])
def test_a_stanza_judged_from_an_element_uses_the_strict_jid_parser(sender):
    """An address the strict parser refuses is refused by the policy too (guard:bad-address): there is no second, lenient parser."""
    stanza = read(f"<message from='{sender}' to='juliet@blue.example'><body>hi</body></message>")
    judgement = SIZE_POLICY.judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:bad-address")
    assert isinstance(accepted_from_element(stanza), NotAccepted)


def test_an_element_that_is_not_a_stanza_is_not_accepted():
    """Only message, presence and iq in a stanza namespace are accepted; anything else is guard:not-a-stanza."""
    refused = accepted_from_element(read("<x xmlns='urn:example' from='a@red.example' to='b@blue.example'/>"))
    assert (refused.rule, refused.text) == ("guard:not-a-stanza", "not a stanza: x")


def test_a_stanza_type_no_rfc_defines_is_dropped_before_any_rule():
    """A type RFC 6120/6121 does not define for the kind never reaches a rule: guard:unknown-type."""
    judgement = SIZE_POLICY.judge(read("<message from='romeo@red.example' to='juliet@blue.example' type='get'>"
                                       "<body>hi</body></message>"), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:unknown-type")


def test_the_judgement_carries_the_accepted_value_it_judged():
    """A rule's judgement names the accepted stanza it decided on, for the relay, bounces and the audit."""
    value = accepted("<message from='romeo@red.example' to='juliet@blue.example'><body>hi</body></message>", 90)
    assert SIZE_POLICY.judge_accepted(value, RED_TO_BLUE).accepted is value


def test_judge_fail_closed_hands_the_accepted_value_to_a_policy_that_takes_it():
    """judge_fail_closed gives judge_accepted the accepted value; a policy with only judge gets the element."""
    value = accepted("<message from='romeo@red.example' to='juliet@blue.example'><body>hi</body></message>", 90)
    seen = []

    class Recording:
        def judge_accepted(self, given, direction):
            seen.append(("judge_accepted", given))
            return Judgement.passed(given.element, "r")

    class ElementOnly:
        def judge(self, given, direction):
            seen.append(("judge", given))
            return Judgement.passed(given, "r")

    judge_fail_closed(Recording(), value.element, RED_TO_BLUE, value)
    judge_fail_closed(ElementOnly(), value.element, RED_TO_BLUE, value)
    judge_fail_closed(AllowAll(), value.element, RED_TO_BLUE, value)
    assert seen == [("judge_accepted", value), ("judge", value.element)]
    assert isinstance(value, AcceptedStanza)


def test_the_encoded_label_memory_is_bounded_in_entries_and_bytes(monkeypatch):
    """Labels encoded for release are remembered by judged value, never more entries or bytes than declared, and each use gets its own copy."""
    policy = compile_policy('[policy]\nname = "labels"\n' + LABELS_AND_MAPS + """
[[rules]]
id = "release"
rev = 1
why = "every label leaves, re-encoded"
kind = "message"
verdict = "pass"
keep = ["body"]
""")
    monkeypatch.setattr(compiled, "LABEL_CACHE_LIMIT", 2)
    monkeypatch.setattr(compiled, "LABEL_CACHE_BYTES", 700)
    labels = [ess_label(NATION_A, 1), ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))]), ess_label(NATION_A, 4)]
    leaving = []
    for label in labels * 2:
        stanza = read(f"<message from='a@red.example' to='b@blue.example'><body>x</body>{ess_xml(label)}</message>")
        leaving.append(policy.judge(stanza, RED_TO_BLUE).stanza)
        assert len(policy._label_cache) <= 2 and policy._label_cache.used <= 700
    assert policy._label_cache.used > 0
    assert [each.toXml() for each in leaving[:3]] == [each.toXml() for each in leaving[3:]]
    assert leaving[0].children[-1] is not leaving[3].children[-1]


def test_the_rule_index_memory_is_bounded_in_entries_and_bytes(monkeypatch):
    """The rules remembered per (kind, domains, type) never take more entries or bytes than declared, whatever domains a peer uses, and the judge still finds the same rule."""
    rules = "".join(f'[[rules]]\nid = "r{n}"\nrev = 1\nwhy = "w"\nkind = "message"\nbody_matches = "never{n}"\n'
                    f'verdict = "drop"\n' for n in range(50))
    policy = compile_policy('[policy]\nname = "index"\n' + rules + """
[[rules]]
id = "rest"
rev = 1
why = "the rest"
verdict = "pass"
""")
    monkeypatch.setattr(compiled, "INDEX_CACHE_BYTES", 2000)
    for n in range(40):
        sender = f"a@{'.'.join(['d' * 60] * 3)}{n}.red.example"
        judgement = policy.judge(read(f"<message from='{sender}' to='b@blue.example'/>"), RED_TO_BLUE)
        assert judgement.rule_id == "rest"
        assert policy._candidates_cache.used <= 2000
        assert sum(len(k[1]) + len(k[2]) + 8 * (len(v) + 8) for k, v in policy._candidates_cache.items()) \
            == policy._candidates_cache.used
    assert len(policy._candidates_cache) > 0
