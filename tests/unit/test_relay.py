"""
The relay settles every accepted stanza exactly once: delivered, bounced or
dropped, with an audit record for each bounce and drop.  Outbound streams are
stand-ins here that record what they are sent; the test decides when they
become ready or fail.
"""

from twisted.internet.testing import MemoryReactorClock

from guard.core.addressing import check_addressing
from guard.core.books import Books
from guard.core.pipeline import Direction, Judgement, Verdict
from guard.edges.audit import AuditUnavailable
from guard.edges.limits import Limits
from guard.edges.relay import PolicyTable, Relay
from guard.edges.xmlstream import StreamParser, serialise

from .streams.sides import TOPOLOGY, make_side

RED_TO_BLUE = Direction("red", "blue")
BLUE_TO_RED = Direction("blue", "red")


class StandInStream:
    """Records the stanzas an outbound link writes to it."""

    def __init__(self, log, owner, side, sender, receiver, route, purpose, max_bytes=None):
        self.log, self.owner, self.max_bytes = log, owner, max_bytes
        self.key = (side.name, sender, receiver)
        log.append(("open", side.name, sender, receiver, route, purpose))

    def send(self, stanza):
        self.log.append(("send", self.key, serialise(stanza, max_bytes=self.max_bytes)))

    def close_for_shutdown(self):
        self.log.append(("close", self.key))

    def close_idle(self):
        self.log.append(("close", self.key))


class RecordingAudit:
    def __init__(self, fail=False, records_passes=False):
        self.records, self.fail, self.records_passes = [], fail, records_passes
        self.fields = []

    def record(self, event, **fields):
        if self.fail:
            raise AuditUnavailable("disk full")
        self.records.append((event, fields["rule"], fields["sender"], fields["recipient"]))
        self.fields.append(fields)


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
    def __init__(self, policy=None, limits=None, audit=None, max_bytes=None):
        self.log = []
        self.max_bytes = max_bytes
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
        stream = StandInStream(self.log, owner, side, sender, receiver, route, purpose, self.max_bytes)
        self.streams[stream.key] = stream
        return stream

    def arrive(self, xml, side="red", size=100):
        stanza = parse(xml)
        pairs = {("red.example", "blue.example")} if side == "red" else {("blue.example", "red.example")}
        addressed = check_addressing(stanza, pairs, TOPOLOGY.fronted_on(side))
        self.relay.stanza_received(self.relay.sides[side], stanza, addressed, size)

    def ready(self, side, sender, receiver):
        stream = self.streams[(side, sender, receiver)]
        stream.owner.stream_ready(stream)

    def fail(self, side, sender, receiver, condition="remote-server-not-found", text="refused"):
        stream = self.streams[(side, sender, receiver)]
        stream.owner.stream_failed(stream, condition, text)

    def sent(self):
        return [entry for entry in self.log if entry[0] == "send"]


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


def test_a_queue_past_twice_its_bound_bounces_the_overflow_with_resource_constraint():
    """Past twice outbound_queue waiting stanzas (what arrives after the feeders were held), each further one is bounced."""
    world = World(limits=Limits(outbound_queue=2))
    for number in range(6):
        world.arrive(MESSAGE.format(id=f"m{number}", body="wait"))
    assert [record[:2] for record in world.audit.records] == [
        ("bounce", "guard:resource-constraint"), ("bounce", "guard:resource-constraint"),
    ]
    world.ready("blue", "red.example", "blue.example")
    assert (world.books.delivered, world.books.bounced, world.books.in_flight) == (4, 2, 0)


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
    """An inbound stream stand-in that records each reason it is held for and released from, as InboundStream
    keeps them (a set: holding twice for one reason is one hold; releasing a reason not held does nothing)."""

    def __init__(self, log, pairs):
        self.log, self.authenticated_pairs, self.held = log, set(pairs), set()

    def hold(self, reason):
        if reason not in self.held:
            self.held.add(reason)
            self.log.append(("hold", tuple(sorted(self.authenticated_pairs)), reason))

    def release(self, reason):
        if reason in self.held:
            self.held.discard(reason)
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


# -- what a far server says never reaches a bounce (issue 8 item 2) -----------

MARKER = "FAR-SIDE-MARKER"


