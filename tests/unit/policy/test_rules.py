"""The rule language: every condition kind, negation, first match wins, defaults, named sets."""

import pytest

from guard.core.pipeline import Verdict
from guard.core.policy import PolicyError

from .wire import RED_TO_BLUE, compile_policy, read

CHAT = """
<message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='m1'>
  <body>hello bob</body>
  <active xmlns='http://jabber.org/protocol/chatstates'/>
</message>"""


def one_rule(conditions, verdict="pass", extra=""):
    """A policy whose single rule states ``conditions`` and whose default drops."""
    return compile_policy(f"""
        [policy]
        name = "one-rule"
        {extra}
        [sets.domains]
        blue = ["blue.example", "*.blue.example"]
        [sets.jids]
        staff = ["*@red.example/pc"]
        [sets.namespaces]
        states = ["http://jabber.org/protocol/chatstates"]

        [[rules]]
        id = "r"
        rev = 1
        why = "under test"
        {conditions}
        verdict = "{verdict}"
        """)


def decided_by_rule(conditions, xml):
    """Whether the single rule with ``conditions`` decides ``xml`` (rather than the default)."""
    return one_rule(conditions).judge(read(xml), RED_TO_BLUE).rule_id == "r"


@pytest.mark.parametrize("conditions, holds", [
    ('kind = "message"', True),
    ('kind = ["presence", "iq"]', False),
    ('type = "chat"', True),
    ('type = ["normal", "headline"]', False),
    ('from_domain = "red.example"', True),
    ('from_domain = "*.red.example"', False),
    ('to_domain = "$blue"', True),
    ('to_domain = "*"', True),
    ('to_domain = "elsewhere.example"', False),
    ('from_jid = "alice@red.example/*"', True),
    ('from_jid = "$staff"', True),
    ('to_jid = "bob@blue.example"', True),
    ('to_jid = "carol@blue.example"', False),
    ('payload_present = "$states"', True),
    ('payload_present = "jabber:x:oob"', False),
    ('payload_absent = "jabber:x:oob"', True),
    ('payload_absent = "$states"', False),
    ('payload_only = ["http://jabber.org/protocol/chatstates"]', False),  # <body/> is payload too
    ('payload_only = ["jabber:server", "http://jabber.org/protocol/chatstates"]', True),
    ('payload_only = "jabber:x:oob"', False),
    ('inspect = { path = "body#", equals = "hello bob" }', True),
    ('inspect = { path = "body#", matches = "^hello" }', True),
    ('inspect = { path = "{http://jabber.org/protocol/chatstates}active" }', True),
    ('inspect = { path = "body#", equals = "hello" }', False),
    ('body_matches = "bob$"', True),
    ('body_matches = ["^bye", "nothing"]', False),
    ('larger_than = 20', True),
    ('larger_than = 100000', False),
    ('smaller_than = 100000', True),
    ('smaller_than = 20', False),
])
def test_each_condition_kind_holds_or_not_on_a_chat_message(conditions, holds):
    """Every condition kind the rule language offers is tested on the facts of one real chat message."""
    assert decided_by_rule(conditions, CHAT) is holds


def test_inspect_reads_attributes():
    """An inspect path ending in @attribute compares that attribute's value."""
    xml = """
    <iq from='alice@red.example/pc' to='blue.example' type='get' id='d1'>
      <query xmlns='http://jabber.org/protocol/disco#info' node='secret-node'/>
    </iq>"""
    assert decided_by_rule('inspect = { path = "{http://jabber.org/protocol/disco#info}query@node", equals = "secret-node" }', xml)
    assert not decided_by_rule('inspect = { path = "{http://jabber.org/protocol/disco#info}query@node", equals = "other" }', xml)


