"""Server-to-server streams (RFC 6120, XEP-0220): inbound and outbound, as state machines."""