def test_a_stream_failure_text_never_reaches_any_bounce():
    """The far server's words in a stream failure go to the audit (escaped) only; every bounce carries the guard's text."""
    world = World()
    for number in range(3):
        world.arrive(MESSAGE.format(id=f"m{number}", body="hello"))
    world.fail("blue", "red.example", "blue.example", "remote-server-not-found",
               f"expected blue.example, got {MARKER}\n<forged/>\u202e")
    world.ready("red", "blue.example", "red.example")
    bounces = world.sent()
    assert len(bounces) == 3
    for _, _, xml in bounces:
        assert MARKER not in xml
        assert ('<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">'
                'the guard could not reach the receiving server</text>') in xml
    details = [fields["detail"] for fields in world.audit.fields]
    assert details == ["expected blue.example, got FAR-SIDE-MARKER\\n<forged/>\\u202e"] * 3
    assert all(MARKER not in (fields["text"] or "") for fields in world.audit.fields)


def test_a_link_failure_text_passed_to_undeliverable_never_reaches_the_bounce():
    """Whatever text comes with an undeliverable parcel (the pair link's too), the bounce carries the guard's text."""
    from guard.edges.relay import Parcel

    world = World()
    stanza = parse(MESSAGE.format(id="m1", body="hello"))
    ticket = world.relay.settlement.accept(stanza, ("red.example", "blue.example"), 100, RED_TO_BLUE, 0)
    world.relay.undeliverable(Parcel(stanza, stanza, ticket), "remote-server-timeout", f"peer said {MARKER}")
    world.ready("red", "blue.example", "red.example")
    (_, _, xml), = world.sent()
    assert MARKER not in xml and "the guard could not deliver this stanza in time" in xml


def test_a_stanza_too_large_once_serialised_is_bounced_not_delivered():
    """A stanza that would exceed the far side's stanza_bytes once written is bounced with policy-violation."""
    world = World(max_bytes=400)
    world.arrive(MESSAGE.format(id="m1", body="x" * 400))
    world.arrive(MESSAGE.format(id="m2", body="small"))
    world.ready("blue", "red.example", "blue.example")
    world.ready("red", "blue.example", "red.example")
    sent = world.sent()
    assert [key for _, key, _ in sent] == [("blue", "red.example", "blue.example"), ("red", "blue.example", "red.example")]
    assert 'id="m2"' in sent[0][2]
    assert 'id="m1"' in sent[1][2] and "<policy-violation " in sent[1][2] and "x" * 400 not in sent[1][2]
    assert world.books.summary()["bounce_reasons"] == {"guard:policy-violation": 1}
    assert (world.books.delivered, world.books.bounced, world.books.in_flight) == (1, 1, 0)


# -- a burst into a cold guard waits, it is not bounced (issue 9 item 10) -----

FEEDING = (("red.example", "blue.example"),)


def flow_of(world, pairs=FEEDING):
    return [entry for entry in world.log if entry[0] in ("hold", "release") and entry[1] == pairs]


def test_a_burst_while_the_stream_is_set_up_holds_the_feeders_and_bounces_nothing():
    """At outbound_queue waiting stanzas the streams feeding the pair stop being read; once up, all is delivered."""
    world = World(limits=Limits(outbound_queue=3))
    world.relay.sides["red"].inbound_streams.add(HeldStream(world.log, FEEDING[0:1]))
    for number in range(5):  # two more arrive after the hold: what the last read had already brought
        world.arrive(MESSAGE.format(id=f"m{number}", body="burst"))
    assert flow_of(world) == [("hold", FEEDING, "waiting for red.example->blue.example")]
    assert world.audit.records == []
    world.ready("blue", "red.example", "blue.example")
    assert len(world.sent()) == 5
    assert flow_of(world) == [("hold", FEEDING, "waiting for red.example->blue.example"),
                              ("release", FEEDING, "waiting for red.example->blue.example")]
    assert (world.books.delivered, world.books.bounced, world.relay.held.held) == (5, 0, 0)


def test_a_feeder_that_was_not_held_yet_is_held_at_its_first_stanza_past_the_bound():
    """A stream that starts feeding the pair once its queue is full (a new stream) is held as soon as it sends."""
    world = World(limits=Limits(outbound_queue=2))
    for number in range(2):
        world.arrive(MESSAGE.format(id=f"m{number}", body="burst"))
    world.relay.sides["red"].inbound_streams.add(HeldStream(world.log, FEEDING[0:1]))
    world.arrive(MESSAGE.format(id="m2", body="burst"))
    assert flow_of(world) == [("hold", FEEDING, "waiting for red.example->blue.example")]
    assert world.audit.records == []


