"""Shapes: what a passing rule keeps, each element built new with only what its shape names; and how the loader reads them."""

import pytest

from guard.core.pipeline import Verdict
from guard.core.policy import PolicyError

from .wire import RED_TO_BLUE, compile_policy, read

SHAPES = """
[policy]
name = "shapes"

[shapes.disco-info]
element = "{http://jabber.org/protocol/disco#info}query"
attributes = ["node"]
children = ["disco-identity", "disco-feature"]

[shapes.disco-identity]
element = "{http://jabber.org/protocol/disco#info}identity"
attributes = ["category", "type", "name", "xml:lang"]

[shapes.disco-feature]
element = "{http://jabber.org/protocol/disco#info}feature"
attributes = ["var"]

[[rules]]
id = "disco"
rev = 1
why = "feature discovery"
kind = "iq"
verdict = "pass"
keep = ["disco-info"]

[[rules]]
id = "messages"
rev = 1
why = "text only"
kind = "message"
verdict = "pass"
keep = ["body"]

[[rules]]
id = "presence"
rev = 1
why = "no keep: the envelope only"
kind = "presence"
verdict = "pass"
"""


def judge(xml, text=SHAPES):
    return compile_policy(text).judge(read(xml), RED_TO_BLUE)


def test_nested_shapes_build_each_element_with_only_the_attributes_and_children_they_name():
    """A disco#info answer leaves with its identities and features, each with only its named attributes; text, forms and extra attributes stay."""
    judgement = judge("""
    <iq from='blue@red.example' to='blue.example' type='result' id='d1' x='1'>
      <query xmlns='http://jabber.org/protocol/disco#info' node='n' extra='1'>
        <identity category='server' type='im' name='Red' xml:lang='en-GB' extra='1'>text</identity>
        <identity category='conference' type='text' xml:lang='not a language tag'/>
        <feature var='urn:xmpp:ping'><deep/></feature>
        <x xmlns='jabber:x:data' type='result'/>
      </query>
    </iq>""")
    assert judgement.stanza.toXml() == (
        "<iq xmlns='jabber:server' from='blue@red.example' to='blue.example' id='d1' type='result'>"
        "<query xmlns='http://jabber.org/protocol/disco#info' node='n'>"
        "<identity category='server' type='im' name='Red' xml:lang='en-GB'/>"
        "<identity category='conference' type='text'/><feature var='urn:xmpp:ping'/></query></iq>")


def test_a_passing_rule_without_keep_lets_only_the_envelope_leave():
    """pass means the shape the rule describes: with no keep, from, to, id and type, and no child."""
    judgement = judge("<presence from='a@red.example/pc' to='b@blue.example' id='x'><status>out</status></presence>")
    assert judgement.stanza.toXml() == "<presence xmlns='jabber:server' from='a@red.example/pc' to='b@blue.example' id='x'/>"


def test_body_text_and_language_are_kept_but_nothing_inside_a_body():
    """The built-in body shape keeps its text and a well-formed xml:lang, never elements inside it."""
    judgement = judge("<message from='a@red.example' to='b@blue.example'><body xml:lang='fr'>salut<b>x</b> toi</body></message>")
    assert judgement.stanza.toXml() == (
        "<message xmlns='jabber:server' from='a@red.example' to='b@blue.example'><body xml:lang='fr'>salut toi</body></message>")


@pytest.mark.parametrize("xml, reason", [
    ("<message from='a@red.example' to='b@blue.example' type='error'/>", "0 <error/> elements"),
    ("<message from='a@red.example' to='b@blue.example' type='error'><error type='later'>"
     "<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>", "type is not one RFC 6120 defines"),
    ("<message from='a@red.example' to='b@blue.example' type='error'><error type='cancel'>"
     "<made-up xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>", "0 defined conditions"),
    ("<message from='a@red.example' to='b@blue.example' type='error'><error type='cancel'>"
     "<gone xmlns='urn:example'/></error></message>", "0 defined conditions"),
])
def test_an_error_that_cannot_be_reduced_to_type_and_condition_does_not_leave(xml, reason):
    """An error without exactly one <error/> of a defined type holding one defined condition is dropped, citing the rule."""
    judgement = judge(xml)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "messages")
    assert reason in judgement.text


