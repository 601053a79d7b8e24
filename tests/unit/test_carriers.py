"""
Carriers: the S2S carrier's queue as a state machine (every event it does not
expect fails closed), what it tells its owner, the pair link as a carrier,
and S2S routes as Twisted client endpoint strings.  Owners and streams are
stand-ins that append ("event", args) tuples to one list.
"""

from types import SimpleNamespace

import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from guard.app.config import ConfigError, configured_route
from guard.app.half import HalfRelay
from guard.core.books import Books
from guard.core.topology import Topology
from guard.edges.carriers import ICarrier, ICarrierOwner
from guard.edges.limits import Limits
from guard.edges.link.link import Link, LinkCarrier
from guard.edges.relay import Parcel, PolicyTable, Relay
from guard.edges.release import reparse_stanza
from guard.edges.s2s.carrier import TRANSITIONS, QueueEvent, QueueState, S2SCarrier, open_outbound_stream
from guard.lab.topology import render_guard_config

from .streams.sides import make_side, pki
from .test_config import write

TOPOLOGY = Topology({"red": frozenset({"red.example"}), "blue": frozenset({"blue.example"})})
ROUTE = "tcp:host=127.0.2.1:port=5269:timeout=10"


@implementer(ICarrierOwner)
class RecordingOwner:
    """Stands where the relay would: every call it hears, in order, in one list; judged_again lets all pass."""

    def __init__(self, log):
        self.log = log

    def delivered(self, parcel):
        self.log.append(("delivered", parcel.stanza["id"]))

    def undeliverable(self, parcel, condition, text):
        self.log.append(("undeliverable", parcel.stanza["id"], condition, text))

    def congested(self, carrier, reason):
        self.log.append(("congested", reason))

    def decongested(self, carrier, reason):
        self.log.append(("decongested", reason))

    def judged_again(self, parcel):
        return parcel

    def count_held(self, amount):
        self.log.append(("held", amount))

    def count_freed(self, amount):
        self.log.append(("freed", amount))


class StandInStream:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def send(self, stanza):
        self.log.append(("send", self.name, stanza["id"]))

    def close_idle(self):
        self.log.append(("close idle", self.name))

    def close_for_shutdown(self):
        self.log.append(("close for shutdown", self.name))


def parcel(number, size=100, ours=False):
    stanza = reparse_stanza(f"<message from='romeo@red.example/a' to='juliet@blue.example' id='m{number}'/>")
    return Parcel(stanza, None if ours else stanza, None, size)


def carrier(limits=None, routes=None):
    """A carrier for red.example->blue.example on blue, its log, and the streams it opened (by name s1, s2...)."""
    log, streams = [], []

    def open_stream(owner, side, sender, receiver, route, purpose="relay"):
        stream = StandInStream(log, f"s{len(streams) + 1}")
        streams.append(stream)
        log.append(("open", stream.name, sender, receiver, route))
        return stream

    side = SimpleNamespace(name="blue", limits=limits or Limits(), routes={"blue.example": ROUTE} if routes is None
                           else routes)
    return S2SCarrier(RecordingOwner(log), side, "red.example", "blue.example", open_stream), log, streams


def test_carriers_and_the_relay_provide_the_interfaces():
    """The S2S carrier and the link carrier provide ICarrier; the relay (and a half's) provides ICarrierOwner."""
    verifyObject(ICarrier, carrier()[0])
    verifyObject(ICarrier, LinkCarrier(Link(None, "a", "b", MemoryReactorClock()), {("red.example", "blue.example")}))
    verifyObject(ICarrierOwner, Relay(TOPOLOGY, PolicyTable({}), Books(), None, MemoryReactorClock()))
    verifyObject(ICarrierOwner, HalfRelay(TOPOLOGY, PolicyTable({}), Books(), None, MemoryReactorClock(),
                                          "red", "blue"))
    verifyObject(ICarrierOwner, RecordingOwner([]))


