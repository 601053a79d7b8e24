"""
Dialback verification without amplification: one verification stream per
authoritative server, one db:verify per (stream, pair), caps per stream, per
peer address and per side, and an XEP-0220 error for every request the guard
cannot settle.  Inbound streams are driven with bytes; the verification
streams are stand-ins that write down what they are asked.
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from guard.core.dialback import dialback_key
from guard.edges.limits import Limits
from guard.edges.relay import PolicyTable, Relay
from guard.edges.s2s.inbound import InboundStream
from guard.edges.s2s.outbound import OutboundStream
from guard.edges.s2s.verification import (
    INVALID, TIMED_OUT, TOO_MANY_HERE, TOO_MANY_ON_SIDE, UNREACHABLE, VALID, Admitted, Duplicate,
    PendingVerifications, Refused, Verifier,
)

from .sides import SECRET, TOPOLOGY, make_side
from .test_handshakes import RecordingOwner
from .test_inbound_bytes import HEADER, TLSRecordingTransport
from .test_outbound_bytes import FAR_HEADER, ProvenTLSTransport, dialback_stream

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
ROUTES = {"red.example": ("127.0.1.1", 5269), "conference.red.example": ("127.0.1.1", 5269)}


def db_result(sender="red.example", receiver="blue.example", key="k" * 64):
    return f"<db:result from='{sender}' to='{receiver}'>{key}</db:result>".encode()


def error_result(condition, error_type="cancel", sender="blue.example", receiver="red.example"):
    return (f"<db:result from='{sender}' to='{receiver}' type='error'><error type='{error_type}'>"
            f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>").encode()


class StandInVerifyStream:
    """A verification stream that appends ("event", args) to the world's log; the test plays the authoritative server."""

    def __init__(self, log, owner, sender, receiver, purpose):
        self.log, self.owner = log, owner
        log.append(("open", sender, receiver, purpose))

    def send_verify(self, stream_id, key):
        self.log.append(("verify", stream_id, key))

    def close_for_shutdown(self):
        self.log.append(("close",))

    def close_idle(self):
        self.log.append(("close",))


class World:
    """The red side on dialback with its Verifier, a real Relay, and stand-in verification streams."""

    def __init__(self, limits=None, routes=ROUTES, connect_fails=False):
        self.clock = MemoryReactorClock()
        self.log = []
        self.streams = []
        self.connect_fails = connect_fails
        self.relay = Relay(TOPOLOGY, PolicyTable({}), None, None, self.clock, open_stream=self.open_stream)
        self.side = make_side("red", self.clock, authentication="dialback", relay=self.relay, routes=routes,
                              limits=limits or Limits())
        self.side.verifier = Verifier(self.side, self.open_stream)
        self.relay.add_side(self.side)

    def open_stream(self, owner, side, sender, receiver, route, purpose="relay"):
        stream = StandInVerifyStream(self.log, owner, sender, receiver, purpose)
        self.streams.append(stream)
        if self.connect_fails:
            owner.stream_failed(stream, "remote-server-not-found", "connection refused")
        return stream

    def authenticating(self, host="127.0.1.1", port=40000):
        """An inbound stream from ``host`` past STARTTLS, offered dialback, with nothing written yet."""
        stream = InboundStream(self.side)
        transport = TLSRecordingTransport(peerAddress=IPv4Address("TCP", host, port))
        stream.makeConnection(transport)
        stream.dataReceived(HEADER + STARTTLS)
        stream.dataReceived(HEADER)
        assert b"<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>" in transport.value()
        transport.clear()
        return stream, transport

    def ready(self):
        """Every verification stream opened so far finishes its negotiation."""
        for stream in self.streams:
            stream.owner.stream_ready(stream)


def verifies(log):
    return [entry for entry in log if entry[0] == "verify"]


def opens(log):
    return [entry for entry in log if entry[0] == "open"]


# -- the decision object ----------------------------------------------------------


def test_pending_verifications_deduplicate_per_stream_and_pair():
    """A second request from the same stream for the same pair is a duplicate; another stream's is not."""
    book = PendingVerifications(per_stream=4, per_address=4, per_side=8)
    assert book.admit("s1", "a", "red.example", "blue.example") == Admitted()
    assert book.admit("s1", "a", "red.example", "blue.example") == Duplicate()
    assert book.admit("s2", "a", "red.example", "blue.example") == Admitted()
    assert book.pending == 2
    book.settle("s1", "red.example", "blue.example")
    assert book.admit("s1", "a", "red.example", "blue.example") == Admitted()


