"""What the loader and checker refuse, and that each problem names the file, the rule id and the line."""

import pytest

from guard.core.policy import PolicyError, load_policy

from .labelled import LABELS_AND_MAPS
from .wire import LABEL_POLICIES, NATION_A, RED_TO_BLUE, compile_policy, ess_label, ess_xml, read

HEADER = """[policy]
name = "checked"
"""


def problems_of(text):
    """The problem lines a policy text is refused with."""
    with pytest.raises(PolicyError) as refused:
        compile_policy(text, "policies/checked.toml")
    return str(refused.value).splitlines()


def test_an_unknown_key_in_a_rule_is_reported_with_file_rule_and_line():
    """A misspelt key (here ``verdic``) is never ignored: file, rule id and the key's line are named."""
    text = HEADER + """
[[rules]]
id = "typo"
rev = 1
why = "misspelt"
verdic = "pass"
verdict = "drop"
"""
    assert problems_of(text) == ["policies/checked.toml:8: rule typo: unknown key 'verdic'"]


def test_unknown_keys_at_top_level_and_in_policy_are_reported():
    """Unknown sections and unknown [policy] keys are refused, naming where they are."""
    text = """[policy]
name = "checked"
defualt = "pass"

[rulez]
x = 1
"""
    found = problems_of(text)
    assert any(line.startswith("policies/checked.toml: top level: unknown key 'rulez'") for line in found)
    assert any(line.startswith("policies/checked.toml:1: [policy]: unknown key 'defualt'") for line in found)


def test_an_unknown_set_name_is_reported_with_its_line():
    """A ``$name`` that no [sets] table declares is refused at the line that uses it."""
    text = HEADER + """[sets.domains]
blue = ["blue.example"]

[[rules]]
id = "wrong-set"
rev = 1
why = "refers to a set that does not exist"
to_domain = "$bleu"
verdict = "pass"
"""
    assert problems_of(text) == ["policies/checked.toml:10: rule wrong-set: unknown domains set '$bleu'"]


def test_a_rule_shadowed_by_an_earlier_rule_is_reported():
    """A rule that an earlier, broader rule always decides first is unreachable, and the report says which rule shadows it."""
    text = HEADER + """
[[rules]]
id = "all-messages"
rev = 1
why = "drop messages"
kind = "message"
verdict = "drop"

[[rules]]
id = "chat-messages"
rev = 1
why = "never reached"
kind = "message"
type = "chat"
verdict = "pass"
"""
    assert problems_of(text) == [
        "policies/checked.toml:11: rule chat-messages: unreachable: rule all-messages (line 4) always decides first"]


def test_a_continue_rule_does_not_shadow_later_rules():
    """A ``continue`` rule only acts, so a later rule with the same conditions is still reachable (and loads)."""
    policy = compile_policy(HEADER + """
[[rules]]
id = "log"
rev = 1
why = "log"
kind = "message"
verdict = "continue"
log = "seen"

[[rules]]
id = "pass"
rev = 1
why = "pass"
kind = "message"
verdict = "pass"
""")
    assert [rule.id for rule in policy.rules] == ["log", "pass"]


@pytest.mark.parametrize("conditions, reason", [
    ('kind = "iq"\ntype = "chat"', "type ['chat'] never occurs on ['iq']"),
    ('larger_than = 100\nsmaller_than = 50', "larger_than 100 and smaller_than 50 leave no size"),
    ('kind = "message"\nnot = { kind = "message" }', "kind and not.kind contradict"),
    ('payload_present = "jabber:x:oob"\npayload_absent = "jabber:x:oob"', "are all in payload_absent"),
])
def test_conditions_that_can_never_match_are_reported(conditions, reason):
    """A rule whose conditions contradict each other is refused as one that can never match."""
    text = HEADER + f"""
[[rules]]
id = "never"
rev = 1
why = "contradiction"
{conditions}
verdict = "pass"
"""
    found = problems_of(text)
    assert len(found) == 1
    assert found[0].startswith("policies/checked.toml:4: rule never: can never match: ")
    assert reason in found[0]


@pytest.mark.parametrize("rule, message", [
    ('id = "x"\nrev = 1\nverdict = "pass"', "why is required"),
    ('id = "x"\nwhy = "w"\nverdict = "pass"', "rev is required"),
    ('rev = 1\nwhy = "w"\nverdict = "pass"', "id is required"),
    ('id = "x"\nrev = 1\nwhy = "w"\nverdict = "allow"', "verdict must be one of"),
    ('id = "x"\nrev = 1\nwhy = "w"\nverdict = "bounce"\ncondition = "go-away"', "not an RFC 6120 stanza error condition"),
    ('id = "x"\nrev = 1\nwhy = "w"\nverdict = "fold"\nfold = "nowhere"', "unknown folding profile 'nowhere'"),
    ('id = "x"\nrev = 1\nwhy = "w"\nverdict = "translate"\ntranslate = "nowhere"', "unknown translation 'nowhere'"),
    ('id = "x"\nrev = 1\nwhy = "w"\nkind = "mesage"\nverdict = "pass"', "unknown kind 'mesage'"),
    ('id = "x"\nrev = 1\nwhy = "w"\nbody_matches = "(unclosed"\nverdict = "pass"', "bad regular expression"),
    ('id = "x"\nrev = 1\nwhy = "w"\nlabel_valid = true\nverdict = "pass"', "needs label policies"),
    ('id = "x"\nrev = 1\nwhy = "w"\nnot = { colour = "red" }\nverdict = "pass"', "unknown condition not.colour"),
    ('id = "x"\nrev = 1\nwhy = "w"\nverdict = "continue"', "does nothing"),
])
def test_badly_written_rules_are_refused(rule, message):
    """Missing id/rev/why, unknown verdicts, conditions, profiles and maps are all refused, never guessed."""
    found = problems_of(HEADER + "\n[[rules]]\n" + rule + "\n")
    assert any(message in line for line in found), found
    assert all(line.startswith("policies/checked.toml") for line in found)


