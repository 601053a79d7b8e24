"""XEP-0258's own rules: two labels, labels on presence, errors, and only the outer stanza's label counting."""

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


def test_errors_are_not_label_checked_and_leave_without_a_label():
    """An error carrying a SECRET label is not refused for it; it passes and the label is removed."""
    stanza = read(f"""
    <message from='alice@red.example/pc' to='bob@blue.example' type='error' id='m1'>
      {SECRET}
      <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
    </message>""")
    judgement = release_policy().judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.PASS, "errors-pass")
    assert "securitylabel" not in judgement.stanza.toXml()
    assert "item-not-found" in judgement.stanza.toXml()


def test_label_conditions_never_hold_on_errors():
    """Neither a label condition nor its negation matches an error, so an error falls through to later rules."""
    policy = release_policy()
    explanation = policy.explain(read(f"""
    <iq from='alice@red.example/pc' to='bob@blue.example' type='error' id='q1'>{SECRET}
      <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
    </iq>"""), RED_TO_BLUE)
    assert explanation.judgement.rule_id == "errors-pass"
    strict = compile_policy('[policy]\nname = "strict"\ndefault = "pass"\n' + LABELS_AND_MAPS + """
[[rules]]
id = "unreleasable"
rev = 1
why = "w"
label_releasable = false
verdict = "drop"
[[rules]]
id = "not-releasable-negated"
rev = 1
why = "w"
not = { label_releasable = true }
verdict = "drop"
""")
    error = read(f"<message from='alice@red.example/pc' to='bob@blue.example' type='error'>{SECRET}<error type='cancel'/></message>")
    assert strict.judge(error, RED_TO_BLUE).rule_id == "default"


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
    # Only the outer label was rewritten: the inner one travels as content, untouched.
    leaving = judgement.stanza.toXml()
    assert ess_label(NATION_A, 4) in leaving and "<PolicyIdentifier>NATION-B</PolicyIdentifier>" in leaving


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
