"""
Small, pure helpers over ``domish`` elements: copying, text, element
patterns such as ``{urn:xmpp:receipts}*``, and reading a stanza written as
XML text (policy test cases and ``guard explain``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.words.xish import domish

from guard.core.vocabulary import SERVER_NS, STANZA_NAMESPACES

_PATTERN = re.compile(r"^(?:\{(?P<uri>[^{}\s]+)\})?(?P<name>\*|[^{}/@#\s*]+)$")


class ElementPatternError(ValueError):
    """An element pattern that cannot be read."""


@dataclass(frozen=True)
class ElementPattern:
    """
    Names child elements: ``{namespace}name``, ``{namespace}*`` or ``name``
    (a name without namespace means the stanza's own namespace).
    """

    uri: str | None
    name: str
    text: str

    @classmethod
    def parse(cls, text: str) -> "ElementPattern":
        if not isinstance(text, str):
            raise ElementPatternError(f"element pattern must be a string, not {text!r}")
        found = _PATTERN.match(text)
        if found is None:
            raise ElementPatternError(f"{text!r} is not {{namespace}}name, {{namespace}}* or name")
        return cls(found.group("uri"), found.group("name"), text)

    def matches(self, element: domish.Element) -> bool:
        if self.uri is None:
            if element.uri not in STANZA_NAMESPACES:
                return False
        elif element.uri != self.uri:
            return False
        return self.name == "*" or element.name == self.name


def child_elements(element: domish.Element):
    """The element children of ``element``, in order (text nodes skipped)."""
    return [child for child in element.children if isinstance(child, domish.Element)]


def text_of(element: domish.Element) -> str:
    """All text directly inside ``element``, joined."""
    return "".join(child for child in element.children if isinstance(child, str))


_new_element = object.__new__


def new_element(uri: str | None, name: str) -> domish.Element:
    """
    ``domish.Element((uri, name), defaultUri=uri)`` with its fields set
    directly, in a third of the time: in ``uri``, its default, with no
    prefixes, attributes or children.
    """
    element = _new_element(domish.Element)
    element.uri = element.defaultUri = uri
    element.name = name
    element.localPrefixes = {}
    element.attributes = {}
    element.children = []
    element.parent = None
    return element


def adopt(parent: domish.Element, child: domish.Element) -> None:
    """
    ``parent.addChild(child)`` for an element the guard built, without a
    zope.interface lookup and without pointing ``child`` back at ``parent``:
    nothing reads ``parent``, and a tree without back references is no
    reference cycle, so it is freed when its last holder lets go rather than
    by the cyclic garbage collector (as the parser's trees, ParsedElement).
    """
    parent.children.append(child)


def clone(element: domish.Element, skip=None, keep_text=True) -> domish.Element:
    """
    A deep copy of ``element`` that shares nothing with it.

    ``skip`` (a predicate over direct children) leaves matching children out;
    ``keep_text=False`` leaves out text directly inside ``element`` (its
    children keep theirs).
    """
    # The fields domish.Element((uri, name), defaultUri, attribs, localPrefixes) would set, set directly.
    copy = _new_element(domish.Element)
    copy.uri, copy.name = element.uri, element.name
    copy.localPrefixes = dict(element.localPrefixes) if element.localPrefixes else {}
    default = element.defaultUri
    if default is None and copy.uri not in copy.localPrefixes.values():
        default = copy.uri
    copy.defaultUri = default
    copy.attributes = dict(element.attributes)
    copy.children = []
    copy.parent = None
    # The children are appended directly (addChild and addContent would ask
    # zope.interface about each one): adjacent texts are joined as addContent
    # joins them, and anything neither text nor element is refused.
    children = copy.children
    for child in element.children:
        if child.__class__ is str:
            if not keep_text:
                continue
            if children and children[-1].__class__ is str:
                children[-1] += child
            else:
                children.append(child)
        elif isinstance(child, domish.Element):
            if skip is not None and skip(child):
                continue
            children.append(clone(child))  # no back reference: see adopt
        elif isinstance(child, str):  # a str subclass: as addContent would take it
            if keep_text:
                copy.addContent(str(child))
        else:
            raise TypeError(f"cannot copy {type(child).__name__} inside an element")
    return copy


class SealedElement(domish.Element):
    """
    An element the guard built from its own constants and never changes
    once sealed: its mutators raise, copies (``sealed_copy``) share its
    children, and the wire serialiser writes it from the text it remembers
    in ``written`` (a one-item list shared by every copy, filled by the
    serialiser the first time it writes one of them).
    """

    def _sealed(self, *_arguments, **_keywords):
        raise TypeError("a sealed element cannot be changed")

    __setitem__ = __delitem__ = addChild = addElement = addContent = addRawXml = addUniqueId = _sealed
    swapAttributeValues = _sealed


def seal(element: domish.Element) -> SealedElement:
    """A deep copy of ``element`` (elements and text only) in which every element is sealed."""
    copy = _new_element(SealedElement)
    copy.uri, copy.name = element.uri, element.name
    copy.localPrefixes = dict(element.localPrefixes) if element.localPrefixes else {}
    copy.defaultUri = element.defaultUri
    copy.attributes = dict(element.attributes)
    copy.children = []
    copy.parent = None
    copy.written = [None]
    for child in element.children:
        if isinstance(child, domish.Element):
            child = seal(child)
            child.parent = copy
        elif isinstance(child, str):
            child = str(child)
        else:
            raise TypeError(f"cannot seal {type(child).__name__} inside an element")
        copy.children.append(child)
    return copy


def sealed_copy(sealed: SealedElement) -> SealedElement:
    """A new sealed element for one stanza: its own attributes and parent, the children and the remembered text shared."""
    copy = _new_element(SealedElement)
    copy.uri, copy.name = sealed.uri, sealed.name
    copy.localPrefixes = dict(sealed.localPrefixes)
    copy.defaultUri = sealed.defaultUri
    copy.attributes = dict(sealed.attributes)
    copy.children = sealed.children
    copy.parent = None
    copy.written = sealed.written
    return copy


class StanzaTextError(ValueError):
    """XML text that is not exactly one well-formed stanza."""


MAX_STANZA_TEXT = 256 * 1024


def parse_stanza_text(text: str, namespace: str = SERVER_NS) -> domish.Element:
    """
    Read one stanza written as XML; elements without a namespace are in
    ``namespace`` (as on an S2S stream).  Raises ``StanzaTextError``.
    """
    if not isinstance(text, str):
        raise StanzaTextError("stanza text must be a string")
    if len(text) > MAX_STANZA_TEXT:
        raise StanzaTextError(f"stanza text longer than {MAX_STANZA_TEXT} characters")
    if "<!" in text or "<?" in text:
        raise StanzaTextError("no DTD, entity declaration, comment or processing instruction allowed")
    found: list[domish.Element] = []
    problems: list[str] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    wrapper = f"<stream xmlns='{namespace}'>"
    try:
        stream.parse(wrapper.encode("utf-8"))
        stream.parse(text.strip().encode("utf-8"))
        stream.parse(b"</stream>")
    except Exception as problem:  # noqa: BLE001 - any parser failure means "not a stanza"
        problems.append(str(problem) or problem.__class__.__name__)
    if problems:
        raise StanzaTextError(f"not well-formed XML: {problems[0]}")
    if len(found) != 1:
        raise StanzaTextError(f"expected exactly one stanza, found {len(found)}")
    return found[0]