def test_the_queue_waits_for_its_stream_then_writes_through_and_reconnects_for_what_waits():
    """IDLE -> CONNECTING (queue) -> READY (write the queue, then through) -> lost -> CONNECTING again for a new stanza."""
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    assert queue.state is QueueState.CONNECTING and queue.waiting() == 1
    queue.stream_ready(streams[0])
    queue.carry(parcel(2))
    queue.stream_lost(streams[0])
    assert queue.state is QueueState.IDLE
    queue.carry(parcel(3))
    assert log == [
        ("held", 100), ("open", "s1", "red.example", "blue.example", ROUTE),
        ("freed", 100), ("send", "s1", "m1"), ("delivered", "m1"),
        ("send", "s1", "m2"), ("delivered", "m2"),
        ("decongested", "congested red.example->blue.example"),
        ("held", 100), ("open", "s2", "red.example", "blue.example", ROUTE),
    ]
    assert queue.describe() == {"state": "connecting", "queued": 1, "queued_bytes": 100, "holding": False,
                                "connects": 2, "failures": 0}


def test_a_full_queue_says_congested_to_its_owner_and_bounces_past_twice_the_bound_in_bytes():
    """At outbound_queue_bytes the owner hears congested (for every stanza past it); past twice the bytes, undeliverable."""
    queue, log, streams = carrier(Limits(outbound_queue=1000, outbound_queue_bytes=250))
    for number in range(6):
        queue.carry(parcel(number, size=100))
    assert [entry for entry in log if entry[0] in ("congested", "undeliverable")] == [
        ("congested", "waiting for red.example->blue.example")] * 3 + [
        ("undeliverable", "m5", "resource-constraint", "the queue for this server is full"),
    ]
    assert queue.queued_bytes == 500 and queue.holding
    queue.stream_ready(streams[0])
    assert log[-1] == ("decongested", "waiting for red.example->blue.example") and not queue.holding


def test_the_far_server_not_reading_is_told_to_the_owner_as_congestion_of_the_pair():
    """The stream's congested/decongested reach the owner with the pair's congestion reason."""
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    queue.stream_ready(streams[0])
    queue.congested(streams[0])
    queue.decongested(streams[0])
    assert log[-2:] == [("congested", "congested red.example->blue.example"),
                        ("decongested", "congested red.example->blue.example")]


def test_a_failed_setup_bounces_what_waits_and_a_missing_route_bounces_at_once():
    """Stream failed while CONNECTING: the queue is bounced with its condition -> IDLE; no route: bounced, nothing opened."""
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    queue.stream_failed(streams[0], "remote-server-timeout", "took too long")
    assert queue.state is QueueState.IDLE and log[-1] == ("undeliverable", "m1", "remote-server-timeout", "took too long")
    lost, log, streams = carrier(routes={})
    lost.carry(parcel(2))
    assert streams == [] and lost.state is QueueState.IDLE
    assert log[-1] == ("undeliverable", "m2", "remote-server-not-found", "no route to blue.example")


def test_an_event_the_state_does_not_expect_fails_closed():
    """The same stream ready twice (READY + stream ready): nothing more is written on it, it is closed, and what
    arrives next starts a new stream; a loss reported while CONNECTING bounces what waits and closes the stream."""
    assert (QueueState.READY, QueueEvent.STREAM_READY) not in TRANSITIONS
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    queue.stream_ready(streams[0])
    del log[:]
    queue.stream_ready(streams[0])
    assert log == [("close idle", "s1")] and queue.state is QueueState.IDLE and queue.unexpected == 1
    queue.carry(parcel(2))
    assert ("open", "s2", "red.example", "blue.example", ROUTE) in log and ("send", "s1", "m2") not in log

    assert (QueueState.CONNECTING, QueueEvent.STREAM_LOST) not in TRANSITIONS
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    queue.carry(parcel(2, ours=True))
    queue.stream_lost(streams[0])
    assert [entry for entry in log if entry[0] in ("undeliverable", "close idle", "send")] == [
        ("undeliverable", "m1", "internal-server-error", "the outbound queue met an event it does not expect"),
        ("undeliverable", "m2", "internal-server-error", "the outbound queue met an event it does not expect"),
        ("close idle", "s1"),
    ]
    assert queue.state is QueueState.IDLE and queue.waiting() == 0 and queue.queued_bytes == 0


