"""
The far server's certificate is checked for the domain, never for the SRV
target, and a XEP-0368 target gets TLS at once: real loopback sockets and
real TLS with the lab's throwaway PKI, an outbound stream opened on an
``srv:`` route whose target name differs from the domain, through a resolver
answering from a table.
"""

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.names import dns
from twisted.trial import unittest

from guard.edges.s2s.carrier import open_outbound_stream
from guard.edges.s2s.inbound import InboundFactory
from guard.lab.pki import BLUE_DOMAINS

from guard.edges.s2s.srv import DomainResolver

from ..test_srv import TableResolver, a, srv
from .sides import RecordingRelay, make_side, pki
from .test_handshakes import RED_DOMAINS, RecordingOwner, deferLater


def no_port_of_the_guard(reactor):
    """The far servers of these tests listen in the test's own reactor: none of its ports is the guard's own."""
    return []


class CertificateName(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def open_through_srv(self, target, presented=None):
        """A guard side listening on loopback presents ``presented`` (its own blue-domain certificate by
        default); a red server reaches blue.example through an SRV record pointing at ``target``."""
        material = pki()
        keypair = presented or material.guard_facing("red")
        self.listening_side = make_side("red", reactor, relay=RecordingRelay(), certificate=keypair.certificate,
                                        key=keypair.key, presents_for=BLUE_DOMAINS)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(InboundFactory(self.listening_side))
        self.addCleanup(port.stopListening)
        records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, port.getHost().port, target)],
                   (target, dns.A): [a("127.0.0.1")]}
        red = make_side("red", reactor, certificate=material.red_server.certificate, key=material.red_server.key,
                        presents_for=RED_DOMAINS)
        red.resolver = DomainResolver(TableResolver(records), reactor, listeners=no_port_of_the_guard)
        owner = RecordingOwner()
        stream = open_outbound_stream(owner, red, "red.example", "blue.example", "srv:domain=blue.example:timeout=5")
        self.addCleanup(self.hang_up, stream)
        return (yield owner.settled)

    def hang_up(self, stream):
        if stream.transport is not None:
            stream.transport.abortConnection()
        for inbound in list(self.listening_side.inbound_streams):
            inbound.transport.abortConnection()
        return deferLater(0.1)

    @defer.inlineCallbacks
    def test_a_target_named_otherwise_is_accepted_with_a_certificate_for_the_domain(self):
        """The SRV target guard-b.lab.example is in no certificate; the server proves blue.example: the stream is ready."""
        self.assertEqual((yield self.open_through_srv("guard-b.lab.example")), ("ready",))

    @defer.inlineCallbacks
    def test_a_certificate_naming_the_target_but_not_the_domain_is_refused(self):
        """The server's certificate names red.example, the SRV target, not blue.example: the stream fails."""
        outcome = yield self.open_through_srv("red.example", presented=pki().red_server)
        self.assertEqual(outcome, ("failed", "remote-server-not-found"))


