"""Handing a judged stanza over to the worker its pair is pinned to (guard.edges.handover)."""

import struct

import pytest
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from guard.edges.handover import (
    CARRY,
    DELIVERED,
    ENVELOPE_BYTES,
    HANDOVER_IN_DOUBT_RULE,
    PEER_DOWN,
    PEER_UP,
    ROUTE,
    ROUTING_KINDS,
    FrameFault,
    FrameReader,
    HandoverCarrier,
    HandoverReceiver,
    WorkerChannels,
    carry_frame,
    frame,
    hello_frame,
    in_doubt_settler,
    number_frame,
    pinned_worker,
    read_hello,
    routed,
    routed_frame_bound,
)
from guard.core.settlement import Parcel
from guard.edges.limits import Limits
from guard.edges.s2s.carrier import S2SCarrier

from .test_relay import MESSAGE, World, parse

PAIR = ("red.example", "blue.example")


def test_frames_split_anywhere_are_read_whole_and_in_order():
    """Two frames fed one byte at a time come out whole, in order, with their kinds."""
    reader = FrameReader(max_frame=64)
    data = frame(CARRY, b"first") + number_frame(DELIVERED, 7)
    frames = []
    for index in range(len(data)):
        frames += reader.feed(data[index:index + 1])
    assert frames == [(CARRY, b"first"), (DELIVERED, b"\x00" * 7 + b"\x07")]


def test_a_frame_past_the_bound_or_of_an_unknown_kind_breaks_the_channel_for_good():
    """A frame header announcing more than the bound, or an unknown kind, raises FrameFault, and so does what follows."""
    reader = FrameReader(max_frame=16)
    with pytest.raises(FrameFault):
        reader.feed(frame(CARRY, b"x" * 17)[:5])
    with pytest.raises(FrameFault):
        reader.feed(frame(CARRY, b"ok"))
    with pytest.raises(FrameFault):
        FrameReader(max_frame=16).feed(b"\x00\x00\x00\x02\x63x")


def test_a_pair_is_pinned_to_the_same_worker_in_every_process():
    """The pin is a stable hash (not Python's salted hash): a known answer, within range, for several counts."""
    assert [pinned_worker(PAIR, n) for n in (1, 2, 3)] == [0, pinned_worker(PAIR, 2), pinned_worker(PAIR, 3)]
    assert pinned_worker(PAIR, 1) == 0
    spread = {pinned_worker((f"d{i}.example", "blue.example"), 2) for i in range(20)}
    assert spread == {0, 1}


class Workers:
    """Worker A accepts every stanza; the pair red->blue is pinned to worker B; a channel joins them in memory."""

    def __init__(self):
        self.a, self.b = World(), World()
        self.channel = HandoverCarrier(self.a.relay, Limits().stanza_bytes, in_doubt_settler(self.a.relay))
        self.a.relay.carrier_for_pair = lambda side, pair: self.channel.carry_for(side, pair) if pair == PAIR else None
        self.b_carriers = {}
        self.receiver = HandoverReceiver(self.b.relay, self.b_carrier, Limits().stanza_bytes)
        self.pump = iosim.connect(self.receiver, iosim.makeFakeServer(self.receiver),
                                  self.channel, iosim.makeFakeClient(self.channel))

    def b_carrier(self, side, pair, owner):
        key = (side,) + pair
        if key not in self.b_carriers:
            self.b_carriers[key] = S2SCarrier(owner, self.b.relay.sides[side], *pair, open_stream=self.b.open_stream)
        return self.b_carriers[key]


def test_a_pair_pinned_to_another_worker_leaves_there_in_order_and_is_settled_where_accepted():
    """Stanzas accepted on A for a pair pinned to B leave on B's stream in order; A's books settle them, B's stay empty."""
    workers = Workers()
    for number in range(3):
        workers.a.arrive(MESSAGE.format(id=f"m{number}", body=f"hello {number}"))
    workers.pump.flush()
    assert workers.a.log == []
    workers.b.ready("blue", *PAIR)
    workers.pump.flush()
    assert [entry[2] for entry in workers.b.sent()] == [
        f'<message from="romeo@red.example/a" to="juliet@blue.example" id="m{n}"><body>hello {n}</body></message>'
        for n in range(3)]
    assert (workers.a.books.accepted, workers.a.books.delivered, workers.a.books.in_flight) == (3, 3, 0)
    assert workers.b.books.accepted == 0
    assert (workers.a.relay.held.held, workers.b.relay.held.held) == (0, 0)