def test_pending_verifications_cap_per_stream_per_address_and_per_side():
    """Each cap refuses the first request beyond it, with policy-violation here and resource-constraint side-wide."""
    book = PendingVerifications(per_stream=1, per_address=2, per_side=3)
    assert book.admit("s1", "a", "red.example", "blue.example") == Admitted()
    assert book.admit("s1", "a", "conference.red.example", "blue.example") == Refused(TOO_MANY_HERE)
    assert book.admit("s2", "a", "red.example", "blue.example") == Admitted()
    assert book.admit("s3", "a", "red.example", "blue.example") == Refused(TOO_MANY_HERE)
    assert book.admit("s4", "b", "red.example", "blue.example") == Admitted()
    assert book.admit("s5", "c", "red.example", "blue.example") == Refused(TOO_MANY_ON_SIDE)
    assert (book.pending, book.pending_for(stream="s1"), book.pending_for(address="a")) == (3, 1, 2)
    book.settle("s2", "red.example", "blue.example")
    book.settle("s2", "red.example", "blue.example")
    assert (book.pending, book.pending_for(address="a")) == (2, 1)
    assert book.admit("s5", "c", "red.example", "blue.example") == Admitted()


# -- bytes in, bytes out ------------------------------------------------------------


def test_many_streams_share_one_verification_stream():
    """Three peers asking for red.example->blue.example cause one verification stream carrying three db:verify."""
    world = World()
    inbound = [world.authenticating(port=40000 + n) for n in range(3)]
    for stream, transport in inbound:
        stream.dataReceived(db_result())
    assert opens(world.log) == [("open", "blue.example", "red.example", "verify")]
    assert verifies(world.log) == []
    world.ready()
    assert verifies(world.log) == [("verify", stream.stream_id, "k" * 64) for stream, _ in inbound]
    world.streams[0].owner.verification_answered(world.streams[0], inbound[1][0].stream_id, "valid")
    assert inbound[1][1].value() == b"<db:result from='blue.example' to='red.example' type='valid'/>"
    assert inbound[0][1].value() == b"" and inbound[2][1].value() == b""
    world.ready()
    world.streams[0].owner.verification_answered(world.streams[0], inbound[0][0].stream_id, "invalid")
    assert inbound[0][1].value() == b"<db:result from='blue.example' to='red.example' type='invalid'/>"
    assert ("close",) not in world.log
    world.streams[0].owner.verification_answered(world.streams[0], inbound[2][0].stream_id, "valid")
    assert world.log[-1] == ("close",)
    assert world.side.verifier.channels == {} and world.side.verifier.book.pending == 0


def test_a_repeated_db_result_is_verified_once_and_answered_once():
    """Thirty db:result for one pair on one stream send one db:verify, write nothing until the answer, then one answer."""
    world = World(limits=Limits(preauth_elements=64, preauth_bytes=64 * 1024))
    stream, transport = world.authenticating()
    for _ in range(30):
        stream.dataReceived(db_result())
    world.ready()
    assert len(verifies(world.log)) == 1
    assert transport.value() == b""
    world.streams[0].owner.verification_answered(world.streams[0], stream.stream_id, "valid")
    assert transport.value() == b"<db:result from='blue.example' to='red.example' type='valid'/>"
    assert stream.authenticated_pairs == {("red.example", "blue.example")}