def test_a_message_without_body_never_matches_body_matches():
    """A body pattern needs a body: a bodiless message does not match even '.*'."""
    xml = "<message from='alice@red.example/pc' to='bob@blue.example'><gone xmlns='http://jabber.org/protocol/chatstates'/></message>"
    assert not decided_by_rule('body_matches = ".*"', xml)


@pytest.mark.parametrize("conditions, holds", [
    ('not = { kind = "message" }', False),
    ('not = { kind = "presence" }', True),
    ('not = { to_domain = "$blue" }', False),
    ('not = { body_matches = "secret" }', True),
    ('kind = "message"\nnot = { payload_present = "jabber:x:oob", type = "headline" }', True),
])
def test_negation_inverts_each_condition_on_its_own(conditions, holds):
    """``not`` holds a table of conditions, each of which must fail for the rule to match."""
    assert decided_by_rule(conditions, CHAT) is holds


def test_all_conditions_of_a_rule_must_hold():
    """Conditions of one rule are joined by and: one failing condition means no match."""
    assert decided_by_rule('kind = "message"\ntype = "chat"\nto_domain = "blue.example"', CHAT)
    assert not decided_by_rule('kind = "message"\ntype = "chat"\nto_domain = "red.example"', CHAT)


def test_first_matching_rule_decides():
    """Rules are read in file order and the first whose conditions hold decides, even if a later one also matches."""
    policy = compile_policy("""
        [policy]
        name = "first-match"
        [[rules]]
        id = "bounce-bob"
        rev = 3
        why = "bob is not reachable"
        to_jid = "bob@blue.example"
        verdict = "bounce"
        condition = "recipient-unavailable"
        text = "Bob is away."
        [[rules]]
        id = "messages-pass"
        rev = 1
        why = "messages pass"
        kind = "message"
        verdict = "pass"
        """)
    judgement = policy.judge(read(CHAT), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id, judgement.rule_rev, judgement.condition, judgement.text) == (
        Verdict.BOUNCE, "bounce-bob", 3, "recipient-unavailable", "Bob is away.")
    carol = read("<message from='alice@red.example/pc' to='carol@blue.example'><body>hi</body></message>")
    assert policy.judge(carol, RED_TO_BLUE).rule_id == "messages-pass"


def test_the_default_of_defaults_is_drop():
    """A file that names no default drops what no rule matches."""
    policy = compile_policy("""
        [policy]
        name = "no-default"
        [[rules]]
        id = "only-presence"
        rev = 1
        why = "presence only"
        kind = "presence"
        verdict = "pass"
        """)
    judgement = policy.judge(read(CHAT), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "default")


def test_a_file_default_of_bounce_carries_its_condition_and_text():
    """``default = "bounce"`` bounces unmatched stanzas with the file's condition and text."""
    policy = compile_policy("""
        [policy]
        name = "bounce-default"
        default = "bounce"
        default_condition = "not-allowed"
        default_text = "Not across this boundary."
        """)
    judgement = policy.judge(read(CHAT), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id, judgement.condition, judgement.text) == (
        Verdict.BOUNCE, "default", "not-allowed", "Not across this boundary.")


def test_a_bounce_aimed_at_an_iq_result_is_dropped_instead():
    """The relay never bounces an iq result: a bounce verdict on one becomes a drop citing the rule."""
    policy = one_rule('kind = "iq"', verdict="bounce")
    result = read("<iq from='alice@red.example/pc' to='bob@blue.example' type='result' id='q1'/>")
    judgement = policy.judge(result, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "r")


def test_a_bounce_aimed_at_an_error_is_dropped_instead():
    """An error is never answered with an error: a bounce verdict on one becomes a drop."""
    policy = one_rule('kind = "message"', verdict="bounce")
    error = read("""
    <message from='alice@red.example/pc' to='bob@blue.example' type='error'>
      <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
    </message>""")
    assert policy.judge(error, RED_TO_BLUE).verdict is Verdict.DROP