def test_message_strip_is_refused_naming_file_line_profile_and_rule():
    """The old deny-list key is refused with a message naming the file, the line, the profile and the rules that use it."""
    with pytest.raises(PolicyError) as refused:
        compile_policy("""
        [policy]
        name = "old"
        [folding.plain]
        message.strip = ["{jabber:x:oob}x"]
        [[rules]]
        id = "fold-messages"
        rev = 1
        why = "w"
        kind = "message"
        verdict = "fold"
        fold = "plain"
        """, "old.toml")
    assert str(refused.value) == (
        "old.toml:5: folding profile plain: message.strip is a deny-list and is no longer read: a folded message "
        "is built from what it keeps; list that as message.keep = [shape names] (see policies/README.md); "
        "used by rule fold-messages")


ONE_RULE = """
[policy]
name = "keep"
[folding.p]
message.keep = ["body"]
[[rules]]
id = "r"
rev = 1
why = "w"
kind = "message"
"""


@pytest.mark.parametrize("action, message", [
    ('verdict = "pass"\nkeep = ["nothing"]', "rule r: keep: unknown shape 'nothing'"),
    ('verdict = "pass"\nkeep = "body"', "rule r: keep lists shape names"),
    ('verdict = "drop"\nkeep = ["body"]', "rule r: keep only goes with verdict pass, translate or refer"),
    ('verdict = "pass"\nfold = "p"\nkeep = ["body"]', "rule r: keep does not go with fold"),
])
def test_keep_is_checked_when_the_policy_loads(action, message):
    """An unknown shape, a keep that is not a list, keep on a refusing verdict and keep beside fold are refused."""
    with pytest.raises(PolicyError, match=message):
        compile_policy(ONE_RULE + action)


@pytest.mark.parametrize("shape, message", [
    ('[shapes.body]\nelement = "body"', "'body' is a built-in shape and cannot be redeclared"),
    ('[shapes.q]\nelement = "{urn:q}q"\nchildren = ["missing"]', "unknown shape 'missing' in children"),
    ('[shapes.q]\nelement = "{urn:q}q"\nattributes = ["p:x"]', "attributes lists attribute names"),
    ('[shapes.q]\nelement = "not an element"', "element is required"),
    ('[shapes.q]\nelement = "{urn:q}q"\ntext = "yes"', "text is true or false"),
    ('[shapes.q]\nelement = "{urn:q}q"\nchildrens = []', "unknown key 'childrens'"),
])
def test_shape_declarations_are_checked(shape, message):
    """Redeclared built-ins, unknown children, prefixed attributes, bad element names and unknown keys are refused."""
    with pytest.raises(PolicyError, match=message):
        compile_policy(SHAPES.replace("[shapes.disco-info]", shape + "\n\n[shapes.disco-info]"))


def test_presence_show_is_written_by_folding_not_kept():
    """presence.keep may not name <show/>: folding writes it from the folded state."""
    with pytest.raises(PolicyError, match="show/> is written by folding"):
        compile_policy(SHAPES.replace("[[rules]]\nid = \"disco\"",
                                      '[shapes.show]\nelement = "show"\ntext = true\n'
                                      '[folding.p]\npresence.keep = ["show"]\n\n[[rules]]\nid = "disco"', 1))


def test_keep_everything_copies_the_stanza_whole_and_says_so():
    """keep = "everything" (allow-all only) lets the stanza leave whole, and the judgement records it."""
    judgement = judge("<message from='a@red.example' to='b@blue.example' z='1'>t<x xmlns='urn:x' a='b'/></message>",
                      SHAPES.replace('keep = ["body"]', 'keep = "everything"'))
    assert judgement.actions == ("keep:everything",)
    assert judgement.stanza.toXml() == (
        "<message xmlns='jabber:server' from='a@red.example' to='b@blue.example' z='1'>t<x xmlns='urn:x' a='b'/></message>")


REFER = """
[policy]
name = "refer-shapes"

[[rules]]
id = "ask"
rev = 1
why = "the release authority decides about messages"
kind = "message"
verdict = "refer"
keep = ["body"]

[[rules]]
id = "ask-bare"
rev = 1
why = "no keep: the authority is asked about the envelope only"
kind = "presence"
verdict = "refer"
"""


def test_a_refer_asks_about_the_stanza_as_it_would_leave_never_the_one_received():
    """What a refer hands the release authority is built from the rule's shapes: foreign children, text and attributes stay behind."""
    judgement = judge("""
    <message from='romeo@red.example' to='juliet@blue.example' type='chat' id='r1' leak='LEAKMARK'>
      <body note='LEAKMARK'>review this</body>LEAKMARK<x xmlns='urn:example'>LEAKMARK</x>
    </message>""", REFER)
    assert judgement.verdict is Verdict.REFER and judgement.rule_id == "ask"
    assert "LEAKMARK" not in judgement.stanza.toXml()
    assert [child.name for child in judgement.stanza.elements()] == ["body"]


