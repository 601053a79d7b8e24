"""
What rules look at: the facts of one stanza, each computed at most once and
only when a rule asks for it.
"""

from __future__ import annotations

import functools
from functools import cached_property

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from guard.core.policy.elements import STANZA_KINDS, STANZA_NAMESPACES, child_elements, text_of
from guard.core.policy.labels import LabelMeaningError, read_stanza_label

DEFAULT_TYPES = {"message": "normal", "presence": "available", "iq": ""}


JID_CACHE_SIZE = 4096


def parse_jid(text):
    """A ``JID`` or ``None`` when absent or malformed."""
    if not text:
        return None
    try:
        return _prepared_jid(text)
    except Exception:  # noqa: BLE001 - any stringprep failure: not an address
        return None


@functools.lru_cache(maxsize=JID_CACHE_SIZE)
def _prepared_jid(text):
    """
    A JID, remembered (stringprep is slow and peers reuse addresses).  Not
    ``jid.internJID``: its cache never forgets, and senders choose addresses.
    """
    return jid.JID(text)


class StanzaFacts:
    """The facts of one stanza that conditions test."""

    def __init__(self, stanza: domish.Element, authority):
        self.stanza = stanza
        self.authority = authority
        self.kind = stanza.name if stanza.uri in STANZA_NAMESPACES and stanza.name in STANZA_KINDS else None
        self.type = stanza.getAttribute("type") or DEFAULT_TYPES.get(stanza.name, "")
        self.sender = parse_jid(stanza.getAttribute("from"))
        self.receiver = parse_jid(stanza.getAttribute("to"))
        self.from_domain = self.sender.host if self.sender is not None else None
        self.to_domain = self.receiver.host if self.receiver is not None else None
        self.is_error = self.type == "error"

    @cached_property
    def namespaces(self) -> frozenset:
        """Namespaces of the payload: direct children outside the stanza's own namespace."""
        return frozenset(c.uri for c in child_elements(self.stanza) if c.uri not in STANZA_NAMESPACES)

    @cached_property
    def bodies(self) -> tuple:
        """The text of every ``<body/>`` (one per xml:lang): a pattern has to look at all of them."""
        return tuple(text_of(child) for child in child_elements(self.stanza)
                     if child.name == "body" and child.uri in STANZA_NAMESPACES)

    @cached_property
    def size(self) -> int:
        return len(self.stanza.toXml().encode("utf-8"))

    @cached_property
    def stanza_label(self):
        return read_stanza_label(self.stanza)

    @cached_property
    def label(self):
        """
        ``(SecurityLabel or None, reason)``: the label this stanza is treated
        as carrying (its own, or the sender's default when unlabelled or
        ``<label/>`` is empty); ``None`` when none can be established, which
        includes any ``<equivalentlabel/>`` without meaning here or
        contradicting the label (see ``LabelAuthority.stanza_labels``).
        """
        marked = self.stanza_label
        if marked.problem is not None:
            return None, f"unreadable label: {marked.problem}"
        if self.authority is None:
            return None, "the policy defines no labels"
        if not marked.present:
            default = self.authority.default_for(self.from_domain)
            if default is None:
                return None, "unlabelled and no default label for the sender"
            return default, f"unlabelled: default label {default}"
        try:
            labels = self.authority.stanza_labels(marked, self.from_domain)
        except LabelMeaningError as problem:
            return None, str(problem)
        meaning = labels[0]
        if len(labels) > 1:
            return meaning, f"label {meaning} (equivalents {', '.join(str(e) for e in labels[1:])})"
        return meaning, f"label {meaning}"

    @cached_property
    def releasable(self):
        """
        ``(bool, reason)``: whether the label and every equivalent label are
        releasable to the receiver (one that is not makes the stanza not
        releasable).
        """
        label, why = self.label
        if label is None:
            return False, why
        if self.authority is None:
            return False, "the policy defines no labels"
        if not self.stanza_label.present:
            return self.authority.releasable(label, self.to_domain)
        try:
            labels = self.authority.stanza_labels(self.stanza_label, self.from_domain)
        except LabelMeaningError as problem:
            return False, str(problem)
        return self.authority.all_releasable(labels, self.to_domain)
