"""The IRC carrier settles each released room message exactly once from the line tokens the IRC connections report."""

from zope.interface.verify import verifyObject

from guard.core.settlement import Parcel
from guard.edges.carriers import ICarrier
from guard.edges.irc.carrier import CarrierLimits, IrcCarrier, IrcRelease


class Owner:
    """The carrier's owner: every report in one list, in order."""

    def __init__(self):
        self.events = []
        self.refuse_again = False

    def delivered(self, parcel):
        self.events.append(("delivered", parcel.stanza.lines))

    def undeliverable(self, parcel, condition, text):
        self.events.append(("undeliverable", parcel.stanza.lines if parcel.stanza else None, condition, text))

    def congested(self, carrier, reason):
        self.events.append(("congested", reason))

    def decongested(self, carrier, reason):
        self.events.append(("decongested", reason))

    def judged_again(self, parcel):
        if self.refuse_again:
            self.events.append(("settled-by-owner", parcel.stanza.lines))
            return None
        return parcel

    def count_held(self, amount):
        self.events.append(("held", amount))

    def count_freed(self, amount):
        self.events.append(("freed", amount))


class Connections:
    """Takes messages as IrcConnection.say does, keeping the tokens for the test to report."""

    def __init__(self, refuse=None):
        self.said = []
        self.refuse = refuse

    def say(self, release, token):
        if self.refuse is not None:
            return self.refuse
        self.said.append((release.target, release.connection, release.lines, token))
        return None


def parcel(*lines):
    return Parcel(IrcRelease("alice's connection", "#ops", tuple(lines)), object())


def carrier(limits=CarrierLimits(), refuse=None):
    owner, connections = Owner(), Connections(refuse)
    return IrcCarrier(owner, connections.say, limits=limits), owner, connections


def test_the_carrier_provides_icarrier():
    """It is a carrier like the S2S one and the link's."""
    assert verifyObject(ICarrier, carrier()[0])


def test_a_parcel_is_delivered_when_its_token_comes_back_sent():
    """FLOT and text go to the connections as one message; delivered once its token is reported sent, bytes freed."""
    irc, owner, connections = carrier()
    irc.carry(parcel("Protective Marking: OFFICIAL", "hello"))
    assert [said[:3] for said in connections.said] == [("#ops", "alice's connection", ("Protective Marking: OFFICIAL", "hello"))]
    assert owner.events == [("held", 33)] and irc.waiting() == 1 and irc.waiting_bytes == 33
    irc.sent(connections.said[0][3])
    assert owner.events == [("held", 33), ("freed", 33), ("delivered", ("Protective Marking: OFFICIAL", "hello"))]
    assert irc.waiting() == 0 and irc.waiting_bytes == 0


def test_a_parcel_lost_in_a_netsplit_bounces_with_the_guards_condition():
    """Lost: one undeliverable (remote-server-timeout; IRC's reason only as detail), never a delivery."""
    irc, owner, connections = carrier()
    irc.carry(parcel("one", "two"))
    irc.lost(connections.said[0][3], "netsplit")
    assert owner.events == [("held", 6), ("freed", 6),
                            ("undeliverable", ("one", "two"), "remote-server-timeout", "netsplit")]
    assert irc.waiting() == 0


def test_a_token_reported_twice_settles_nothing_more():
    """sent, then lost and sent again for the same token: the later reports are ignored (exactly once)."""
    irc, owner, connections = carrier()
    irc.carry(parcel("only"))
    token = connections.said[0][3]
    irc.sent(token)
    irc.lost(token, "late")
    irc.sent(token)
    assert owner.events == [("held", 4), ("freed", 4), ("delivered", ("only",))]


def test_a_parcel_the_connections_refuse_bounces_at_once():
    """No connection for the nick (not-connected): the parcel bounces now with the refusal as detail, nothing waits."""
    irc, owner, _ = carrier(refuse="not-connected")
    irc.carry(parcel("a", "b"))
    assert owner.events == [("held", 2), ("freed", 2),
                            ("undeliverable", ("a", "b"), "remote-server-timeout",
                             "not taken by the IRC connections: not-connected")]
    assert irc.waiting() == 0