def test_continue_rules_strip_and_log_then_evaluation_goes_on():
    """A ``continue`` rule strips and logs without deciding; the next matching rule decides on the stripped stanza."""
    policy = compile_policy("""
        [policy]
        name = "strip-then-pass"
        [[rules]]
        id = "strip-oob"
        rev = 1
        why = "no URLs cross"
        kind = "message"
        verdict = "continue"
        strip = ["{jabber:x:oob}x"]
        log = "oob stripped"
        [[rules]]
        id = "pass-messages"
        rev = 1
        why = "messages pass"
        kind = "message"
        verdict = "pass"
        keep = "everything"
        """)
    stanza = read("""
    <message from='alice@red.example/pc' to='bob@blue.example'>
      <body>see link</body>
      <x xmlns='jabber:x:oob'><url>https://red.example/file</url></x>
    </message>""")
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id, judgement.actions, judgement.notes) == (
        Verdict.PASS, "pass-messages", ("strip:strip-oob", "keep:everything"), ("strip-oob: oob stripped",))
    assert "jabber:x:oob" not in judgement.stanza.toXml()
    assert "<body>see link</body>" in judgement.stanza.toXml()


def test_named_sets_expand_in_place_of_literal_values():
    """``$name`` stands for every member of the named set, mixed freely with literal values."""
    policy = one_rule('to_domain = ["$blue", "green.example"]')
    for to in ("bob@blue.example", "bob@muc.blue.example", "bob@green.example"):
        stanza = read(f"<message from='alice@red.example/pc' to='{to}'><body>x</body></message>")
        assert policy.judge(stanza, RED_TO_BLUE).rule_id == "r", to
    stanza = read("<message from='alice@red.example/pc' to='bob@notblue.example'><body>x</body></message>")
    assert policy.judge(stanza, RED_TO_BLUE).rule_id == "default"


def test_a_policy_for_other_sides_drops_everything():
    """A policy that names its sides refuses stanzas crossing any other way."""
    policy = one_rule('kind = "message"', extra='from_side = "red"\nto_side = "blue"')
    judgement = policy.judge(read(CHAT), RED_TO_BLUE.__class__("blue", "red"))
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:wrong-direction")


def test_stanzas_without_valid_addresses_are_dropped_before_any_rule():
    """A missing or malformed from/to never reaches the rules: dropped as a bad address."""
    policy = one_rule("")
    for xml in ("<message to='bob@blue.example'><body>x</body></message>",
                "<message from='alice@red.example' to='bob@@blue'><body>x</body></message>"):
        judgement = policy.judge(read(xml), RED_TO_BLUE)
        assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:bad-address")


def test_refer_hands_the_decision_to_the_release_authority():
    """``refer`` returns a REFER judgement citing the rule; the relay asks the release authority (and drops without one)."""
    policy = one_rule('kind = "message"', verdict="refer")
    judgement = policy.judge(read(CHAT), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.REFER, "r")


