"""Operators' body patterns run in linear time (RE2): a hostile body cannot stall the guard on a bad pattern."""

import time

import pytest

from guard.core.policy import PolicyError

from .wire import RED_TO_BLUE, compile_policy, read

POLICY = """
[policy]
name = "patterns"
default = "pass"

[[rules]]
id = "nested-quantifiers"
rev = 1
why = "a pattern that backtracks exponentially in a backtracking engine"
body_matches = '{pattern}'
verdict = "drop"
"""


def test_catastrophic_pattern_on_a_hostile_body_is_fast():
    """(a+)+$ against 'aaaa...b' decides in milliseconds, not the ages a backtracking engine would take."""
    policy = compile_policy(POLICY.format(pattern="(a+)+$"))
    stanza = read(f"<message from='a@red.example' to='b@blue.example'><body>{'a' * 20000}b</body></message>")
    started = time.perf_counter()
    judgement = policy.judge(stanza, RED_TO_BLUE)
    assert judgement.rule_id == "default"
    assert time.perf_counter() - started < 1.0


def test_backreferences_are_refused_when_the_policy_loads():
    """RE2 has no backreferences: such a pattern is an error naming the rule, not a surprise at run time."""
    with pytest.raises(PolicyError) as raised:
        compile_policy(POLICY.format(pattern="(a)\\1"))
    assert "nested-quantifiers" in str(raised.value)
    assert "RE2 syntax" in str(raised.value)