def test_a_report_while_the_message_is_handed_over_settles_once():
    """A connection that reports sent before say returns: delivered once, nothing left waiting."""
    owner = Owner()

    def say_and_send(release, token):
        irc.sent(token)
        return None

    irc = IrcCarrier(owner, say_and_send)
    irc.carry(parcel("x", "y"))
    assert owner.events == [("held", 2), ("freed", 2), ("delivered", ("x", "y"))] and irc.waiting() == 0


def test_the_queue_is_bounded_in_parcels_and_bytes_and_says_when_it_is_congested():
    """Over 2 parcels or 10 bytes waiting: refused with resource-constraint and congested; drained to half: decongested."""
    irc, owner, connections = carrier(CarrierLimits(parcels=2, bytes=10))
    irc.carry(parcel("12345"))
    irc.carry(parcel("123456"))
    assert owner.events[-1] == ("undeliverable", ("123456",), "resource-constraint", "the IRC queue is full")
    assert ("congested", "irc-queue") in owner.events
    irc.carry(parcel("1234"))
    assert irc.waiting() == 2 and irc.waiting_bytes == 9
    irc.carry(parcel("1"))
    assert owner.events[-1] == ("undeliverable", ("1",), "resource-constraint", "the IRC queue is full")
    irc.sent(connections.said[0][3])
    assert owner.events[-2:] == [("decongested", "irc-queue"), ("delivered", ("12345",))]


def test_a_parcel_bigger_than_the_byte_bound_alone_is_refused_without_congesting():
    """Nothing waits, one parcel over the byte bound: refused, and the carrier is not left congested."""
    irc, owner, _ = carrier(CarrierLimits(parcels=2, bytes=3))
    irc.carry(parcel("toolong"))
    assert owner.events == [("undeliverable", ("toolong",), "resource-constraint", "the IRC queue is full")]


def test_a_parcel_the_policy_no_longer_lets_leave_is_not_said():
    """judged_again returns None (a reload refused it; the owner settled it): nothing reaches IRC."""
    irc, owner, connections = carrier()
    owner.refuse_again = True
    irc.carry(parcel("x"))
    assert connections.said == [] and owner.events == [("settled-by-owner", ("x",))]


def test_what_is_not_an_irc_release_bounces():
    """A parcel whose stanza is not built by the bridge (or has no lines) never reaches IRC: internal-server-error."""
    irc, owner, connections = carrier()
    irc.carry(Parcel(IrcRelease("alice's connection", "#ops", ()), object()))
    assert owner.events == [("undeliverable", (), "internal-server-error", "nothing the IRC side can say")]
    assert connections.said == []


def test_a_fault_in_the_connections_bounces_the_parcel_and_frees_its_bytes():
    """say raises: the parcel bounces (internal-server-error), nothing is left held."""
    owner = Owner()

    def broken(release, token):
        raise RuntimeError("boom")

    irc = IrcCarrier(owner, broken)
    irc.carry(parcel("x"))
    assert owner.events == [("held", 1), ("freed", 1),
                            ("undeliverable", ("x",), "internal-server-error", "a fault in the IRC carrier")]
    assert irc.waiting() == 0 and irc.waiting_bytes == 0


def test_shutting_down_settles_what_waits_and_later_reports_are_ignored():
    """Stopping: the parcel still waiting bounces with service-unavailable; a sent report afterwards delivers nothing."""
    irc, owner, connections = carrier()
    irc.carry(parcel("a"))
    irc.shut_down()
    irc.sent(connections.said[0][3])
    assert owner.events == [("held", 1), ("freed", 1),
                            ("undeliverable", ("a",), "service-unavailable", "the gateway stopped before IRC took it")]
    irc.carry(parcel("b"))
    assert owner.events[-1] == ("undeliverable", ("b",), "service-unavailable", "the gateway is stopping")
