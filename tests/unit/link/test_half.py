"""A back-to-back half: its own side's stanzas go over the link; the link's are re-checked and judged here."""

from types import SimpleNamespace

from twisted.internet.task import Clock

from guard.app.half import LINK_MISADDRESSED_RULE, HalfRelay
from guard.core.addressing import check_addressing
from guard.core.books import Books
from guard.core.pipeline import Direction, Judgement
from guard.core.topology import Topology
from guard.edges.feeders import MEMORY_HOLD, Feeders, congestion_reason
from guard.edges.limits import Limits
from guard.edges.link.link import LinkSettings
from guard.edges.relay import PolicyTable
from guard.edges.release import reparse_stanza
from guard.edges.xmlstream import ParserLimits, serialise

from .pairs import JoinedHalves, Parcel

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
        self.sent, self.parcels = [], []

    def send(self, parcel):
        self.sent.append(serialise(parcel.stanza))
        self.parcels.append(parcel)


class RecordingLeg:
    def __init__(self):
        self.link = RecordingLink()

    def describe(self):
        return {"state": "up"}


class RecordingOutbound:
    """Stands for the outbound S2S path to one of this half's servers."""

    def __init__(self):
        self.queue = []

    def carry(self, parcel):
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
    first, second = link.parcels
    relay.link_delivered(first)
    relay.link_undeliverable(second, "remote-server-timeout", "the link to the peer half is down")
    assert relay.books.summary()["delivered"] == 1 and relay.books.summary()["bounced"] == 1
    assert len(to_red.queue) == 1 and 'type="error"' in to_red.queue[0]
    assert audit.records == [("bounce", "guard:remote-server-timeout", None)]



def test_a_parcel_the_peer_acknowledged_and_then_reported_in_doubt_settles_once():
    """The half settles link parcels through the settlement core: acknowledged then in doubt counts one delivery, no drop."""
    relay, audit, link, _ = half_a()
    stanza = reparse_stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m9'/>")
    relay.stanza_received(RedSide(), stanza, check_addressing(stanza, {("red.example", "blue.example")},
                                                              {"blue.example"}), 80)
    (parcel,) = link.parcels
    relay.link_delivered(parcel)
    relay.link_in_doubt(parcel)
    assert (relay.books.delivered, relay.books.dropped, relay.books.in_flight) == (1, 0, 0)
    assert audit.records == [] and relay.settlement.counts["refused"] == 1


# -- with a real pair link between half A's relay and half B ---------------------


class RealLeg:
    def __init__(self, link):
        self.link = link
        self.limits = ParserLimits()

    def describe(self):
        return self.link.describe()


def half_a_joined(settings=LinkSettings(ack_every=1000), export=None, limits=None):
    """Half A's relay as the owner of a real link to half B; red's server is set up but never ready."""
    audit = RecordingAudit()
    policies = PolicyTable({Direction("red", "blue"): export or PassAll(),
                            Direction("blue", "red"): NoContraband()})
    clock = Clock()
    relay = HalfRelay(TOPOLOGY, policies, Books(), audit, clock, "red", "blue")
    relay.open_stream = lambda *args, **extra: SimpleNamespace(close_for_shutdown=lambda: None)  # never ready
    red = SimpleNamespace(name="red", limits=limits or Limits(outbound_queue=100), inbound_streams=Feeders(),
                          routes={"red.example": ("127.0.0.1", 5269)})
    relay.add_side(red)
    pair = JoinedHalves(settings, clock=clock, owner_a=relay)
    relay.leg = RealLeg(pair.a)
    return relay, audit, pair, red


def from_romeo(relay, red, number, body="hi"):
    stanza = reparse_stanza(f"<message from='romeo@red.example/a' to='juliet@blue.example' id='r{number}'>"
                            f"<body>{body}</body></message>")
    relay.stanza_received(red, stanza, check_addressing(stanza, {("red.example", "blue.example")}, {"blue.example"}),
                          90)