def test_what_the_pinned_worker_cannot_deliver_bounces_from_the_accepting_worker_with_its_own_words():
    """A failed stream on B bounces on A (remote-server-not-found), and the far server's text stays out of the bounce."""
    workers = Workers()
    workers.a.arrive(MESSAGE.format(id="m1", body="hello"))
    workers.pump.flush()
    workers.b.fail("blue", *PAIR, text="secret words of the far server")
    workers.pump.flush()
    assert (workers.a.books.bounced, workers.a.books.in_flight) == (1, 0)
    bounce = [entry[2] for entry in workers.a.sent()]
    assert bounce == []  # the bounce waits for A's stream back to red
    workers.a.ready("red", "blue.example", "red.example")
    sent = [entry[2] for entry in workers.a.sent()]
    assert len(sent) == 1 and "remote-server-not-found" in sent[0] and "secret" not in sent[0]


def test_parcels_the_pinned_worker_never_confirmed_settle_in_doubt_once_when_it_dies():
    """B dies with two parcels unconfirmed: A settles each once, in doubt (audited), and frees their bytes."""
    workers = Workers()
    workers.a.arrive(MESSAGE.format(id="m1", body="one"))
    workers.a.arrive(MESSAGE.format(id="m2", body="two"))
    workers.pump.flush()
    workers.channel.connectionLost()
    workers.channel.connectionLost()
    assert (workers.a.books.dropped, workers.a.books.in_flight) == (2, 0)
    assert [record[1] for record in workers.a.audit.records if record[0] == "drop"] == [HANDOVER_IN_DOUBT_RULE] * 2
    assert workers.a.relay.held.held == 0
    assert workers.channel.describe()["in_doubt"] == 2


def test_a_stanza_carried_while_the_channel_is_down_bounces_with_remote_server_timeout():
    """With the channel down, a stanza for the pinned pair bounces at once (remote-server-timeout)."""
    workers = Workers()
    workers.channel.connectionLost()
    workers.a.arrive(MESSAGE.format(id="m1", body="late"))
    workers.a.ready("red", "blue.example", "red.example")
    sent = [entry[2] for entry in workers.a.sent()]
    assert (workers.a.books.bounced, len(sent)) == (1, 1) and "remote-server-timeout" in sent[0]


def test_unconfirmed_bytes_past_the_bound_hold_the_feeders_of_the_pinned_pairs():
    """Past the unconfirmed bound the channel says congested; confirmations below half of it release the hold."""
    workers = Workers()
    workers.channel.unconfirmed_bound = 250
    held = []
    workers.a.relay.congested = lambda carrier, reason: held.append(("held", tuple(carrier.pairs), reason))
    workers.a.relay.decongested = lambda carrier, reason: held.append(("released", tuple(carrier.pairs), reason))
    workers.a.arrive(MESSAGE.format(id="m1", body="one"))
    workers.a.arrive(MESSAGE.format(id="m2", body="two"))
    workers.a.arrive(MESSAGE.format(id="m3", body="three"))
    workers.pump.flush()
    reason = workers.channel.hold_reason
    assert held == [("held", (PAIR,), reason)]
    workers.b.ready("blue", *PAIR)
    workers.pump.flush()
    assert held[-1] == ("released", (PAIR,), reason)


def test_a_carry_frame_larger_than_stanza_bytes_plus_the_envelope_ends_the_channel():
    """The receiving worker refuses a frame past stanza_bytes + ENVELOPE_BYTES: the channel closes, nothing is carried."""
    workers = Workers()
    workers.receiver.dataReceived(frame(CARRY, b"x" * (Limits().stanza_bytes + ENVELOPE_BYTES + 1))[:9])
    workers.pump.flush()
    assert workers.b_carriers == {} and workers.receiver.transport.disconnecting


def test_the_relay_keeps_its_own_s2s_carrier_for_a_pair_the_hook_does_not_take():
    """carrier_for_pair answering None leaves the pair on this worker's S2S carrier; an answer is kept per pair."""
    workers = Workers()
    workers.a.arrive(MESSAGE.format(id="m1", body="bounce"))
    assert isinstance(workers.a.relay.links[("red", "blue.example", "red.example")], S2SCarrier)
    workers.a.arrive(MESSAGE.format(id="m2", body="hello"))
    assert workers.a.relay.links[("blue",) + PAIR].pairs == {PAIR}
    assert not isinstance(workers.a.relay.links[("blue",) + PAIR], S2SCarrier)


