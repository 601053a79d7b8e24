"""The facts of a stanza are computed once, on first use, and a failure is not kept."""

import pytest

from guard.core.policy.facts import StanzaFacts, computed_once

from .wire import read


def test_a_fact_is_computed_once_and_kept():
    """The second use of a fact reads what the first computed: the computation runs once per instance."""
    calls = []

    class Counted:
        @computed_once
        def answer(self):
            """The answer."""
            calls.append(self)
            return len(calls)

    first, second = Counted(), Counted()
    assert (first.answer, first.answer, second.answer, first.answer) == (1, 1, 2, 1)
    assert calls == [first, second]
    assert Counted.answer.__doc__ == "The answer."


def test_a_fact_whose_computation_raises_is_not_kept():
    """A computation that raises raises again on the next use: no half-made fact is remembered."""
    attempts = []

    class Failing:
        @computed_once
        def answer(self):
            attempts.append(1)
            raise ValueError("no answer")

    failing = Failing()
    for _ in range(2):
        with pytest.raises(ValueError):
            failing.answer
    assert len(attempts) == 2


def test_stanza_facts_read_the_payload_once():
    """The payload namespaces of a stanza are read on first use and the same object answers later uses."""
    facts = StanzaFacts.of(read("<message from='a@red.example' to='b@blue.example' type='chat'>"
                                "<body>hi</body><x xmlns='urn:x'/></message>"), None)
    assert facts.namespaces == frozenset({"jabber:server", "urn:x"})
    assert facts.namespaces is facts.namespaces
