"""
The snapshot (guard.app.snapshot) and each stream's describe(): plain values
read from a service built on a memory reactor, and from real streams that
negotiated over loopback with the lab's PKI.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from guard.app.config import load_config
from guard.app.service import GuardService
from guard.app.snapshot import snapshot
from guard.core.pipeline import Direction
from guard.edges.release import ReleaseAuthority
from guard.edges.link.link import Link
from guard.edges.link.stream import LinkStream
from guard.edges.relay import Parcel
from guard.edges.s2s.inbound import InboundFactory
from guard.edges.s2s.outbound import OutboundStream
from guard.lab.topology import DEFAULT_POLICY, render_guard_config

from .link.pairs import AcceptingCheck, RecordingOwner as LinkOwner, message
from .streams.sides import RecordingRelay, make_side, pki
from .streams import test_handshakes
from .streams.test_handshakes import RecordingOwner, deferLater, stanza
from .link.test_half_config import tree  # noqa: F401 - the pytest fixture
from .test_config import write
from .test_release import RecordingAudit, stanza as release_stanza

STREAM_KEYS = {"id", "side", "direction", "peer_domain", "local_domain", "pairs", "authentication",
               "certificate_subject", "certificate_not_after", "started", "age", "state", "stanzas_in",
               "stanzas_out", "bytes_in", "bytes_out"}


def lab_service(tmp_path, **guard_options):
    """A standalone guard from the lab configuration on a memory reactor (nothing listens)."""
    policy = tmp_path / "allow-all.toml"
    shutil.copy(DEFAULT_POLICY, policy)
    shutil.copy(str(DEFAULT_POLICY).replace(".toml", ".tests.toml"), tmp_path / "allow-all.tests.toml")
    text = render_guard_config(pki(), "certificate", policy=policy, guard_options=guard_options)
    clock = MemoryReactorClock()
    clock.advance(1_000_000)
    return GuardService(load_config(str(write(tmp_path, text))), clock), clock


def test_a_fresh_service_snapshot_names_the_service_books_policies_and_no_peers(tmp_path):
    """Before any traffic the snapshot is running, with zero books, both policies (digest, cases passed), no peers,
    no carriers, no pair link and no release authority; it survives a JSON round trip unchanged."""
    service, clock = lab_service(tmp_path)
    clock.advance(42)
    seen = snapshot(service)
    assert json.loads(json.dumps(seen)) == seen
    assert seen["service"] == {"name": "xmpp-guard", "version": "0.1.0", "started": 1_000_000.0, "uptime": 42.0,
                               "state": "running", "halted_reason": None}
    assert seen["books"] == {"accepted": 0, "delivered": 0, "bounced": 0, "dropped": 0, "in_flight": 0}
    assert seen["sides"] == {"red": {"peers": []}, "blue": {"peers": []}}
    assert (seen["carriers"], seen["pair_link"], seen["release_authority"]) == ([], None, None)
    assert sorted(record["direction"] for record in seen["policies"]) == ["blue->red", "red->blue"]
    for record in seen["policies"]:
        assert record["file"] == str(tmp_path / "allow-all.toml") and record["loaded"] == 1_000_000.0
        assert len(record["digest"]) == 64 and record["cases"]["failed"] == 0 and record["cases"]["passed"] > 0


def test_a_halted_guard_says_so_with_its_reason(tmp_path):
    """When the audit trail stops relaying, the service state is halted and the reason is given."""
    service, _ = lab_service(tmp_path)
    service.relay.halted_reason = "audit trail unavailable: disk full"
    assert snapshot(service)["service"]["state"] == "halted"
    assert snapshot(service)["service"]["halted_reason"] == "audit trail unavailable: disk full"


def test_a_reload_records_the_new_policy_digest_and_load_time(tmp_path):
    """After a reload of a changed policy file, the snapshot gives the new digest and the time of the reload."""
    service, clock = lab_service(tmp_path)
    before = {record["direction"]: record["digest"] for record in snapshot(service)["policies"]}
    policy = tmp_path / "allow-all.toml"
    policy.write_text(policy.read_text() + "\n# changed\n")
    clock.advance(10)
    assert service.reload_policies()
    after = snapshot(service)["policies"]
    assert all(record["digest"] != before[record["direction"]] for record in after)
    assert all(record["loaded"] == 1_000_010.0 for record in after)


def test_a_carrier_waiting_for_its_stream_is_described(tmp_path):
    """A stanza for blue queued while its stream is set up shows as a connecting carrier holding one stanza."""
    service, _ = lab_service(tmp_path)
    opened = []

    def opener(owner, side, sender, receiver, route, purpose="relay"):
        opened.append((sender, receiver))
        return OutboundStream(owner, side, sender, receiver, purpose)

    service.relay.open_stream = opener
    service.relay._forward("blue", ("red.example", "blue.example"), Parcel(message(1).stanza, message(1).stanza, None, 90))
    assert opened == [("red.example", "blue.example")]
    carriers = snapshot(service)["carriers"]
    assert [(c["side"], c["sender"], c["receiver"], c["state"], c["queued"], c["queued_bytes"]) for c in carriers] == [
        ("blue", "red.example", "blue.example", "connecting", 1, 90)]
    assert snapshot(service)["sides"]["blue"]["peers"] == []  # not connected yet: not a peer


def test_a_link_stream_describes_its_peer_stanzas_and_bytes():
    """A link connection counts the stanzas it delivers and writes (not its header, resume or acks) and its bytes."""
    clock = Clock()
    clock.advance(500)
    link = Link(LinkOwner(), "half-a", "half-b", clock, session="sessiona")
    link.start()
    stream = LinkStream(link, AcceptingCheck(), clock)
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.handshakeCompleted()
    stream.dataReceived(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='half-b' to='half-a' version='1.0'>"
        b"<resume xmlns='urn:xmpp-guard:link:0' session='sessionb' next='1' h='0'/>"
        b"<message from='juliet@blue.example' to='romeo@red.example' id='m1'><body>hi</body></message>")
    link.send(message(1))
    link.send(message(2))
    clock.advance(3)
    facts = stream.describe()
    assert facts["stanzas_in"] == 1 and facts["stanzas_out"] == 2
    assert facts["bytes_out"] == len(transport.value()) and facts["bytes_in"] > 200
    assert (facts["side"], facts["direction"], facts["peer_domain"], facts["local_domain"]) == (
        "link", "link", "half-b", "half-a")
    assert (facts["started"], facts["age"], facts["state"], facts["peer_fingerprint"]) == (500.0, 3.0, "open", "aa:bb")


class StreamsOverLoopback(unittest.TestCase):
    """Real inbound and outbound streams negotiate over loopback TLS; each describes itself."""

    timeout = 20

    @defer.inlineCallbacks
    def negotiate(self, authentication, relay=None):
        self.relay = relay or RecordingRelay()
        self.guard_side = make_side("red", reactor, authentication=authentication, relay=self.relay)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(InboundFactory(self.guard_side))
        self.addCleanup(port.stopListening)
        material = pki()
        peer_side = make_side("red", reactor, authentication=authentication, certificate=material.red_server.certificate,
                              key=material.red_server.key, presents_for=("red.example", "conference.red.example"))
        owner = RecordingOwner()
        outbound = OutboundStream(owner, peer_side, "red.example", "blue.example")
        self.addCleanup(self.hang_up, outbound)
        yield connectProtocol(HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5), outbound)
        self.assertEqual((yield owner.settled), ("ready",))
        (inbound,) = list(self.guard_side.inbound_streams)
        return inbound, outbound

    hang_up = test_handshakes.Negotiation.hang_up

    @defer.inlineCallbacks
    def test_certificate_streams_describe_subject_expiry_stanzas_and_bytes(self):
        """After SASL EXTERNAL and one message, both ends say certificate, the peer's subject and notAfter,
        one stanza each way they carried it, and the bytes their byte counts saw."""
        inbound, outbound = yield self.negotiate("certificate")
        outbound.send(stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m1'><body>hi</body></message>"))
        yield deferLater(0.2)
        inside, outside = inbound.describe(), outbound.describe()
        self.assertEqual(set(inside) - {"purpose"}, STREAM_KEYS)
        self.assertEqual(set(outside) - {"purpose"}, STREAM_KEYS)
        self.assertEqual((inside["side"], inside["direction"], inside["peer_domain"], inside["local_domain"],
                          inside["authentication"], inside["state"], inside["stanzas_in"], inside["stanzas_out"]),
                         ("red", "inbound", "red.example", "blue.example", "certificate", "open", 1, 0))
        self.assertEqual((outside["direction"], outside["peer_domain"], outside["local_domain"],
                          outside["authentication"], outside["state"], outside["stanzas_in"], outside["stanzas_out"]),
                         ("outbound", "blue.example", "red.example", "certificate", "ready", 0, 1))
        self.assertIn("red.example", inside["certificate_subject"] or "")
        self.assertGreater(inside["certificate_not_after"], reactor.seconds())
        self.assertIsNotNone(outside["certificate_subject"])
        self.assertGreater(outside["certificate_not_after"], reactor.seconds())
        self.assertEqual(inside["bytes_in"], inbound.byte_count.bytes_in)
        self.assertGreater(inside["bytes_in"], 0)
        self.assertGreater(outside["bytes_out"], 0)
        self.assertNotEqual(inside["id"], outside["id"])
        self.assertGreaterEqual(inside["age"], 0.0)

    @defer.inlineCallbacks
    def test_dialback_streams_say_dialback(self):
        """A stream authenticated by dialback says so at both ends."""
        inbound, outbound = yield self.negotiate("dialback", RecordingRelay({("red.example", "blue.example"): True}))
        self.assertEqual(inbound.describe()["authentication"], "dialback")
        self.assertEqual(outbound.describe()["authentication"], "dialback")
        self.assertEqual(inbound.describe()["pairs"], [["red.example", "blue.example"]])


def test_a_half_snapshot_has_its_one_side_and_the_pair_link(tree):
    """A pair half's snapshot has its own side only, and the pair link down with an empty buffer and no connection."""
    from guard.app.half import HalfService
    from guard.app.half_config import load_half_config

    from .link.test_half_config import variant

    service = HalfService(load_half_config(variant(tree, [])), MemoryReactorClock())
    seen = snapshot(service)
    assert json.loads(json.dumps(seen)) == seen
    assert list(seen["sides"]) == [service.side.name]
    link = seen["pair_link"]
    assert (link["state"], link["buffer_bytes"], link["unacknowledged"], link["stream"]) == ("down", 0, 0, None)
    assert link["peer"] == service.config.link.leg.peer_name
    assert len(seen["policies"]) == 2


def test_the_release_authority_is_described_with_each_answer_in_one_outcome(tmp_path):
    """With a release authority configured, the snapshot gives its endpoint and questions; a busy answer counts as
    busy only, and the latency is the mean of the answers."""
    service, clock = lab_service(tmp_path)
    service.release_authority = authority = ReleaseAuthority(
        SimpleNamespace(connect=lambda factory: defer.Deferred()), clock, RecordingAudit(), timeout=2.0,
        max_pending=1, max_waiting=0)
    service.config = SimpleNamespace(settings=SimpleNamespace(release_endpoint="unix:path=/run/guard/release.sock"))
    authority.ask(release_stanza(), Direction("red", "blue"), "refer-high")
    authority.ask(release_stanza(), Direction("red", "blue"), "refer-high")
    assert snapshot(service)["release_authority"]["pending"] == 1
    clock.advance(2.0)
    assert snapshot(service)["release_authority"] == {
        "endpoint": "unix:path=/run/guard/release.sock", "pending": 0, "waiting": 0, "asked": 1,
        "answers": {"released": 0, "denied": 1, "busy": 1}, "answered": 2, "latency_seconds": 1.0,
        "last_latency_seconds": 2.0}
