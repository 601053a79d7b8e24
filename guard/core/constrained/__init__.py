"""
Decisions for the constrained-bandwidth gateway (issue 13), with no I/O:
what crosses a slow bearer, in which order and when (``schedule``).
"""
