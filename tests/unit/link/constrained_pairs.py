"""Two halves' relays joined by a constrained link in memory: half A (red) and half B (blue), each judging with
its own policies and delivering to a recording server of its own side."""

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.test import iosim

from guard.app.half import HalfRelay
from guard.core.books import Books
from guard.core.pipeline import Direction
from guard.core.topology import Topology
from guard.edges.feeders import Feeders
from guard.edges.limits import Limits
from guard.edges.link.constrained import ConstrainedLink
from guard.edges.link.link import Link, LinkSettings
from guard.edges.link.profile import ConstrainedProfile, HeaderNamesOnly
from guard.edges.link.stream import LinkStreamFactory
from guard.edges.link.tls import LinkTLS, PeerCheck, certificate_fingerprint
from guard.edges.release import reparse_stanza
from guard.edges.xmlstream import ParserLimits, serialise

from .test_half import PassAll

RED = frozenset({"red.example", "conference.red.example"})
BLUE = frozenset({"blue.example"})
TOPOLOGY = Topology({"red": RED, "blue": BLUE})


class RecordingAudit:
    def __init__(self):
        self.records = []

    def record(self, event, **fields):
        self.records.append((event, fields["rule"], fields.get("id")))


class OwnServer:
    """This half's own server: records what the half delivers to it, and settles it delivered."""

    def __init__(self, relay):
        self.relay = relay
        self.received = []
        self.pairs = frozenset()

    def carry(self, parcel):
        self.received.append(serialise(parcel.stanza))
        self.relay.delivered(parcel)

    def bounce_waiting(self, condition, text):
        """Nothing waits here: every stanza is delivered as it comes."""

    def waiting(self):
        return 0

    def shut_down(self):
        """Nothing to close."""


class MemoryLeg:
    def __init__(self, link):
        self.link = link
        self.limits = ParserLimits()

    def describe(self):
        return self.link.describe()


class Half:
    """One half: its relay (own side, far side over the link), its constrained link, its own server."""

    def __init__(self, side, far, own_name, peer_name, clock, profile, settings, import_policy=None):
        self.audit = RecordingAudit()
        policies = {Direction(side, far): PassAll(), Direction(far, side): import_policy or PassAll()}
        from guard.edges.relay import PolicyTable

        self.relay = HalfRelay(TOPOLOGY, PolicyTable(policies), Books(), self.audit, clock, side, far)
        self.side = SimpleNamespace(name=side, limits=Limits(), inbound_streams=Feeders(), routes={})
        self.relay.add_side(self.side)
        self.constrained = ConstrainedLink(profile, TOPOLOGY.hosted_on(side), TOPOLOGY.hosted_on(far),
                                           ParserLimits().stanza_bytes)
        self.link = Link(self.relay, own_name, peer_name, clock, settings, session=f"session{own_name[-1]}",
                         constrained=self.constrained)
        self.link.start()
        self.relay.leg = MemoryLeg(self.link)
        self.server = OwnServer(self.relay)
        for sender in TOPOLOGY.hosted_on(far):
            for receiver in TOPOLOGY.hosted_on(side):
                self.relay.links[(side, sender, receiver)] = self.server

    def sends(self, xml, size=None):
        """A stanza from this half's own side (accepted, addressing-checked, judged for export)."""
        from guard.core.addressing import check_addressing

        stanza = reparse_stanza(xml)
        pairs = {(sender, receiver) for sender in TOPOLOGY.hosted_on(self.side.name)
                 for receiver in TOPOLOGY.hosted_on(self.relay.far.name)}
        addressed = check_addressing(stanza, pairs, TOPOLOGY.hosted_on(self.relay.far.name))
        self.relay.stanza_received(self.side, stanza, addressed, size or len(xml))

    def books(self):
        summary = self.relay.books.summary()
        return {key: summary[key] for key in ("accepted", "delivered", "bounced", "dropped", "in_flight")}


