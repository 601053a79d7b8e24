"""
What the pair link puts on the wire besides stanzas.  Pure functions from
facts to bytes, and the reading of the link's own elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from guard.core.vocabulary import SERVER_NS, SM_NS, STREAM_ERRORS_NS, STREAMS_NS  # noqa: F401 - read as wire.NAME

LINK_NS = "urn:xmpp-guard:link:0"  # the pair link's own elements (resume, refused)

STREAM_CLOSE = b"</stream:stream>"
ACK_REQUEST = f"<r xmlns='{SM_NS}'/>".encode("utf-8")

# A sequence number or counter larger than this is refused (2**63 - 1).
MAX_COUNTER = (1 << 63) - 1


def stream_header(own_name: str, peer_name: str, compression: str | None = None) -> bytes:
    """The header a half opens its link stream with; ``compression`` (the constrained profile) names the
    compression and dictionary this half writes with, for the peer to check it reads with the same."""
    agreed = f" compression={quoteattr(compression)}" if compression is not None else ""
    return (
        "<?xml version='1.0'?>"
        f"<stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS_NS}'"
        f" from={quoteattr(own_name)} to={quoteattr(peer_name)} version='1.0'{agreed}>"
    ).encode("utf-8")


def resume(session: str, next_sequence: int, seen_session: str | None, received: int) -> bytes:
    """The first element on every connection: where our numbering resumes and what we have seen."""
    seen = f" seen-session={quoteattr(seen_session)}" if seen_session else ""
    return (
        f"<resume xmlns='{LINK_NS}' session={quoteattr(session)} next='{next_sequence}'"
        f"{seen} h='{received}'/>"
    ).encode("utf-8")


def ack(received: int) -> bytes:
    return f"<a xmlns='{SM_NS}' h='{received}'/>".encode("utf-8")


def stream_error(condition: str, text: str | None = None, refused: int | None = None) -> bytes:
    """A stream error and the stream's end; ``refused`` names the peer's stanza this half could not take."""
    body = f"<{condition} xmlns='{STREAM_ERRORS_NS}'/>"
    if text:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        body += f"<text xmlns='{STREAM_ERRORS_NS}'>{escaped}</text>"
    if refused is not None:
        # RFC 6120 4.9.4: an application-specific condition beside the defined one.
        body += f"<refused xmlns='{LINK_NS}' stanza='{refused}'/>"
    return f"<stream:error>{body}</stream:error>".encode("utf-8") + STREAM_CLOSE


def read_refused(error) -> int | None:
    """The sequence number a peer's <stream:error> says it refused, or None when it names none."""
    for child in error.elements():
        if (child.uri, child.name) == (LINK_NS, "refused"):
            sequence = counter(child.getAttribute("stanza"))
            return sequence if sequence is not None and sequence >= 1 else None
    return None


def counter(text: str | None) -> int | None:
    """A non-negative decimal counter, or None when ``text`` is not one."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value <= MAX_COUNTER else None


@dataclass(frozen=True)
class Resume:
    session: str
    next_sequence: int
    seen_session: str | None
    received: int


_SESSION_CHARACTERS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


def _session(text: str | None) -> str | None:
    if not text or len(text) > 64 or not set(text) <= _SESSION_CHARACTERS:
        return None
    return text


def read_resume(element) -> Resume | None:
    """The facts of a <resume/> element, or None when it is malformed."""
    session = _session(element.getAttribute("session"))
    next_sequence = counter(element.getAttribute("next"))
    received = counter(element.getAttribute("h"))
    raw_seen = element.getAttribute("seen-session")
    seen = _session(raw_seen)
    if session is None or next_sequence is None or next_sequence < 1 or received is None:
        return None
    if raw_seen is not None and seen is None:
        return None
    if element.children:
        return None
    return Resume(session, next_sequence, seen, received)
