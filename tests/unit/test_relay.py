"""
The relay settles every accepted stanza exactly once: delivered, bounced or
dropped, with an audit record for each bounce and drop.  Outbound streams are
stand-ins here that record what they are sent; the test decides when they
become ready or fail.
"""

from twisted.internet.testing import MemoryReactorClock

from guard.core.addressing import check_addressing
from guard.core.books import Books
from guard.core.pipeline import Direction, Judgement
from guard.edges.audit import AuditUnavailable
from guard.edges.limits import Limits
from guard.edges.relay import PolicyTable, Relay
from guard.edges.xmlstream import StreamParser, serialise

from .streams.sides import TOPOLOGY, make_side

RED_TO_BLUE = Direction("red", "blue")
BLUE_TO_RED = Direction("blue", "red")


class StandInStream:
    """Records the stanzas an outbound link writes to it."""

    def __init__(self, log, owner, side, sender, receiver, route, purpose):
        self.log, self.owner = log, owner
        self.key = (side.name, sender, receiver)
        log.append(("open", side.name, sender, receiver, route, purpose))

    def send(self, stanza):
        self.log.append(("send", self.key, serialise(stanza)))

    def close_for_shutdown(self):
        self.log.append(("close", self.key))

    def close_idle(self):
        self.log.append(("close", self.key))


class RecordingAudit:
    def __init__(self, fail=False):
        self.records, self.fail = [], fail

    def record(self, event, **fields):
        if self.fail:
            raise AuditUnavailable("disk full")
        self.records.append((event, fields["rule"], fields["sender"], fields["recipient"]))


class Policy:
    """Judges by the body text: 'drop', 'bounce', 'explode' or anything else to pass."""

    def judge(self, stanza, direction):
        body = str(stanza.body) if stanza.body else ""
        if body == "drop":
            return Judgement.dropped(stanza, "no-drops", 2)
        if body == "bounce":
            return Judgement.bounced(stanza, "no-bounces", "policy-violation", "not across this boundary")
        if body == "explode":
            raise RuntimeError("a broken policy")
        return Judgement.passed(stanza, "pass-rest")


def parse(xml):
    found = []
    StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None).feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        + xml.encode()
    )
    return found[0]


class World:
    def __init__(self, policy=None, limits=None, audit=None):
        self.log = []
        self.books = Books()
        self.audit = audit or RecordingAudit()
        self.streams = {}
        clock = MemoryReactorClock()
        policies = PolicyTable({RED_TO_BLUE: policy or Policy(), BLUE_TO_RED: policy or Policy()})
        self.relay = Relay(TOPOLOGY, policies, self.books, self.audit, clock, open_stream=self.open_stream)
        routes = {"red": {"red.example": ("127.0.1.1", 5269)}, "blue": {"blue.example": ("127.0.2.1", 5269)}}
        for name in ("red", "blue"):
            self.relay.add_side(make_side(name, clock, relay=self.relay, routes=routes[name], limits=limits))

    def open_stream(self, owner, side, sender, receiver, route, purpose="relay", verify=None):
        stream = StandInStream(self.log, owner, side, sender, receiver, route, purpose)
        self.streams[stream.key] = stream
        return stream

    def arrive(self, xml, side="red"):
        stanza = parse(xml)
        pairs = {("red.example", "blue.example")} if side == "red" else {("blue.example", "red.example")}
        addressed = check_addressing(stanza, pairs, TOPOLOGY.fronted_on(side))
        self.relay.stanza_received(self.relay.sides[side], stanza, addressed, 100)

    def ready(self, side, sender, receiver):
        stream = self.streams[(side, sender, receiver)]
        stream.owner.stream_ready(stream)

    def fail(self, side, sender, receiver, condition="remote-server-not-found"):
        stream = self.streams[(side, sender, receiver)]
        stream.owner.stream_failed(stream, condition, "refused")


MESSAGE = "<message from='romeo@red.example/a' to='juliet@blue.example' id='{id}'><body>{body}</body></message>"


def test_passed_stanzas_wait_for_the_stream_and_are_then_re_serialised():
    """A passed stanza waits while the outbound stream is set up, then goes out re-serialised, once."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    world.arrive(MESSAGE.format(id="m2", body="again"))
    world.ready("blue", "red.example", "blue.example")
    world.arrive(MESSAGE.format(id="m3", body="now direct"))
    assert world.log == [
        ("open", "blue", "red.example", "blue.example", ("127.0.2.1", 5269), "relay"),
        ("send", ("blue", "red.example", "blue.example"),
         '<message from="romeo@red.example/a" to="juliet@blue.example" id="m1"><body>hello</body></message>'),
        ("send", ("blue", "red.example", "blue.example"),
         '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><body>again</body></message>'),
        ("send", ("blue", "red.example", "blue.example"),
         '<message from="romeo@red.example/a" to="juliet@blue.example" id="m3"><body>now direct</body></message>'),
    ]
    assert (world.books.accepted, world.books.delivered, world.books.in_flight) == (3, 3, 0)


def test_policy_bounce_goes_back_to_the_sender_without_the_payload():
    """A bounce verdict sends an error from the far domain back on the sender's side, audited, with no body."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="bounce"))
    world.ready("red", "blue.example", "red.example")
    assert world.log == [
        ("open", "red", "blue.example", "red.example", ("127.0.1.1", 5269), "relay"),
        ("send", ("red", "blue.example", "red.example"),
         '<message type="error" from="juliet@blue.example" to="romeo@red.example/a" id="m1">'
         '<error type="modify"><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
         '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">not across this boundary</text></error></message>'),
    ]
    assert world.audit.records == [("bounce", "no-bounces", "romeo@red.example/a", "juliet@blue.example")]
    assert world.books.summary()["bounce_reasons"] == {"no-bounces": 1}


