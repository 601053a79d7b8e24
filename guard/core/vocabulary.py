"""
The XMPP vocabulary the guard speaks, each word defined once: namespaces,
stanza names and types, stream and stanza error conditions, and the limits
the RFCs set on addresses.  Every module that reads or writes one of these
imports it from here; a second copy is a defect (two lists that drift apart
are a bypass waiting to happen).

Pure data: the standard library only.  What the guard's own pair link adds
(``urn:xmpp-guard:link:0``) is the link's, in ``guard.edges.link.wire``.
"""

from __future__ import annotations

# -- namespaces ---------------------------------------------------------------

STREAMS_NS = "http://etherx.jabber.org/streams"
SERVER_NS = "jabber:server"
CLIENT_NS = "jabber:client"
DIALBACK_NS = "jabber:server:dialback"  # XEP-0220
DIALBACK_FEATURE_NS = "urn:xmpp:features:dialback"  # XEP-0220 section 2.4
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
STREAM_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SM_NS = "urn:xmpp:sm:3"  # XEP-0198
PING_NS = "urn:xmpp:ping"  # XEP-0199
SEC_LABEL_NS = "urn:xmpp:sec-label:0"  # XEP-0258
SEC_LABEL_ESS_NS = "urn:xmpp:sec-label:ess:0"  # XEP-0258 ESS label encoding
STANAG_4774_NS = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"
XML_NS = "http://www.w3.org/XML/1998/namespace"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"
COMPONENT_NS = "jabber:component:accept"  # XEP-0114: the IRC gateway's component stream
MUC_NS = "http://jabber.org/protocol/muc"  # XEP-0045: the <x/> of a room join
MUC_USER_NS = MUC_NS + "#user"  # XEP-0045: occupant information
MUC_ADMIN_NS = MUC_NS + "#admin"  # XEP-0045: kicks and roles
DELAY_NS = "urn:xmpp:delay"  # XEP-0203: delayed delivery (a room's history)
SHIM_NS = "http://jabber.org/protocol/shim"  # XEP-0131: stanza headers
IQ_AUTH_NS = "jabber:iq:auth"  # XEP-0078: non-SASL authentication (carries passwords)
IQ_REGISTER_NS = "jabber:iq:register"  # XEP-0077: in-band registration (carries passwords)
XML_LANG = (XML_NS, "lang")  # the xml:lang attribute, as domish keys it

# The namespaces a stanza (and its RFC 6120/6121 children: body, thread, show,
# error...) may be in: server streams carry jabber:server, stanzas written in a
# policy's test cases may be in jabber:client.
STANZA_NAMESPACES = frozenset({SERVER_NS, CLIENT_NS})

# -- stanzas ------------------------------------------------------------------

# RFC 6120 section 8: the three stanza kinds; any other top-level element on a
# server stream is a nonza or a fault.
STANZA_NAMES = frozenset({"message", "presence", "iq"})

# RFC 6120 section 8.2.3 and RFC 6121: the types each kind may have.
KIND_TYPES = {
    "message": frozenset({"normal", "chat", "groupchat", "headline", "error"}),
    "presence": frozenset({"available", "unavailable", "subscribe", "subscribed", "unsubscribe",
                           "unsubscribed", "probe", "error"}),
    "iq": frozenset({"get", "set", "result", "error"}),
}
# The type a stanza without a ``type`` attribute has (RFC 6121 5.2.2 and 4.7.1; an iq must have one).
DEFAULT_TYPES = {"message": "normal", "presence": "available", "iq": ""}

# -- errors -------------------------------------------------------------------

# RFC 6120 section 4.9.3: the only conditions a stream error may carry.
STREAM_ERROR_CONDITIONS = frozenset({
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
    "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
    "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed", "policy-violation",
    "remote-connection-failed", "reset", "resource-constraint", "restricted-xml", "see-other-host",
    "system-shutdown", "undefined-condition", "unsupported-encoding", "unsupported-feature",
    "unsupported-stanza-type", "unsupported-version",
})

# RFC 6120 section 8.3.2: the types of a stanza error.
STANZA_ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})

# RFC 6120 section 8.3.3: the defined stanza error conditions, each with the
# error type that goes with it.
STANZA_ERROR_CONDITION_TYPES = {
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
STANZA_ERROR_CONDITIONS = frozenset(STANZA_ERROR_CONDITION_TYPES)

# -- limits the RFCs set --------------------------------------------------------

# RFC 7622 section 3: each part of a JID (localpart, domainpart, resourcepart)
# is at most 1023 bytes of UTF-8.
JID_PART_MAX_BYTES = 1023
# RFC 1035 section 2.3.4: a label of a domain name is at most 63 bytes.
DOMAIN_LABEL_MAX_BYTES = 63
