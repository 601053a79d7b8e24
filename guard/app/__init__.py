"""
The composition root: configuration, service wiring and the command line.
Nothing in guard.core or guard.edges imports from here.
"""
