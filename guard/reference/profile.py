"""
The reference HAG's allow-list profile and its check: pure, no I/O.

The HAG does not trust the guard's parser.  Each stanza is serialised and
parsed again by an independent parser (the standard library's expat through
defusedxml, with DTDs, entities and external references forbidden) into an
ElementTree, and that tree is checked:

    evaluation order: the first failed check drops the stanza; a stanza
    passes only if every check passes (default deny)

1. the serialised stanza is at most ``limits.stanza_bytes`` bytes;
2. it parses (well-formed, no DTD, no entities) as exactly one element;
3. nesting depth at most ``limits.depth``; elements at most ``limits.elements``;
   each text at most ``limits.text_bytes``;
4. every element's (namespace, name) is listed in ``[elements]`` (a name of
   ``*`` permits every element of that namespace);
5. every attribute of an element is in that element's list.

What passes is rebuilt from the HAG's own tree, not from the guard's.

Profile file (TOML)::

    [limits]
    stanza_bytes = 65536
    depth = 8
    elements = 64
    text_bytes = 16384

    [elements]
    "jabber:server message" = ["from", "to", "id", "type", "xml:lang"]
    "urn:ietf:params:xml:ns:xmpp-stanzas *" = []
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from xml.etree import ElementTree

from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException
from twisted.words.xish import domish

XML_NS = "http://www.w3.org/XML/1998/namespace"


class ProfileError(Exception):
    """The profile file is unusable; str() names the file and the key."""


@dataclass(frozen=True)
class ProfileLimits:
    stanza_bytes: int = 64 * 1024
    depth: int = 8
    elements: int = 64
    text_bytes: int = 16 * 1024


@dataclass(frozen=True)
class Profile:
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    elements: dict = field(default_factory=dict)  # (namespace, name) -> frozenset of attribute names


@dataclass(frozen=True)
class Check:
    """The outcome: ``stanza`` (rebuilt from the HAG's own parse) when it passes, else ``reason``."""

    passed: bool
    reason: str
    stanza: domish.Element | None = None


def load_profile(path: str) -> Profile:
    try:
        with open(path, "rb") as source:
            document = tomllib.load(source)
    except OSError as problem:
        raise ProfileError(f"{path}: cannot read: {problem.strerror}") from problem
    except tomllib.TOMLDecodeError as problem:
        raise ProfileError(f"{path}: not valid TOML: {problem}") from problem
    unknown = set(document) - {"limits", "elements"}
    if unknown:
        raise ProfileError(f"{path}: {sorted(unknown)[0]}: unknown key (known: elements, limits)")
    raw_limits = document.get("limits", {})
    values = {}
    for name, value in raw_limits.items():
        if name not in ProfileLimits.__dataclass_fields__:
            raise ProfileError(f"{path}: limits.{name}: unknown limit")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ProfileError(f"{path}: limits.{name}: must be a whole number greater than zero")
        values[name] = value
    elements = {}
    for key, attributes in document.get("elements", {}).items():
        namespace, _, name = key.rpartition(" ")
        if not namespace or not name:
            raise ProfileError(f'{path}: elements."{key}": must be "namespace name"')
        if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
            raise ProfileError(f'{path}: elements."{key}": must be a list of attribute names')
        elements[(namespace, name)] = frozenset(attributes)
    if not elements:
        raise ProfileError(f"{path}: elements: an empty profile permits nothing")
    return Profile(ProfileLimits(**values), elements)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def _attribute_name(key: str) -> str:
    namespace, name = _split(key)
    if namespace == XML_NS:
        return "xml:" + name
    return f"{namespace} {name}" if namespace else name


def check_stanza(serialised: bytes, profile: Profile) -> Check:
    """Parse ``serialised`` independently and check it against ``profile``."""
    limits = profile.limits
    if len(serialised) > limits.stanza_bytes:
        return Check(False, f"size: {len(serialised)} bytes > {limits.stanza_bytes}")
    # The stanza was written for a jabber:server stream: give it that default namespace.
    wrapped = b"<hag-wrapper xmlns='jabber:server'>" + serialised + b"</hag-wrapper>"
    try:
        root = SafeElementTree.fromstring(wrapped, forbid_dtd=True, forbid_entities=True,
                                          forbid_external=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as problem:
        return Check(False, f"not well-formed: {problem}")
    children = list(root)
    if len(children) != 1 or (root.text or "").strip() or (children[0].tail or "").strip():
        return Check(False, "not exactly one element")
    stanza = children[0]
    count = 0
    stack = [(stanza, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if depth > limits.depth:
            return Check(False, f"depth: more than {limits.depth}")
        if count > limits.elements:
            return Check(False, f"elements: more than {limits.elements}")
        namespace, name = _split(element.tag)
        allowed = profile.elements.get((namespace, name))
        if allowed is None:
            allowed = profile.elements.get((namespace, "*"))
        if allowed is None:
            return Check(False, f"element not permitted: {{{namespace}}}{name}")
        for key in element.attrib:
            attribute = _attribute_name(key)
            if attribute not in allowed:
                return Check(False, f"attribute not permitted: {attribute} on {{{namespace}}}{name}")
        for text in (element.text, element.tail if depth > 1 else None):
            if text and len(text.encode("utf-8")) > limits.text_bytes:
                return Check(False, f"text: more than {limits.text_bytes} bytes")
        stack.extend((child, depth + 1) for child in element)
    return Check(True, "permitted", _to_domish(stanza))


def _to_domish(element) -> domish.Element:
    namespace, name = _split(element.tag)
    built = domish.Element((namespace or None, name))
    for key, value in element.attrib.items():
        attribute_namespace, attribute = _split(key)
        built.attributes[(attribute_namespace, attribute) if attribute_namespace else attribute] = value
    if element.text:
        built.addContent(element.text)
    for child in element:
        built.addChild(_to_domish(child))
        if child.tail:
            built.addContent(child.tail)
    return built
