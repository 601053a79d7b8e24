"""
The far server's certificate is checked for the domain, never for the SRV
target: real loopback sockets and real TLS with the lab's throwaway PKI, an
outbound stream opened on an ``srv:`` route whose target name differs from
the domain, through a resolver answering from a table.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.names import dns
from twisted.trial import unittest

from guard.edges.s2s.carrier import open_outbound_stream
from guard.edges.s2s.inbound import InboundFactory
from guard.lab.pki import BLUE_DOMAINS

from ..test_srv import TableResolver, a, srv
from .sides import RecordingRelay, make_side, pki
from .test_handshakes import RED_DOMAINS, RecordingOwner, deferLater

from guard.edges.s2s.srv import DomainResolver


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
        red.resolver = DomainResolver(TableResolver(records), reactor)
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