def test_a_stanza_in_an_unexpected_state_is_settled_not_written():
    """A carry in a state the table does not list (a broken state) is bounced, internal-server-error, never written."""
    queue, log, streams = carrier()
    queue.state = "broken"
    queue.carry(parcel(1))
    assert log == [("undeliverable", "m1", "internal-server-error", "the outbound queue met an event it does not expect")]


def test_after_shutdown_nothing_is_carried_and_a_late_loss_opens_nothing():
    """shut_down gives up what waits and closes the stream -> STOPPED: a later stanza bounces, stream events are ignored."""
    queue, log, streams = carrier()
    queue.carry(parcel(1, ours=True))
    queue.shut_down()
    assert queue.state is QueueState.STOPPED
    queue.stream_failed(streams[0], "remote-server-timeout", "cancelled")
    queue.stream_lost(streams[0])
    queue.stream_ready(streams[0])
    queue.carry(parcel(2))
    assert [entry for entry in log if entry[0] != "held" and entry[0] != "freed"] == [
        ("open", "s1", "red.example", "blue.example", ROUTE),
        ("undeliverable", "m1", "remote-server-timeout", "the guard is stopping"),
        ("close for shutdown", "s1"),
        ("close idle", "s1"),
        ("undeliverable", "m2", "remote-server-timeout", "the guard is stopping"),
    ]


def test_at_shutdown_our_own_bounces_stay_queued_and_accepted_stanzas_bounce():
    """bounce_waiting bounces accepted stanzas; our own bounces wait for the stream (waiting() counts them)."""
    queue, log, streams = carrier()
    queue.carry(parcel(1))
    queue.carry(parcel(2, ours=True))
    queue.bounce_waiting("remote-server-timeout", "the guard is stopping")
    assert ("undeliverable", "m1", "remote-server-timeout", "the guard is stopping") in log
    assert queue.waiting() == 1 and queue.queue[0].stanza["id"] == "m2"


# -- the pair link as a carrier ------------------------------------------------------


class RecordingLink:
    def __init__(self, log):
        self.log = log

    def send(self, parcel):
        self.log.append(("send", parcel.stanza["id"]))

    def drain(self):
        self.log.append(("drain",))

    def waiting_on_peer(self):
        return 3

    def stop(self):
        self.log.append(("stop",))

    def describe(self):
        return {"state": "up"}


def test_the_link_carrier_carries_drains_counts_and_stops_the_link():
    """carry sends on the link, bounce_waiting drains it, waiting is what the peer may still acknowledge, shut_down stops it."""
    log = []
    link = LinkCarrier(RecordingLink(log), {("red.example", "blue.example")})
    link.carry(parcel(1))
    link.bounce_waiting("remote-server-timeout", "the guard is stopping")
    assert link.waiting() == 3 and link.describe() == {"state": "up"}
    link.shut_down()
    assert log == [("send", "m1"), ("drain",), ("stop",)]


def test_a_half_carries_everything_for_the_far_side_on_its_link_carrier():
    """Setting the leg registers the link carrier for the far side: the relay asks it, never an S2S queue."""
    relay = HalfRelay(TOPOLOGY, PolicyTable({}), Books(), None, MemoryReactorClock(), "red", "blue")
    relay.leg = SimpleNamespace(link=RecordingLink([]))
    assert isinstance(relay._carrier_for("blue", ("red.example", "blue.example")), LinkCarrier)
    assert relay.side_carriers["blue"].pairs == {("red.example", "blue.example")}
    assert relay.bounces_waiting() == 3  # what the live link may still settle


# -- routes are Twisted client endpoint strings --------------------------------------