def test_policy_drop_and_policy_failure_send_nothing_and_are_audited():
    """Dropped stanzas and stanzas the policy failed on go nowhere and each has an audit record."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="drop"))
    world.arrive(MESSAGE.format(id="m2", body="explode"))
    assert world.log == []
    assert world.audit.records == [
        ("drop", "no-drops", "romeo@red.example/a", "juliet@blue.example"),
        ("drop", "guard:policy-failure", "romeo@red.example/a", "juliet@blue.example"),
    ]
    assert (world.books.dropped, world.books.in_flight) == (2, 0)


def test_failed_outbound_stream_bounces_every_waiting_stanza_but_not_errors():
    """When the far server cannot be reached, waiting stanzas are bounced; a waiting error is dropped, never bounced."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="one"))
    world.arrive("<message from='romeo@red.example/a' to='juliet@blue.example' type='error' id='e1'/>")
    world.arrive("<iq from='romeo@red.example/a' to='juliet@blue.example/x' type='result' id='r1'/>")
    world.fail("blue", "red.example", "blue.example")
    assert world.audit.records == [
        ("bounce", "guard:remote-server-not-found", "romeo@red.example/a", "juliet@blue.example"),
        ("drop", "guard:remote-server-not-found", "romeo@red.example/a", "juliet@blue.example"),
        ("drop", "guard:remote-server-not-found", "romeo@red.example/a", "juliet@blue.example/x"),
    ]
    assert world.books.summary()["in_flight"] == 0
    assert world.log[-1] == ("open", "red", "blue.example", "red.example", ("127.0.1.1", 5269), "relay")


def test_full_queue_bounces_the_overflow_with_remote_server_timeout():
    """Beyond outbound_queue waiting stanzas, each further one is bounced at once."""
    world = World(limits=Limits(outbound_queue=2))
    for number in range(4):
        world.arrive(MESSAGE.format(id=f"m{number}", body="wait"))
    assert [record[:2] for record in world.audit.records] == [
        ("bounce", "guard:remote-server-timeout"), ("bounce", "guard:remote-server-timeout"),
    ]
    world.ready("blue", "red.example", "blue.example")
    assert (world.books.delivered, world.books.bounced, world.books.in_flight) == (2, 2, 0)


def test_unreachable_stanza_to_an_unrouted_domain_bounces():
    """A domain with no route on its side bounces with remote-server-not-found instead of waiting forever."""
    world = World()
    world.relay.sides["blue"].routes.clear()
    world.arrive(MESSAGE.format(id="m1", body="nowhere"))
    assert world.books.summary()["bounce_reasons"] == {"guard:remote-server-not-found": 1}


def test_audit_failure_stops_relaying():
    """If the audit trail cannot be written, the guard stops relaying: later stanzas are bounced, none delivered."""
    world = World(audit=RecordingAudit(fail=True))
    world.arrive(MESSAGE.format(id="m1", body="drop"))
    assert world.relay.halted_reason == "audit trail unavailable: disk full"
    world.arrive(MESSAGE.format(id="m2", body="would pass"))
    assert world.books.delivered == 0
    assert world.books.summary()["bounce_reasons"] == {"guard:halted": 1}
    assert not any(entry[0] == "send" and "would pass" in entry[2] for entry in world.log)


