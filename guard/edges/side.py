"""
Everything a stream needs to know about the side it talks to, in one place.
Built once by the service from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guard.core.topology import Topology

from .feeders import Feeders
from .s2s.counts import InboundCounts
from .limits import Limits
from .tlsidentity import Identity, TrustAnchors


@dataclass(eq=False)
class Side:
    name: str
    topology: Topology
    authentication: str  # "certificate" or "dialback"
    identities: dict[str, Identity]  # fronted (far-side) domain -> what the guard presents for it
    anchors: TrustAnchors
    routes: dict[str, str]  # hosted domain -> its server, a Twisted client endpoint string (tcp:host=…:port=…)
    limits: Limits
    dialback_secret: str
    reactor: object
    relay: object = None
    inbound_streams: Feeders = field(default_factory=Feeders)  # the inbound streams open on this side
    inbound_counts: InboundCounts = field(default_factory=InboundCounts)  # by address and by proved domain
    verifier: object = None  # the side's dialback Verifier (guard.edges.s2s.verification), made with the side
    events: object = None  # who hears its streams' events (guard.edges.metrics.StreamEvents), or None
    resolver: object = None  # its DNS for srv: routes (guard.edges.s2s.srv.DomainResolver), or None: no DNS

    def __post_init__(self):
        if self.resolver is not None:  # an SRV target naming a domain the guard fronts here is the guard itself
            self.resolver.own_names = frozenset(self.fronted)

    @property
    def clock(self):
        return self.reactor

    @property
    def fronted(self) -> frozenset[str]:
        return self.topology.fronted_on(self.name)

    @property
    def hosted(self) -> frozenset[str]:
        return self.topology.hosted_on(self.name)