def test_a_queue_full_in_bytes_holds_the_feeders_and_bounces_past_twice_the_bytes():
    """outbound_queue_bytes holds the feeders at the bound and bounces what would pass twice the bound."""
    world = World(limits=Limits(outbound_queue=1000, outbound_queue_bytes=250))
    world.relay.sides["red"].inbound_streams.add(HeldStream(world.log, FEEDING[0:1]))
    for number in range(6):
        world.arrive(MESSAGE.format(id=f"m{number}", body="burst"), size=100)
    assert flow_of(world) == [("hold", FEEDING, "waiting for red.example->blue.example")]
    assert [record[:2] for record in world.audit.records] == [("bounce", "guard:resource-constraint")]
    assert world.relay.links[("blue", "red.example", "blue.example")].queued_bytes == 500


def test_a_setup_that_fails_bounces_what_waited_and_releases_the_feeders():
    """When the stream cannot be set up, everything waiting is bounced and the held feeders are read again."""
    world = World(limits=Limits(outbound_queue=2))
    world.relay.sides["red"].inbound_streams.add(HeldStream(world.log, FEEDING[0:1]))
    for number in range(3):
        world.arrive(MESSAGE.format(id=f"m{number}", body="burst"))
    world.fail("blue", "red.example", "blue.example", "remote-server-timeout", "took too long")
    assert flow_of(world)[-1] == ("release", FEEDING, "waiting for red.example->blue.example")
    assert world.books.summary()["bounce_reasons"] == {"guard:remote-server-timeout": 3}
    assert world.relay.held.held == sum(
        link.queued_bytes for link in world.relay.links.values())  # only our own bounces are held now


# -- the bytes the guard holds are bounded (issue 9 item 6) -------------------

def test_over_the_memory_budget_no_inbound_stream_is_read_until_the_low_water_mark():
    """At memory_budget_bytes held, every inbound stream on both sides is held; below 3/4 of it they are read again."""
    world = World(limits=Limits(memory_budget_bytes=400))
    red = HeldStream(world.log, FEEDING[0:1])
    blue = HeldStream(world.log, [("blue.example", "red.example")])
    world.relay.sides["red"].inbound_streams.add(red)
    world.relay.sides["blue"].inbound_streams.add(blue)
    for number in range(3):
        world.arrive(MESSAGE.format(id=f"m{number}", body="held"), size=100)
    assert [entry for entry in world.log if entry[0] == "hold"] == []
    world.arrive(MESSAGE.format(id="m3", body="held"), size=100)
    assert sorted(entry for entry in world.log if entry[0] == "hold") == [
        ("hold", (("blue.example", "red.example"),), "memory budget"),
        ("hold", FEEDING, "memory budget"),
    ]
    assert world.relay.held.summary() == {"held": 400, "peak": 400, "budget": 400, "over": True}
    world.ready("blue", "red.example", "blue.example")
    assert sorted(entry for entry in world.log if entry[0] == "release") == [
        ("release", (("blue.example", "red.example"),), "memory budget"),
        ("release", FEEDING, "memory budget"),
    ]
    assert world.relay.held.summary() == {"held": 0, "peak": 400, "budget": 400, "over": False}


def test_a_stream_that_sends_while_over_the_budget_is_held_too():
    """A stream that was not held when the budget was reached (a new one) is held at its first stanza."""
    world = World(limits=Limits(memory_budget_bytes=100))
    world.arrive(MESSAGE.format(id="m0", body="held"), size=100)
    late = HeldStream(world.log, FEEDING[0:1])
    world.relay.sides["red"].inbound_streams.add(late)
    world.arrive(MESSAGE.format(id="m1", body="held"), size=100)
    assert ("hold", FEEDING, "memory budget") in world.log