def test_shutdown_bounces_what_waits_and_closes_streams():
    """Stopping the guard bounces every waiting stanza and closes outbound streams; the books balance."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="late"))
    world.relay.shut_down()
    assert world.books.summary()["bounce_reasons"] == {"guard:remote-server-timeout": 1}
    assert ("close", ("blue", "red.example", "blue.example")) in world.log
    assert world.books.balanced()


def test_books_balance_after_a_mixed_blast_with_faults():
    """After passes, drops, bounces, policy failures, a failed stream and a full queue, every stanza is settled once."""
    world = World(limits=Limits(outbound_queue=50))
    bodies = ["pass", "drop", "bounce", "explode"]
    for number in range(200):
        world.arrive(MESSAGE.format(id=f"m{number}", body=bodies[number % 4]))
        if number == 60:
            world.fail("blue", "red.example", "blue.example")
        if number == 120:
            world.ready("blue", "red.example", "blue.example")
    books = world.books
    assert books.accepted == 200
    assert books.delivered + books.bounced + books.dropped == 200
    assert books.balanced()
    assert books.dropped == 100
    assert books.delivered > 0 and books.bounced > 50


class HeldStream:
    """An inbound stream stand-in that records holds and releases."""

    def __init__(self, log, pairs):
        self.log, self.authenticated_pairs = log, set(pairs)

    def hold(self, reason):
        self.log.append(("hold", tuple(sorted(self.authenticated_pairs)), reason))

    def release(self, reason):
        self.log.append(("release", tuple(sorted(self.authenticated_pairs)), reason))


def test_congested_outbound_stream_holds_the_streams_that_feed_it():
    """When blue stops reading, red streams carrying red->blue stop reading too, and resume when it drains."""
    world = World()
    feeding = HeldStream(world.log, [("red.example", "blue.example")])
    unrelated = HeldStream(world.log, [("conference.red.example", "conference.blue.example")])
    world.relay.sides["red"].inbound_streams.update({feeding, unrelated})
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    world.ready("blue", "red.example", "blue.example")
    link = world.relay.links[("blue", "red.example", "blue.example")]
    link.congested(link.stream)
    link.decongested(link.stream)
    flow = [entry for entry in world.log if entry[0] in ("hold", "release") and entry[1] == (("red.example", "blue.example"),)]
    assert flow == [
        ("hold", (("red.example", "blue.example"),), "congested red.example->blue.example"),
        ("release", (("red.example", "blue.example"),), "congested red.example->blue.example"),
    ]
    assert ("hold", (("conference.red.example", "conference.blue.example"),),
            "congested red.example->blue.example") not in world.log


class ReferringPolicy:
    """Refers every message to the release authority."""

    def judge(self, stanza, direction):
        return Judgement.referred(stanza, "ask-the-hag", 4)


class AnsweringAuthority:
    """A release authority stand-in answering from a script: (released, changed body or None, reason)."""

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def ask(self, stanza, direction, rule_id):
        from twisted.internet import defer

        from guard.edges.release import Release

        self.asked.append((rule_id, str(direction), stanza.getAttribute("id")))
        released, body, reason = self.answers.pop(0)
        changed = None
        if released:
            changed = parse(serialise(stanza).replace("<body>secret plans</body>", f"<body>{body}</body>"))
        return defer.succeed(Release(released, changed, reason))


def test_refer_releases_what_the_authority_releases_and_drops_the_rest():
    """A released stanza goes out as the authority changed it; a denied one is dropped and audited with the rule."""
    world = World(policy=ReferringPolicy())
    world.relay.release_authority = AnsweringAuthority([(True, "redacted", "released with changes"),
                                                        (False, None, "timeout")])
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    world.arrive(MESSAGE.format(id="m2", body="secret plans"))
    world.ready("blue", "red.example", "blue.example")
    assert [entry for entry in world.log if entry[0] == "send"] == [
        ("send", ("blue", "red.example", "blue.example"),
         '<message from="romeo@red.example/a" to="juliet@blue.example" id="m1"><body>redacted</body></message>'),
    ]
    assert world.audit.records == [("drop", "ask-the-hag", "romeo@red.example/a", "juliet@blue.example")]
    assert world.relay.release_authority.asked == [("ask-the-hag", "red->blue", "m1"), ("ask-the-hag", "red->blue", "m2")]
    assert world.books.balanced()


def test_refer_without_an_authority_drops():
    """With no release authority configured, refer fails closed: dropped, audited, nothing sent."""
    world = World(policy=ReferringPolicy())
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    assert world.log == []
    assert world.audit.records == [("drop", "ask-the-hag", "romeo@red.example/a", "juliet@blue.example")]


def test_shutdown_keeps_bounces_until_their_stream_is_up():
    """Stopping bounces what waits; a bounce whose return stream is still being set up is delivered once it is up."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="held"))
    world.relay.begin_shutdown()
    assert world.relay.bounces_waiting() == 1
    world.ready("red", "blue.example", "red.example")
    assert world.relay.bounces_waiting() == 0
    assert world.log[-1][0] == "send" and 'type="error"' in world.log[-1][2] and 'id="m1"' in world.log[-1][2]
    world.relay.finish_shutdown()
    assert ("close", ("red", "blue.example", "red.example")) in world.log
    assert world.books.balanced()


def test_release_answered_during_shutdown_is_bounced_not_sent():
    """A refer answered after stopping began is bounced to its sender instead of opening a new stream."""
    from twisted.internet import defer

    from guard.edges.release import Release

    class LateAuthority:
        def __init__(self):
            self.answer = defer.Deferred()

        def ask(self, stanza, direction, rule_id):
            return self.answer

    world = World(policy=ReferringPolicy())
    world.relay.release_authority = authority = LateAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    world.relay.begin_shutdown()
    authority.answer.callback(Release(True, parse(MESSAGE.format(id="m1", body="fine")), "released"))
    assert not any(entry[0] == "open" and entry[1] == "blue" for entry in world.log)
    assert world.books.summary()["bounce_reasons"] == {"guard:remote-server-timeout": 1}
    assert world.books.balanced()