def test_a_refer_without_keep_asks_about_the_envelope_only():
    """A refer rule with no keep lets only the envelope reach the authority (and so, at most, cross)."""
    judgement = judge("<presence from='romeo@red.example/a' to='juliet@blue.example'><status>LEAKMARK</status></presence>",
                      REFER)
    assert judgement.verdict is Verdict.REFER
    assert list(judgement.stanza.elements()) == [] and "LEAKMARK" not in judgement.stanza.toXml()


# -- what crosses unjudged in the envelope: the id and the xml:lang ----------------

@pytest.mark.parametrize("language, kept", [
    ("en", True), ("en-GB", True), ("zh-Hant-TW", True), ("es-419", True),
    ("attack-at-dawn", False), ("en-GB-oxendict", False), ("x-secret", False), ("en-a-bbb-x-plan", False),
    ("english", False), ("e", False),
])
def test_an_xml_lang_leaves_only_as_language_script_and_region(language, kept):
    """A stanza's xml:lang leaves only when it is language[-Script][-REGION]: variants, extensions and private use are free text."""
    judgement = judge(f"<presence from='a@red.example/pc' to='b@blue.example' xml:lang='{language}'/>")
    assert judgement.verdict is Verdict.PASS
    assert (judgement.stanza.getAttribute(("http://www.w3.org/XML/1998/namespace", "lang")) == language) is kept


@pytest.mark.parametrize("stanza_id, passes", [
    ("a" * 64, True), ("a" * 65, False), ("é" * 32, True), ("é" * 33, False), ("", True),
])
def test_an_id_crosses_only_up_to_64_bytes_by_default(stanza_id, passes):
    """An id is free text no rule judges: one over 64 UTF-8 bytes bounces with the guard's own text, not the id."""
    judgement = judge(f"<presence from='a@red.example/pc' to='b@blue.example' id='{stanza_id}'/>")
    if passes:
        assert (judgement.verdict, judgement.stanza.getAttribute("id")) == (Verdict.PASS, stanza_id)
    else:
        assert (judgement.verdict, judgement.rule_id, judgement.condition) == \
            (Verdict.BOUNCE, "guard:long-id", "policy-violation")
        assert stanza_id not in judgement.text


def test_a_long_id_on_an_error_or_an_iq_result_is_dropped_not_bounced():
    """An error or an iq result with an id over the bound is dropped (nothing answers them), and never passes."""
    long_id = "s" * 65
    for xml in (f"<iq from='a@red.example/pc' to='blue.example' type='result' id='{long_id}'/>",
                f"<message from='a@red.example/pc' to='b@blue.example' type='error' id='{long_id}'><error type='cancel'>"
                "<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"):
        judgement = judge(xml)
        assert (judgement.verdict, judgement.rule_id) == (Verdict.DROP, "guard:long-id")


def test_a_policy_sets_how_many_bytes_of_an_id_cross():
    """[policy] id_max_bytes bounds the id in bytes: 8 lets 'abcdefgh' cross and refuses 'abcdefghi'."""
    text = SHAPES.replace('name = "shapes"', 'name = "shapes"\nid_max_bytes = 8')
    assert judge("<presence from='a@red.example' to='b@blue.example' id='abcdefgh'/>", text).verdict is Verdict.PASS
    assert judge("<presence from='a@red.example' to='b@blue.example' id='abcdefghi'/>", text).verdict is Verdict.BOUNCE


@pytest.mark.parametrize("value", ["0", "16385", "'64'", "true", "6.4"])
def test_id_max_bytes_is_checked_when_the_policy_loads(value):
    """id_max_bytes must be an integer from 1 to 16384; anything else is refused with the key's name."""
    with pytest.raises(PolicyError, match="id_max_bytes"):
        compile_policy(SHAPES.replace('name = "shapes"', f'name = "shapes"\nid_max_bytes = {value}'))


PRIORITY_KEPT = """
[policy]
name = "priority"

[folding.with-priority]
presence.states = ["available", "away"]
presence.keep = ["priority"]

[[rules]]
id = "presence"
rev = 1
why = "availability and priority"
kind = "presence"
verdict = "fold"
fold = "with-priority"
"""


