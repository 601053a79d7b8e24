"""
A laboratory of real peers for tests, the demo and benchmarks: a throwaway
PKI, a loopback DNS responder, Prosody servers and slixmpp clients.
"""