def test_held_bytes_count_the_wire_size_and_return_to_zero_when_settled():
    """Held bytes follow the parser's wire size of what waits, and every settled stanza gives its bytes back."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="a"), size=1234)
    world.arrive(MESSAGE.format(id="m2", body="b"), size=4321)
    assert world.relay.held.held == 5555
    world.fail("blue", "red.example", "blue.example")
    world.ready("red", "blue.example", "red.example")
    assert world.relay.held.held == 0 and world.relay.held.peak >= 5555


# -- refers: capped, counted, and what leaves is what was judged (issue 9 item 9)

class BodyPolicy:
    """Refers 'secret' bodies, drops 'forbidden' ones, passes the rest as a new element named by the rule."""

    def __init__(self, rule="pass-rest"):
        self.rule = rule

    def judge(self, stanza, direction):
        body = str(stanza.body) if stanza.body else ""
        if "secret" in body:
            return Judgement.referred(stanza, "ask-the-hag", 4)
        if "forbidden" in body:
            return Judgement.dropped(stanza, "no-forbidden", 1)
        return Judgement.passed(stanza, self.rule)


class HeldAuthority:
    """A release authority stand-in whose answers the test gives later, one Deferred per question."""

    def __init__(self):
        self.questions = []

    def ask(self, stanza, direction, rule_id):
        from twisted.internet import defer

        answer = defer.Deferred()
        self.questions.append((stanza, answer))
        return answer


def release_changed(world, body):
    from guard.edges.release import Release

    stanza, answer = world.relay.release_authority.questions.pop(0)
    changed = parse(serialise(stanza).replace("<body>secret plans</body>", f"<body>{body}</body>"))
    answer.callback(Release(True, changed, "released with changes"))


def test_a_stanza_changed_by_the_authority_is_judged_again_and_refused_if_the_policy_refuses_it():
    """A release-with-changes whose new content the policy drops does not leave; one it passes does."""
    world = World(policy=BodyPolicy())
    world.relay.release_authority = HeldAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    world.arrive(MESSAGE.format(id="m2", body="secret plans"))
    release_changed(world, "forbidden words")
    release_changed(world, "[redacted]")
    world.ready("blue", "red.example", "blue.example")
    assert [xml for _, _, xml in world.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><body>[redacted]</body></message>']
    assert world.audit.records == [("drop", "no-forbidden", "romeo@red.example/a", "juliet@blue.example")]
    assert world.books.balanced()


def test_stanzas_waiting_for_the_authority_count_in_the_held_bytes():
    """While the authority decides, the stanza's wire size is held; the answer gives it back."""
    from guard.edges.release import Release

    world = World(policy=BodyPolicy())
    world.relay.release_authority = HeldAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"), size=777)
    assert world.relay.held.held == 777
    _, answer = world.relay.release_authority.questions.pop(0)
    answer.callback(Release(False, None, "denied"))
    assert world.relay.held.held == 0


def test_a_busy_authority_bounces_with_resource_constraint():
    """A question the authority client refuses as busy bounces the stanza with resource-constraint and the guard's text."""
    from guard.edges.release import Release

    world = World(policy=BodyPolicy())
    world.relay.release_authority = HeldAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    _, answer = world.relay.release_authority.questions.pop(0)
    answer.callback(Release(False, None, f"too many questions {MARKER}", busy=True))
    world.ready("red", "blue.example", "red.example")
    (_, _, xml), = world.sent()
    assert "<resource-constraint " in xml and "the guard is too busy to take this stanza now" in xml
    assert MARKER not in xml
    assert world.audit.records == [("bounce", "ask-the-hag", "romeo@red.example/a", "juliet@blue.example")]


# -- reload: what was judged under the old policy is judged again (issue 9 item 15)

def reloaded_while_queued(new_policy, bodies):
    """A world where messages with ``bodies`` were queued under BodyPolicy, then ``new_policy`` came in and the stream got ready."""
    world = World(policy=BodyPolicy())
    for number, body in enumerate(bodies, 1):
        world.arrive(MESSAGE.format(id=f"m{number}", body=body))
    world.relay.policies.swap(RED_TO_BLUE, new_policy)
    world.ready("blue", "red.example", "blue.example")
    return world


def test_a_reload_judges_again_what_waits_for_a_stream():
    """Stanzas queued under the old policy are judged by the new one before they leave: refused ones never leave."""
    world = reloaded_while_queued(DropEverything(), ["later", "fine"])
    assert world.sent() == []
    assert [record[:2] for record in world.audit.records] == [("drop", "drop-everything")] * 2
    assert world.books.balanced() and world.relay.held.held == 0


def test_a_reload_keeps_the_order_and_sends_what_the_new_policy_builds():
    """What the new policy passes leaves as the new policy built it, in the order it arrived."""
    world = reloaded_while_queued(Rebuilding(), ["one", "two"])
    assert [xml for _, _, xml in world.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example"><body>rebuilt one</body></message>',
        '<message from="romeo@red.example/a" to="juliet@blue.example"><body>rebuilt two</body></message>',
    ]