def test_two_rules_with_one_id_are_refused():
    """Rule ids are stable names cited in audit records, so each is used once."""
    rule = '\n[[rules]]\nid = "same"\nrev = 1\nwhy = "w"\nkind = "{}"\nverdict = "pass"\n'
    found = problems_of(HEADER + rule.format("message") + rule.format("presence"))
    assert any("rule same: id already used by rule #1" in line for line in found)


def test_load_policy_names_the_file_when_it_cannot_be_read(tmp_path):
    """A missing file is a PolicyError naming it, not an OSError."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(PolicyError, match="missing.toml: file: cannot read"):
        load_policy(missing)


def test_load_policy_refuses_broken_toml_naming_the_file(tmp_path):
    """TOML that does not parse is refused with the file name and the parser's position."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[policy\nname = 1\n")
    with pytest.raises(PolicyError, match="broken.toml: toml: "):
        load_policy(broken)


def test_load_policy_reads_a_good_file(tmp_path):
    """A valid file loads into a policy whose rules keep their ids, revisions and lines."""
    good = tmp_path / "good.toml"
    good.write_text(HEADER + '\n[[rules]]\nid = "r1"\nrev = 4\nwhy = "w"\nverdict = "pass"\n')
    policy = load_policy(good)
    assert [(r.id, r.rev, r.line) for r in policy.rules] == [("r1", 4, 4)]


def test_a_rule_for_one_domain_shadowed_by_a_rule_for_several_is_reported():
    """Filing rules by domain for speed still finds a later rule whose domains an earlier rule already covers."""
    text = HEADER + """
[[rules]]
id = "block-two"
rev = 1
why = "block two peers"
to_domain = ["a.example", "b.example"]
verdict = "drop"

[[rules]]
id = "other"
rev = 1
why = "another peer"
to_domain = "c.example"
verdict = "pass"

[[rules]]
id = "b-chat"
rev = 1
why = "never reached"
kind = "message"
to_domain = "b.example"
verdict = "pass"
"""
    assert problems_of(text) == [
        "policies/checked.toml:18: rule b-chat: unreachable: rule block-two (line 4) always decides first"]


def test_a_rule_for_all_domains_shadows_a_rule_for_one():
    """A rule without domain conditions shadows a later, narrower rule for a single domain."""
    text = HEADER + """
[[rules]]
id = "all-presence"
rev = 1
why = "presence stays home"
kind = "presence"
verdict = "drop"

[[rules]]
id = "presence-from-host"
rev = 1
why = "never reached"
kind = "presence"
from_domain = "h.red.example"
verdict = "pass"
"""
    assert problems_of(text)[0].startswith("policies/checked.toml:11: rule presence-from-host: unreachable: rule all-presence")


@pytest.mark.parametrize("change, message", [
    (('{ name = "RESTRICTED", ess = 2,', '{ name = "RESTRICTED", ess = 1,'), "ESS classification 1 stands for both UNCLASSIFIED and RESTRICTED"),
    (('stanag = "PROTECTED"', 'stanag = "OPEN"'), "STANAG 4774 classification 'OPEN' stands for both OPEN and PROTECTED"),
    (('stanag_id = "NATION-B"', 'stanag_id = "NATION-A"'), "label policy nation-b: has the same identifier as label policy nation-a"),
])
def test_label_policies_that_could_read_a_label_two_ways_are_refused(change, message):
    """One wire value must mean one thing: duplicate identifiers or encodings are refused."""
    text = HEADER + LABEL_POLICIES.replace(*change)
    assert any(message in line for line in problems_of(text)), problems_of(text)


def test_an_operator_can_write_a_label_rule_for_errors():
    """Errors are judged like any stanza, so a label condition on errors only is a rule that can match, not an impossible one."""
    policy = compile_policy(HEADER + LABELS_AND_MAPS + """
[[rules]]
id = "secret-errors-stay"
rev = 1
why = "an error is as secret as its label"
type = "error"
label_releasable = false
verdict = "drop"
""")
    error = read(f"<iq from='a@red.example' to='b@blue.example' type='error'>{ess_xml(ess_label(NATION_A, 4))}"
                 "<error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    assert policy.judge(error, RED_TO_BLUE).rule_id == "secret-errors-stay"
