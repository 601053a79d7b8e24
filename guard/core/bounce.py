"""
Error replies: the stanza a sender receives when the guard does not deliver
what it sent.  Bounces never echo the original payload, and are never made
for errors or iq results (that would let two guards or servers loop).

The ``<text/>`` of a bounce is either the text an operator wrote in a policy
rule or, for a bounce the guard makes itself (a stream that failed, a full
queue, a stopping guard), the guard's own constant for the condition
(``GUARD_TEXTS``).  What a far server said when it failed (its header, its
stream error, its element names) is a peer's text: it goes to the log and the
audit trail through ``peer_detail`` (bounded and escaped), never into a stanza.
"""

from __future__ import annotations

from twisted.words.xish import domish

from guard.core.vocabulary import SERVER_NS, STANZA_ERROR_CONDITION_TYPES, STANZA_ERRORS_NS, STANZA_NAMES


# The only texts a bounce the guard makes itself may carry: one per condition.
GUARD_TEXTS = {
    "internal-server-error": "the guard could not send this stanza",
    "policy-violation": "the stanza exceeds a limit of the guard or of the receiving server",
    "remote-server-not-found": "the guard could not reach the receiving server",
    "remote-server-timeout": "the guard could not deliver this stanza in time",
    "resource-constraint": "the guard is too busy to take this stanza now",
    "service-unavailable": "the guard is not relaying",
}
DEFAULT_GUARD_TEXT = "the guard could not deliver this stanza"

PEER_DETAIL_CHARACTERS = 512


def guard_text(condition: str) -> str:
    """The constant text a bounce the guard makes for ``condition`` carries."""
    return GUARD_TEXTS.get(condition, DEFAULT_GUARD_TEXT)


def peer_detail(text) -> str:
    """What a peer said, for the log and the audit only: at most PEER_DETAIL_CHARACTERS, every
    control, format or non-printable character escaped (so it cannot forge log lines)."""
    text = "" if text is None else str(text)
    clipped = text[:PEER_DETAIL_CHARACTERS]
    escaped = "".join(character if character.isprintable() else repr(character)[1:-1] for character in clipped)
    return escaped + ("..." if len(text) > PEER_DETAIL_CHARACTERS else "")


def may_bounce(stanza) -> bool:
    """Whether an error reply to ``stanza`` is allowed at all."""
    kind = stanza.getAttribute("type")
    if kind == "error":
        return False
    if stanza.name == "iq" and kind == "result":
        return False
    return stanza.name in STANZA_NAMES


def error_reply(stanza, condition: str, text: str | None = None, by: str | None = None):
    """
    A new stanza answering ``stanza`` with ``condition``; addresses swapped,
    same id, no payload copied.  ``condition`` must be an RFC 6120 stanza
    error condition (anything else becomes undefined-condition).
    """
    if condition not in STANZA_ERROR_CONDITION_TYPES:
        condition = "undefined-condition"
    reply = domish.Element((SERVER_NS, stanza.name))
    reply["type"] = "error"
    reply["from"] = stanza["to"]
    reply["to"] = stanza["from"]
    if stanza.hasAttribute("id"):
        reply["id"] = stanza["id"]
    error = reply.addElement("error")
    error["type"] = STANZA_ERROR_CONDITION_TYPES[condition]
    if by:
        error["by"] = by
    error.addElement((STANZA_ERRORS_NS, condition))
    if text:
        error.addElement((STANZA_ERRORS_NS, "text"), content=text)
    return reply
