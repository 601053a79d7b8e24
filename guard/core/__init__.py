"""
The pure core: stanza addressing, the accepted stanza, verdicts, the policy
pipeline, settlement (what becomes of every accepted stanza, exactly once,
and the observers that hear of it), the books, dialback keys and the one
XMPP vocabulary.  Imports only the standard library, zope.interface and
Twisted's ``jid``/``domish`` data types (tests/unit/test_layers.py checks).
"""
