"""
Shapes: what a stanza that passes may carry, and the construction of what
leaves from them.

Nothing that passes the guard is the received tree with pieces cut out.  The
stanza that leaves is built new: an envelope (``from``, ``to``, ``id``,
``type``, ``xml:lang``), then only the children a shape allows, each built
with only the attributes its shape names, its text if the shape allows text,
and its own children if their shapes are listed.  What no shape names does
not leave: a deny-list fails open on what it did not foresee, a shape fails
closed.

Errors have a fixed shape of their own: the ``<error/>`` element's ``type``
and its one defined RFC 6120 condition, empty.  Its ``<text/>``, any
application condition and the payload an error echoes never leave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twisted.words.xish import domish

from guard.core.policy.elements import adopt, child_elements, new_element, text_of
from guard.core.vocabulary import (
    JID_PART_MAX_BYTES, PING_NS, STANZA_ERROR_CONDITIONS, STANZA_ERROR_TYPES, STANZA_ERRORS_NS, STANZA_NAMESPACES,
    XML_LANG,
)

# A language tag as people write one (BCP 47 language, optional script, optional
# region: "en", "en-GB", "zh-Hant-TW"); anything longer (variants, extensions,
# private use: up to 16 subtags of 8 characters of the sender's choosing) is
# free text, and a stanza's xml:lang that is not this shape does not leave.
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?")
# Texts the envelope carries that the sender chooses and no rule judges: the
# id (the far side needs it to match answers to requests), the localpart and
# the resource of each address.  How much of each may cross is bounded, in
# UTF-8 bytes, by ``[policy] id_max_bytes``, ``localpart_max_bytes`` and
# ``resource_max_bytes``: these by default, at most the second figure.
ID_MAX_BYTES = (64, 16 * 1024)
LOCALPART_MAX_BYTES = (64, JID_PART_MAX_BYTES)  # RFC 7622 3.3
RESOURCE_MAX_BYTES = (64, JID_PART_MAX_BYTES)  # RFC 7622 3.4
PRIORITY = re.compile(r"[+-]?[0-9]{1,3}")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
ELEMENT_NAME = re.compile(r"(?:\{(?P<uri>[^{}\s]+)\})?(?P<name>[A-Za-z_][\w.\-]*)")

# The value of ``keep`` that copies a matched stanza whole: only for a guard
# that terminates streams and filters nothing (allow-all).
EVERYTHING = "everything"


@dataclass(eq=False)
class Shape:
    """
    One element that may leave: ``{uri}name`` (``uri`` None: the stanza's own
    namespace), the attributes it keeps (plain names, or ``xml:lang``),
    whether its text is kept, and the shapes of the children it keeps.
    """

    name: str
    uri: str | None
    element: str
    attributes: tuple = ()
    text: bool = False
    children: list = field(default_factory=list)
    # When set, the text is kept only as this function writes it, and an
    # element whose text it refuses (returns None) does not leave at all.
    text_form: object = None

    @property
    def qualified(self) -> str:
        return self.element if self.uri is None else f"{{{self.uri}}}{self.element}"

    def matches(self, element: domish.Element) -> bool:
        if element.name != self.element:
            return False
        return element.uri in STANZA_NAMESPACES if self.uri is None else element.uri == self.uri

    def build(self, element: domish.Element, stanza_uri: str) -> domish.Element | None:
        """A new element holding only what this shape allows of ``element`` (None: its text has not the shape's form)."""
        text = text_of(element) if self.text else ""
        if self.text_form is not None:
            text = self.text_form(text)
            if text is None:
                return None
        uri = stanza_uri if self.uri is None else self.uri
        built = new_element(uri, self.element)
        for attribute in self.attributes:
            if attribute == "xml:lang":
                _copy_language(element, built)
                continue
            value = element.attributes.get(attribute)
            if isinstance(value, str):
                built.attributes[attribute] = value
        if text:
            built.addContent(text)
        if self.children:
            for child in kept_children(element, self.children, stanza_uri):
                adopt(built, child)
        return built


def kept_children(element: domish.Element, shapes, stanza_uri: str, elements=None) -> list:
    """Each child of ``element`` a shape in ``shapes`` allows, built by the first shape that matches it
    (``elements``: its element children, when the caller has listed them already)."""
    kept = []
    for child in child_elements(element) if elements is None else elements:
        for shape in shapes:
            if shape.matches(child):
                built = shape.build(child, stanza_uri)
                if built is not None:
                    kept.append(built)
                break
    return kept


@dataclass(frozen=True)
class EnvelopeBounds:
    """The UTF-8 bytes of an id, and of the localpart and resource of ``from`` and ``to``, that may cross."""

    id: int = ID_MAX_BYTES[0]
    localpart: int = LOCALPART_MAX_BYTES[0]
    resource: int = RESOURCE_MAX_BYTES[0]

    def exceeded(self, accepted) -> str | None:
        """Which bound ``accepted`` exceeds ("id", "localpart" or "resource"), or None when it is within all."""
        identifier = accepted.element.attributes.get("id")
        if identifier is not None and (not isinstance(identifier, str) or _over(identifier, self.id)):
            return "id"
        sender, recipient = accepted.sender, accepted.recipient
        if _over(sender.user or "", self.localpart) or _over(recipient.user or "", self.localpart):
            return "localpart"
        if _over(sender.resource or "", self.resource) or _over(recipient.resource or "", self.resource):
            return "resource"
        return None


def _over(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` UTF-8 bytes (1 to 4 bytes a character: encoded only when in doubt)."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def priority_text(text: str) -> str | None:
    """A presence priority as RFC 6121 4.7.2.3 defines it (an integer from -128 to 127), written plainly; else None."""
    stripped = text.strip(" \t\r\n")
    if not PRIORITY.fullmatch(stripped) or not -128 <= int(stripped) <= 127:
        return None
    return str(int(stripped))


def _copy_language(source: domish.Element, target: domish.Element) -> None:
    language = source.attributes.get(XML_LANG)
    if isinstance(language, str) and LANGUAGE_TAG.fullmatch(language):
        target.attributes[XML_LANG] = language


def built_in_shapes() -> dict:
    """The shapes every policy may name without declaring them (RFC 6120/6121 and XEP-0199)."""
    return {
        "body": Shape("body", None, "body", ("xml:lang",), text=True),
        "subject": Shape("subject", None, "subject", ("xml:lang",), text=True),
        "thread": Shape("thread", None, "thread", ("parent",), text=True),
        "status": Shape("status", None, "status", ("xml:lang",), text=True),
        "priority": Shape("priority", None, "priority", (), text=True, text_form=priority_text),
        "ping": Shape("ping", PING_NS, "ping"),
    }


def envelope(accepted) -> domish.Element:
    """
    The stanza element that leaves, without children: kind, the addresses as
    the strict parser read them, ``id``, ``type`` and a well-formed ``xml:lang``.
    """
    element = accepted.element
    built = new_element(element.uri, element.name)
    attributes = built.attributes
    attributes["from"] = accepted.sender.full()
    attributes["to"] = accepted.recipient.full()
    value = element.attributes.get("id")
    if isinstance(value, str):
        attributes["id"] = value
    if "type" in element.attributes:
        attributes["type"] = accepted.type  # the type that was judged (type='' is the kind's default)
    if XML_LANG in element.attributes:
        _copy_language(element, built)
    return built


@dataclass(frozen=True)
class ReducedError:
    """The ``<error/>`` that leaves, or ``None`` with the reason none can be built."""

    element: domish.Element | None
    reason: str


def reduced_error(stanza: domish.Element) -> ReducedError:
    """
    ``<error type='T'><condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>``
    built from ``stanza``'s one ``<error/>``: its type must be one RFC 6120
    defines and it must hold exactly one defined condition.  Anything else
    (no error, two, an unknown type, no or two conditions) cannot be reduced.
    """
    errors = [c for c in child_elements(stanza) if c.name == "error" and c.uri in STANZA_NAMESPACES]
    if len(errors) != 1:
        return ReducedError(None, f"an error stanza holds {len(errors)} <error/> elements, expected one")
    error = errors[0]
    error_type = error.getAttribute("type")
    if error_type not in STANZA_ERROR_TYPES:
        return ReducedError(None, "the <error/> type is not one RFC 6120 defines")
    conditions = [c.name for c in child_elements(error)
                  if c.uri == STANZA_ERRORS_NS and c.name in STANZA_ERROR_CONDITIONS]
    if len(conditions) != 1:
        return ReducedError(None, f"the <error/> holds {len(conditions)} defined conditions, expected one")
    built = domish.Element((stanza.uri, "error"), defaultUri=stanza.uri)
    built["type"] = error_type
    built.addElement((STANZA_ERRORS_NS, conditions[0]), defaultUri=STANZA_ERRORS_NS)
    return ReducedError(built, f"error reduced to {error_type}/{conditions[0]}")


def parse_element_name(text: str):
    """``(uri or None, name)`` of ``{uri}name`` or ``name``; ``None`` when malformed."""
    if not isinstance(text, str):
        return None
    found = ELEMENT_NAME.fullmatch(text)
    if found is None:
        return None
    return found.group("uri"), found.group("name")
