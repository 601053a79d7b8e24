"""
Addressing checks: the first thing every stanza meets, before any policy.

A stanza received on a stream from side S is acceptable only when its
``from`` is a well-formed JID whose domain the peer authenticated on that
stream, and its ``to`` is a well-formed JID whose domain the guard fronts on
S (a domain hosted on the far side) and which was authenticated as a
receiving domain for that sender.  Anything else is refused with the RFC 6120
stream error condition that names the fault; nothing malformed passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from twisted.words.protocols.jabber import jid

from guard.core.vocabulary import DOMAIN_LABEL_MAX_BYTES, JID_PART_MAX_BYTES, SERVER_NS, STANZA_NAMES


@dataclass(frozen=True)
class Addressed:
    """A stanza whose addressing holds: who sent it, to whom, between which domains."""

    sender: jid.JID
    recipient: jid.JID

    @property
    def pair(self) -> tuple[str, str]:
        return (self.sender.host, self.recipient.host)


@dataclass(frozen=True)
class Misaddressed:
    """A stanza refused before judgement; ``condition`` is the stream error to send."""

    condition: str
    text: str


# Parsed JIDs are remembered (stringprep is most of the cost of addressing),
# bounded in entries and in bytes: only a text of at most JID_CACHE_TEXT
# characters is remembered, so the cache holds at most about JID_CACHE_SIZE ×
# (the text, and a JID of at most as many characters, times four bytes each).
# A peer chooses the localpart and resource of every address; a longer text
# (up to 3 × 1023 bytes) is parsed every time.
JID_CACHE_SIZE = 8192
JID_CACHE_TEXT = 128


def parse_jid(text: str | None) -> jid.JID | None:
    """
    The JID in ``text``, or None when it is absent or malformed: empty or
    oversized parts (RFC 7622: 1023 bytes each), empty domain labels, a
    trailing dot, or anything stringprep refuses.  Any failure is None.
    """
    if not text or not isinstance(text, str):
        return None
    if len(text) <= JID_CACHE_TEXT:
        return _remembered_jid(text)
    return _parsed_jid(text)


@lru_cache(maxsize=JID_CACHE_SIZE)
def _remembered_jid(text: str) -> jid.JID | None:
    return _parsed_jid(text)


def _parsed_jid(text: str) -> jid.JID | None:
    bare, slash, resource = text.partition("/")
    local, at, domain = bare.rpartition("@")
    if (slash and not resource) or (at and not local) or not domain:
        return None
    if any(not label or len(label.encode("utf-8")) > DOMAIN_LABEL_MAX_BYTES for label in domain.split(".")):
        return None
    try:
        parsed = jid.JID(text)
    except Exception:  # noqa: BLE001 - any parsing fault means malformed, never passed
        return None
    for part in (parsed.user, parsed.host, parsed.resource):
        if part is not None and (not part or len(part.encode("utf-8")) > JID_PART_MAX_BYTES):
            return None
    return parsed


# Addressings that held are remembered by their (from, to) texts, so that a stream's
# steady traffic between the same addresses is not parsed again: only texts of at
# most JID_CACHE_TEXT characters each, at most ADDRESSED_CACHE_SIZE pairs (the table
# is emptied when full), so it holds at most about ADDRESSED_CACHE_SIZE × (two texts
# of JID_CACHE_TEXT characters, four bytes each, and a small Addressed).  What a
# stream authenticated is checked for every stanza: only the parsing is remembered.
ADDRESSED_CACHE_SIZE = 4096
_addressed_by_text: dict[tuple[str, str], Addressed] = {}


def check_addressing(stanza, authenticated_pairs, fronted_domains) -> Addressed | Misaddressed:
    """
    Decide whether ``stanza`` may be judged at all.

    ``authenticated_pairs`` is the set of (sending domain, receiving domain)
    pairs the peer authenticated on this stream; ``fronted_domains`` the
    domains the guard stands in for on this side.
    """
    if stanza.name not in STANZA_NAMES or stanza.uri != SERVER_NS:
        return Misaddressed("unsupported-stanza-type", f"{stanza.uri} {stanza.name} is not a stanza")
    attributes = stanza.attributes
    raw_from = attributes.get("from")
    raw_to = attributes.get("to")
    addressed = _addressed_by_text.get((raw_from, raw_to))
    if addressed is not None:
        receiving = addressed.recipient.host
        if (addressed.sender.host, receiving) in authenticated_pairs and receiving in fronted_domains:
            return addressed
        return _misaddressed(addressed.sender, addressed.recipient, authenticated_pairs, fronted_domains)
    if not raw_from or not raw_to:
        return Misaddressed("improper-addressing", "from and to are required on server streams")
    sender = parse_jid(raw_from)
    if sender is None:
        return Misaddressed("invalid-from", "malformed from address")
    recipient = parse_jid(raw_to)
    if recipient is None:
        return Misaddressed("improper-addressing", "malformed to address")
    refusal = _misaddressed(sender, recipient, authenticated_pairs, fronted_domains)
    if refusal is not None:
        return refusal
    addressed = Addressed(sender, recipient)
    if len(raw_from) <= JID_CACHE_TEXT and len(raw_to) <= JID_CACHE_TEXT:
        if len(_addressed_by_text) >= ADDRESSED_CACHE_SIZE:
            _addressed_by_text.clear()
        _addressed_by_text[(raw_from, raw_to)] = addressed
    return addressed


def _misaddressed(sender, recipient, authenticated_pairs, fronted_domains) -> Misaddressed | None:
    """The fault, in the order the checks are made, of well-formed addresses on this stream; None when they hold."""
    if not any(sender.host == sending for sending, _ in authenticated_pairs):
        return Misaddressed("invalid-from", f"{sender.host} is not authenticated on this stream")
    if recipient.host not in fronted_domains:
        return Misaddressed("host-unknown", f"{recipient.host} is not served through this guard")
    if (sender.host, recipient.host) not in authenticated_pairs:
        return Misaddressed(
            "improper-addressing",
            f"{sender.host} did not authenticate to {recipient.host} on this stream",
        )
    return None