def test_the_rule_index_gives_the_same_answers_as_reading_every_rule():
    """The kind/domain/type index never changes a decision: judge agrees with explain, which reads every rule."""
    policy = compile_policy("""
        [policy]
        name = "indexed"
        default = "bounce"
        [[rules]]
        id = "errors"
        rev = 1
        why = "errors stay"
        type = "error"
        verdict = "drop"
        [[rules]]
        id = "iq-reads"
        rev = 1
        why = "reads pass"
        kind = "iq"
        type = ["get", "result"]
        verdict = "pass"
        keep = ["ping"]
        [[rules]]
        id = "to-green"
        rev = 1
        why = "green gets messages"
        kind = "message"
        to_domain = "green.example"
        verdict = "pass"
        [[rules]]
        id = "from-red-presence"
        rev = 1
        why = "red presence"
        kind = "presence"
        from_domain = "red.example"
        verdict = "drop"
        [[rules]]
        id = "wild"
        rev = 1
        why = "any blue subdomain"
        to_domain = "*.blue.example"
        verdict = "pass"
        [[rules]]
        id = "iq"
        rev = 1
        why = "iq"
        kind = "iq"
        verdict = "drop"
        """)
    stanzas = [
        "<message from='a@red.example' to='b@green.example'><body>x</body></message>",
        "<message from='a@red.example' to='b@blue.example'><body>x</body></message>",
        "<message from='a@red.example' to='b@muc.blue.example'><body>x</body></message>",
        "<presence from='a@red.example' to='b@green.example'/>",
        "<presence from='a@other.example' to='b@muc.blue.example'/>",
        "<iq from='a@red.example' to='green.example' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq from='a@red.example' to='green.example' type='set' id='2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq from='a@red.example' to='green.example' type='result' id='3'/>",
        "<message from='a@red.example' to='b@green.example' type='error'><error type='cancel'>"
        "<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        "<presence from='a@red.example' to='b@muc.blue.example' type='error'/>",
    ]
    decided = set()
    for xml in stanzas:
        fast = policy.judge(read(xml), RED_TO_BLUE)
        slow = policy.explain(read(xml), RED_TO_BLUE).judgement
        assert (fast.verdict, fast.rule_id) == (slow.verdict, slow.rule_id), xml
        decided.add(fast.rule_id)
    assert decided == {"to-green", "from-red-presence", "wild", "iq", "errors", "iq-reads", "default"}


def test_an_element_that_is_not_a_stanza_is_dropped_before_any_rule():
    """Only message, presence and iq in the stanza namespace are judged; anything else is dropped, not an exception."""
    policy = one_rule("")
    for xml in ("<foo from='a@red.example' to='b@blue.example'/>",
                "<message xmlns='urn:example:other' from='a@red.example' to='b@blue.example'/>"):
        judgement = policy.judge(read(xml), RED_TO_BLUE)
        assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:not-a-stanza")


def test_body_matches_looks_at_every_body_not_only_the_first():
    """A word hidden in a second <body xml:lang/> is still found: a deny rule cannot be bypassed by language tags."""
    xml = """
    <message from='alice@red.example/pc' to='bob@blue.example' type='chat'>
      <body>hello</body>
      <body xml:lang='fr'>le mot de passe est CODEWORD</body>
    </message>"""
    assert decided_by_rule('body_matches = "CODEWORD"', xml)
    assert not decided_by_rule('not = { body_matches = "CODEWORD" }', xml)


def test_addresses_chosen_by_senders_are_not_interned_forever():
    """The policy does not grow Twisted's never-forgetting JID intern table with every address it sees."""
    from twisted.words.protocols.jabber import jid

    interned = vars(jid)["__internJIDs"]
    before = len(interned)
    policy = one_rule('kind = "message"')
    for number in range(50):
        policy.judge(read(f"<message from='u{number}@red.example/r{number}' to='b@blue.example'/>"), RED_TO_BLUE)
    assert len(interned) - before < 50


@pytest.mark.parametrize("xml, holds", [
    ("<iq from='a@red.example' to='b@blue.example' type='result' id='1'>\n  <ping xmlns='urn:xmpp:ping'/>\n</iq>", True),
    ("<iq from='a@red.example' to='b@blue.example' type='result' id='1'>SECRET</iq>", False),
    ("<iq from='a@red.example' to='b@blue.example' type='result' id='1'>\u00a0</iq>", False),
    ("<iq from='a@red.example' to='b@blue.example' type='get' id='1'><data>SECRET</data></iq>", False),
    ("<iq from='a@red.example' to='b@blue.example' type='get' id='1'><query xmlns='jabber:client'/></iq>", False),
    ("<iq from='a@red.example' to='b@blue.example' type='result' id='1'><ping xmlns='urn:xmpp:ping'/>"
     "<body>SECRET</body></iq>", False),
])
def test_payload_only_sees_every_child_and_every_text_node(xml, holds):
    """Stanza-namespace children and any text that is not XML whitespace (a no-break space is not) are payload too."""
    assert decided_by_rule('payload_only = "urn:xmpp:ping"', xml) is holds


