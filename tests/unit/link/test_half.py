"""A back-to-back half: its own side's stanzas go over the link; the link's are re-checked and judged here."""

from twisted.internet.task import Clock

from guard.app.half import LINK_MISADDRESSED_RULE, HalfRelay
from guard.core.addressing import check_addressing
from guard.core.books import Books
from guard.core.pipeline import Direction, Judgement
from guard.core.topology import Topology
from guard.edges.relay import PolicyTable
from guard.edges.release import reparse_stanza
from guard.edges.xmlstream import serialise

TOPOLOGY = Topology({"red": frozenset({"red.example"}), "blue": frozenset({"blue.example"})})


class PassAll:
    def judge(self, stanza, direction):
        return Judgement.passed(stanza, "pass-all")


class NoContraband:
    def judge(self, stanza, direction):
        if "contraband" in serialise(stanza):
            return Judgement.bounced(stanza, "no-contraband", "policy-violation")
        return Judgement.passed(stanza, "import-rest")


class RecordingAudit:
    def __init__(self):
        self.records = []

    def record(self, event, **fields):
        self.records.append((event, fields["rule"], fields.get("direction")))


class RecordingLink:
    def __init__(self):
        self.sent = []

    def send(self, parcel):
        self.sent.append(serialise(parcel.stanza))


class RecordingLeg:
    def __init__(self):
        self.link = RecordingLink()

    def describe(self):
        return {"state": "up"}


class RecordingOutbound:
    """Stands for the outbound S2S path to one of this half's servers."""

    def __init__(self):
        self.queue = []

    def enqueue(self, parcel):
        self.queue.append(serialise(parcel.stanza))


class RedSide:
    name = "red"


def half_a():
    """Half A: its side is red; blue is behind the link; it imports with NoContraband."""
    audit = RecordingAudit()
    policies = PolicyTable({Direction("red", "blue"): PassAll(), Direction("blue", "red"): NoContraband()})
    relay = HalfRelay(TOPOLOGY, policies, Books(), audit, Clock(), "red", "blue")
    relay.leg = RecordingLeg()
    to_red = relay.links[("red", "blue.example", "red.example")] = RecordingOutbound()
    return relay, audit, relay.leg.link, to_red


def test_stanzas_from_the_own_side_are_judged_for_export_and_carried_over_the_link():
    """Romeo's message from red passes half A's export policy and goes over the link, re-serialised."""
    relay, _, link, _ = half_a()
    stanza = reparse_stanza("<message from='romeo@red.example/a' to='juliet@blue.example'><body>hi</body></message>")
    addressed = check_addressing(stanza, {("red.example", "blue.example")}, {"blue.example"})
    relay.stanza_received(RedSide(), stanza, addressed, 80)
    assert link.sent == ['<message from="romeo@red.example/a" to="juliet@blue.example"><body>hi</body></message>']


def test_stanzas_from_the_link_are_judged_by_the_own_import_policy_and_delivered():
    """Juliet's message arrives over the link, passes half A's import policy and goes to red's server."""
    relay, _, _, to_red = half_a()
    relay.link_stanza_received(
        reparse_stanza("<message from='juliet@blue.example/b' to='romeo@red.example'><body>hi</body></message>"), 80)
    assert to_red.queue == ['<message from="juliet@blue.example/b" to="romeo@red.example"><body>hi</body></message>']
    assert relay.books.accepted == 1


def test_the_import_policy_refuses_what_the_peer_half_let_out_and_the_bounce_goes_back_over_the_link():
    """Contraband from blue is bounced by half A's own rule: the error returns over the link, audited."""
    relay, audit, link, to_red = half_a()
    relay.link_stanza_received(reparse_stanza(
        "<message from='juliet@blue.example/b' to='romeo@red.example' id='c1'><body>contraband</body></message>"), 90)
    assert to_red.queue == []
    assert audit.records == [("bounce", "no-contraband", "blue->red")]
    assert len(link.sent) == 1 and 'type="error"' in link.sent[0] and 'to="juliet@blue.example/b"' in link.sent[0]


def test_a_stanza_from_the_link_claiming_an_own_side_sender_is_dropped():
    """The peer half cannot speak for red.example: addressing fails, the stanza is dropped and audited."""
    relay, audit, link, to_red = half_a()
    relay.link_stanza_received(
        reparse_stanza("<message from='mallory@red.example' to='romeo@red.example'><body>x</body></message>"), 70)
    assert to_red.queue == [] and link.sent == []
    assert audit.records == [("drop", LINK_MISADDRESSED_RULE, "blue->red")]
    assert relay.books.summary()["dropped"] == 1


def test_a_stanza_from_the_link_for_an_unknown_domain_is_dropped():
    """A recipient this half does not serve is not delivered anywhere."""
    relay, audit, _, to_red = half_a()
    relay.link_stanza_received(
        reparse_stanza("<message from='juliet@blue.example' to='someone@elsewhere.example'/>"), 60)
    assert to_red.queue == [] and audit.records[0][1] == LINK_MISADDRESSED_RULE


def test_the_link_settles_parcels_in_the_books():
    """Acknowledged parcels count as delivered; given-up ones bounce back to their sender's side."""
    relay, audit, link, to_red = half_a()
    stanza = reparse_stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m9'><body>hi</body></message>")
    addressed = check_addressing(stanza, {("red.example", "blue.example")}, {"blue.example"})
    relay.stanza_received(RedSide(), stanza, addressed, 80)
    relay.stanza_received(RedSide(), stanza, addressed, 80)

    class Parcel:
        original = stanza

    relay.link_delivered(Parcel())
    relay.link_undeliverable(Parcel(), "remote-server-timeout", "the link to the peer half is down")
    assert relay.books.summary()["delivered"] == 1 and relay.books.summary()["bounced"] == 1
    assert len(to_red.queue) == 1 and 'type="error"' in to_red.queue[0]
    assert audit.records == [("bounce", "guard:remote-server-timeout", None)]
