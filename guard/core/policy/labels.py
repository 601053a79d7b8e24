"""
Security labels (XEP-0258): reading them off a stanza, giving them meaning
under a label policy (a SPIF-like description in the policy file), deciding
whether a clearance dominates them, translating them between two label
policies and writing them back for the far side.

Formats understood inside ``<label/>``: ESS security labels
(``urn:xmpp:sec-label:ess:0``, base64 DER ``ESSSecurityLabel``), NATO
STANAG 4774 confidentiality labels, and the empty ``<label/>`` meaning
"the default label".  Anything else is a label we cannot read, which never
passes a label check.

Labels are read strictly, so that the guard and any strict consumer read
the same value: ESS must be canonical base64 of canonical DER (it encodes
back to exactly what was received); ``<securitylabel/>`` and STANAG 4774
labels may hold only the parts their format defines, each once, no stray
attributes or text, within ``MAX_SECURITYLABEL_BYTES``.  Every
``<equivalentlabel/>`` is read and judged too.  Nothing the sender wrote
leaves: the label that leaves is written by the guard from the value it
judged, its display marking taken from the label policy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass, field

from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1_modules import rfc2634
from twisted.words.xish import domish

from guard.core.policy.elements import child_elements
from guard.core.policy.memory import BoundedMemory
from guard.core.vocabulary import SEC_LABEL_ESS_NS, SEC_LABEL_NS, STANAG_4774_NS

MAX_DER_BYTES = 4096
MAX_CATEGORIES = 64
ESS_CACHE_SIZE = 1024  # distinct ESS labels remembered (each at most ~5.5 KB of text)
MAX_EQUIVALENT_LABELS = 4  # <equivalentlabel/> elements in one <securitylabel/>
# Names, attribute names and values, and text inside one <securitylabel/>, in
# UTF-8 bytes: room for a label and its equivalents, never a place to carry data.
MAX_SECURITYLABEL_BYTES = 8192

CATEGORY_TYPES = ("restrictive", "permissive", "informative")
LABEL_FORMATS = ("ess", "stanag4774")
STANAG_CATEGORY_TYPES = frozenset(t.upper() for t in CATEGORY_TYPES)
DISPLAY_MARKING_ATTRIBUTES = frozenset({"fgcolor", "bgcolor"})
XML_SPACE = " \t\r\n"


# --- what is on the wire -----------------------------------------------------


@dataclass(frozen=True)
class WireLabel:
    """
    The content of one ``<label/>`` or ``<equivalentlabel/>`` as read, before
    any policy gives it meaning.

    ``categories`` holds ``("ess", type-oid, value-der-hex)`` or
    ``("stanag4774", tag-name, value)`` triples.
    """

    format: str  # "ess", "stanag4774" or "default"
    policy_identifier: str | None = None
    classification: str | None = None
    categories: frozenset = frozenset()


class LabelFormatError(ValueError):
    """
    A label whose content cannot be read.  Its message is a constant of
    this module (what the peer wrote is never repeated in it).
    """


def _without_attributes(element: domish.Element, allowed=frozenset()) -> None:
    """Refuse any attribute the label format does not define here."""
    if element.attributes and any(name not in allowed for name in element.attributes):
        raise LabelFormatError(f"unexpected attribute on {element.name}")


def _without_text(element: domish.Element) -> None:
    """Refuse text (other than XML white space) where the format puts only elements."""
    for child in element.children:
        if isinstance(child, str) and child.strip(XML_SPACE):
            raise LabelFormatError(f"text inside {element.name}")


def _only_text(element: domish.Element) -> str:
    """The text of an element that holds text only: no attributes, no child elements."""
    _without_attributes(element)
    if any(not isinstance(child, str) for child in element.children):
        raise LabelFormatError(f"elements inside {element.name}")
    return "".join(element.children).strip(XML_SPACE)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _within_budget(securitylabel: domish.Element) -> None:
    """
    Refuse a ``<securitylabel/>`` whose names, attributes and text exceed
    ``MAX_SECURITYLABEL_BYTES`` in UTF-8 (counted without recursion, stopping
    as soon as the budget is spent).
    """
    spent = 0
    pending = [securitylabel]
    while pending:
        element = pending.pop()
        spent += _utf8_length(element.name)
        for name, value in element.attributes.items():
            spent += _utf8_length(name[1] if isinstance(name, tuple) else name) + _utf8_length(value)
        for child in element.children:
            if isinstance(child, str):
                spent += _utf8_length(child)
            else:
                pending.append(child)
        if spent > MAX_SECURITYLABEL_BYTES:
            raise LabelFormatError(f"securitylabel larger than {MAX_SECURITYLABEL_BYTES} bytes")


def read_label_content(holder: domish.Element, empty_is_default: bool = True) -> WireLabel:
    """
    Read the one label format inside ``<label/>`` or ``<equivalentlabel/>``.

    Only an empty ``<label/>`` means the default label; an empty
    ``<equivalentlabel/>`` (``empty_is_default=False``) is unreadable.
    """
    _without_attributes(holder)
    _without_text(holder)
    content = child_elements(holder)
    if not content:
        if not empty_is_default:
            raise LabelFormatError(f"empty {holder.name}")
        return WireLabel("default")
    if len(content) != 1:
        raise LabelFormatError(f"{holder.name} holds {len(content)} elements, expected one")
    inner = content[0]
    if inner.uri == SEC_LABEL_ESS_NS and inner.name == "esssecuritylabel":
        return read_ess(_only_text(inner))
    if inner.uri == STANAG_4774_NS:
        return read_stanag_4774(inner)
    raise LabelFormatError("unknown label format")


def read_ess(text: str) -> WireLabel:
    """Decode a base64 DER ``ESSSecurityLabel`` (RFC 2634)."""
    compact = re.sub("[ \t\r\n]+", "", text)
    if not compact:
        raise LabelFormatError("empty ESS label")
    if len(compact) > MAX_DER_BYTES * 4 // 3 + 4:
        raise LabelFormatError("ESS label too long")
    return _decode_ess(compact)


@functools.lru_cache(maxsize=ESS_CACHE_SIZE)
def _decode_ess(compact: str) -> WireLabel:
    """
    Decode base64 DER, strictly: the value must encode back to exactly the
    bytes received (and those to exactly the base64 received, white space
    aside), so non-zero padding bits, duplicate or unsorted SET members, long-form or
    indefinite lengths and padded integers or identifiers (which a lenient
    decoder reads one way and a strict consumer another) make it unreadable.

    Remembered, because a deployment sees few distinct labels and DER
    decoding is most of the cost of judging a labelled stanza.  The result
    is immutable; failures raise and are not remembered.
    """
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise LabelFormatError("ESS label is not base64") from None
    if base64.b64encode(der).decode("ascii") != compact:
        raise LabelFormatError("ESS label is not canonical base64")
    try:
        decoded, rest = der_decoder.decode(der, asn1Spec=rfc2634.ESSSecurityLabel())
    except Exception:  # noqa: BLE001 - pyasn1 raises more than PyAsn1Error (OverflowError on huge lengths): unreadable
        raise LabelFormatError("ESS label is not DER ESSSecurityLabel") from None
    if rest:
        raise LabelFormatError("trailing bytes after the ESS label")
    try:
        canonical = der_encoder.encode(decoded)
    except Exception:  # noqa: BLE001 - whatever the encoder refuses is unreadable, never passed
        raise LabelFormatError("ESS label is not DER ESSSecurityLabel") from None
    if canonical != der:
        raise LabelFormatError("ESS label is not canonical DER (it does not encode back to the bytes received)")
    policy = str(decoded["security-policy-identifier"])
    classification = None
    if decoded["security-classification"].isValue:
        classification = str(int(decoded["security-classification"]))
    categories = set()
    if decoded["security-categories"].isValue:
        if len(decoded["security-categories"]) > MAX_CATEGORIES:
            raise LabelFormatError("too many ESS categories")
        for category in decoded["security-categories"]:
            value = bytes(category["value"].asOctets()).hex()
            found = ("ess", str(category["type"]), value)
            if found in categories:
                raise LabelFormatError("ESS category repeated")
            categories.add(found)
    return WireLabel("ess", policy, classification, frozenset(categories))


def _stanag_children(element: domish.Element, allowed) -> dict:
    """
    The children of a STANAG 4774 element grouped by name, refusing text,
    attributes and any child not in ``allowed`` (or in another namespace).
    """
    _without_text(element)
    grouped = {name: [] for name in allowed}
    for child in child_elements(element):
        if child.uri != STANAG_4774_NS or child.name not in allowed:
            raise LabelFormatError(f"unexpected element inside STANAG 4774 {element.name}")
        grouped[child.name].append(child)
    return grouped


def _one_value(grouped: dict, name: str) -> str:
    found = grouped[name]
    if len(found) != 1:
        raise LabelFormatError(f"STANAG 4774 label needs exactly one {name}")
    value = _only_text(found[0])
    if not value:
        raise LabelFormatError(f"STANAG 4774 {name} must not be empty")
    return value


def read_stanag_4774(element: domish.Element) -> WireLabel:
    """
    Read a STANAG 4774 confidentiality label (its ConfidentialityInformation),
    strictly: only the elements and attributes below, each once, text only
    in leaves.  ``ConfidentialityLabel`` holds one ``ConfidentialityInformation``
    (which may also stand alone), holding one ``PolicyIdentifier``, one
    ``Classification`` and ``Category`` elements (attributes ``TagName`` and
    optionally ``Type``, each tag once), each holding distinct ``GenericValue``s.
    """
    if element.name == "ConfidentialityLabel":
        _without_attributes(element)
        information = _stanag_children(element, ("ConfidentialityInformation",))["ConfidentialityInformation"]
        if len(information) != 1:
            raise LabelFormatError("STANAG 4774 label needs exactly one ConfidentialityInformation")
        information = information[0]
    elif element.name == "ConfidentialityInformation":
        information = element
    else:
        raise LabelFormatError("unknown STANAG 4774 element")
    _without_attributes(information)
    grouped = _stanag_children(information, ("PolicyIdentifier", "Classification", "Category"))
    policy = _one_value(grouped, "PolicyIdentifier")
    classification = _one_value(grouped, "Classification")
    if len(grouped["Category"]) > MAX_CATEGORIES:
        raise LabelFormatError("too many STANAG 4774 categories")
    categories, tags = set(), set()
    for category in grouped["Category"]:
        _without_attributes(category, frozenset({"TagName", "Type"}))
        tag = category.getAttribute("TagName")
        if not tag or tag.strip(XML_SPACE) != tag:
            raise LabelFormatError("STANAG 4774 Category without a TagName")
        if tag in tags:
            raise LabelFormatError("STANAG 4774 Category repeated")
        tags.add(tag)
        if category.hasAttribute("Type") and category["Type"] not in STANAG_CATEGORY_TYPES:
            raise LabelFormatError("STANAG 4774 Category of unknown Type")
        values = _stanag_children(category, ("GenericValue",))["GenericValue"]
        if not values:
            raise LabelFormatError("STANAG 4774 Category without GenericValue")
        for value_element in values:
            value = _only_text(value_element)
            if not value:
                raise LabelFormatError("STANAG 4774 GenericValue must not be empty")
            if ("stanag4774", tag, value) in categories:
                raise LabelFormatError("STANAG 4774 GenericValue repeated")
            categories.add(("stanag4774", tag, value))
            if len(categories) > MAX_CATEGORIES:
                raise LabelFormatError("too many STANAG 4774 categories")
    return WireLabel("stanag4774", policy, classification, frozenset(categories))


@dataclass(frozen=True)
class StanzaLabel:
    """
    What XEP-0258 markup the outer stanza carries (only its direct children
    count: a label inside ``<forwarded/>`` or a carbon is content, not the
    stanza's label).  ``equivalents`` are the ``<equivalentlabel/>``s, read;
    the sender's ``<displaymarking/>`` is checked for shape and otherwise
    ignored (the marking that leaves is the label policy's).
    """

    count: int
    element: domish.Element | None = None
    label: WireLabel | None = None
    equivalents: tuple = ()
    problem: str | None = None

    @property
    def present(self) -> bool:
        return self.count > 0


NO_LABEL = StanzaLabel(0)


def outer_securitylabels(stanza: domish.Element) -> list:
    """The ``<securitylabel/>`` direct children of a stanza (the only ones that label it), unread."""
    return [
        child
        for child in stanza.children
        if isinstance(child, domish.Element) and child.uri == SEC_LABEL_NS and child.name == "securitylabel"
    ]


def read_stanza_label(stanza: domish.Element, size: int | None = None) -> StanzaLabel:
    """
    Find and read the outer ``<securitylabel/>`` of a stanza.  ``size``, when
    known, is the stanza's length in wire bytes: within
    ``MAX_SECURITYLABEL_BYTES`` no part of it can spend that budget (a name,
    attribute value or text read is never longer than what it was read
    from), so the label's bytes are not counted again.
    """
    found = outer_securitylabels(stanza)
    if not found:
        return NO_LABEL
    if len(found) > 1:
        return StanzaLabel(len(found), found[0], problem="more than one securitylabel")
    element = found[0]
    try:
        label, equivalents = _read_securitylabel(element, size is None or size > MAX_SECURITYLABEL_BYTES)
    except LabelFormatError as problem:
        return StanzaLabel(1, element, problem=str(problem))
    return StanzaLabel(1, element, label, equivalents)


def _read_securitylabel(element: domish.Element, count_bytes: bool = True) -> tuple[WireLabel, tuple]:
    """
    Read ``<securitylabel/>`` strictly: within ``MAX_SECURITYLABEL_BYTES``
    (counted unless ``count_bytes`` is false), no attributes, no text, at
    most one ``<displaymarking/>`` (text only, ``fgcolor``/``bgcolor``),
    exactly one ``<label/>`` and at most ``MAX_EQUIVALENT_LABELS``
    ``<equivalentlabel/>``s; anything else makes the whole label unreadable.
    """
    if count_bytes:
        _within_budget(element)
    _without_attributes(element)
    _without_text(element)
    parts = {"displaymarking": [], "label": [], "equivalentlabel": []}
    for child in child_elements(element):
        if child.uri != SEC_LABEL_NS or child.name not in parts:
            raise LabelFormatError("unexpected element inside securitylabel")
        parts[child.name].append(child)
    if len(parts["displaymarking"]) > 1:
        raise LabelFormatError("more than one displaymarking")
    for marking in parts["displaymarking"]:
        _without_attributes(marking, DISPLAY_MARKING_ATTRIBUTES)
        if child_elements(marking):
            raise LabelFormatError("elements inside displaymarking")
    if len(parts["label"]) != 1:
        raise LabelFormatError(f"securitylabel holds {len(parts['label'])} label elements, expected one")
    if len(parts["equivalentlabel"]) > MAX_EQUIVALENT_LABELS:
        raise LabelFormatError(f"more than {MAX_EQUIVALENT_LABELS} equivalentlabel elements")
    label = read_label_content(parts["label"][0])
    equivalents = tuple(read_label_content(c, empty_is_default=False) for c in parts["equivalentlabel"])
    return label, equivalents


# --- what it means -----------------------------------------------------------


@dataclass(frozen=True)
class SecurityLabel:
    """A label with meaning: its label policy, classification and categories (by name)."""

    policy: str
    classification: str
    categories: frozenset = frozenset()

    def __str__(self) -> str:
        categories = "+".join(sorted(self.categories))
        return f"{self.policy}:{self.classification}" + (f"/{categories}" if categories else "")


@dataclass(frozen=True)
class Classification:
    name: str
    rank: int
    ess: int | None
    stanag: str
    marking: str
    fgcolor: str | None = None
    bgcolor: str | None = None


@dataclass(frozen=True)
class Category:
    name: str
    type: str
    ess: tuple | None = None  # (type oid, value DER hex)
    stanag: tuple | None = None  # (tag name, generic value)
    marking: str | None = None


class LabelMeaningError(ValueError):
    """A readable label that the configured label policies do not define."""


@dataclass
class LabelPolicy:
    """A SPIF-like description: identifiers, ordered classifications, categories, markings."""

    name: str
    ess_oid: str | None
    stanag_id: str | None
    emit: str
    classifications: dict = field(default_factory=dict)  # name -> Classification
    categories: dict = field(default_factory=dict)  # name -> Category

    def __post_init__(self):
        self._by_ess_class = {c.ess: c for c in self.classifications.values() if c.ess is not None}
        self._by_stanag_class = {c.stanag: c for c in self.classifications.values()}
        self._by_wire_category = {}
        for category in self.categories.values():
            if category.ess is not None:
                self._by_wire_category[("ess",) + category.ess] = category
            if category.stanag is not None:
                self._by_wire_category[("stanag4774",) + category.stanag] = category

    def identifies(self, wire: WireLabel) -> bool:
        if wire.format == "ess":
            return self.ess_oid is not None and wire.policy_identifier == self.ess_oid
        if wire.format == "stanag4774":
            return self.stanag_id is not None and wire.policy_identifier == self.stanag_id
        return False

    def meaning(self, wire: WireLabel) -> SecurityLabel:
        if wire.classification is None:
            raise LabelMeaningError(f"label under {self.name} has no classification")
        if wire.format == "ess":
            try:
                classification = self._by_ess_class.get(int(wire.classification))
            except ValueError:
                classification = None
        else:
            classification = self._by_stanag_class.get(wire.classification)
        if classification is None:
            raise LabelMeaningError(f"classification {wire.classification!r} is not defined by {self.name}")
        names = set()
        for category in wire.categories:
            known = self._by_wire_category.get(category)
            if known is None:
                raise LabelMeaningError(f"category {category[1]}={category[2]} is not defined by {self.name}")
            names.add(known.name)
        return SecurityLabel(self.name, classification.name, frozenset(names))

    def rank(self, classification: str) -> int:
        return self.classifications[classification].rank

    def display_marking(self, label: SecurityLabel) -> str:
        marking = self.classifications[label.classification].marking
        extras = [self.categories[c].marking or c for c in sorted(label.categories)]
        return " ".join([marking] + extras)

    def write(self, label: SecurityLabel, holder: domish.Element) -> None:
        """Add ``label``, encoded in this policy's emit format, to ``holder``."""
        classification = self.classifications[label.classification]
        categories = [self.categories[c] for c in sorted(label.categories)]
        if self.emit == "ess":
            value = rfc2634.ESSSecurityLabel()
            value["security-policy-identifier"] = self.ess_oid
            value["security-classification"] = classification.ess
            if categories:
                wire = value["security-categories"]
                for index, category in enumerate(categories):
                    item = rfc2634.SecurityCategory()
                    item["type"] = category.ess[0]
                    item["value"] = bytes.fromhex(category.ess[1])
                    wire.setComponentByPosition(index, item)
            der = der_encoder.encode(value)
            holder.addElement((SEC_LABEL_ESS_NS, "esssecuritylabel"), content=base64.b64encode(der).decode("ascii"))
            return
        root = holder.addElement((STANAG_4774_NS, "ConfidentialityLabel"))
        information = root.addElement((STANAG_4774_NS, "ConfidentialityInformation"))
        information.addElement((STANAG_4774_NS, "PolicyIdentifier"), content=self.stanag_id)
        information.addElement((STANAG_4774_NS, "Classification"), content=classification.stanag)
        for category in categories:
            tag = information.addElement((STANAG_4774_NS, "Category"))
            tag["TagName"] = category.stanag[0]
            tag["Type"] = category.type.upper()
            tag.addElement((STANAG_4774_NS, "GenericValue"), content=category.stanag[1])


@dataclass(frozen=True)
class Clearance:
    """The most a receiver may see under one label policy."""

    policy: str
    classification: str
    categories: frozenset = frozenset()

    def __str__(self) -> str:
        return str(SecurityLabel(self.policy, self.classification, self.categories))


@dataclass(frozen=True)
class Translation:
    """An equivalence map from one label policy to another."""

    name: str
    source: str
    target: str
    classifications: dict
    categories: dict
    keep_original: bool = False

    def translate(self, label: SecurityLabel) -> SecurityLabel:
        if label.policy != self.source:
            raise LabelMeaningError(f"translation {self.name} maps {self.source}, not {label.policy}")
        classification = self.classifications.get(label.classification)
        if classification is None:
            raise LabelMeaningError(f"{self.name} has no mapping for classification {label.classification}")
        categories = set()
        for category in label.categories:
            mapped = self.categories.get(category)
            if mapped is None:
                raise LabelMeaningError(f"{self.name} has no mapping for category {category}")
            categories.update(mapped)
        return SecurityLabel(self.target, classification, frozenset(categories))


# Release decisions remembered by (label, receiving domain): they depend on
# nothing else (a reload builds a new authority).  Bounded in entries and in
# bytes (each entry counted as the texts of its key and reason, plus a constant).
RELEASABLE_MEMORY_ENTRIES = 4096
RELEASABLE_MEMORY_BYTES = 1024 * 1024
RELEASABLE_ENTRY_OVERHEAD = 200


class LabelAuthority:
    """
    Everything the policy file says about labels: the label policies,
    clearances per peer and for the gateway, default labels and translations.
    All decisions, no I/O.
    """

    def __init__(self, policies, gateway_clearances, peers, default_label, translations):
        self.policies = policies  # name -> LabelPolicy
        self.gateway_clearances = gateway_clearances  # tuple of Clearance, or None
        self.peers = peers  # domain pattern -> {"clearance": tuple|None, "default_label": SecurityLabel|None}
        self.default_label = default_label
        self.translations = translations  # name -> Translation
        self._by_pair = {(t.source, t.target): t for t in translations.values()}
        self.releasable_memory = BoundedMemory()

    def _peer(self, domain: str | None):
        if domain is None:
            return None
        if domain in self.peers:
            return self.peers[domain]
        parts = domain.split(".")
        for start in range(1, len(parts)):
            wildcard = "*." + ".".join(parts[start:])
            if wildcard in self.peers:
                return self.peers[wildcard]
        return None

    def default_for(self, sender_domain: str | None) -> SecurityLabel | None:
        peer = self._peer(sender_domain)
        if peer is not None and peer.get("default_label") is not None:
            return peer["default_label"]
        return self.default_label

    def clearances_for(self, receiver_domain: str | None):
        peer = self._peer(receiver_domain)
        if peer is None:
            return None
        return peer.get("clearance")

    def meaning(self, wire: WireLabel, sender_domain: str | None) -> SecurityLabel:
        """The label a wire label stands for; the empty label is the sender's default."""
        if wire.format == "default":
            label = self.default_for(sender_domain)
            if label is None:
                raise LabelMeaningError("empty label but no default label is configured for the sender")
            return label
        for policy in self.policies.values():
            if policy.identifies(wire):
                return policy.meaning(wire)
        raise LabelMeaningError(f"no label policy has identifier {wire.policy_identifier!r} ({wire.format})")

    def stanza_labels(self, marked: StanzaLabel, sender_domain: str | None) -> tuple:
        """
        Every label a labelled stanza carries, given meaning: its ``<label/>``
        first, then each ``<equivalentlabel/>``.  Raises ``LabelMeaningError``
        (so the stanza's label is unreadable) when any of them has no meaning
        here, or when an equivalent contradicts the label: under the same
        label policy it differs, or placed in the label's policy (or the label
        placed in its policy) through a translation, it is above the label.
        """
        label = self.meaning(marked.label, sender_domain)
        found = [label]
        for equivalent_wire in marked.equivalents:
            try:
                equivalent = self.meaning(equivalent_wire, sender_domain)
            except LabelMeaningError as problem:
                raise LabelMeaningError(f"equivalent label: {problem}") from None
            contradiction = self._contradiction(label, equivalent)
            if contradiction is not None:
                raise LabelMeaningError(f"equivalent label {equivalent} contradicts label {label}: {contradiction}")
            found.append(equivalent)
        return tuple(found)

    def _contradiction(self, label: SecurityLabel, equivalent: SecurityLabel) -> str | None:
        """Why ``equivalent`` cannot stand for the same thing as ``label`` (``None`` if it can, as far as the maps tell)."""
        if equivalent.policy == label.policy:
            return None if equivalent == label else "under the same label policy they differ"
        placed = self._in_policy(equivalent, label.policy)
        if placed is not None:
            ok, why = self.dominates(Clearance(label.policy, label.classification, label.categories), placed)
            if not ok:
                return why
        mapped = self._in_policy(label, equivalent.policy)
        if mapped is not None:
            ok, why = self.dominates(Clearance(mapped.policy, mapped.classification, mapped.categories), equivalent)
            if not ok:
                return why
        return None

    def all_releasable(self, labels, receiver_domain: str | None) -> tuple[bool, str]:
        """Whether every one of ``labels`` (a label and its equivalents) is releasable to the receiver."""
        why = "no label"
        for index, label in enumerate(labels):
            ok, why = self.releasable(label, receiver_domain)
            if not ok:
                return False, why if index == 0 else f"equivalent label {label}: {why}"
        return bool(labels), why

    def _in_policy(self, label: SecurityLabel, policy: str) -> SecurityLabel | None:
        if label.policy == policy:
            return label
        translation = self._by_pair.get((label.policy, policy))
        if translation is None:
            return None
        try:
            return translation.translate(label)
        except LabelMeaningError:
            return None

    def dominates(self, clearance: Clearance, label: SecurityLabel) -> tuple[bool, str]:
        """Whether ``clearance`` may see ``label`` (translating into its policy if a map exists)."""
        seen = self._in_policy(label, clearance.policy)
        if seen is None:
            return False, f"{label} has no equivalent under {clearance.policy}"
        policy = self.policies[clearance.policy]
        if policy.rank(seen.classification) > policy.rank(clearance.classification):
            return False, f"{seen.classification} is above {clearance.classification}"
        categories = [policy.categories[c] for c in seen.categories]
        restrictive = {c.name for c in categories if c.type == "restrictive"}
        missing = restrictive - clearance.categories
        if missing:
            return False, f"clearance lacks restrictive categories {sorted(missing)}"
        permissive = {c.name for c in categories if c.type == "permissive"}
        if permissive and not permissive & clearance.categories:
            return False, f"clearance holds none of the permissive categories {sorted(permissive)}"
        return True, f"{seen} within {clearance}"

    def releasable(self, label: SecurityLabel, receiver_domain: str | None) -> tuple[bool, str]:
        """Whether the receiving peer and the gateway as a whole may both see ``label`` (remembered, bounded)."""
        key = (label, receiver_domain)
        found = self.releasable_memory.get(key)
        if found is None:
            found = self._releasable(label, receiver_domain)
            cost = (RELEASABLE_ENTRY_OVERHEAD + len(receiver_domain or "") + len(label.policy)
                    + len(label.classification) + sum(len(c) for c in label.categories) + len(found[1]))
            self.releasable_memory.put(key, found, cost, RELEASABLE_MEMORY_ENTRIES, RELEASABLE_MEMORY_BYTES)
        return found

    def _releasable(self, label: SecurityLabel, receiver_domain: str | None) -> tuple[bool, str]:
        if self.gateway_clearances is None:
            return False, "no gateway clearance is configured"
        ok, why = self._any_dominates(self.gateway_clearances, label)
        if not ok:
            return False, f"gateway: {why}"
        clearances = self.clearances_for(receiver_domain)
        if clearances is None:
            return False, f"no clearance is configured for {receiver_domain}"
        ok, why_peer = self._any_dominates(clearances, label)
        if not ok:
            return False, f"{receiver_domain}: {why_peer}"
        return True, f"gateway and {receiver_domain} cleared ({why_peer})"

    def _any_dominates(self, clearances, label):
        reasons = []
        for clearance in clearances:
            ok, why = self.dominates(clearance, label)
            if ok:
                return True, why
            reasons.append(why)
        return False, "; ".join(reasons) or "no clearance"

    def outgoing_label(self, marked: StanzaLabel, label: SecurityLabel) -> domish.Element:
        """
        The ``<securitylabel/>`` that leaves with a stanza judged as carrying
        ``label``: built new from the judged value, never from the sender's
        element.  It holds a ``<displaymarking/>`` made from the label
        policy's markings and colours, and ``<label/>`` encoded by the guard
        in the policy's emit format.  The sender's ``<equivalentlabel/>``s
        were judged (``stanza_labels``, ``all_releasable``) but do not leave:
        the far side reads the one label the guard vouches for, and a choice
        among equivalents is not a channel the sender gets.  ``marked`` is
        what was read; nothing of it is copied.
        """
        return self._written(label)

    def _written(self, label: SecurityLabel) -> domish.Element:
        """A ``<securitylabel/>`` holding ``label``, every part of it generated from the label policy."""
        policy = self.policies[label.policy]
        classification = policy.classifications[label.classification]
        result = domish.Element((SEC_LABEL_NS, "securitylabel"))
        marking = result.addElement("displaymarking", content=policy.display_marking(label))
        if classification.fgcolor:
            marking["fgcolor"] = classification.fgcolor
        if classification.bgcolor:
            marking["bgcolor"] = classification.bgcolor
        policy.write(label, result.addElement("label"))
        return result

    def relabelled(self, securitylabel: domish.Element | None, label: SecurityLabel,
                   translation: Translation) -> domish.Element:
        """
        A new ``<securitylabel/>`` carrying ``label`` translated for the far
        side, built as ``outgoing_label`` builds one.  With ``keep_original``
        the judged ``label`` itself is added as the one ``<equivalentlabel/>``,
        encoded by the guard; the sender's element (``securitylabel``) and its
        equivalent labels are never copied.
        """
        translated = translation.translate(label)
        result = self._written(translated)
        if translation.keep_original:
            original = self.policies[label.policy]
            original.write(label, result.addElement("equivalentlabel"))
        return result
