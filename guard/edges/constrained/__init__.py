"""
The constrained-bandwidth profile of the pair link (issue 13): what makes a
stanza cost fewer bytes on a slow bearer.  ``compression`` frames every write
as one sync-flushed deflate block (with a preset dictionary shipped as
``dictionary.bin``), ``abbreviation`` leaves out the domains both ends know.
"""
