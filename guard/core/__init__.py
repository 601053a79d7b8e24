"""
The pure core: stanza addressing, verdicts, the policy pipeline, dialback
keys and the books.  Imports only the standard library, zope.interface and
Twisted's ``jid``/``domish`` data types (tests/unit/test_layers.py checks).
"""
