"""
Feeders: who brings stanzas into the relay and for which pairs.  Congestion
of a carrier holds the feeders of its pairs (asked at the time, never a
copy); the memory budget holds every feeder; a reason is lifted only by a
release of the same reason.  Feeders are stand-ins that append ("event",
args) tuples to one list, except where a real InboundStream registers itself.
"""

from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from guard.app.half import HalfRelay
from guard.core.books import Books
from guard.core.topology import Topology
from guard.edges.feeders import MEMORY_HOLD, BackPressure, Feeders, congestion_reason
from guard.edges.link.link import LinkFeeder
from guard.edges.relay import PolicyTable
from guard.edges.s2s.inbound import InboundStream

from .streams.sides import make_side

TOPOLOGY = Topology({"red": frozenset({"red.example", "conference.red.example"}), "blue": frozenset({"blue.example"})})
RED_TO_BLUE = ("red.example", "blue.example")
MUC_TO_BLUE = ("conference.red.example", "blue.example")
BLUE_TO_RED = ("blue.example", "red.example")


class Feeder:
    """An inbound stream stand-in: records each hold and release it is told, by name."""

    def __init__(self, log, name, pairs=()):
        self.log, self.name, self.authenticated_pairs = log, name, set(pairs)

    def hold(self, reason):
        self.log.append(("hold", self.name, reason))

    def release(self, reason):
        self.log.append(("release", self.name, reason))


class RecordingLink:
    def __init__(self, log):
        self.log = log
        self.held = self.held_for_memory = False

    def _note(self, flag, value, event):
        setattr(self, flag, value)
        self.log.append((event,))

    def hold(self):
        self._note("held", True, "link hold")

    def release(self):
        self._note("held", False, "link release")

    def hold_for_memory(self):
        self._note("held_for_memory", True, "link takes nothing")

    def release_for_memory(self):
        self._note("held_for_memory", False, "link takes again")


def test_an_inbound_stream_registers_itself_with_its_sides_feeders_while_it_is_open():
    """Side.inbound_streams is a Feeders registry: a stream is in it from connectionMade to connectionLost."""
    side = make_side("red", MemoryReactorClock())
    stream = InboundStream(side)
    stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.1.1", 40000)))
    assert isinstance(side.inbound_streams, Feeders) and list(side.inbound_streams) == [stream]
    assert len(side.inbound_streams) == 1 and stream in side.inbound_streams
    stream.connectionLost(Failure(ConnectionDone()))
    assert len(side.inbound_streams) == 0 and stream not in side.inbound_streams


def test_a_pair_proven_after_registering_is_held_with_the_others():
    """The registry asks each feeder for its pairs at the hold: a pair dialback proved later is held too."""
    log = []
    feeders = Feeders()
    late = Feeder(log, "late")
    feeders.add(late)
    late.authenticated_pairs.add(RED_TO_BLUE)
    feeders.hold(RED_TO_BLUE, congestion_reason(*RED_TO_BLUE))
    assert log == [("hold", "late", "congested red.example->blue.example")]


def test_congestion_holds_only_the_feeders_of_the_pair_on_the_senders_side():
    """A congested carrier of red->blue holds red's feeders of that pair, not red's others nor blue's; the release
    lifts that reason from every feeder on red's side."""
    log = []
    red, blue = Feeders(), Feeders()
    red.update([Feeder(log, "romeo", [RED_TO_BLUE]), Feeder(log, "muc", [MUC_TO_BLUE])])
    blue.add(Feeder(log, "juliet", [BLUE_TO_RED]))
    pressure = BackPressure(TOPOLOGY)
    pressure.attach("red", red)
    pressure.attach("blue", blue)
    pressure.hold({RED_TO_BLUE}, "waiting for red.example->blue.example")
    pressure.release({RED_TO_BLUE}, "waiting for red.example->blue.example")
    assert log == [("hold", "romeo", "waiting for red.example->blue.example"),
                   ("release", "romeo", "waiting for red.example->blue.example"),
                   ("release", "muc", "waiting for red.example->blue.example")]


def test_the_memory_budget_holds_and_releases_every_feeder_of_every_side():
    """hold_everyone and release_everyone reach each registered side's feeders, in the order they registered."""
    log = []
    pressure = BackPressure(TOPOLOGY)
    pressure.attach("red", Feeders([Feeder(log, "romeo", [RED_TO_BLUE])]))
    pressure.attach("blue", Feeders([Feeder(log, "juliet", [BLUE_TO_RED])]))
    pressure.hold_everyone(MEMORY_HOLD)
    pressure.release_everyone(MEMORY_HOLD)
    assert log == [("hold", "romeo", MEMORY_HOLD), ("hold", "juliet", MEMORY_HOLD),
                   ("release", "romeo", MEMORY_HOLD), ("release", "juliet", MEMORY_HOLD)]


def test_a_side_nobody_feeds_yet_is_held_without_fault():
    """A pair whose side has no feeders registered holds nothing (a half before its link exists)."""
    pressure = BackPressure(TOPOLOGY)
    pressure.hold({BLUE_TO_RED}, congestion_reason(*BLUE_TO_RED))
    assert len(pressure.feeders_of("blue")) == 0


def test_the_link_is_read_again_only_once_its_last_reason_is_released():
    """The link feeder keeps a reason per congested pair and the memory budget: releasing one of two, or one
    it was never held for, leaves it unread; the last one reads it again.  The memory budget alone does not stop
    the reading (the peer's acknowledgements free the link's own buffer): it stops the link taking stanzas."""
    log = []
    feeder = LinkFeeder(RecordingLink(log), {BLUE_TO_RED})
    feeder.hold(congestion_reason(*BLUE_TO_RED))
    feeder.hold(MEMORY_HOLD)
    feeder.release("waiting for blue.example->red.example")
    feeder.release(MEMORY_HOLD)
    assert log == [("link hold",), ("link takes nothing",), ("link takes again",)]
    assert feeder.reasons == {"congested blue.example->red.example"}
    feeder.release(congestion_reason(*BLUE_TO_RED))
    assert log[-1] == ("link release",) and feeder.reasons == set()


def test_a_half_holds_its_link_for_a_congested_pair_toward_its_own_server_and_for_the_memory_budget():
    """In a half the link feeds every (far domain, own domain) pair: congestion toward red holds it for that pair
    (link_holds names it); at the memory budget it is held too (it takes no stanza); once the congestion is
    released it is read (for acknowledgements), and it takes stanzas again once the memory is freed."""
    log = []
    relay = HalfRelay(TOPOLOGY, PolicyTable({}), Books(), None, MemoryReactorClock(), "red", "blue")
    relay.leg = SimpleNamespace(link=RecordingLink(log))
    toward_red = SimpleNamespace(pairs={BLUE_TO_RED})
    relay.congested(toward_red, congestion_reason(*BLUE_TO_RED))
    relay.held.budget, relay.held.low_water = 100, 75
    relay.count_held(100)
    assert relay.link_holds == {"congested blue.example->red.example", MEMORY_HOLD}
    relay.decongested(toward_red, congestion_reason(*BLUE_TO_RED))
    assert log == [("link hold",), ("link takes nothing",), ("link release",)]
    relay.count_freed(100)
    assert log[-1] == ("link takes again",) and relay.link_holds == set()