def test_amplification_from_one_address_is_bounded():
    """64 connections from one address, each with 31 db:result, open one verification stream and send at most the per-address cap."""
    world = World()
    answers = []
    for n in range(64):
        stream, transport = world.authenticating(port=40000 + n)
        for m in range(31):
            sender = "red.example" if m % 2 else "conference.red.example"
            receiver = "blue.example" if m % 3 else "conference.blue.example"
            stream.dataReceived(db_result(sender, receiver, key=f"{m:064d}"))
        answers.append(transport.value())
    world.ready()
    assert len(opens(world.log)) == 4  # one per (fronted, authoritative) pair: 2 x 2
    assert len(verifies(world.log)) == Limits().verifications_per_address
    refusals = sum(answer.count(b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
                   for answer in answers)
    assert refusals > 0
    assert world.side.verifier.book.pending == Limits().verifications_per_address


def test_per_stream_cap_answers_policy_violation():
    """Beyond verifications_per_stream, a db:result for another pair gets an XEP-0220 policy-violation error."""
    world = World(limits=Limits(verifications_per_stream=1))
    stream, transport = world.authenticating()
    stream.dataReceived(db_result("red.example"))
    stream.dataReceived(db_result("conference.red.example"))
    assert transport.value() == (
        b"<db:result from='blue.example' to='conference.red.example' type='error'><error type='wait'>"
        b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
    )
    assert not transport.disconnecting


def test_per_side_cap_answers_resource_constraint():
    """Beyond verifications_per_side, a request from a fresh address gets resource-constraint."""
    world = World(limits=Limits(verifications_per_side=2))
    for n in range(2):
        stream, transport = world.authenticating(host=f"127.0.1.{n + 1}")
        stream.dataReceived(db_result())
    stream, transport = world.authenticating(host="127.0.1.9")
    stream.dataReceived(db_result())
    assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in transport.value()


def test_no_route_answers_remote_server_not_found():
    """With no route to the authoritative server the peer hears remote-server-not-found and nothing is opened."""
    world = World(routes={})
    stream, transport = world.authenticating()
    stream.dataReceived(db_result())
    assert transport.value() == (
        b"<db:result from='blue.example' to='red.example' type='error'><error type='cancel'>"
        b"<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
    )
    assert world.log == []
    assert world.side.verifier.book.pending == 0


def test_unreachable_authoritative_server_answers_remote_server_not_found():
    """When the verification stream cannot be set up, every waiting peer hears remote-server-not-found."""
    world = World(connect_fails=True)
    stream, transport = world.authenticating()
    stream.dataReceived(db_result())
    assert b"<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in transport.value()
    assert world.side.verifier.book.pending == 0


def test_lost_verification_stream_settles_everything_waiting():
    """A verification stream lost before its answers settles each waiting request with remote-server-not-found."""
    world = World()
    first, first_transport = world.authenticating(port=40001)
    second, second_transport = world.authenticating(port=40002)
    first.dataReceived(db_result())
    second.dataReceived(db_result())
    world.ready()
    world.streams[0].owner.stream_lost(world.streams[0])
    for transport in (first_transport, second_transport):
        assert b"<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in transport.value()
    assert world.side.verifier.channels == {}
    first.dataReceived(db_result("conference.red.example"))
    assert len(opens(world.log)) == 2


def test_silent_authoritative_server_answers_remote_server_timeout():
    """A db:verify without an answer for verification_timeout seconds is answered remote-server-timeout and stops counting."""
    world = World(limits=Limits(verification_timeout=5.0))
    stream, transport = world.authenticating()
    stream.dataReceived(db_result())
    world.ready()
    world.clock.advance(4.9)
    assert transport.value() == b""
    world.clock.advance(0.2)
    assert b"<remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in transport.value()
    assert world.side.verifier.book.pending == 0


# -- the verification stream itself ----------------------------------------------


SECURE_FEATURES = (b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
                   b"</stream:features>")


def verify_stream():
    clock = MemoryReactorClock()
    side = make_side("blue", clock, authentication="dialback", presents_for=("red.example",))
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example", purpose="verify")
    transport = ProvenTLSTransport()
    stream.makeConnection(transport)
    stream.dataReceived(FAR_HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                     b"</stream:features>")
    stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    stream.dataReceived(FAR_HEADER + SECURE_FEATURES)
    transport.clear()
    return stream, transport, owner


def test_verification_stream_carries_several_db_verify_and_their_answers():
    """One verification stream sends each db:verify and reports each answer by stream id, staying open."""
    stream, transport, owner = verify_stream()
    assert owner.events == [("ready",)]
    key = dialback_key(SECRET, "blue.example", "red.example", "s-1")
    for stream_id in ("s-1", "s-2"):
        owner.asking.add(stream_id)
        stream.send_verify(stream_id, key)
    assert transport.value() == (
        f"<db:verify from='red.example' to='blue.example' id='s-1'>{key}</db:verify>"
        f"<db:verify from='red.example' to='blue.example' id='s-2'>{key}</db:verify>"
    ).encode()
    stream.dataReceived(b"<db:verify from='blue.example' to='red.example' id='s-2' type='invalid'/>"
                        b"<db:verify from='blue.example' to='red.example' id='s-1' type='valid'/>")
    assert owner.events[1:] == [("verified", "s-2", "invalid"), ("verified", "s-1", "valid")]
    assert not transport.disconnecting


def test_verification_answer_nobody_asked_for_closes_the_stream():
    """An answer for an id the guard did not send closes the verification stream."""
    stream, transport, owner = verify_stream()
    stream.dataReceived(b"<db:verify from='blue.example' to='red.example' id='never' type='valid'/>")
    assert transport.disconnecting
    assert ("verified", "never", "valid") not in owner.events
    assert owner.events[-1] == ("lost",)


@pytest.mark.parametrize("condition", ["remote-server-timeout", "item-not-found", "policy-violation"])
def test_dialback_error_from_the_far_server_fails_the_outbound_stream(condition):
    """A <db:result type='error'> answering our key fails the stream; the owner hears a condition of ours, never the far server's."""
    stream, transport, owner = dialback_stream()
    stream.dataReceived(FAR_HEADER + SECURE_FEATURES)
    assert b"<db:result from='red.example' to='blue.example'>" in transport.value()
    stream.dataReceived(error_result(condition))
    assert owner.events == [("failed", "remote-server-not-found")]
    assert transport.disconnecting


def test_answers_are_the_named_constants():
    """The answers the verifier gives are the XEP-0220 errors it names, with their types."""
    assert (VALID.verdict, INVALID.verdict) == ("valid", "invalid")
    assert (UNREACHABLE.condition, UNREACHABLE.error_type) == ("remote-server-not-found", "cancel")
    assert (TIMED_OUT.condition, TIMED_OUT.error_type) == ("remote-server-timeout", "cancel")
    assert (TOO_MANY_HERE.condition, TOO_MANY_ON_SIDE.condition) == ("policy-violation", "resource-constraint")


def test_a_db_result_for_a_domain_the_guard_does_not_serve_is_a_dialback_error_and_the_stream_stays():
    """XEP-0220 2.4: an unknown target domain gets <item-not-found/> as a dialback error; no stream error, nothing opened."""
    world = World()
    stream, transport = world.authenticating()
    stream.dataReceived(db_result(receiver="green.example"))
    assert transport.value() == (
        b"<db:result from='green.example' to='red.example' type='error'><error type='cancel'>"
        b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
    )
    assert world.log == [] and not transport.disconnecting
    transport.clear()
    stream.dataReceived(db_result())
    assert world.log[0] == ("open", "blue.example", "red.example", "verify")


def test_a_db_result_from_a_domain_not_of_this_side_still_ends_the_stream():
    """A sender domain that is not on this side is a forgery: invalid-from, whatever its target."""
    world = World()
    stream, transport = world.authenticating()
    stream.dataReceived(db_result(sender="blue.example", receiver="green.example"))
    assert b"<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in transport.value()
    assert transport.disconnecting


def test_an_authoritative_server_unreachable_at_once_is_asked_again_by_the_next_request():
    """A verification stream that fails while it is being opened leaves no dead channel behind: the next request opens a new one."""
    world = World(connect_fails=True)
    stream, transport = world.authenticating()
    stream.dataReceived(db_result())
    assert world.side.verifier.channels == {}
    world.connect_fails = False
    second, second_transport = world.authenticating(port=40001)
    second.dataReceived(db_result())
    assert len(opens(world.log)) == 2
    world.ready()
    assert len(verifies(world.log)) == 1
    assert second_transport.value() == b""


def test_a_verification_stream_that_cannot_even_be_opened_answers_and_stops_counting():
    """An exception while opening the verification stream answers remote-server-not-found and frees the pending count."""
    world = World()

    def broken(owner, side, sender, receiver, route, purpose="relay"):
        raise RuntimeError("no socket for you")

    world.side.verifier.open_stream = broken
    stream, transport = world.authenticating()
    stream.dataReceived(db_result())
    assert b"<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in transport.value()
    assert world.side.verifier.book.pending == 0 and world.side.verifier.channels == {}
    assert not transport.disconnecting


def test_a_late_answer_is_ignored_and_the_shared_stream_keeps_serving_the_others():
    """An answer that comes after its request timed out is ignored; the verification stream and every other request go on."""
    world = World(limits=Limits(verification_timeout=5.0))
    first, _ = world.authenticating(port=40000)
    first.dataReceived(db_result())
    world.ready()
    world.clock.advance(3.0)
    second, second_transport = world.authenticating(port=40001)
    second.dataReceived(db_result())
    world.clock.advance(2.5)
    channel = world.streams[0].owner
    late, waiting = [entry[1] for entry in verifies(world.log)]
    assert channel.asked(late)  # the stream does not take the late answer for one nobody asked for
    channel.verification_answered(world.streams[0], late, "valid")
    assert second_transport.value() == b"" and channel.asked(waiting) and not channel.closed
    channel.verification_answered(world.streams[0], waiting, "valid")
    assert b"type='valid'" in second_transport.value()


def test_a_verification_stream_ready_after_every_request_timed_out_closes_at_once():
    """When every request timed out while the verification stream was set up, it closes as soon as it is ready."""
    world = World(limits=Limits(verification_timeout=5.0))
    stream, _ = world.authenticating()
    stream.dataReceived(db_result())
    world.clock.advance(5.5)
    world.ready()
    assert world.log[-1] == ("close",) and verifies(world.log) == []