class ServerSeeingTls(Protocol):
    """A direct TLS server that keeps what arrives through TLS and the ALPN protocol it negotiated."""

    def connectionMade(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        self.factory.seen["alpn"] = self.transport.negotiatedProtocol
        self.factory.seen["data"] = self.received


class DirectTls(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_a_direct_tls_target_gets_tls_at_once_with_sni_and_alpn_for_the_domain(self):
        """XEP-0368: to an _xmpps-server target the stream starts TLS before its first byte, with SNI blue.example
        and ALPN xmpp-server, verifies the server as blue.example, and only then writes its header."""
        material = pki()
        keypair = material.guard_facing("red")
        with open(keypair.certificate) as certificate, open(keypair.key) as key:
            private = ssl.PrivateCertificate.loadPEM(certificate.read() + key.read())
        options = ssl.CertificateOptions(privateKey=private.privateKey.original, certificate=private.original,
                                         acceptableProtocols=[b"xmpp-server"])
        factory = Factory.forProtocol(ServerSeeingTls)
        factory.seen = {}
        options.getContext().set_tlsext_servername_callback(
            lambda connection: factory.seen.setdefault("sni", connection.get_servername()))
        port = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        records = {("_xmpps-server._tcp.blue.example", dns.SRV): [srv(0, 1, port.getHost().port, "tls.lab.example")],
                   ("tls.lab.example", dns.A): [a("127.0.0.1")]}
        red = make_side("red", reactor, certificate=material.red_server.certificate, key=material.red_server.key,
                        presents_for=RED_DOMAINS)
        red.resolver = DomainResolver(TableResolver(records), reactor, listeners=no_port_of_the_guard)
        stream = open_outbound_stream(RecordingOwner(), red, "red.example", "blue.example",
                                      "srv:domain=blue.example:timeout=5")
        self.addCleanup(lambda: stream.transport and stream.transport.abortConnection())
        for _ in range(100):
            if b"blue.example" in factory.seen.get("data", b""):
                break
            yield deferLater(0.05)
        self.assertEqual((factory.seen.get("sni"), factory.seen.get("alpn")), (b"blue.example", b"xmpp-server"))
        self.assertIn(b"to='blue.example'", factory.seen["data"].replace(b'"', b"'"))
        self.assertTrue(stream.direct_tls)


class RealDns(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_a_side_resolver_asks_only_its_own_dns_server_over_udp(self):
        """side_resolver asks the configured server (the lab's responder on a loopback port) for SRV and A records."""
        from twisted.names import dns as names_dns, server

        from guard.edges.s2s.srv import side_resolver
        from guard.lab.dns import LabTableResolver, ServerAddress, ServiceRecord

        authority = LabTableResolver({"blue.example": ServerAddress("127.0.2.1", 5269)},
                                     services={"blue.example": [ServiceRecord(0, 1, 5270, "blue-server.lab.example")]},
                                     hosts={"blue-server.lab.example": "127.0.2.1"})
        factory = server.DNSServerFactory(authorities=[authority])
        port = reactor.listenUDP(0, names_dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = side_resolver(("127.0.0.1", port.getHost().port), reactor)
        self.assertEqual((yield resolver.targets("blue.example")), [("blue-server.lab.example", 5270, False)])
        self.assertEqual((yield resolver.addresses("blue-server.lab.example")), ["127.0.2.1"])
        self.assertEqual((yield resolver.targets("red.example")), [("red.example", 5269, False)])


class LoopThroughTheGuard(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_an_srv_target_that_is_the_guards_own_listener_is_not_connected_to(self):
        """A hostile DNS points blue.example at the guard's own red listener (a real port of this reactor): the
        stream fails remote-server-not-found without a connection, instead of carrying stanzas round the guard."""
        material = pki()
        keypair = material.guard_facing("red")
        listening_side = make_side("red", reactor, relay=RecordingRelay(), certificate=keypair.certificate,
                                   key=keypair.key, presents_for=BLUE_DOMAINS)
        accepted = []
        factory = InboundFactory(listening_side)
        building = factory.buildProtocol

        def build(address):
            accepted.append(address)
            return building(address)

        factory.buildProtocol = build
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        records = {("_xmpp-server._tcp.blue.example", dns.SRV): [srv(0, 1, port.getHost().port, "guard.lab.example")],
                   ("guard.lab.example", dns.A): [a("127.0.0.1")]}
        blue = make_side("blue", reactor)
        blue.resolver = DomainResolver(TableResolver(records), reactor)
        owner = RecordingOwner()
        open_outbound_stream(owner, blue, "red.example", "blue.example", "srv:domain=blue.example:timeout=5")
        self.assertEqual((yield owner.settled), ("failed", "remote-server-not-found"))
        yield deferLater(0.1)
        self.assertEqual(accepted, [])


class LabResponder(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_the_lab_dns_says_no_service_and_direct_tls_over_the_wire(self):
        """The lab's responder writes a "." target as the root name and answers _xmpps-server records: over real
        UDP the guard's resolver reads "no service" for one domain and a direct TLS target for another."""
        from twisted.names import dns as names_dns, server

        from guard.edges.s2s.srv import LookupFailed, side_resolver
        from guard.lab.dns import LabTableResolver, ServerAddress, parse_srv_argument

        authority = LabTableResolver(
            {"blue.example": ServerAddress("127.0.2.1", 5269), "red.example": ServerAddress("127.0.1.1", 5269)},
            services={"red.example": [parse_srv_argument("red.example=0:0:0:.")[1]]},
            direct_tls={"blue.example": [parse_srv_argument("blue.example=0:1:5270:tls.lab.example")[1]]})
        port = reactor.listenUDP(0, names_dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[authority])),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = side_resolver(("127.0.0.1", port.getHost().port), reactor)
        self.assertEqual(sorted((yield resolver.targets("blue.example"))),
                         [("blue.example", 5269, False), ("tls.lab.example", 5270, True)])
        with self.assertRaisesRegex(LookupFailed, "offers no XMPP server"):
            yield resolver.targets("red.example")
