"""
Error replies: the stanza a sender receives when the guard does not deliver
what it sent.  Bounces never echo the original payload, and are never made
for errors or iq results (that would let two guards or servers loop).
"""

from __future__ import annotations

from twisted.words.xish import domish

STANZA_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

# RFC 6120 section 8.3.3: the error type that goes with each condition.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def may_bounce(stanza) -> bool:
    """Whether an error reply to ``stanza`` is allowed at all."""
    kind = stanza.getAttribute("type")
    if kind == "error":
        return False
    if stanza.name == "iq" and kind == "result":
        return False
    return stanza.name in ("message", "presence", "iq")


def error_reply(stanza, condition: str, text: str | None = None, by: str | None = None):
    """
    A new stanza answering ``stanza`` with ``condition``; addresses swapped,
    same id, no payload copied.  ``condition`` must be an RFC 6120 stanza
    error condition (anything else becomes undefined-condition).
    """
    if condition not in ERROR_TYPES:
        condition = "undefined-condition"
    reply = domish.Element(("jabber:server", stanza.name))
    reply["type"] = "error"
    reply["from"] = stanza["to"]
    reply["to"] = stanza["from"]
    if stanza.hasAttribute("id"):
        reply["id"] = stanza["id"]
    error = reply.addElement("error")
    error["type"] = ERROR_TYPES[condition]
    if by:
        error["by"] = by
    error.addElement((STANZA_ERROR_NS, condition))
    if text:
        error.addElement((STANZA_ERROR_NS, "text"), content=text)
    return reply
