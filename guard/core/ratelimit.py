"""
A byte budget (token bucket) for one peer: it may send ``burst`` bytes at
once and ``rate`` bytes per second after that.  Pure: the caller gives the
time.
"""

from __future__ import annotations


class ByteBudget:
    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def spend(self, now: float, amount: int) -> float:
        """Spend ``amount`` bytes at ``now``; return how many seconds the peer must wait (0 when within budget)."""
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._tokens -= amount
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate
