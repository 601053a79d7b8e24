"""xmpp-guard: an XMPP server-to-server boundary guard."""

__version__ = "0.1.0"