def test_a_reload_judges_again_what_waits_for_the_authority():
    """A stanza released after a reload is judged from the start by the new policy (here: dropped)."""
    from guard.edges.release import Release

    world = World(policy=BodyPolicy())
    world.relay.release_authority = HeldAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    world.relay.policies.swap(RED_TO_BLUE, DropEverything())
    stanza, answer = world.relay.release_authority.questions.pop(0)
    answer.callback(Release(True, stanza, "released"))
    assert not any(entry[0] == "open" and entry[1] == "blue" for entry in world.log)
    assert world.audit.records == [("drop", "drop-everything", "romeo@red.example/a", "juliet@blue.example")]


class DropEverything:
    def judge(self, stanza, direction):
        return Judgement.dropped(stanza, "drop-everything", 1)


class Rebuilding:
    """Passes a new message built from the original's addresses and body text."""

    def judge(self, stanza, direction):
        from twisted.words.xish import domish

        built = domish.Element(("jabber:server", "message"))
        built["from"], built["to"] = stanza["from"], stanza["to"]
        built.addElement("body", content=f"rebuilt {stanza.body}")
        return Judgement.passed(built, "rebuild")


# -- an audit trail of every decision (issue 9 item 15) ------------------------

def test_with_audit_level_all_every_pass_is_recorded():
    """An audit trail that records passes gets one record per stanza let through, naming the rule."""
    world = World(audit=RecordingAudit(records_passes=True))
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    world.arrive(MESSAGE.format(id="m2", body="drop"))
    assert world.audit.records == [("pass", "pass-rest", "romeo@red.example/a", "juliet@blue.example"),
                                   ("drop", "no-drops", "romeo@red.example/a", "juliet@blue.example")]


def test_with_audit_level_all_a_pass_that_cannot_be_recorded_does_not_leave():
    """When the pass cannot be recorded the stanza is bounced (service-unavailable), and nothing is sent across."""
    world = World(audit=RecordingAudit(fail=True, records_passes=True))
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    assert world.books.delivered == 0 and world.books.summary()["bounce_reasons"] == {"guard:halted": 1}
    assert not any(entry[0] == "open" and entry[1] == "blue" for entry in world.log)


def test_a_refer_answered_after_the_audit_trail_closed_is_not_released_silently():
    """A release that arrives once the trail is closed cannot be recorded: nothing crosses and the guard stops relaying."""
    from guard.edges.audit import AuditLog
    from guard.edges.release import ReleaseAuthority

    class AnswerLater:
        def __init__(self):
            self.factories = []

        def connect(self, factory):
            from twisted.internet import defer

            self.factories.append(factory)
            return defer.Deferred()  # never connects: the answer comes from the timeout below

    trail = AuditLog(None)
    world = World(policy=ReferringPolicy(), audit=trail)
    clock = world.relay.reactor
    world.relay.release_authority = ReleaseAuthority(AnswerLater(), clock, trail, timeout=1.0)
    world.arrive(MESSAGE.format(id="m1", body="secret plans"))
    trail.close()
    clock.advance(1.0)
    assert world.books.balanced() and world.books.delivered == 0
    assert world.relay.halted_reason is not None and "closed" in world.relay.halted_reason
    assert not any(entry[0] == "open" and entry[1] == "blue" for entry in world.log)


def test_a_stanza_waiting_for_the_authority_when_the_guard_stops_is_bounced_once():
    """Stopping settles a stanza still waiting for the release authority (bounced, its bytes freed); a late answer changes nothing."""
    from guard.edges.release import Release

    world = World(policy=BodyPolicy())
    world.relay.release_authority = HeldAuthority()
    world.arrive(MESSAGE.format(id="m1", body="secret plans"), size=300)
    world.relay.begin_shutdown()
    assert world.books.summary()["bounce_reasons"] == {"guard:remote-server-timeout": 1}
    assert world.books.balanced() and world.relay.bounces_waiting() == 1
    stanza, answer = world.relay.release_authority.questions.pop(0)
    answer.callback(Release(True, stanza, "released"))
    world.relay.finish_shutdown()
    assert world.books.accepted == 1 and world.books.bounced == 1 and world.books.balanced()
    assert world.relay.held.held == 0
    assert not any(entry[0] == "open" and entry[1] == "blue" for entry in world.log)


