"""
The policy language: rule files (TOML) with label checks, blocking and
folding, compiled into a ``CompiledPolicy`` whose ``judge`` the relay calls
for every stanza.  Pure: the only I/O is ``load_policy`` reading one file.

See policies/README.md for the file format.
"""

from guard.core.policy.compiled import CompiledPolicy, Explanation
from guard.core.policy.loader import compile_policy_text, load_policy
from guard.core.policy.problems import PolicyError, Problem

__all__ = ["CompiledPolicy", "Explanation", "PolicyError", "Problem", "compile_policy_text", "load_policy"]