@pytest.mark.parametrize("text, leaves", [
    ("5", "<priority>5</priority>"), (" -128\n", "<priority>-128</priority>"), ("+7", "<priority>7</priority>"),
    ("128", None), ("SECRET", None), ("5 SECRET", None), ("", None), ("٣", None),
])
def test_a_kept_priority_leaves_only_as_an_rfc_6121_integer(text, leaves):
    """The built-in priority shape keeps an integer from -128 to 127, written by the guard; any other text and its element stay."""
    judgement = judge(f"<presence from='a@red.example/pc' to='b@blue.example'><priority>{text}</priority></presence>",
                      PRIORITY_KEPT)
    assert judgement.verdict is Verdict.PASS
    envelope = "<presence xmlns='jabber:server' from='a@red.example/pc' to='b@blue.example'"
    assert judgement.stanza.toXml() == (f"{envelope}>{leaves}</presence>" if leaves else f"{envelope}/>")


@pytest.mark.parametrize("sender, recipient, refused_by", [
    ("a@red.example/" + "r" * 64, "b@blue.example", None),
    ("a@red.example/" + "r" * 65, "b@blue.example", "guard:long-resource"),
    ("a@red.example/pc", "b@blue.example/" + "r" * 65, "guard:long-resource"),
    ("a@red.example/" + "é" * 33, "b@blue.example", "guard:long-resource"),
    ("l" * 64 + "@red.example/pc", "b@blue.example", None),
    ("a@red.example/pc", "l" * 65 + "@blue.example", "guard:long-localpart"),
    ("l" * 65 + "@red.example", "b@blue.example", "guard:long-localpart"),
])
def test_a_localpart_or_resource_crosses_only_up_to_64_bytes_by_default(sender, recipient, refused_by):
    """The localpart and resource of from and of to are text the sender picks: over 64 UTF-8 bytes the stanza bounces with the guard's text."""
    judgement = judge(f"<presence from='{sender}' to='{recipient}'/>")
    if refused_by is None:
        assert judgement.verdict is Verdict.PASS
    else:
        assert (judgement.verdict, judgement.rule_id) == (Verdict.BOUNCE, refused_by)
        assert "r" * 65 not in judgement.text and "l" * 65 not in judgement.text and "é" not in judgement.text


def test_a_policy_sets_how_many_bytes_of_a_resource_cross():
    """[policy] resource_max_bytes = 4 lets 'pc12' cross and refuses 'pc123'; it is checked at load (1 to 1023)."""
    text = SHAPES.replace('name = "shapes"', 'name = "shapes"\nresource_max_bytes = 4')
    assert judge("<presence from='a@red.example/pc12' to='b@blue.example'/>", text).verdict is Verdict.PASS
    assert judge("<presence from='a@red.example/pc123' to='b@blue.example'/>", text).verdict is Verdict.BOUNCE
    for key in ("resource_max_bytes", "localpart_max_bytes"):
        for value in ("0", "1024", "'4'"):
            with pytest.raises(PolicyError, match=key):
                compile_policy(SHAPES.replace('name = "shapes"', f'name = "shapes"\n{key} = {value}'))


def test_a_policy_sets_how_many_bytes_of_a_localpart_cross():
    """[policy] localpart_max_bytes = 3 lets 'bob@' cross and refuses 'juliet@', in from or to."""
    text = SHAPES.replace('name = "shapes"', 'name = "shapes"\nlocalpart_max_bytes = 3')
    assert judge("<presence from='bob@red.example' to='eve@blue.example'/>", text).verdict is Verdict.PASS
    assert judge("<presence from='bob@red.example' to='juliet@blue.example'/>", text).rule_id == "guard:long-localpart"


EVERYTHING_WITH_LABELS = """
[policy]
name = "everything-and-labels"

[[label_policies]]
name = "p"
ess_oid = "2.999.1"
stanag_id = "P"
emit = "ess"
classifications = [{ name = "UNCLASSIFIED", ess = 1, marking = "UNCLASSIFIED" }]

[[rules]]
id = "all"
rev = 1
why = "w"
verdict = "pass"
keep = "everything"
"""


def test_keep_everything_is_refused_beside_label_policies():
    """keep = "everything" passes labels as the sender wrote them, so a policy that judges labels cannot use it."""
    with pytest.raises(PolicyError) as refused:
        compile_policy(EVERYTHING_WITH_LABELS)
    assert "keep = 'everything' does not go with label policies" in str(refused.value)


def test_an_empty_type_leaves_as_the_type_that_was_judged():
    """type='' is judged as the kind's default, and the envelope writes that default, never the sender's empty value."""
    judgement = judge("<message from='romeo@red.example/a' to='juliet@blue.example' type='' id='e1'>"
                      "<body>hi</body></message>")
    assert judgement.verdict is Verdict.PASS
    assert judgement.stanza.getAttribute("type") == "normal"
