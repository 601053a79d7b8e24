"""The byte budget lets a burst through, then the configured rate, and says how long an excess must wait."""

import pytest

from guard.core.ratelimit import ByteBudget


def test_burst_then_rate():
    """A full bucket takes the burst at once; beyond it the wait is the excess divided by the rate."""
    budget = ByteBudget(rate=1000, burst=4000, now=0.0)
    assert budget.spend(0.0, 4000) == 0.0
    assert budget.spend(0.0, 500) == pytest.approx(0.5)
    assert budget.spend(1.0, 700) == pytest.approx(0.2)
    assert budget.spend(10.0, 1000) == 0.0


def test_refill_never_exceeds_the_burst():
    """A long silence refills only up to the burst."""
    budget = ByteBudget(rate=1000, burst=2000, now=0.0)
    assert budget.spend(3600.0, 2000) == 0.0
    assert budget.spend(3600.0, 1) > 0


def test_nonsense_budgets_are_refused():
    """A zero or negative rate or burst is a configuration error, not an unlimited budget."""
    with pytest.raises(ValueError):
        ByteBudget(rate=0, burst=10, now=0)
    with pytest.raises(ValueError):
        ByteBudget(rate=10, burst=-1, now=0)