class ConstrainedPair:
    """Half A (red, dials) and half B (blue, listens) joined by the constrained link in memory."""

    def __init__(self, profile=ConstrainedProfile(security="bearer", rate=1_000_000), material=None,
                 settings=LinkSettings(ack_every=1), profile_b=None, import_b=None):
        self.clock = Clock()
        self.a = Half("red", "blue", "half-a", "half-b", self.clock, profile, settings)
        self.b = Half("blue", "red", "half-b", "half-a", self.clock, profile_b or profile, settings, import_b)
        self.material = material
        self.tls = None
        if (profile_b or profile).security == "tls" or profile.security == "tls":
            a, b = material["a"], material["b"]
            self.tls = (LinkTLS(str(a.certificate), str(a.key), tls13_only=True),
                        LinkTLS(str(b.certificate), str(b.key), tls13_only=True))
            self.checks = (PeerCheck("half-b", pins=[certificate_fingerprint(str(b.certificate))]),
                           PeerCheck("half-a", pins=[certificate_fingerprint(str(a.certificate))]))
        else:
            self.checks = (HeaderNamesOnly(), HeaderNamesOnly())
        self.pump = None
        self.bytes_on_bearer = 0

    def new_connection(self):
        """Half A's and half B's protocols for one new connection (in TLS unless security = "bearer")."""
        factory_a = LinkStreamFactory(self.a.link, self.checks[0], self.clock,
                                      prepare=self.a.constrained.prepare_stream)
        factory_b = LinkStreamFactory(self.b.link, self.checks[1], self.clock,
                                      prepare=self.b.constrained.prepare_stream)
        if self.tls is None:
            return factory_a.buildProtocol(None), factory_b.buildProtocol(None)
        return (self.tls[0].dialling(factory_a, self.clock).buildProtocol(None),
                self.tls[1].listening(factory_b, self.clock).buildProtocol(None))

    def connect(self):
        client, server = self.new_connection()
        client_transport, server_transport = iosim.makeFakeClient(client), iosim.makeFakeServer(server)
        for transport in (client_transport, server_transport):
            self._count(transport)
        self.pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
        self.client, self.server = client, server
        self.run(0.5)

    def _count(self, transport):
        write = transport.write

        def counting(data):
            self.bytes_on_bearer += len(data)
            write(data)

        transport.write = counting

    def run(self, seconds, step=0.05):
        """Let ``seconds`` pass on the shared clock, moving bytes at every step."""
        for _ in range(max(1, round(seconds / step))):
            if self.pump is not None:
                self.pump.flush()
            self.clock.advance(step)
        if self.pump is not None:
            self.pump.flush()

    def cut(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.pump = None
        for protocol in (self.client, self.server):
            protocol.transport.disconnecting = True
            protocol.connectionLost(Failure(ConnectionLost("the bearer dropped")))


def flights_before_first_stanzas(pair, flights=12):
    """Open a new connection and move its bytes one flight (one direction's pending bytes) at a time: the flight
    after which half B's server, then half A's, got its first stanza, and the bearer bytes both ways until then."""
    client, server = pair.new_connection()
    client_transport, server_transport = iosim.makeFakeClient(client), iosim.makeFakeServer(server)
    client.makeConnection(client_transport)
    server.makeConnection(server_transport)
    pair.client, pair.server = client, server
    already = (len(pair.a.server.received), len(pair.b.server.received))
    flight, sent, first = 0, {"a": 0, "b": 0}, {}
    for _ in range(flights):
        for transport, reader, writer in ((client_transport, server, "a"), (server_transport, client, "b")):
            for _ in range(10):  # TLS writes and the pacer run on the clock (at 1 Mbit/s, 0.1 s paces 12 KB)
                pair.clock.advance(0.01)
            data = transport.getOutBuffer()
            if not data:
                continue
            flight += 1
            sent[writer] += len(data)
            reader.dataReceived(data)
            for half, name, before in ((pair.b, "b", already[1]), (pair.a, "a", already[0])):
                if name not in first and len(half.server.received) > before:
                    first[name] = (flight, dict(sent))
    return first
