"""A copy made by ``clone`` is the same stanza and shares nothing with the one received."""

import pytest
from twisted.words.xish import domish

from guard.core.policy.elements import adopt, clone, new_element

from .wire import read


def elements_of(element):
    found = [element]
    for child in element.children:
        if isinstance(child, domish.Element):
            found.extend(elements_of(child))
    return found


def test_a_copy_is_the_same_stanza_sharing_no_element_dictionary_or_list():
    """Every element, attribute dictionary and child list of the copy is new; no element points back at a parent
    (a tree without back references is freed by reference counting, not by the cyclic garbage collector)."""
    stanza = read("<message from='a@red.example/r' to='b@blue.example' type='chat'>hi<body xml:lang='en'>x &amp; y</body>"
                  "<x xmlns='jabber:x:data' type='form'><field var='v'><value>1</value></field></x>tail</message>")
    copy = clone(stanza)
    assert copy.toXml() == stanza.toXml()
    originals, copies = elements_of(stanza), elements_of(copy)
    assert len(originals) == len(copies)
    for original, copied in zip(originals, copies):
        assert copied is not original
        assert copied.attributes is not original.attributes and copied.children is not original.children
        assert all(child.parent is None for child in copied.children if isinstance(child, domish.Element))
    assert copy.parent is None


def test_a_copy_without_text_keeps_its_childrens_text_and_adjacent_texts_are_joined():
    """keep_text=False leaves out only the text directly inside; texts side by side become one, as addContent joins them."""
    stanza = read("<message from='a@red.example/r' to='b@blue.example'>lead<body>hi</body></message>")
    stanza.children.append("one")
    stanza.children.append("two")
    assert [c for c in clone(stanza).children if isinstance(c, str)] == ["lead", "onetwo"]
    assert clone(stanza, keep_text=False).toXml() == clone(stanza).toXml().replace("lead", "").replace("onetwo", "")


def test_a_child_that_is_neither_text_nor_element_is_refused():
    """Anything else inside an element cannot be copied: TypeError, never a copy without it."""
    stanza = read("<message from='a@red.example/r' to='b@blue.example'><body>hi</body></message>")
    stanza.children.append(42)
    with pytest.raises(TypeError):
        clone(stanza)


def test_a_copy_has_the_fields_domish_would_give_it():
    """Each copied element is a plain domish.Element with the fields its constructor would set from the original."""
    stanza = read("<message from='a@red.example/r' to='b@blue.example'><body>hi</body>"
                  "<x xmlns='jabber:x:data'><field var='v'/></x></message>")
    stanza.children[1].localPrefixes = {"p": "urn:example:p"}
    for original, copied in zip(elements_of(stanza), elements_of(clone(stanza))):
        reference = domish.Element((original.uri, original.name), defaultUri=original.defaultUri,
                                   attribs=dict(original.attributes),
                                   localPrefixes=dict(original.localPrefixes) if original.localPrefixes else None)
        assert type(copied) is domish.Element
        assert (copied.uri, copied.name, copied.defaultUri, copied.localPrefixes, copied.attributes) == (
            reference.uri, reference.name, reference.defaultUri, reference.localPrefixes, reference.attributes)


@pytest.mark.parametrize("uri", ["jabber:server", "urn:xmpp:sec-label:0", "", None])
def test_new_element_has_exactly_the_fields_of_the_domish_constructor(uri):
    """new_element(uri, name) is domish.Element((uri, name), defaultUri=uri) field for field, and adopt is addChild
    without the back reference to the parent."""
    made, built = new_element(uri, "body"), domish.Element((uri, "body"), defaultUri=uri)
    assert made.__class__ is domish.Element and vars(made) == vars(built)
    parent = new_element("jabber:server", "message")
    adopt(parent, made)
    assert made.parent is None and parent.children == [made]
