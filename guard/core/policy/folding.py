"""
Folding: reduce what crosses the boundary to what the receiving side needs.

A folding profile has a ``message`` part (strip named elements, drop whole
message kinds) and/or a ``presence`` part (reduce presence to a small set of
states and keep only allow-listed children).  Folding never mutates its
input: it builds a new element.  Text directly inside a folded stanza (not
inside one of its children) is never carried: in XMPP it means nothing, so
across a boundary it could only be a covert channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.xish import domish

from guard.core.policy.elements import STANZA_NAMESPACES, child_elements, clone, text_of

PRESENCE_STATES = ("available", "away", "xa", "dnd", "chat", "unavailable")

# When a state is not on the profile, the show value falls back along this chain.
_FALLBACK = {"chat": "available", "dnd": "away", "xa": "away", "away": "available", "available": None}


@dataclass(frozen=True)
class Folded:
    """The outcome of folding: a new stanza, or ``None`` with the reason it was folded away."""

    stanza: domish.Element | None
    note: str


def _is_envelope(element):
    """``<thread/>`` and the security label describe a message; they are not its content."""
    if element.name == "thread" and element.uri in STANZA_NAMESPACES:
        return True
    return element.name == "securitylabel" and element.uri == "urn:xmpp:sec-label:0"


@dataclass(frozen=True)
class MessageFolding:
    strip: tuple  # ElementPattern
    drop_types: frozenset
    drop_if_only: tuple  # ElementPattern

    def fold(self, stanza):
        message_type = stanza.getAttribute("type") or "normal"
        if message_type in self.drop_types:
            return Folded(None, f"message type {message_type} is folded away")
        children = [c for c in child_elements(stanza) if not _is_envelope(c)]
        if self.drop_if_only and children and all(any(p.matches(c) for p in self.drop_if_only) for c in children):
            return Folded(None, "message holds only elements that are folded away")
        stripped = [c for c in child_elements(stanza) if any(p.matches(c) for p in self.strip)]
        result = clone(stanza, skip=lambda c: any(p.matches(c) for p in self.strip), keep_text=False)
        names = sorted({f"{{{c.uri}}}{c.name}" for c in stripped})
        return Folded(result, f"stripped {names}" if names else "nothing to strip")


@dataclass(frozen=True)
class PresenceFolding:
    states: frozenset
    keep: tuple  # ElementPattern

    def _state(self, stanza):
        presence_type = stanza.getAttribute("type")
        if presence_type == "unavailable":
            return "unavailable"
        show = None
        for child in child_elements(stanza):
            if child.name == "show" and child.uri in STANZA_NAMESPACES:
                show = text_of(child).strip()
        return show if show in ("away", "xa", "dnd", "chat") else "available"

    def fold(self, stanza):
        presence_type = stanza.getAttribute("type")
        if presence_type not in (None, "unavailable"):
            # Subscriptions and probes carry no state; keep only allowed children
            # (and an error's <error/>, which is what the error is about).
            def dropped(child):
                if presence_type == "error" and child.name == "error" and child.uri in STANZA_NAMESPACES:
                    return False
                return not any(p.matches(child) for p in self.keep)

            result = clone(stanza, skip=dropped, keep_text=False)
            return Folded(result, f"presence {presence_type}: kept only allow-listed children")
        state = self._state(stanza)
        folded_state = state
        while folded_state is not None and folded_state not in self.states and folded_state != "unavailable":
            folded_state = _FALLBACK[folded_state]
        if folded_state is None:
            return Folded(None, f"presence state {state} has no place in this profile")
        result = clone(stanza, skip=lambda c: True, keep_text=False)
        for child in child_elements(stanza):
            if any(p.matches(child) for p in self.keep):
                result.addChild(clone(child))
        if folded_state not in ("available", "unavailable"):
            show = domish.Element((stanza.uri, "show"))
            show.addContent(folded_state)
            result.children.insert(0, show)
            show.parent = result
        return Folded(result, f"presence {state} folded to {folded_state}")


@dataclass(frozen=True)
class FoldingProfile:
    name: str
    message: MessageFolding | None
    presence: PresenceFolding | None

    def fold(self, stanza) -> Folded:
        if stanza.name == "message" and self.message is not None:
            return self.message.fold(stanza)
        if stanza.name == "presence" and self.presence is not None:
            return self.presence.fold(stanza)
        return Folded(None, f"folding profile {self.name} does not fold {stanza.name}")

    @property
    def kinds(self):
        return frozenset(k for k, part in (("message", self.message), ("presence", self.presence)) if part)
