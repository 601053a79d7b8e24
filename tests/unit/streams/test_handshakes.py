"""
Whole S2S negotiations over real loopback sockets and real TLS with the lab's
throwaway PKI: the guard's outbound machine plays the red server, the guard's
inbound machine answers as it would for Prosody.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.trial import unittest

from guard.core.dialback import dialback_key
from guard.edges.s2s.inbound import InboundFactory
from guard.edges.s2s.outbound import OutboundStream
from guard.edges.xmlstream import StreamParser

from .sides import SECRET, RecordingRelay, make_side, pki

RED_DOMAINS = ("red.example", "conference.red.example")


class RecordingOwner:
    """Owns outbound streams in these tests: records what they report and fires when they settle."""

    def __init__(self):
        self.events = []
        self.settled = defer.Deferred()
        self.asking: set[str] = set()  # stream ids of the db:verify we sent

    def _settle(self, event):
        self.events.append(event)
        if not self.settled.called:
            self.settled.callback(event)

    def stream_ready(self, stream):
        self._settle(("ready",))

    def stream_failed(self, stream, condition, text):
        self._settle(("failed", condition))

    def stream_lost(self, stream):
        self.events.append(("lost",))

    def verification_answered(self, stream, stream_id, verdict):
        self.asking.discard(stream_id)
        self.events.append(("verified", stream_id, verdict))

    def asked(self, stream_id):
        return stream_id in self.asking

    def congested(self, stream):
        self.events.append(("congested",))

    def decongested(self, stream):
        self.events.append(("decongested",))


def stanza(xml):
    found = []
    StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None).feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        + xml.encode()
    )
    return found[0]


class Negotiation(unittest.TestCase):
    timeout = 20

    def listen(self, authentication="certificate", relay=None, limits=None):
        self.relay = relay or RecordingRelay()
        self.guard_side = make_side("red", reactor, authentication=authentication, relay=self.relay, limits=limits)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        return endpoint.listen(InboundFactory(self.guard_side)).addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        self.addCleanup(port.stopListening)
        return port

    def connect(self, owner, authentication="certificate", keypair=None, purpose="relay",
                sender="red.example", receiver="blue.example"):
        material = pki()
        keypair = keypair or material.red_server
        peer_side = make_side("red", reactor, authentication=authentication, certificate=keypair.certificate,
                              key=keypair.key, presents_for=RED_DOMAINS)
        stream = OutboundStream(owner, peer_side, sender, receiver, purpose=purpose)
        endpoint = HostnameEndpoint(reactor, "127.0.0.1", self.port.getHost().port, timeout=5)
        self.addCleanup(self.hang_up, stream)
        return connectProtocol(endpoint, stream).addCallback(lambda _: stream)

    def hang_up(self, stream):
        """Close both ends and give the reactor a moment, so no timer or connection outlives the test."""
        if stream.transport is not None:
            stream.transport.abortConnection()
        for inbound in list(self.guard_side.inbound_streams):
            inbound.transport.abortConnection()
        return deferLater(0.1)

    @defer.inlineCallbacks
    def test_certificate_authentication_and_a_relayed_stanza(self):
        """A red server with a red-CA certificate naming red.example authenticates by SASL EXTERNAL and its stanza reaches the relay."""
        yield self.listen()
        owner = RecordingOwner()
        stream = yield self.connect(owner)
        self.assertEqual((yield owner.settled), ("ready",))
        stream.send(stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m1'><body>hi</body></message>"))
        yield deferLater(0.2)
        self.assertEqual(self.relay.events, [(
            "stanza", "red",
            '<message from="romeo@red.example/a" to="juliet@blue.example" id="m1"><body>hi</body></message>',
            ("red.example", "blue.example"),
        )])

    @defer.inlineCallbacks
    def test_streams_per_domain_over_the_limit_are_refused(self):
        """With streams_per_domain = 1, a second authenticated stream from red.example is refused while the first carries on."""
        from guard.edges.limits import Limits

        yield self.listen(limits=Limits(streams_per_domain=1))
        first, second = RecordingOwner(), RecordingOwner()
        yield self.connect(first)
        self.assertEqual((yield first.settled), ("ready",))
        yield self.connect(second)
        self.assertEqual((yield second.settled), ("failed", "remote-server-not-found"))
        self.assertEqual(first.events, [("ready",)])

    @defer.inlineCallbacks
    def test_stanza_from_another_domain_closes_the_stream(self):
        """After authenticating as red.example, a stanza from conference.red.example is invalid-from and goes nowhere."""
        yield self.listen()
        owner = RecordingOwner()
        stream = yield self.connect(owner)
        yield owner.settled
        stream.send(stanza("<message from='room@conference.red.example' to='juliet@blue.example'/>"))
        yield deferLater(0.3)
        self.assertEqual(self.relay.events, [])
        self.assertEqual(owner.events, [("ready",), ("lost",)])

    @defer.inlineCallbacks
    def test_common_name_without_subject_alt_name_is_refused(self):
        """A certificate whose CN names red.example but whose subjectAltName does not is not accepted (no CN fallback)."""
        yield self.listen()
        owner = RecordingOwner()
        yield self.connect(owner, keypair=pki().red_common_name_only)
        self.assertEqual((yield owner.settled), ("failed", "remote-server-not-found"))
        self.assertEqual(self.relay.events, [])

    @defer.inlineCallbacks
    def test_certificate_from_the_wrong_sides_ca_is_refused(self):
        """A red.example certificate issued by blue's CA does not authenticate a red-side peer."""
        yield self.listen()
        owner = RecordingOwner()
        yield self.connect(owner, keypair=pki().red_from_blue_ca)
        self.assertEqual((yield owner.settled), ("failed", "remote-server-not-found"))
        self.assertEqual(self.relay.events, [])

    @defer.inlineCallbacks
    def test_dialback_confirmed_by_the_authoritative_server(self):
        """On a dialback side, the guard asks red's authoritative server (through the relay) and accepts the stream when it confirms."""
        yield self.listen("dialback", RecordingRelay({("red.example", "blue.example"): True}))
        owner = RecordingOwner()
        yield self.connect(owner, authentication="dialback")
        self.assertEqual((yield owner.settled), ("ready",))
        self.assertEqual(self.relay.events, [("check_dialback", "red", "red.example", "blue.example")])

    @defer.inlineCallbacks
    def test_dialback_denied_keeps_the_stream_unauthenticated(self):
        """When the authoritative server denies the key, the peer is told invalid and never authenticated."""
        yield self.listen("dialback", RecordingRelay({("red.example", "blue.example"): False}))
        owner = RecordingOwner()
        yield self.connect(owner, authentication="dialback")
        self.assertEqual((yield owner.settled), ("failed", "remote-server-not-found"))

    @defer.inlineCallbacks
    def test_dialback_for_a_lookalike_domain_is_refused(self):
        """Dialback for red.example.evil.example (not a red domain) ends the stream without asking anyone."""
        yield self.listen("dialback", RecordingRelay({("red.example.evil.example", "blue.example"): True}))
        owner = RecordingOwner()
        yield self.connect(owner, authentication="dialback", sender="red.example.evil.example")
        self.assertEqual((yield owner.settled), ("failed", "remote-server-not-found"))
        self.assertEqual(self.relay.events, [])

    @defer.inlineCallbacks
    def test_verify_answers_valid_only_for_keys_the_guard_issued(self):
        """On one verification stream, a db:verify for a key the guard issued is valid; a forged key, or one for another stream id, is invalid."""
        yield self.listen("dialback")
        genuine = dialback_key(SECRET, "red.example", "blue.example", "stream-7")
        owner = RecordingOwner()
        stream = yield self.connect(owner, authentication="dialback", purpose="verify")
        self.assertEqual((yield owner.settled), ("ready",))
        for stream_id, key in (("stream-7", genuine), ("stream-8", genuine)):
            owner.asking.add(stream_id)
            stream.send_verify(stream_id, key)
        yield deferLater(0.3)
        owner.asking.add("stream-7")
        stream.send_verify("stream-7", "0" * 64)
        yield deferLater(0.3)
        self.assertEqual(owner.events, [
            ("ready",), ("verified", "stream-7", "valid"), ("verified", "stream-8", "invalid"),
            ("verified", "stream-7", "invalid"),
        ])


def deferLater(seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
