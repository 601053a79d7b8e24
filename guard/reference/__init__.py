"""
Reference programs for the High Assurance Guard hook: a HAG that sits in the
pair link's path (``python -m guard.reference.hag``) and a release authority
for the ``refer`` verdict (``python -m guard.reference.authority``).  They
serve the tests and show the interfaces a real HAG or authority must speak.
"""