# -- star routing through the supervisor -----------------------------------------------------------------

PINNED = pinned_worker(PAIR, 2)
ACCEPTING = 1 - PINNED


class Star:
    """Two workers, each a World with WorkerChannels on an in-memory channel, and the supervisor's routing between."""

    def __init__(self):
        self.worlds = {index: World() for index in range(2)}
        self.channels, self.readers, self.running = {}, {}, set()
        for index, world in self.worlds.items():
            channels = WorkerChannels(index, 2, world.relay, Limits().stanza_bytes)
            world.relay.carrier_for_pair = channels.carrier_for_pair
            channels.makeConnection(StringTransport())
            self.channels[index] = channels
            self.readers[index] = FrameReader(routed_frame_bound(Limits().stanza_bytes), ROUTING_KINDS)
        for index in range(2):
            self.start(index)

    def start(self, index):
        self.running.add(index)
        for other in self.running - {index}:
            self.channels[other].dataReceived(frame(PEER_UP, bytes([index])))
            self.channels[index].dataReceived(frame(PEER_UP, bytes([other])))

    def stop(self, index):
        self.running.discard(index)
        self.channels[index].transport.clear()
        for other in self.running:
            self.channels[other].dataReceived(frame(PEER_DOWN, bytes([index])))

    def pump(self):
        for _ in range(20):
            moved = False
            for index in sorted(self.running):
                written = self.channels[index].transport.value()
                self.channels[index].transport.clear()
                for kind, body in self.readers[index].feed(written):
                    for target, data in routed(index, kind, body, self.running):
                        self.channels[target].dataReceived(data)
                        moved = True
            if not moved:
                return


def test_through_the_supervisor_a_pair_pinned_to_the_other_worker_leaves_there_in_order():
    """With 2 workers, stanzas accepted on one for a pair pinned to the other leave there in order; the books add up."""
    star = Star()
    accepting, pinned = star.worlds[ACCEPTING], star.worlds[PINNED]
    for number in range(3):
        accepting.arrive(MESSAGE.format(id=f"m{number}", body=f"hello {number}"))
    star.pump()
    stream = next(iter(pinned.streams.values()))
    stream.owner.stream_ready(stream)
    star.pump()
    assert accepting.log == []
    assert [entry[2] for entry in pinned.sent()] == [
        f'<message from="romeo@red.example/a" to="juliet@blue.example" id="m{n}"><body>hello {n}</body></message>'
        for n in range(3)]
    assert (accepting.books.accepted, accepting.books.delivered, accepting.books.in_flight) == (3, 3, 0)
    assert pinned.books.accepted == 0