# -- text_matches: a word refused wherever the stanza carries it -------------------

CONTRABAND_HIDING_PLACES = [
    "<body>plain</body><subject>contraband</subject>",
    "<body>plain</body><thread>contraband</thread>",
    "<body>plain</body><thread parent='contraband'>t</thread>",
    "<body>plain</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
    "<body xmlns='http://www.w3.org/1999/xhtml'>contr<b>ab</b>and</body></html>",
    "<body>plain</body><x xmlns='jabber:x:oob'><desc>contraband</desc></x>",
    "<body xml:lang='en'>plain</body><body xml:lang='fr'>contraband</body>",
    "<body>plain</body><data>contra</data>band",
]
NO_CONTRABAND = """
[policy]
name = "no-contraband"
[[rules]]
id = "no-contraband"
rev = 1
why = "contraband is refused wherever it is"
kind = "message"
{condition} = "contraband"
verdict = "bounce"
[[rules]]
id = "text"
rev = 1
why = "text leaves"
verdict = "pass"
keep = ["body", "subject", "thread"]
"""


@pytest.mark.parametrize("payload", CONTRABAND_HIDING_PLACES)
def test_text_matches_refuses_a_word_wherever_the_stanza_carries_it(payload):
    """A word a refusing rule names is found in a subject, a thread, an attribute, an XHTML body split by markup, any payload: not only in <body/>."""
    xml = f"<message from='alice@red.example/pc' to='bob@blue.example' type='chat' id='m1'>{payload}</message>"
    judgement = compile_policy(NO_CONTRABAND.format(condition="text_matches")).judge(read(xml), RED_TO_BLUE)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.BOUNCE, "no-contraband")


def test_body_matches_sees_bodies_only_so_a_refusing_rule_written_with_it_misses_the_subject():
    """body_matches keeps its meaning (the bodies): the subject case shows why a refusing rule wants text_matches."""
    xml = ("<message from='alice@red.example/pc' to='bob@blue.example' type='chat'>"
           "<body>plain</body><subject>contraband</subject></message>")
    judgement = compile_policy(NO_CONTRABAND.format(condition="body_matches")).judge(read(xml), RED_TO_BLUE)
    assert judgement.rule_id == "text"


def test_text_matches_sees_the_id_but_not_the_addresses():
    """The id crosses, so text_matches sees it; from and to are judged by their own conditions."""
    def refused_by(conditions, xml):
        return one_rule(conditions, "bounce").judge(read(xml), RED_TO_BLUE).rule_id == "r"

    assert refused_by('text_matches = "^m1$"', CHAT)
    assert not refused_by('text_matches = "alice|bob"', CHAT.replace("hello bob", "hello"))


def test_a_rule_that_lets_through_may_use_text_matches_only_negated():
    """not = { text_matches } lets a clean stanza through and refuses one with the word anywhere; a positive one is refused at load."""
    policy = one_rule('not = { text_matches = "contraband" }\nkeep = ["body"]')
    clean = "<message from='alice@red.example/pc' to='bob@blue.example'><body>hi</body></message>"
    dirty = "<message from='alice@red.example/pc' to='bob@blue.example'><body>hi</body><subject>contraband</subject></message>"
    assert policy.judge(read(clean), RED_TO_BLUE).rule_id == "r"
    assert policy.judge(read(dirty), RED_TO_BLUE).rule_id == "default"
    for conditions, verdict in (('text_matches = "ok"', "pass"), ('text_matches = "ok"', "refer"),
                                ('not = { text_matches = "ok" }', "bounce"), ('not = { text_matches = "ok" }', "drop")):
        with pytest.raises(PolicyError, match="text_matches"):
            one_rule(conditions, verdict)
