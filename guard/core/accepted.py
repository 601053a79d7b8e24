"""
The accepted stanza: one value, built once after addressing, that the policy,
folding, bounces, the audit and the serialiser all read.

Its facts are settled here and nowhere else: the stanza kind, its type (with
RFC 6120's defaults), the sender and recipient parsed once by the strict
parser of ``guard.core.addressing``, the size the stream parser measured on
the wire, the domain pair and the direction of crossing.  Two parsers, or two
ways of measuring, that disagree would be a bypass waiting to happen; so every
reader takes them from this value.

Where no stream parser was involved (a policy's test cases, ``guard
explain``, the fuzzer) ``accepted_from_element`` builds the same value from
an element, applying the same strict checks, and measures the text it was
written in when that is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from guard.core.addressing import parse_jid
from guard.core.vocabulary import DEFAULT_TYPES, KIND_TYPES, STANZA_NAMES, STANZA_NAMESPACES


class AcceptedStanza(NamedTuple):
    """A stanza whose addressing holds, with the facts every later stage reads (immutable)."""

    element: domish.Element
    kind: str
    type: str
    sender: jid.JID
    recipient: jid.JID
    size: int
    direction: object = None

    @property
    def pair(self) -> tuple[str, str]:
        """(sending domain, receiving domain)."""
        return (self.sender.host, self.recipient.host)

    @property
    def is_error(self) -> bool:
        return self.type == "error"

    @property
    def type_is_known(self) -> bool:
        """Whether ``type`` is one RFC 6120/6121 defines for this kind (an unknown one never passes)."""
        return self.type in KIND_TYPES[self.kind]


@dataclass(frozen=True)
class NotAccepted:
    """An element that is not a stanza the guard can judge: ``rule`` and ``text`` say why."""

    element: object
    rule: str
    text: str


NOT_A_STANZA = "guard:not-a-stanza"
BAD_ADDRESS = "guard:bad-address"


def stanza_type(element: domish.Element) -> str:
    """The ``type`` attribute, or the kind's default when there is none."""
    return element.getAttribute("type") or DEFAULT_TYPES.get(element.name, "")


def accept(element: domish.Element, addressed, size: int, direction=None) -> AcceptedStanza:
    """The accepted value of a stanza that ``check_addressing`` accepted (``addressed``), ``size`` wire bytes."""
    return AcceptedStanza(element, element.name, stanza_type(element), addressed.sender, addressed.recipient,
                          size, direction)


def accepted_from_element(element, direction=None, size: int | None = None) -> AcceptedStanza | NotAccepted:
    """
    The accepted value of ``element`` when no stream parser saw it: the kind
    and addresses are checked as ``check_addressing`` checks them (strict JID
    parser); ``size`` is the length in bytes of the text it was read from,
    or, when unknown, of its serialisation.
    """
    if not isinstance(element, domish.Element) or element.name not in STANZA_NAMES \
            or element.uri not in STANZA_NAMESPACES:
        name = getattr(element, "name", type(element).__name__)
        return NotAccepted(element, NOT_A_STANZA, f"not a stanza: {name}")
    sender = parse_jid(element.getAttribute("from"))
    recipient = parse_jid(element.getAttribute("to"))
    if sender is None or recipient is None:
        return NotAccepted(element, BAD_ADDRESS, "missing or malformed from/to")
    if size is None:
        size = len(element.toXml().encode("utf-8"))
    return AcceptedStanza(element, element.name, stanza_type(element), sender, recipient, size, direction)