def from_juliet(pair, number):
    pair.b.send(Parcel(reparse_stanza(f"<message from='juliet@blue.example/b' to='romeo@red.example' "
                                      f"id='j{number}'><body>hi</body></message>")))


def test_a_congested_own_server_stops_the_link_being_read_and_acknowledged():
    """Red's server stops reading what comes from blue (its outbound stream reports congestion): half A stops
    reading the link, so half B keeps the stanzas, unacknowledged, instead of half A piling them up; the
    connection survives half B's acknowledgement timeout; when red reads again they flow, in order, once."""
    relay, _, pair, _ = half_a_joined(LinkSettings(ack_every=1, ack_timeout=5.0))
    pair.connect()
    from_juliet(pair, 0)
    pair.flush()
    to_red = relay.links[("red", "blue.example", "red.example")]
    to_red.congested(None)  # what OutboundStream reports when red's transport stops taking bytes
    for number in (1, 2):
        from_juliet(pair, number)
    pair.flush()
    for _ in range(20):  # well past half B's acknowledgement timeout
        pair.clock.advance(1.0)
        pair.flush()
    assert [parcel.stanza["id"] for parcel in to_red.queue] == ["j0"] and relay.books.accepted == 1
    assert pair.b.describe()["unacknowledged"] == 2 and pair.b.describe()["connections"] == 1
    assert pair.a.describe()["held"] is True
    to_red.decongested(None)
    pair.flush()
    pair.clock.advance(1.0)
    pair.flush()
    to_red = relay.links[("red", "blue.example", "red.example")]
    assert [parcel.stanza["id"] for parcel in to_red.queue] == ["j0", "j1", "j2"]
    assert pair.b.describe()["unacknowledged"] == 0 and pair.owner_b.of("delivered") == ["j0", "j1", "j2"]


def test_a_full_queue_toward_our_server_still_being_set_up_holds_the_link_until_the_stream_is_up():
    """A burst from the link while the stream to red is being set up: the link is not read once the queue is full
    (nothing bounced), and is read again when the stream is ready, so everything arrives."""
    relay, _, pair, _ = half_a_joined(LinkSettings(ack_every=1), limits=Limits(outbound_queue=2))
    pair.connect()
    for number in range(6):  # each in its own read: a chunk already read is parsed whole
        from_juliet(pair, number)
        pair.flush()
    to_red = relay.links[("red", "blue.example", "red.example")]
    assert pair.a.describe()["held"] is True and relay.books.bounced == 0
    written = []
    to_red.stream = SimpleNamespace(send=lambda stanza, **extra: written.append(stanza["id"]),
                                    close_for_shutdown=lambda: None)
    to_red.stream_ready(to_red.stream)
    for _ in range(10):
        pair.flush()
        pair.clock.advance(1.0)
    assert written == [f"j{n}" for n in range(6)] and pair.a.describe()["held"] is False
    assert relay.books.bounced == 0


def test_over_the_memory_budget_the_link_is_not_read_until_the_low_water_mark():
    """Stanzas the half holds count against memory_budget_bytes: at the budget the link is held too, and read
    again once what is held falls to three quarters of it."""
    relay, _, pair, _ = half_a_joined(limits=Limits(outbound_queue=1000, memory_budget_bytes=1000))
    pair.connect()
    relay.count_held(1000)
    assert pair.a.describe()["held"] is True
    relay.count_freed(100)
    assert pair.a.describe()["held"] is True
    relay.count_freed(200)
    assert pair.a.describe()["held"] is False


def test_congestion_toward_the_link_still_holds_the_own_servers_streams():
    """A pair whose sender is on our own side is held as in standalone mode: the link is not paused for it."""
    relay, _, pair, red = half_a_joined()
    held = []

    class InboundFromRed:
        authenticated_pairs = {("red.example", "blue.example")}
        hold = release = staticmethod(held.append)

    red.inbound_streams.add(InboundFromRed())
    toward_blue = SimpleNamespace(pairs={("red.example", "blue.example")})  # a carrier the far server stopped reading
    relay.congested(toward_blue, congestion_reason("red.example", "blue.example"))
    assert held == ["congested red.example->blue.example"] and pair.a.describe()["held"] is False


