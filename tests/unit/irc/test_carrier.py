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
    """Takes lines as the IRC connections do, keeping the tokens for the test to report."""

    def __init__(self, refuse=False):
        self.lines = []
        self.refuse = refuse

    def say(self, release, index, token):
        if self.refuse:
            raise ConnectionError("no connection for ops")
        self.lines.append((release.channel, release.nick, release.lines[index], token))


def parcel(*lines, action=False):
    return Parcel(IrcRelease("ops", "lab", "#ops", "alice", tuple(lines), action), object())


def carrier(limits=CarrierLimits(), refuse=False):
    owner, connections = Owner(), Connections(refuse)
    return IrcCarrier(owner, connections.say, limits=limits), owner, connections


def test_the_carrier_provides_icarrier():
    """It is a carrier like the S2S one and the link's."""
    assert verifyObject(ICarrier, carrier()[0])


def test_a_parcel_is_delivered_once_every_line_was_sent():
    """FLOT and text are two lines: delivered only after both tokens come back as sent, and the bytes are freed."""
    irc, owner, connections = carrier()
    irc.carry(parcel("Protective Marking: OFFICIAL", "hello"))
    assert [line[:3] for line in connections.lines] == [("#ops", "alice", "Protective Marking: OFFICIAL"),
                                                        ("#ops", "alice", "hello")]
    irc.sent(connections.lines[0][3])
    assert owner.events == [("held", 33)]
    irc.sent(connections.lines[1][3])
    assert owner.events == [("held", 33), ("freed", 33), ("delivered", ("Protective Marking: OFFICIAL", "hello"))]
    assert irc.waiting() == 0 and irc.waiting_bytes == 0


def test_a_line_lost_in_a_netsplit_bounces_the_parcel_once_with_the_guards_condition():
    """One line lost, the other sent afterwards: one undeliverable (remote-server-timeout, IRC's words as detail), no delivery."""
    irc, owner, connections = carrier()
    irc.carry(parcel("one", "two"))
    irc.lost(connections.lines[0][3], "Closing Link: netsplit")
    irc.sent(connections.lines[1][3])
    assert owner.events == [("held", 6), ("freed", 6),
                            ("undeliverable", ("one", "two"), "remote-server-timeout", "Closing Link: netsplit")]
    assert irc.waiting() == 0


def test_a_token_reported_twice_settles_nothing_more():
    """sent then lost for the same token: the second report is ignored (exactly once)."""
    irc, owner, connections = carrier()
    irc.carry(parcel("only"))
    token = connections.lines[0][3]
    irc.sent(token)
    irc.lost(token, "late")
    irc.sent(token)
    assert owner.events == [("held", 4), ("freed", 4), ("delivered", ("only",))]


def test_lines_the_connections_cannot_take_bounce_the_parcel_at_once():
    """No connection for the nick: the parcel bounces now, nothing waits."""
    irc, owner, _ = carrier(refuse=True)
    irc.carry(parcel("a", "b"))
    assert owner.events == [("held", 2), ("freed", 2),
                            ("undeliverable", ("a", "b"), "remote-server-timeout",
                             "not taken by the IRC connections: no connection for ops")]
    assert irc.waiting() == 0


def test_a_report_during_the_hand_over_does_not_deliver_before_every_line_is_handed_over():
    """A connection that reports sent synchronously for line one: delivery waits until line two is sent as well."""
    owner = Owner()
    tokens = []

    def say_and_send_the_first(release, index, token):
        tokens.append(token)
        if index == 0:
            irc.sent(token)

    irc = IrcCarrier(owner, say_and_send_the_first)
    irc.carry(parcel("x", "y"))
    assert owner.events == [("held", 2)]
    irc.sent(tokens[1])
    assert owner.events[-1] == ("delivered", ("x", "y"))


def test_the_queue_is_bounded_in_parcels_and_bytes_and_says_when_it_is_congested():
    """Over 2 parcels or 10 bytes waiting: refused with resource-constraint and congested; drained to half: decongested."""
    irc, owner, connections = carrier(CarrierLimits(parcels=2, bytes=10))
    irc.carry(parcel("12345"))
    irc.carry(parcel("123456"))
    assert owner.events[-1] == ("undeliverable", ("123456",), "resource-constraint", "the IRC queue is full")
    assert ("congested", "irc-queue") in owner.events
    irc.carry(parcel("1234"))
    assert irc.waiting() == 2 and irc.waiting_bytes == 9
    irc.sent(connections.lines[0][3])
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
    assert connections.lines == [] and owner.events == [("settled-by-owner", ("x",))]


def test_what_is_not_an_irc_release_bounces():
    """A parcel whose stanza is not built by the bridge (or has no lines) never reaches IRC: internal-server-error."""
    irc, owner, connections = carrier()
    irc.carry(Parcel(IrcRelease("ops", "lab", "#ops", "alice", ()), object()))
    assert owner.events == [("undeliverable", (), "internal-server-error", "nothing the IRC side can say")]
    assert connections.lines == []


def test_shutting_down_settles_what_waits_and_later_reports_are_ignored():
    """Stopping: the parcel still waiting bounces with service-unavailable; a sent report afterwards delivers nothing."""
    irc, owner, connections = carrier()
    irc.carry(parcel("a"))
    irc.shut_down()
    irc.sent(connections.lines[0][3])
    assert owner.events == [("held", 1), ("freed", 1),
                            ("undeliverable", ("a",), "service-unavailable", "the gateway stopped before IRC took it")]
    irc.carry(parcel("b"))
    assert owner.events[-1] == ("undeliverable", ("b",), "service-unavailable", "the gateway is stopping")
