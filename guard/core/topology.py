"""
Which domains live on which side: the facts every addressing decision rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Topology:
    """Two sides, each hosting a set of domains; the guard fronts each side's domains on the other."""

    domains_by_side: dict[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.domains_by_side) != 2:
            raise ValueError("a guard joins exactly two sides")
        first, second = self.domains_by_side.values()
        shared = first & second
        if shared:
            raise ValueError(f"domains on both sides: {sorted(shared)}")

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.domains_by_side)

    def far_side(self, side: str) -> str:
        """The other side of ``side``."""
        first, second = self.sides
        if side == first:
            return second
        if side == second:
            return first
        raise KeyError(side)

    def side_of(self, domain: str) -> str | None:
        """The side hosting ``domain``, or None when no side does."""
        for side, domains in self.domains_by_side.items():
            if domain in domains:
                return side
        return None

    def fronted_on(self, side: str) -> frozenset[str]:
        """The domains the guard stands in for when talking to ``side``'s servers."""
        return self.domains_by_side[self.far_side(side)]

    def hosted_on(self, side: str) -> frozenset[str]:
        return self.domains_by_side[side]