def test_at_shutdown_stanzas_from_the_link_waiting_for_our_server_bounce_back_over_the_link():
    """Juliet's message waits for red's server when half A stops: its bounce crosses the link, still carrying,
    and reaches half B (before, the link was stopped first and the bounce was lost)."""
    relay, _, pair, _ = half_a_joined(LinkSettings(ack_every=1))
    pair.connect()
    pair.b.send(Parcel(reparse_stanza("<message from='juliet@blue.example/b' to='romeo@red.example' id='j1'>"
                                      "<body>hi</body></message>")))
    pair.flush()
    assert pair.owner_b.of("delivered") == ["j1"]  # half A acknowledged it: half B will never bounce it
    relay.begin_shutdown()
    pair.flush()
    assert pair.owner_b.of("received") == ["j1"]  # the error reply, same id, back to Juliet
    assert relay.books.summary()["bounced"] == 1


def test_at_shutdown_the_half_waits_for_acknowledgements_and_reports_the_rest_in_doubt():
    """Romeo's message was written, not acknowledged: the grace asks for an acknowledgement and settles it
    as delivered; one whose acknowledgement cannot come is audited in doubt, never bounced to Romeo."""
    relay, audit, pair, red = half_a_joined()
    pair.connect()
    from_romeo(relay, red, 1)
    pair.flush()  # half B has it
    relay.begin_shutdown()
    assert relay.bounces_waiting() == 1
    pair.flush()
    assert relay.bounces_waiting() == 0 and relay.books.summary()["delivered"] == 1
    from_romeo(relay, red, 2)  # accepted late (a release during shutdown): bounced, the link takes nothing new
    relay.finish_shutdown()
    assert relay.books.summary()["bounced"] == 1

    relay, audit, pair, red = half_a_joined()
    pair.connect()
    from_romeo(relay, red, 3)
    pair.flush()
    pair.cut()  # the acknowledgement can never come
    relay.begin_shutdown()
    relay.finish_shutdown()
    assert audit.records == [("drop", "guard:link-in-doubt", "red->blue")]
    assert relay.books.summary()["bounced"] == 0 and relay.books.summary()["dropped"] == 1


def test_after_a_reload_stanzas_waiting_unwritten_on_the_link_are_judged_again():
    """The link is down; a reload brings a stricter export policy: the contraband that passed before is now
    bounced under the new rule, the plain message still waits (judged again), nothing is written twice."""
    relay, audit, pair, red = half_a_joined()
    to_romeo = relay.links[("red", "blue.example", "red.example")] = RecordingOutbound()
    from_romeo(relay, red, 1, "contraband")
    from_romeo(relay, red, 2, "plain")
    assert pair.a.describe()["queued"] == 2
    relay.policies.swap(Direction("red", "blue"), NoContraband())
    relay.rejudge_link_buffer()
    assert audit.records == [("bounce", "no-contraband", "red->blue")]
    assert len(to_romeo.queue) == 1 and 'id="r1"' in to_romeo.queue[0]
    pair.connect()
    pair.flush()
    assert pair.owner_b.of("received") == ["r2"] and pair.a.describe()["queued"] == 0


class ReferAll:
    def judge(self, stanza, direction):
        return Judgement.referred(stanza, "ask-first")


class ReleasingAuthority:
    """Releases every stanza it is asked about, at once, with its body replaced."""

    def __init__(self):
        self.asked = []

    def ask(self, stanza, direction, rule_id):
        from twisted.internet import defer

        self.asked.append((stanza["id"], str(direction), rule_id))
        released = reparse_stanza(serialise(stanza).replace("plain", "released"))
        return defer.succeed(SimpleNamespace(released=True, stanza=released, reason="ok"))


