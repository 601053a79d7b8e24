"""
Folding: reduce what crosses the boundary to what the receiving side needs.

A folding profile has a ``message`` part (the children a message keeps, by
shape; whole message types dropped) and/or a ``presence`` part (presence
reduced to a small set of states, and the children it keeps, by shape).
Folding never mutates its input and never copies it: it says which children
leave, each built new from its shape, and the judge puts them in a new
envelope.  Text directly inside a folded stanza (not inside one of its
children) is never carried: in XMPP it means nothing, so across a boundary it
could only be a covert channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.xish import domish

from guard.core.policy.elements import child_elements, text_of
from guard.core.policy.shapes import kept_children
from guard.core.vocabulary import SEC_LABEL_NS, STANZA_NAMESPACES

PRESENCE_STATES = ("available", "away", "xa", "dnd", "chat", "unavailable")

# When a state is not on the profile, the show value falls back along this chain.
_FALLBACK = {"chat": "available", "dnd": "away", "xa": "away", "away": "available", "available": None}


@dataclass(frozen=True)
class Folded:
    """
    The outcome of folding: the children that leave (built new, in order), or
    ``None`` with the reason the stanza was folded away.
    """

    children: list | None
    note: str


def _is_envelope(element):
    """``<thread/>`` and the security label describe a message; they are not its content."""
    if element.name == "thread" and element.uri in STANZA_NAMESPACES:
        return True
    return element.name == "securitylabel" and element.uri == SEC_LABEL_NS


@dataclass(frozen=True)
class MessageFolding:
    keep: tuple  # Shape
    drop_types: frozenset
    drop_if_only: tuple  # ElementPattern

    def fold(self, stanza, stanza_type):
        if stanza_type in self.drop_types:
            return Folded(None, f"message type {stanza_type} is folded away")
        elements = child_elements(stanza)
        if self.drop_if_only and self._only_folded_away([c for c in elements if not _is_envelope(c)]):
            return Folded(None, "message holds only elements that are folded away")
        kept = kept_children(stanza, self.keep, stanza.uri, elements)
        return Folded(kept, f"kept {len(kept)} of {len(elements)} children")

    def _only_folded_away(self, children):
        """Whether there are children and each matches a ``drop_if_only`` pattern (loops: no generator per child)."""
        if not children:
            return False
        for child in children:
            for pattern in self.drop_if_only:
                if pattern.matches(child):
                    break
            else:
                return False
        return True


@dataclass(frozen=True)
class PresenceFolding:
    states: frozenset
    keep: tuple  # Shape

    def _state(self, stanza, presence_type):
        if presence_type == "unavailable":
            return "unavailable"
        show = None
        for child in child_elements(stanza):
            if child.name == "show" and child.uri in STANZA_NAMESPACES:
                show = text_of(child).strip()
        return show if show in ("away", "xa", "dnd", "chat") else "available"

    def fold(self, stanza, presence_type):
        kept = kept_children(stanza, self.keep, stanza.uri)
        if presence_type not in ("available", "unavailable"):
            # Subscriptions and probes carry no state: only the kept children.
            return Folded(kept, f"presence {presence_type}: kept only the profile's children")
        state = self._state(stanza, presence_type)
        folded_state = state
        while folded_state is not None and folded_state not in self.states and folded_state != "unavailable":
            folded_state = _FALLBACK[folded_state]
        if folded_state is None:
            return Folded(None, f"presence state {state} has no place in this profile")
        if folded_state not in ("available", "unavailable"):
            show = domish.Element((stanza.uri, "show"), defaultUri=stanza.uri)
            show.addContent(folded_state)
            kept.insert(0, show)
        return Folded(kept, f"presence {state} folded to {folded_state}")


@dataclass(frozen=True)
class FoldingProfile:
    name: str
    message: MessageFolding | None
    presence: PresenceFolding | None

    def fold(self, stanza, stanza_type) -> Folded:
        """The children of ``stanza`` (of type ``stanza_type``, defaults applied) that leave."""
        if stanza.name == "message" and self.message is not None:
            return self.message.fold(stanza, stanza_type)
        if stanza.name == "presence" and self.presence is not None:
            return self.presence.fold(stanza, stanza_type)
        return Folded(None, f"folding profile {self.name} does not fold {stanza.name}")

    def drops_type(self, kind, stanza_type) -> bool:
        """Whether this profile folds away every stanza of ``kind`` and ``stanza_type`` (``message.drop_types``)."""
        return kind == "message" and self.message is not None and stanza_type in self.message.drop_types

    @property
    def kinds(self):
        return frozenset(k for k, part in (("message", self.message), ("presence", self.presence)) if part)
