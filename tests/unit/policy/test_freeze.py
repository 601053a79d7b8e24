"""A frozen tree cannot change, so the guard may share it instead of copying it; only a handed-over stanza is frozen."""

import glob
import os

import pytest
from twisted.words.xish import domish

from guard.core.pipeline import Direction
from guard.core.policy.cases import load_cases
from guard.core.policy.elements import parse_stanza_text
from guard.core.policy.loader import load_policy

from guard.core.accepted import accept, accepted_from_element
from guard.core.addressing import check_addressing
from guard.core.policy.elements import FrozenElement, freeze
from guard.edges.xmlstream import serialise

from .test_clone import elements_of
from .wire import RED_TO_BLUE, compile_policy, read

STANZA = ("<message from='a@red.example/r' to='b@blue.example' type='chat'>hi<body xml:lang='en'>x &amp; y</body>"
          "<x xmlns='jabber:x:data' type='form'><field var='v'><value>1</value></field></x>tail</message>")

ALLOW_ALL = """
[policy]
name = "everything"

[[rules]]
id = "all"
rev = 1
why = "terminate streams, judge nothing"
verdict = "pass"
keep = "everything"
"""

CHANGES = [
    ("set an attribute", lambda element: element.__setitem__("to", "c@blue.example")),
    ("delete an attribute", lambda element: element.__delitem__("type")),
    ("write the attribute dictionary", lambda element: element.attributes.__setitem__("to", "c@blue.example")),
    ("swap attributes", lambda element: element.swapAttributeValues("from", "to")),
    ("add a child", lambda element: element.addChild(domish.Element((None, "x")))),
    ("add an element", lambda element: element.addElement("subject", content="s")),
    ("add text", lambda element: element.addContent("more")),
    ("add raw XML", lambda element: element.addRawXml("<x/>")),
    ("append to the children", lambda element: element.children.append("more")),
    ("replace the children", lambda element: setattr(element, "children", [])),
    ("replace the attributes", lambda element: setattr(element, "attributes", {})),
    ("rename", lambda element: setattr(element, "name", "iq")),
    ("delete a field", lambda element: delattr(element, "uri")),
    ("declare a prefix", lambda element: element.localPrefixes.__setitem__("p", "urn:p")),
]


@pytest.mark.parametrize("change", [change for _, change in CHANGES], ids=[name for name, _ in CHANGES])
def test_every_element_of_a_frozen_tree_refuses_every_change(change):
    """Each element of a frozen tree raises on every way domish offers to change it, and it reads the same after."""
    stanza = freeze(read(STANZA))
    written = serialise(stanza)
    for element in elements_of(stanza):
        assert element.__class__ is FrozenElement
        with pytest.raises((TypeError, AttributeError)):
            change(element)
    assert serialise(stanza) == written


def test_freezing_keeps_the_stanza_as_it_reads_and_writes():
    """A frozen tree is the same object, reads and serialises as before, and freezing it again changes nothing."""
    stanza = read(STANZA)
    before = serialise(stanza), stanza.toXml()
    assert freeze(stanza) is stanza
    assert (serialise(stanza), stanza.toXml()) == before
    assert freeze(stanza) is stanza and serialise(stanza) == before[0]


def test_freezing_refuses_what_is_neither_text_nor_element_and_makes_str_subclasses_plain():
    """A child that is neither text nor element is refused; text of a str subclass is kept as a plain str."""
    class Marked(str):
        pass

    stanza = read("<message from='a@red.example' to='b@blue.example'><body>x</body></message>")
    stanza.children.append(Marked("tail"))
    freeze(stanza)
    assert stanza.children[-1] == "tail" and stanza.children[-1].__class__ is str
    odd = read("<message from='a@red.example' to='b@blue.example'/>")
    odd.children.append(3)
    with pytest.raises(TypeError):
        freeze(odd)


def test_keep_everything_shares_a_handed_over_stanza_frozen():
    """keep = "everything" on a stanza the relay handed over lets that very tree leave, frozen: no copy."""
    stanza = read(STANZA)
    addressed = check_addressing(stanza, {("red.example", "blue.example")}, {"blue.example"})
    accepted = accept(stanza, addressed, 200, RED_TO_BLUE, handed_over=True)
    judgement = compile_policy(ALLOW_ALL).judge_accepted(accepted, RED_TO_BLUE)
    assert judgement.stanza is stanza and stanza.__class__ is FrozenElement
    assert judgement.actions == ("keep:everything",)