def test_a_stream_that_cannot_even_be_opened_bounces_what_waits_and_the_next_stanza_tries_again():
    """An exception while opening an outbound stream settles the waiting stanza (internal-server-error) instead of leaving the pair connecting forever."""
    world = World()
    opened = world.open_stream
    attempts = []

    def broken_once(owner, side, sender, receiver, route, purpose="relay", verify=None):
        attempts.append(receiver)
        if len(attempts) == 1:
            raise RuntimeError("no socket for you")
        return opened(owner, side, sender, receiver, route, purpose)

    world.relay.open_stream = broken_once
    world.arrive(MESSAGE.format(id="m1", body="first"))
    assert world.books.summary()["bounce_reasons"] == {"guard:internal-server-error": 1}
    world.arrive(MESSAGE.format(id="m2", body="second"))
    world.ready("blue", "red.example", "blue.example")
    assert [xml for _, key, xml in world.sent() if key[0] == "blue"] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><body>second</body></message>']
    assert world.books.balanced() and world.relay.held.held > 0  # only the bounce to red waits for its stream


def test_a_bounce_that_cannot_be_queued_is_audited_and_counted_not_lost_in_silence():
    """Our own bounce that finds its return queue over the hard bound is given up with an audit record and a count."""
    world = World(limits=Limits(outbound_queue=2))
    for number in range(5):
        world.arrive(MESSAGE.format(id=f"m{number}", body="bounce"))
    assert [record[0] for record in world.audit.records] == ["bounce"] * 5 + ["bounce-lost"]
    assert world.audit.records[-1] == ("bounce-lost", "guard:bounce-lost", "juliet@blue.example",
                                       "romeo@red.example/a")
    assert world.audit.fields[-1]["id"] == "m4"
    assert world.relay.status()["bounces_lost"] == 1
    assert world.books.balanced()


def test_a_fault_inside_the_relay_settles_the_stanza_it_was_handling():
    """An exception while acting on a verdict (here a side missing from the relay) bounces the stanza (internal-server-error, audited); the books balance."""
    world = World()
    world.relay.sides.pop("blue")
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    assert world.audit.records == [("bounce", "guard:internal-error", "romeo@red.example/a", "juliet@blue.example")]
    assert world.books.balanced() and world.books.delivered == 0
    world.ready("red", "blue.example", "red.example")
    (_, _, xml), = world.sent()
    assert "<internal-server-error " in xml and 'id="m1"' in xml


class LoggingPolicy:
    """Passes, drops or bounces by the body, always with the note a rule's ``log`` leaves."""

    def judge(self, stanza, direction):
        body = str(stanza.body) if stanza.body else ""
        verdict = {"drop": Verdict.DROP, "bounce": Verdict.BOUNCE}.get(body, Verdict.PASS)
        return Judgement(verdict, stanza, "log-large", 1, "policy-violation" if body == "bounce" else None,
                         None, (), ("log-large: large message released for review",))


def test_a_rules_log_note_reaches_the_audit_record_whatever_the_verdict():
    """A rule's log note is audited with the decision, a pass included, even when the trail records only refusals."""
    world = World(policy=LoggingPolicy())
    for number, body in enumerate(("hello", "drop", "bounce")):
        world.arrive(MESSAGE.format(id=f"m{number}", body=body))
    assert [(record[0], record[1]) for record in world.audit.records] == [
        ("pass", "log-large"), ("drop", "log-large"), ("bounce", "log-large")]
    assert all(fields["notes"] == ["log-large: large message released for review"] for fields in world.audit.fields)


def test_a_pass_without_notes_is_not_recorded_when_the_trail_records_only_refusals():
    """Without a log note and with the default audit level, a pass leaves no record (refusals only)."""
    world = World()
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    assert world.audit.records == []


def test_a_parcel_reported_twice_by_a_carrier_is_settled_once_and_bounces_nobody():
    """A carrier that reports a delivered parcel again, or then gives it up, changes no count and sends no bounce."""
    world = World()
    reported = []
    settle = world.relay.delivered
    world.relay.delivered = lambda parcel: (reported.append(parcel), settle(parcel))
    world.arrive(MESSAGE.format(id="m1", body="hello"))
    world.ready("blue", "red.example", "blue.example")
    (parcel,) = reported
    world.relay.delivered(parcel)
    world.relay.undeliverable(parcel, "remote-server-timeout", "reported late")
    assert (world.books.accepted, world.books.delivered, world.books.bounced, world.books.in_flight) == (1, 1, 0, 0)
    assert world.relay.settlement.counts["refused"] == 2
    assert not any(entry[0] == "open" and entry[1] == "red" for entry in world.log) and world.audit.records == []