def test_after_a_reload_a_waiting_stanza_the_new_policy_refers_goes_to_the_authority_first():
    """A reload to a refer rule: the waiting stanza leaves the buffer, is asked about, and what the authority
    releases is what crosses the link."""
    relay, _, pair, red = half_a_joined()
    from_romeo(relay, red, 1, "plain")
    relay.release_authority = ReleasingAuthority()
    relay.policies.swap(Direction("red", "blue"), ReferAll())
    relay.rejudge_link_buffer()
    assert relay.release_authority.asked == [("r1", "red->blue", "ask-first")]
    (entry,) = pair.a.outbox.entries
    assert b"<body>released</body>" in entry.parcel.data


def test_with_an_audit_of_every_decision_a_stanza_judged_again_on_the_link_records_the_new_pass():
    """When every decision is audited, a waiting stanza the new policy lets through gets a pass record naming the new rule."""
    relay, audit, pair, red = half_a_joined()
    audit.records_passes = True
    from_romeo(relay, red, 1, "plain")
    relay.policies.swap(Direction("red", "blue"), NoContraband())
    relay.rejudge_link_buffer()
    assert audit.records == [("pass", "pass-all", "red->blue"), ("pass", "import-rest", "red->blue")]
    assert pair.a.describe()["queued"] == 1


def test_after_a_reload_a_stanza_written_but_lost_is_not_resent_under_the_old_verdict():
    """A stanza written on a connection that died is never written again after a reload: the peer's resume
    settles it (here: not counted, so it bounces), and the stricter policy is not bypassed."""
    relay, audit, pair, red = half_a_joined()
    pair.connect()
    from_romeo(relay, red, 1, "contraband")
    pair.cut()
    relay.policies.swap(Direction("red", "blue"), NoContraband())
    relay.rejudge_link_buffer()
    pair.connect()
    pair.flush()
    assert pair.owner_b.of("received") == []
    assert relay.books.delivered == 0 and relay.books.bounced == 1


def test_a_refer_judged_again_after_a_second_reload_still_carries_the_whole_stanza():
    """A waiting link stanza referred after one reload and passed after a second leaves with its body, not as
    the bare top element the link keeps."""
    from twisted.internet import defer

    relay, _, pair, red = half_a_joined()
    from_romeo(relay, red, 1, "plain")
    answer = defer.Deferred()
    relay.release_authority = SimpleNamespace(ask=lambda stanza, direction, rule: answer)
    relay.policies.swap(Direction("red", "blue"), ReferAll())
    relay.rejudge_link_buffer()
    relay.policies.swap(Direction("red", "blue"), PassAll())
    answer.callback(SimpleNamespace(released=True, stanza=object(), reason="ok", busy=False))
    (entry,) = pair.a.outbox.entries
    assert b"<body>plain</body>" in entry.parcel.data


def test_one_of_our_own_bounces_left_in_doubt_at_shutdown_is_audited_not_only_logged():
    """A bounce of ours written to the peer and never acknowledged when the half stops is counted and audited."""
    from guard.edges.relay import Parcel as RelayParcel

    relay, audit, _, _ = half_a_joined()
    reply = reparse_stanza("<message from='juliet@blue.example' to='romeo@red.example/a' type='error' id='b1'/>")
    relay.link_in_doubt(RelayParcel(reply, None))
    assert audit.records == [("bounce-lost", "guard:bounce-lost", None)] and relay.bounces_lost == 1


# -- the link's retransmission buffer counts in the memory budget -------------------


class RecordingFeeder:
    """An inbound stream from red's server: records each hold and release by reason."""

    authenticated_pairs = {("red.example", "blue.example")}

    def __init__(self):
        self.events = []

    def hold(self, reason):
        self.events.append(("hold", reason))

    def release(self, reason):
        self.events.append(("release", reason))


def half_a_over_budget(budget=1000):
    """Half A with a small memory budget, joined to a half B that does not read (so never acknowledges), and
    Romeo's stream on red sending until the link's buffer alone holds more than the budget."""
    relay, audit, pair, red = half_a_joined(limits=Limits(outbound_queue=100, memory_budget_bytes=budget))
    romeo = RecordingFeeder()
    red.inbound_streams.add(romeo)
    pair.connect()
    pair.b.hold()
    for number in range(15):
        from_romeo(relay, red, number)
    pair.flush()
    return relay, pair, romeo