def test_a_host_and_port_route_becomes_an_endpoint_string_with_the_connect_timeout():
    """ "host:port" from the configuration becomes tcp: (tcp6:) for an address and hostname: for a name, with the
    connect timeout in whole seconds, rounded up; an endpoint string stays as it was written."""
    assert configured_route(("127.0.2.1", 5269), 10.0) == "tcp:host=127.0.2.1:port=5269:timeout=10"
    assert configured_route(("::1", 5269), 10.0) == r"tcp6:host=\:\:1:port=5269:timeout=10"
    assert configured_route(("blue-server.example", 5270), 2.5) == "hostname:host=blue-server.example:port=5270:timeout=3"
    assert configured_route("tcp:host=127.0.2.1:port=5269", 10.0) == "tcp:host=127.0.2.1:port=5269"


def test_a_hostname_route_is_opened_with_hostname_endpoint_and_a_broken_one_is_refused():
    """hostname: routes try every address of the name (HostnameEndpoint); wrong arguments are a ValueError."""
    from twisted.internet.endpoints import HostnameEndpoint

    from guard.edges.s2s.routes import route_endpoint

    endpoint = route_endpoint(MemoryReactorClock(), "hostname:host=blue-server.example:port=5270:timeout=3")
    assert isinstance(endpoint, HostnameEndpoint)
    assert (endpoint._hostText, endpoint._port, endpoint._timeout) == ("blue-server.example", 5270, 3)
    for broken in ("hostname:host=x", "hostname:host=x:port=0", "hostname:host=x:port=1:colour=red",
                   "hostname:host=x:port=1:timeout=soon", "hostname:host=x:host=y:port=1"):
        with pytest.raises(ValueError, match="hostname:"):
            route_endpoint(MemoryReactorClock(), broken)


def test_the_configuration_takes_an_endpoint_string_as_a_route_and_refuses_a_broken_one(tmp_path):
    """A route may be written as a Twisted client endpoint string; one Twisted cannot parse names the key."""
    from guard.app.config import load_config

    config_text = render_guard_config(pki(), "certificate")

    text = config_text.replace('"red.example" = "127.0.1.1:5269"', '"red.example" = "tcp:host=127.0.1.1:port=5270"')
    assert load_config(str(write(tmp_path, text))).sides["red"].domains["red.example"] == "tcp:host=127.0.1.1:port=5270"
    broken = config_text.replace('"red.example" = "127.0.1.1:5269"', '"red.example" = "carrier-pigeon:host=x:port=1"')
    with pytest.raises(ConfigError, match='sides.red.domains.red.example: must be "host:port" or a Twisted client'):
        load_config(str(write(tmp_path, broken)))


def test_the_s2s_stream_is_opened_with_client_from_string_and_a_refused_connection_fails_it():
    """open_outbound_stream connects to the route's host and port with its timeout; a refused connection is
    stream_failed (remote-server-not-found) to the owner."""
    reactor = MemoryReactorClock()
    side = make_side("blue", reactor)
    heard = []
    owner = SimpleNamespace(stream_failed=lambda stream, condition, text: heard.append((condition, text)))
    stream = open_outbound_stream(owner, side, "red.example", "blue.example", "tcp:host=127.0.2.1:port=5269:timeout=7")
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.2.1", 5269, 7) and stream.purpose == "relay"
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("down")))
    assert heard == [("remote-server-not-found", "Connection was refused by other side: down.")]


def test_a_service_side_has_endpoint_routes_and_its_own_verifier(tmp_path):
    """build_side turns the configured routes into endpoint strings and gives the side its dialback Verifier;
    an opener injected into the service opens the relay's streams and the verifier's alike."""
    from guard.app.config import load_config
    from guard.app.service import GuardService

    config = load_config(str(write(tmp_path, render_guard_config(pki(), "certificate"))))
    red = GuardService(config, MemoryReactorClock()).sides["red"]
    assert red.routes["red.example"] == "tcp:host=127.0.1.1:port=5269:timeout=10"
    assert red.verifier.side is red and red.verifier.open_stream is open_outbound_stream

    def opener(owner, side, sender, receiver, route, purpose="relay"):
        raise AssertionError("not opened in this test")

    service = GuardService(config, MemoryReactorClock(), open_stream=opener)
    assert service.relay.open_stream is opener and service.sides["blue"].verifier.open_stream is opener
