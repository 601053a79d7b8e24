"""XEP-0258's own rules: two labels, labels on presence, labelled errors, and only the outer stanza's label counting."""

from guard.core.pipeline import Verdict

from .labelled import LABELS_AND_MAPS, release_policy
from .wire import NATION_A, RED_TO_BLUE, compile_policy, ess_label, ess_xml, read

SECRET = ess_xml(ess_label(NATION_A, 4))
UNCLASSIFIED = ess_xml(ess_label(NATION_A, 1))


def test_two_security_labels_are_malformed_and_bounce_bad_request():
    """A stanza with two <securitylabel/> is malformed: bad-request, before any rule."""
    stanza = read(f"""
    <message from='alice@red.example/pc' to='bob@blue.example' type='chat'>
      <body>hi</body>{UNCLASSIFIED}{UNCLASSIFIED}
    </message>""")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id, judgement.condition) == (
        Verdict.BOUNCE, "xep0258:two-labels", "bad-request")


def test_two_security_labels_on_an_iq_result_are_dropped_not_bounced():
    """The bad-request bounce is never sent in answer to an iq result: dropped instead."""
    stanza = read(f"<iq from='alice@red.example/pc' to='bob@blue.example' type='result' id='r1'>{UNCLASSIFIED}{UNCLASSIFIED}</iq>")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "xep0258:two-labels")


def test_a_label_on_presence_is_a_protocol_violation_and_is_dropped():
    """Presence is broadcast and must not carry a label: it is dropped (one bounce per recipient would be noise)."""
    stanza = read(f"<presence from='alice@red.example/pc' to='bob@blue.example'><show>away</show>{UNCLASSIFIED}</presence>")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "xep0258:label-on-presence")


def test_an_error_leaves_reduced_with_the_label_the_guard_encodes():
    """An error that passes leaves as its type and defined condition, with the label the guard encoded from the value it judged."""
    stanza = read(f"""
    <message from='alice@red.example/pc' to='bob@blue.example' type='error' id='m1'>
      {SECRET}
      <body>the plan</body>
      <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>the plan</text></error>
    </message>""")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.PASS, "errors-pass")
    assert judgement.stanza.toXml() == (
        "<message xmlns='jabber:server' from='alice@red.example/pc' to='bob@blue.example' id='m1' type='error'>"
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        "<securitylabel xmlns='urn:xmpp:sec-label:0'><displaymarking>A SECRET</displaymarking>"
        f"<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{ess_label(NATION_A, 4)}</esssecuritylabel>"
        "</label></securitylabel></message>")


def test_label_conditions_judge_errors_like_any_stanza():
    """A label condition, or its negation, holds on an error as on any stanza: a SECRET error is caught by either."""
    strict = compile_policy('[policy]\nname = "strict"\ndefault = "pass"\n' + LABELS_AND_MAPS + """
[[rules]]
id = "unreleasable"
rev = 1
why = "w"
label_releasable = false
verdict = "drop"
""")
    negated = compile_policy('[policy]\nname = "negated"\ndefault = "pass"\n' + LABELS_AND_MAPS + """
[[rules]]
id = "not-releasable-negated"
rev = 1
why = "w"
not = { label_releasable = true }
verdict = "drop"
""")
    error = read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='error'>{SECRET}"
                 "<error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    assert strict.judge(error, RED_TO_BLUE).rule_id == "unreleasable"
    assert negated.judge(error, RED_TO_BLUE).rule_id == "not-releasable-negated"


def test_a_label_inside_forwarded_content_is_ignored():
    """An UNCLASSIFIED label inside <forwarded/> does not make an unlabelled outer message from elsewhere (SECRET by default) releasable."""
    stanza = read(f"""
    <message from='mallory@other.example/x' to='bob@blue.example' type='chat'>
      <forwarded xmlns='urn:xmpp:forward:0'>
        <message xmlns='jabber:client' from='x@red.example' to='y@red.example' type='chat'>
          <body>old news</body>{UNCLASSIFIED}
        </message>
      </forwarded>
    </message>""")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.BOUNCE, "not-releasable")


def test_a_label_inside_a_carbon_is_ignored_and_the_outer_label_decides():
    """In a carbon, the SECRET label of the copied message is content; the outer UNCLASSIFIED label decides."""
    stanza = read(f"""
    <message from='alice@red.example' to='alice@blue.example/phone' type='chat'>
      <received xmlns='urn:xmpp:carbons:2'>
        <forwarded xmlns='urn:xmpp:forward:0'>
          <message xmlns='jabber:client' from='carol@red.example/pc' to='alice@red.example/pc' type='chat'>
            <body>secret</body>{SECRET}
          </message>
        </forwarded>
      </received>
      {UNCLASSIFIED}
    </message>""")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.PASS, "release")
    # The outer label decided and was rewritten; the carbon is no shape the rule keeps, so nothing of it leaves.
    leaving = judgement.stanza.toXml()
    assert "<PolicyIdentifier>NATION-B</PolicyIdentifier>" in leaving
    assert ess_label(NATION_A, 4) not in leaving and "secret" not in leaving


def test_two_labels_inside_forwarded_content_are_not_two_labels_on_the_stanza():
    """Nested labels are not counted toward the outer stanza's "more than one label" rule."""
    stanza = read(f"""
    <message from='alice@red.example/pc' to='bob@blue.example' type='chat'>
      <forwarded xmlns='urn:xmpp:forward:0'>
        <message xmlns='jabber:client' from='x@red.example' to='y@red.example'><body>a</body>{UNCLASSIFIED}</message>
      </forwarded>
      {UNCLASSIFIED}
    </message>""")
    assert release_policy().judge(stanza, RED_TO_BLUE).rule_id == "release"


def allow_all():
    from pathlib import Path

    from guard.core.policy import load_policy
    return load_policy(Path(__file__).resolve().parents[3] / "policies" / "allow-all.toml")


def test_a_policy_whose_rules_never_look_at_labels_does_not_read_them(monkeypatch):
    """Under allow-all a labelled message passes with its label counted, never read (reading is for rules that look)."""
    from guard.core.policy import facts

    def must_not_read(stanza):
        raise AssertionError("the label was read")

    monkeypatch.setattr(facts, "read_stanza_label", must_not_read)
    stanza = read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='chat'><body>hi</body>{SECRET}</message>")
    judgement = allow_all().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.PASS, "allow-all")


def test_two_labels_and_a_labelled_presence_are_refused_under_allow_all_too():
    """XEP-0258's own rules hold before any rule, whatever the policy: two labels bounce, a labelled presence drops."""
    two = read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='chat'>{SECRET}{SECRET}</message>")
    presence = read(f"<presence from='alice@red.example/pc' to='bob@blue.example'>{UNCLASSIFIED}</presence>")
    assert [(j.verdict, j.rule_id) for j in (allow_all().judge(two, RED_TO_BLUE), allow_all().judge(presence, RED_TO_BLUE))] == [
        (Verdict.BOUNCE, "xep0258:two-labels"), (Verdict.DROP, "xep0258:label-on-presence")]