def test_a_pinned_worker_that_dies_leaves_its_unconfirmed_parcels_in_doubt_and_its_next_life_carries_again():
    """The pinned worker dies with parcels unconfirmed: each settles once in doubt; restarted, it carries new ones."""
    star = Star()
    accepting, pinned = star.worlds[ACCEPTING], star.worlds[PINNED]
    accepting.arrive(MESSAGE.format(id="m1", body="lost"))
    star.pump()
    star.stop(PINNED)
    assert (accepting.books.dropped, accepting.books.in_flight) == (1, 0)
    star.worlds[PINNED] = pinned = World()
    channels = WorkerChannels(PINNED, 2, pinned.relay, Limits().stanza_bytes)
    pinned.relay.carrier_for_pair = channels.carrier_for_pair
    channels.makeConnection(StringTransport())
    star.channels[PINNED] = channels
    star.start(PINNED)
    accepting.arrive(MESSAGE.format(id="m2", body="again"))
    star.pump()
    stream = next(iter(pinned.streams.values()))
    stream.owner.stream_ready(stream)
    star.pump()
    assert [entry[2] for entry in pinned.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><body>again</body></message>']
    assert (accepting.books.accepted, accepting.books.delivered, accepting.books.dropped,
            accepting.books.in_flight) == (2, 1, 1, 0)


def test_the_supervisor_answers_a_frame_for_a_stopped_worker_with_peer_down_and_refuses_odd_frames():
    """routed(): to a running worker the frame goes on marked with its source; to a stopped one PEER_DOWN comes back."""
    assert routed(0, ROUTE, bytes([1]) + b"inner", {0, 1}) == [(1, frame(ROUTE, bytes([0]) + b"inner"))]
    assert routed(0, ROUTE, bytes([1]) + b"inner", {0}) == [(0, frame(PEER_DOWN, bytes([1])))]
    with pytest.raises(FrameFault):
        routed(0, ROUTE, bytes([0]) + b"inner", {0, 1})
    with pytest.raises(FrameFault):
        routed(0, PEER_UP, bytes([1]), {0, 1})


def test_a_worker_reads_its_index_from_the_first_frame_on_its_channel():
    """read_hello gives (index, count) from a HELLO frame and refuses anything else."""
    import os

    read, write = os.pipe()
    os.write(write, hello_frame(1, 2))
    assert read_hello(read) == (1, 2)
    os.write(write, frame(CARRY, b"xy"))
    with pytest.raises(FrameFault):
        read_hello(read)
    os.close(write)
    with pytest.raises(FrameFault):
        read_hello(read)
    os.close(read)


def test_the_pinned_worker_sends_its_own_and_the_handed_over_stanzas_of_a_pair_on_one_stream_in_arrival_order():
    """The pinned worker's pair has one S2S stream: its own stanzas and those handed over leave in the order they came."""
    star = Star()
    accepting, pinned = star.worlds[ACCEPTING], star.worlds[PINNED]
    pinned.arrive(MESSAGE.format(id="own-1", body="mine"))
    accepting.arrive(MESSAGE.format(id="over-1", body="theirs"))
    star.pump()
    pinned.arrive(MESSAGE.format(id="own-2", body="mine again"))
    pinned.ready("blue", *PAIR)
    star.pump()
    assert [entry[1] for entry in pinned.log if entry[0] == "open"] == ["blue"]
    assert [entry[2].split('id="')[1].split('"')[0] for entry in pinned.sent()] == ["own-1", "over-1", "own-2"]
    assert (pinned.books.accepted, pinned.books.delivered, pinned.books.in_flight) == (2, 2, 0)
    assert (accepting.books.accepted, accepting.books.delivered, accepting.books.in_flight) == (1, 1, 0)
    assert pinned.books.summary().get("refused", 0) == 0


def test_a_worker_refuses_a_handed_over_pair_that_is_not_pinned_to_it():
    """A CARRY frame for a pair pinned elsewhere ends that peer's channel on the receiving worker; nothing is carried."""
    star = Star()
    accepting = star.worlds[ACCEPTING]
    stanza = parse(MESSAGE.format(id="x", body="wrong worker"))
    inner = carry_frame(1, Parcel(stanza, stanza, None, 10), "blue", PAIR, Limits().stanza_bytes)
    star.channels[ACCEPTING].dataReceived(frame(ROUTE, bytes([PINNED]) + inner))
    assert accepting.streams == {} and PINNED not in star.channels[ACCEPTING].up


def test_past_twice_the_unconfirmed_bound_a_stanza_bounces_with_resource_constraint_and_shutdown_waits_for_the_rest():
    """Unconfirmed bytes never pass twice the bound: the next stanza bounces; what is unconfirmed counts as waiting."""
    workers = Workers()
    workers.channel.unconfirmed_bound = 100
    for number in range(3):
        workers.a.arrive(MESSAGE.format(id=f"m{number}", body="x"), size=90)
    workers.pump.flush()
    assert (workers.channel.describe()["unconfirmed"], workers.a.books.bounced) == (2, 1)
    assert workers.a.relay.bounces_waiting() > 0
    workers.a.ready("red", "blue.example", "red.example")
    assert "resource-constraint" in workers.a.sent()[0][2]
    workers.b.ready("blue", *PAIR)
    workers.pump.flush()
    assert (workers.a.books.delivered, workers.a.books.in_flight, workers.a.relay.held.held) == (2, 0, 0)
    assert workers.a.relay.bounces_waiting() == 0


def lines_of(count):
    """A supervisor's router with ``count`` workers' lines on in-memory transports."""
    from guard.app.workers import WorkerLine, WorkerRouter

    router = WorkerRouter(None, count, Limits().stanza_bytes)
    for index in range(count):
        line = WorkerLine(router, index)
        line.makeConnection(StringTransport())
        router.lines[index] = line
    return router


def test_the_supervisor_passes_frames_between_workers_and_tells_the_others_when_one_ends():
    """A frame from worker 0 to 1 reaches 1 marked from 0; once 1 ends, 0 hears PEER_DOWN, and so does a late frame."""
    router = lines_of(2)
    zero, one = router.lines[0], router.lines[1]
    zero.dataReceived(frame(ROUTE, bytes([1]) + b"inner"))
    assert one.transport.value() == frame(ROUTE, bytes([0]) + b"inner")
    router.close_line(1)
    assert zero.transport.value() == frame(PEER_DOWN, bytes([1]))
    zero.transport.clear()
    zero.dataReceived(frame(ROUTE, bytes([1]) + b"late"))
    assert zero.transport.value() == frame(PEER_DOWN, bytes([1]))


def test_a_worker_that_sends_the_supervisor_a_frame_it_does_not_route_loses_its_channel():
    """A PEER_UP (or anything but ROUTE) from a worker ends that worker's channel; the other hears PEER_DOWN."""
    router = lines_of(2)
    zero, one = router.lines[0], router.lines[1]
    one.dataReceived(frame(PEER_UP, bytes([0])))
    assert one.transport.disconnecting
    one.connectionLost()
    assert set(router.lines) == {0} and zero.transport.value() == frame(PEER_DOWN, bytes([1]))


# -- a reload while a stanza is handed over ----------------------------------------------------


class Stricter:
    """The policy after the reload: what says "secret" is bounced, what says "quiet" is dropped, the rest passes
    with its body replaced (so that a test sees which policy built what left)."""

    def judge(self, stanza, direction):
        from guard.core.pipeline import Judgement

        body = str(stanza.body) if stanza.body else ""
        if body == "secret":
            return Judgement.bounced(stanza, "no-secrets", "not-acceptable")
        if body == "quiet":
            return Judgement.dropped(stanza, "no-quiet", 3)
        rebuilt = parse(f"<message from='{stanza['from']}' to='{stanza['to']}' id='{stanza['id']}'>"
                        f"<body>judged by the new policy</body></message>")
        return Judgement.passed(rebuilt, "rest-v2")


def reload_worker(world):
    """One worker's SIGHUP: its policies are swapped for Stricter (a new generation)."""
    from .test_relay import BLUE_TO_RED, RED_TO_BLUE

    for direction in (RED_TO_BLUE, BLUE_TO_RED):
        world.relay.policies.swap(direction, Stricter())


def test_a_stanza_waiting_on_the_pinned_worker_across_a_reload_is_judged_again_there():
    """Judged on A under the old policy and waiting in B's queue while both reload: B's new policy judges what
    would leave (before, it left under the old verdict); a bounce and a drop are settled on A, audited, once."""
    workers = Workers()
    for number, body in enumerate(("hello", "secret", "quiet")):
        workers.a.arrive(MESSAGE.format(id=f"m{number}", body=body))
    workers.pump.flush()
    reload_worker(workers.a)
    reload_worker(workers.b)
    workers.b.ready("blue", *PAIR)
    workers.pump.flush()
    assert [entry[2] for entry in workers.b.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m0"><body>judged by the new policy</body>'
        '</message>']
    assert (workers.a.books.delivered, workers.a.books.bounced, workers.a.books.dropped,
            workers.a.books.in_flight) == (1, 1, 1, 0)
    assert [record[1] for record in workers.a.audit.records if record[0] == "drop"] == ["no-quiet"]
    assert workers.b.books.accepted == 0 and workers.b.relay.held.held == 0  # (A holds the bounce to red)


def test_a_stanza_handed_over_after_the_pinned_worker_reloaded_is_judged_again_there():
    """B reloaded first (SIGHUP reaches workers one by one): A, still under the old revision, hands over a stanza
    its new policy bounces; B sees the other revision in the frame and judges it again, and A bounces it."""
    workers = Workers()
    revisions = {"a": "r1", "b": "r2"}
    workers.channel.revision = lambda: revisions["a"]
    workers.receiver.revision = lambda: revisions["b"]
    reload_worker(workers.b)
    workers.a.arrive(MESSAGE.format(id="m1", body="secret"))
    workers.pump.flush()
    workers.b.ready("blue", *PAIR)
    workers.pump.flush()
    assert workers.b.sent() == []
    assert (workers.a.books.bounced, workers.a.books.in_flight) == (1, 0)
    revisions["a"] = "r2"  # A reloaded too: the same revision, not judged again
    reload_worker(workers.a)
    workers.a.arrive(MESSAGE.format(id="m2", body="hello"))
    workers.pump.flush()
    assert [entry[2] for entry in workers.b.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><body>judged by the new policy</body>'
        '</message>']


def test_the_policy_revision_is_the_same_for_the_same_files_and_changes_with_one():
    """Two workers that loaded the same files name the same revision, in any order; another digest changes it."""
    from guard.edges.handover import policy_revision

    records = [{"direction": "red->blue", "digest": "aa"}, {"direction": "blue->red", "digest": "bb"}]
    assert policy_revision(records) == policy_revision(list(reversed(records)))
    assert policy_revision(records) != policy_revision([records[0], {"direction": "blue->red", "digest": "cc"}])


# -- a peer's stanza never breaks the channel between workers ----------------------------------------------------

CHILD_AT_THE_ATTRIBUTE_LIMIT = (
    "<message xmlns:x='urn:example:x' from='romeo@red.example/a' to='juliet@blue.example' id='{id}'>"
    "<x:payload " + " ".join(f"a{index}='v'" for index in range(64)) + "/></message>")


def test_a_stanza_within_every_limit_whose_serialisation_declares_a_namespace_is_delivered_by_the_pinned_worker():
    """64 attributes on a child in a prefixed namespace pass the accepting worker's limits; serialised, the child
    declares its namespace (65 attributes): the pinned worker reads it within the frame's bytes and delivers it,
    and the channel carries the next stanza (it broke, settling both in doubt and stranding later ones)."""
    star = Star()
    accepting, pinned = star.worlds[ACCEPTING], star.worlds[PINNED]
    accepting.arrive(CHILD_AT_THE_ATTRIBUTE_LIMIT.format(id="m1"))
    accepting.arrive(MESSAGE.format(id="m2", body="next"))
    star.pump()
    stream = next(iter(pinned.streams.values()))
    stream.owner.stream_ready(stream)
    star.pump()
    assert [entry[2][:72] for entry in pinned.sent()] == [
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m1"><pa',
        '<message from="romeo@red.example/a" to="juliet@blue.example" id="m2"><bo']
    assert (accepting.books.accepted, accepting.books.delivered, accepting.books.dropped,
            accepting.books.in_flight) == (2, 2, 0, 0)


def test_a_handed_over_stanza_that_cannot_be_read_again_is_undeliverable_and_the_channel_goes_on():
    """A CARRY frame whose XML does not parse as one stanza is reported undeliverable (internal-server-error) by
    number; the frames after it are read with a fresh parser and carried."""
    from guard.edges.handover import UNDELIVERABLE, carry_frame

    pinned = World()
    carried = []

    class Carrier:
        def carry(self, parcel):
            carried.append(parcel.stanza.getAttribute("id"))

    receiver = HandoverReceiver(pinned.relay, lambda side, pair, owner: Carrier(), Limits().stanza_bytes)
    receiver.makeConnection(StringTransport())
    head = struct.pack(">QBI", 7, 0, 10) + b"blue\0red.example\0blue.example\0\0"
    receiver.dataReceived(frame(CARRY, head + b"<message id='half'><body>"))
    receiver.dataReceived(frame(CARRY, struct.pack(">QBI", 8, 0, 10) + b"blue\0red.example\0blue.example\0\0"
                                + b"<message id='a'/><message id='b'/>"))
    stanza = parse(MESSAGE.format(id="m9", body="fine"))
    good = Parcel(stanza, stanza, None, 10)
    receiver.dataReceived(carry_frame(9, good, "blue", PAIR, Limits().stanza_bytes))
    reports = FrameReader(1024).feed(receiver.transport.value())
    assert [(kind, body[:8]) for kind, body in reports] == [(UNDELIVERABLE, struct.pack(">Q", 7)),
                                                           (UNDELIVERABLE, struct.pack(">Q", 8))]
    assert all(b"internal-server-error" in body for _, body in reports)
    assert carried == ["m9"] and not receiver.transport.disconnecting


def test_the_pinned_worker_reads_handed_over_stanzas_as_deep_as_the_configured_limit():
    """WorkerChannels gives its receivers the configured depth (not the parser's default), counts bounded by bytes."""
    world = World()
    channels = WorkerChannels(0, 2, world.relay, Limits().stanza_bytes, Limits(element_depth=100).parser_limits())
    limits = channels.receivers[1].parser._limits
    assert (limits.element_depth, limits.stanza_bytes, limits.attributes_per_element) == (
        100, Limits().stanza_bytes, Limits().stanza_bytes)
