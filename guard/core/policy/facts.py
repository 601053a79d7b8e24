"""
What rules look at: the facts of one stanza, each computed at most once and
only when a rule asks for it.
"""

from __future__ import annotations

from twisted.words.xish import domish

from guard.core.accepted import NotAccepted, accepted_from_element
from guard.core.policy.elements import child_elements, text_of
from guard.core.policy.labels import LabelMeaningError, outer_securitylabels, read_stanza_label
from guard.core.vocabulary import STANZA_NAMESPACES

# Stands in the payload namespaces for text directly inside the stanza: text is payload too.
TEXT_PAYLOAD = "#text"
XML_WHITESPACE = " \t\r\n"


class computed_once:  # noqa: N801 - a decorator, named as functools.cached_property is
    """
    A fact computed on its first use and kept in the instance's ``__dict__``
    (later uses never reach this descriptor): ``functools.cached_property``
    without the lock Python 3.11 takes on each first use, a cost paid per
    stanza for every fact a rule reads.  A fact whose computation raises is
    not kept.
    """

    def __init__(self, compute):
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


class StanzaFacts:
    """
    The facts of one accepted stanza that conditions test.  Kind, type,
    addresses and size are the accepted value's (parsed and measured once,
    see ``guard.core.accepted``); the rest is read here, once, on demand.
    """

    def __init__(self, accepted, authority):
        self.accepted = accepted
        self.stanza = accepted.element
        self.authority = authority
        self.kind = accepted.kind
        self.type = accepted.type
        self.sender = accepted.sender
        self.receiver = accepted.recipient
        self.from_domain = self.sender.host
        self.to_domain = self.receiver.host
        self.is_error = accepted.is_error
        self.size = accepted.size

    @classmethod
    def of(cls, element, authority, direction=None, size=None):
        """The facts of ``element`` where no stream parser saw it (tests, tools): ValueError when it is no stanza."""
        accepted = accepted_from_element(element, direction, size)
        if isinstance(accepted, NotAccepted):
            raise ValueError(accepted.text)
        return cls(accepted, authority)

    @computed_once
    def namespaces(self) -> frozenset:
        """
        Namespaces of the payload: every direct child's, the stanza's own
        namespace included, and ``#text`` when the stanza holds text that is
        not whitespace.  Nothing inside a stanza is outside its payload.
        """
        found = {child.uri for child in child_elements(self.stanza)}
        if any(isinstance(child, str) and child.strip(XML_WHITESPACE) for child in self.stanza.children):
            found.add(TEXT_PAYLOAD)
        return frozenset(found)

    @computed_once
    def bodies(self) -> tuple:
        """The text of every ``<body/>`` (one per xml:lang): a pattern has to look at all of them."""
        return tuple(text_of(child) for child in child_elements(self.stanza)
                     if child.name == "body" and child.uri in STANZA_NAMESPACES)

    @computed_once
    def texts(self) -> tuple:
        """
        Every text the stanza carries (see ``text_matches``): all of its text
        joined, then each text node, then each attribute value of every
        element except the stanza's ``from`` and ``to`` (conditions of their own).
        """
        nodes, values = [], []
        pending = [self.stanza]  # elements and text nodes, the next in document order last
        while pending:
            item = pending.pop()
            if not isinstance(item, domish.Element):
                nodes.append(item)
                continue
            values.extend(value for name, value in item.attributes.items()
                          if isinstance(value, str) and not (item is self.stanza and name in ("from", "to")))
            pending.extend(reversed(item.children))
        return ("".join(nodes), *nodes, *values)

    @computed_once
    def label_count(self) -> int:
        """How many ``<securitylabel/>`` label the stanza, counted without reading them (that is ``stanza_label``)."""
        return len(outer_securitylabels(self.stanza))

    @computed_once
    def stanza_label(self):
        return read_stanza_label(self.stanza, self.size)

    @computed_once
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
        labels, problem = self._judged_labels
        if labels is None:
            return None, problem
        meaning = labels[0]
        if len(labels) > 1:
            return meaning, f"label {meaning} (equivalents {', '.join(str(e) for e in labels[1:])})"
        return meaning, f"label {meaning}"

    @computed_once
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
        labels, problem = self._judged_labels
        if labels is None:
            return False, problem
        return self.authority.all_releasable(labels, self.to_domain)

    @computed_once
    def _judged_labels(self):
        """``(meanings of the label and each equivalent, None)`` or ``(None, why not)``: worked out once."""
        try:
            return self.authority.stanza_labels(self.stanza_label, self.from_domain), None
        except LabelMeaningError as problem:
            return None, str(problem)