def test_keep_everything_copies_a_stanza_nobody_handed_over_and_leaves_it_changeable():
    """Judged where the caller keeps its stanza (tools, cases), keep = "everything" copies it and freezes nothing."""
    stanza = read(STANZA)
    judgement = compile_policy(ALLOW_ALL).judge_accepted(accepted_from_element(stanza, RED_TO_BLUE), RED_TO_BLUE)
    assert judgement.stanza is not stanza and serialise(judgement.stanza) == serialise(stanza)
    assert judgement.stanza.__class__ is not FrozenElement
    stanza["id"] = "still-mine"  # the caller's tree is still its own to change


def test_a_frozen_stanza_is_shared_even_when_not_handed_over():
    """A tree already frozen (judged again after a reload) cannot change, so it is shared, not copied."""
    stanza = freeze(read(STANZA))
    judgement = compile_policy(ALLOW_ALL).judge_accepted(accepted_from_element(stanza, RED_TO_BLUE), RED_TO_BLUE)
    assert judgement.stanza is stanza


def test_whoever_held_the_attribute_or_prefix_dictionaries_cannot_change_a_frozen_element():
    """A frozen element reads its own copies: writing the dictionaries it had before freezing changes nothing shared."""
    stanza = read(STANZA)
    body = next(element for element in elements_of(stanza) if element.name == "body")
    held_attributes, held_body_attributes = stanza.attributes, body.attributes
    stanza.localPrefixes["p"] = "urn:p"
    held_prefixes = stanza.localPrefixes
    freeze(stanza)
    written = serialise(stanza)
    held_attributes["to"] = "c@blue.example"
    held_body_attributes["onclick"] = "x"
    held_prefixes["q"] = "urn:q"
    assert stanza["to"] == "b@blue.example" and "onclick" not in body.attributes
    assert dict(stanza.localPrefixes) == {"p": "urn:p"}
    assert serialise(stanza) == written


def test_a_tree_that_cannot_be_frozen_is_left_wholly_unfrozen():
    """Something neither text nor element deep inside is refused before any element changes, so a frozen root
    always means a wholly frozen tree (keep = "everything" shares a frozen root without looking inside)."""
    stanza = read(STANZA)
    field = next(element for element in elements_of(stanza) if element.name == "field")
    field.children.append(3)
    with pytest.raises(TypeError):
        freeze(stanza)
    assert all(element.__class__ is not FrozenElement for element in elements_of(stanza))
    stanza["to"] = "c@blue.example"  # still the holder's to change
    field.children.pop()
    assert freeze(stanza) is stanza and all(element.__class__ is FrozenElement for element in elements_of(stanza))


def test_an_element_met_twice_is_frozen_once():
    """A child shared by two parents in one tree is frozen once, and freezing the tree completes."""
    stanza = read("<message from='a@red.example' to='b@blue.example'><a/><b/></message>")
    first, second = [child for child in stanza.children]
    shared = domish.Element((None, "shared"))
    first.children.append(shared)
    second.children.append(shared)
    freeze(stanza)
    assert all(element.__class__ is FrozenElement for element in (stanza, first, second, shared))


POLICIES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "policies")
SHIPPED = sorted(path for path in glob.glob(os.path.join(POLICIES, "*.toml")) if not path.endswith(".tests.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(path) for path in SHIPPED])
def test_every_shipped_policy_judges_a_frozen_stanza_as_it_judges_a_fresh_one(path):
    """A stanza frozen under keep = "everything" and judged again (the far half, a reload, another worker) gets, from
    every shipped policy's cases, the verdict, rule, condition, text and output a fresh parse gets: no policy needs to
    change what it reads."""
    policy = load_policy(path)
    for case in load_cases(path[:-len(".toml")] + ".tests.toml"):
        direction = None
        if "direction" in case:
            source, destination = case["direction"].split("->", 1)
            direction = Direction(source.strip(), destination.strip())
        size = len(case["stanza"].strip().encode("utf-8"))

        def judged(stanza):
            judgement = policy.judge(stanza, direction, size=size)
            written = serialise(judgement.stanza) if judgement.verdict.value == "pass" else None
            return judgement.verdict, judgement.rule_id, judgement.condition, judgement.text, written

        frozen = freeze(parse_stanza_text(case["stanza"]))
        assert judged(frozen) == judged(parse_stanza_text(case["stanza"])), case["name"]