def test_the_links_unacknowledged_stanzas_count_in_the_memory_budget_and_hold_the_feeders():
    """A far half that never acknowledges: what the link keeps for it counts as held, so at memory_budget_bytes
    Romeo's stream is held (before, the guard held the budget plus the whole link buffer)."""
    relay, pair, romeo = half_a_over_budget()
    assert pair.a.describe()["unacknowledged"] == 15
    assert relay.held.held == pair.a.outbox.bytes > 1000
    assert set(romeo.events) == {("hold", MEMORY_HOLD)}  # held again for each stanza still arriving (idempotent)


def test_what_the_peer_acknowledges_is_freed_from_the_memory_budget():
    """Half B reads again and acknowledges: the bytes are freed, and Romeo's stream is read again."""
    relay, pair, romeo = half_a_over_budget()
    pair.b.release()
    pair.flush()
    pair.clock.advance(1.0)  # half A's ticker asks for an acknowledgement
    pair.flush()
    assert pair.a.describe()["unacknowledged"] == 0 and relay.books.delivered == 15
    assert relay.held.held == 0 and romeo.events[-1] == ("release", MEMORY_HOLD)


def test_what_the_link_gives_up_or_settles_when_stopping_is_freed_from_the_memory_budget():
    """The link is never up: past its down deadline what it kept bounces, and its bytes are no longer held (only
    the bounces waiting for red's server are); stopping settles the rest and frees it too."""
    relay, _, pair, red = half_a_joined(LinkSettings(down_deadline=10.0), limits=Limits(outbound_queue=100))
    for number in range(3):
        from_romeo(relay, red, number)
    assert relay.held.held == pair.a.outbox.bytes > 0
    pair.clock.advance(11.0)
    to_red = relay.links[("red", "blue.example", "red.example")]  # the bounces wait for red's server
    assert pair.a.outbox.bytes == 0 and relay.books.bounced == 3
    assert relay.held.held == to_red.queued_bytes
    relay, _, pair, red = half_a_joined(limits=Limits(outbound_queue=100))
    pair.connect()
    pair.b.hold()
    from_romeo(relay, red, 1)
    pair.flush()
    assert relay.held.held == pair.a.outbox.bytes > 0
    pair.a.stop()
    assert relay.held.held == 0 and relay.books.dropped == 1  # written, never acknowledged: in doubt, audited


def test_over_the_budget_the_link_still_reads_acknowledgements_and_takes_the_peers_stanzas_only_after():
    """Both ways busy: half A is over its budget with what half B has not acknowledged, and half B sends too.
    Half A reads on (else B's acknowledgements, behind B's stanzas, could never free it) but takes none of
    B's stanzas; once B's acknowledgement frees the budget the connection is reset and B resends them:
    each reaches red once, in order."""
    relay, pair, romeo = half_a_over_budget()
    for number in range(3):
        from_juliet(pair, number)
    pair.flush()
    assert ("red", "blue.example", "red.example") not in relay.links and relay.books.accepted == 15
    assert pair.a.describe()["held_for_memory"] is True
    pair.b.release()
    pair.flush()
    pair.clock.advance(1.0)  # each half asks for an acknowledgement; A's answer does not count B's stanzas
    pair.flush()
    assert relay.held.held == 0 and romeo.events[-1] == ("release", MEMORY_HOLD)
    pair.clock.advance(0)  # the reset, outside the stream's own callbacks
    pair.flush()
    assert pair.streams[0].closing
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    to_red = relay.links[("red", "blue.example", "red.example")]
    assert [parcel.stanza["id"] for parcel in to_red.queue] == ["j0", "j1", "j2"]
    assert pair.owner_b.of("delivered") == ["j0", "j1", "j2"] and relay.books.accepted == 18
