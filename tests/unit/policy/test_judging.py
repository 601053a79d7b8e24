"""The judge never changes its input, and explain tells the operator what happened and why."""

import io
import pytest

from guard.app.policy_commands import explain_main
from guard.core.policy.explaining import describe
from guard.core.policy.elements import SealedElement

from .labelled import release_policy, translate_everything
from .test_folding import FOLDING, PRESENCE
from .wire import A_REL_B, NATION_A, RED_TO_BLUE, compile_policy, ess_label, ess_xml, read, utf8_der

LABELLED_CHAT = f"""
<message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='m1'>
  <body>meet at noon</body>
  <active xmlns='http://jabber.org/protocol/chatstates'/>
  {ess_xml(ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))]), marking="A RESTRICTED REL B")}
</message>"""

ERROR_WITH_LABEL = f"""
<message from='alice@red.example/pc' to='bob@blue.example' type='error'>
  {ess_xml(ess_label(NATION_A, 4))}<error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
</message>"""

STRIPPING = compile_policy("""
[policy]
name = "strip"
[[rules]]
id = "strip-states"
rev = 1
why = "w"
verdict = "continue"
strip = ["{http://jabber.org/protocol/chatstates}*"]
[[rules]]
id = "pass"
rev = 1
why = "w"
verdict = "pass"
""")


@pytest.mark.parametrize("policy, xml", [
    (release_policy(), LABELLED_CHAT),
    (translate_everything("a-to-b-keeping"), LABELLED_CHAT),
    (release_policy(), ERROR_WITH_LABEL),
    (compile_policy(FOLDING), LABELLED_CHAT.replace("<body>meet at noon</body>", "")),
    (compile_policy(FOLDING), PRESENCE.format(domain="muc.blue.example", show="dnd")),
    (STRIPPING, LABELLED_CHAT),
], ids=["translate", "translate-keeping", "error-unlabel", "fold-message", "fold-presence", "strip"])
def test_the_judge_never_mutates_its_input(policy, xml):
    """Translating, folding, stripping and unlabelling build a new stanza: the original is unchanged and shares nothing with it."""
    stanza = read(xml)
    before = stanza.toXml()
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert stanza.toXml() == before
    if judgement.verdict.value == "pass":
        assert judgement.stanza is not stanza
        judgement.stanza.addElement("marker")
        judgement.stanza["id"] = "changed"
        for child in judgement.stanza.elements():
            if isinstance(child, SealedElement):  # the guard's own label, shared between stanzas: it cannot change
                with pytest.raises(TypeError):
                    child.addElement("marker")
            else:
                child.addElement("marker")
        assert stanza.toXml() == before


def test_explain_names_every_rule_considered_and_why():
    """explain lists each rule with MATCH or no and the reason of each condition, the verdict, the deciding rule and the stanza as it leaves."""
    policy = release_policy()
    size = len(LABELLED_CHAT.strip().encode("utf-8"))
    text = describe(policy, policy.explain(read(LABELLED_CHAT), RED_TO_BLUE, size=size))
    lines = text.splitlines()
    assert lines[0] == "policy: release (test.toml)"
    assert f"stanza: kind message, type chat, red.example -> blue.example, {size} bytes" in lines
    assert "  [no] errors-pass rev 1 -> pass: errors leave reduced to their type and condition" in lines
    assert "        no  type chat not in ['error']" in lines
    assert "  [no] not-releasable rev 2 -> bounce: only what the gateway and the peer are cleared for leaves" in lines
    assert "  [MATCH] release rev 1 -> translate: releasable messages leave relabelled for nation B" in lines
    assert any(line.startswith("        yes releasable: gateway and blue.example cleared") for line in lines)
    assert "verdict: pass\ndecided by: release rev 1\naction: translate:a-to-b\nleaves as:\n<message " in text
    assert text.split("leaves as:\n")[1].count("<displaymarking>B PROTECTED</displaymarking>") == 1


def test_explain_of_a_bounce_shows_condition_and_text_and_no_output():
    """A bounced stanza is explained with its error condition and text, and nothing is shown leaving."""
    policy = release_policy()
    secret = LABELLED_CHAT.replace(ess_label(NATION_A, 2, [(A_REL_B[0], utf8_der("B"))]), ess_label(NATION_A, 4))
    text = describe(policy, policy.explain(read(secret), RED_TO_BLUE))
    assert "verdict: bounce\ndecided by: not-releasable rev 2\nerror condition: policy-violation\n" in text
    assert "leaves as:" not in text


def test_explain_of_a_stanza_refused_before_the_rules_says_so():
    """Two labels are refused by XEP-0258 before any rule; explain says no rule was considered."""
    policy = release_policy()
    label = ess_xml(ess_label(NATION_A, 1))
    text = describe(policy, policy.explain(read(
        f"<message from='a@red.example' to='b@blue.example'>{label}{label}</message>"), RED_TO_BLUE))
    assert "  (none: decided before the rules)" in text
    assert "decided by: xep0258:two-labels rev 1" in text


def test_guard_explain_reads_the_stanza_from_standard_input(tmp_path):
    """``guard explain --policy FILE`` with the stanza on standard input prints the verdict and exits 0."""
    path = tmp_path / "fold.toml"
    path.write_text(FOLDING)
    out, err = io.StringIO(), io.StringIO()
    stanza = io.StringIO("<message from='a@red.example' to='b@blue.example' type='headline'><body>x</body></message>")
    assert explain_main(["--policy", str(path)], out=out, err=err, stdin=stanza) == 0
    assert "verdict: drop\ndecided by: fold-messages rev 1\n" in out.getvalue()


def test_guard_explain_reads_the_stanza_from_a_file(tmp_path):
    """``guard explain --policy FILE STANZA.xml`` reads the stanza from the file."""
    policy, stanza = tmp_path / "fold.toml", tmp_path / "stanza.xml"
    policy.write_text(FOLDING)
    stanza.write_text(PRESENCE.format(domain="blue.example", show="away"))
    out = io.StringIO()
    assert explain_main(["--policy", str(policy), str(stanza)], out=out, err=io.StringIO()) == 0
    assert out.getvalue().endswith('leaves as:\n<presence from="alice@red.example/pc" to="bob@blue.example"/>\n')


@pytest.mark.parametrize("stanza_text, message", [
    ("<message from='a@red.example'", "not well-formed XML"),
    ("<message/><message/>", "expected exactly one stanza"),
    ("<!DOCTYPE x><message/>", "no DTD"),
])
def test_guard_explain_refuses_input_that_is_not_one_stanza(tmp_path, stanza_text, message):
    """Bad input is an error (exit 2) with a reason, never a verdict."""
    path = tmp_path / "fold.toml"
    path.write_text(FOLDING)
    err = io.StringIO()
    assert explain_main(["--policy", str(path)], out=io.StringIO(), err=err, stdin=io.StringIO(stanza_text)) == 2
    assert message in err.getvalue()


def test_guard_explain_refuses_an_invalid_policy(tmp_path):
    """An invalid policy file is reported with the checker's message (exit 2)."""
    path = tmp_path / "bad.toml"
    path.write_text('[policy]\nname = "bad"\n[[rules]]\nid = "r"\nrev = 1\nwhy = "w"\nverdict = "maybe"\n')
    err = io.StringIO()
    assert explain_main(["--policy", str(path)], out=io.StringIO(), err=err, stdin=io.StringIO("<message/>")) == 2
    assert "bad.toml:7: rule r: verdict must be one of" in err.getvalue()
