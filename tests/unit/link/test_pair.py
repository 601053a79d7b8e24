"""Two halves joined in memory: nothing lost, nothing doubled, across cuts; bounces after the deadline."""

from guard.edges.link.link import LinkSettings

from guard.edges.xmlstream import ParserLimits

from .pairs import FakeStream, JoinedHalves, RecordingOwner, message


def test_stanzas_cross_both_ways_and_are_acknowledged():
    """A's stanzas reach B's owner and B's reach A's; both senders learn of delivery."""
    pair = JoinedHalves()
    pair.connect()
    pair.a.send(message("a1"))
    pair.b.send(message("b1", "juliet@blue.example", "romeo@red.example"))
    pair.flush()
    pair.clock.advance(1.0)  # the ack ticker asks for acknowledgements
    pair.flush()
    assert pair.owner_b.events == [("received", "a1"), ("delivered", "b1")]
    assert pair.owner_a.events == [("received", "b1"), ("delivered", "a1")]


def test_a_cut_mid_blast_loses_nothing_and_doubles_nothing():
    """3000 stanzas, the link cut twice with bytes in flight: each arrives exactly once, in order."""
    pair = JoinedHalves(LinkSettings(ack_every=100, buffer_stanzas=5000))
    pair.connect()
    for number in range(1000):
        pair.a.send(message(number))
    pair.flush()
    for number in range(1000, 2000):
        pair.a.send(message(number))  # written, never pumped: lost in flight
    pair.cut()
    assert pair.a.describe()["state"] == "down"
    for number in range(2000, 2500):
        pair.a.send(message(number))  # waits in the buffer
    pair.connect()
    pair.cut()  # cut again before a single byte moved
    for number in range(2500, 3000):
        pair.a.send(message(number))
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    received = pair.owner_b.of("received")
    assert received == [str(number) for number in range(3000)]
    assert sorted(pair.owner_a.of("delivered"), key=int) == [str(number) for number in range(3000)]
    assert pair.a.describe()["unacknowledged"] == 0 and pair.a.describe()["queued"] == 0


def test_duplicates_are_dropped_when_the_sender_resends_before_hearing_the_resume():
    """Zero handshake: A resends at once on reconnect, before B's <resume/>; B drops what it has."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.connect()
    for number in range(10):
        pair.a.send(message(number))
    pair.flush()
    pair.cut()
    # B's counters are intact; A's buffer still holds all ten (never acknowledged).
    assert pair.a.describe()["unacknowledged"] == 10
    pair.connect()
    assert pair.b.describe()["duplicates_dropped"] == 10
    assert pair.owner_b.of("received") == [str(number) for number in range(10)]


def test_a_link_down_past_the_deadline_bounces_what_waits_and_what_comes():
    """After down_deadline seconds, waiting stanzas and new ones bounce with remote-server-timeout."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0))
    pair.a.send(message(1))
    pair.clock.advance(59.0)
    assert pair.owner_a.events == []
    pair.clock.advance(1.0)
    pair.a.send(message(2))
    assert pair.owner_a.events == [("undeliverable", "1", "remote-server-timeout"),
                                   ("undeliverable", "2", "remote-server-timeout")]
    assert pair.a.describe()["state"] == "down_too_long"


def test_the_link_carries_again_after_being_down_too_long():
    """Once a connection proves the peer again, stanzas flow; B skips the numbers bounced meanwhile."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()
    pair.clock.advance(1.0)
    pair.flush()
    pair.cut()
    pair.a.send(message(2))
    pair.clock.advance(60.0)
    pair.connect()
    pair.a.send(message(3))
    pair.flush()
    assert pair.owner_b.of("received") == ["1", "3"]
    assert pair.owner_a.of("undeliverable") == ["2"]


def test_a_full_buffer_bounces_with_resource_constraint():
    """The retransmission buffer is bounded: the stanza past it bounces at once."""
    pair = JoinedHalves(LinkSettings(buffer_stanzas=3))
    for number in range(4):
        pair.a.send(message(number))
    assert pair.owner_a.events == [("undeliverable", "3", "resource-constraint")]


def one_written_then_cut():
    """Two halves where A wrote stanza 1, B read it, and the connection died before any acknowledgement."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()
    pair.cut()
    return pair


def test_a_restarted_peer_receives_everything_unacknowledged():
    """A new incarnation of B (new session, counters zero) gets every unacknowledged stanza once."""
    pair = one_written_then_cut()
    from guard.edges.link.link import Link

    from .pairs import RecordingOwner

    pair.owner_b = RecordingOwner()
    pair.b = Link(pair.owner_b, "half-b", "half-a", pair.clock, LinkSettings(), session="sessionc")
    pair.b.start()
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    assert pair.owner_b.of("received") == ["1"]
    assert pair.owner_a.of("delivered") == ["1"]


def test_a_newer_connection_replaces_the_older_one():
    """If the peer connects again while the old connection lingers, the old one is closed with conflict."""
    pair = JoinedHalves()
    pair.connect()
    old_a, _ = pair.streams
    pair.connect()
    assert b"<conflict" in b"".join(old_a.transport.stream)
    assert old_a.closing
    pair.a.send(message(1))
    pair.flush()
    assert pair.owner_b.of("received") == ["1"]


def test_stopping_bounces_what_was_never_written_and_reports_the_rest_in_doubt():
    """At stop, a stanza the peer cannot have bounces; one written and not acknowledged is reported in doubt,
    not bounced (the peer may have delivered it); a stanza offered after stop bounces; the connection closes."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.connect()
    stream_a, _ = pair.streams
    pair.a.send(message(1))
    pair.flush()  # B has it; the acknowledgement never comes
    pair.a.stop()
    pair.a.send(message(2))
    assert pair.owner_a.events == [("in_doubt", "1"), ("undeliverable", "2", "remote-server-timeout")]
    assert stream_a.closing


def test_stopping_while_down_bounces_the_unwritten_and_reports_the_written_in_doubt():
    """Down at stop: each waiting stanza is settled exactly once, by what the peer can have."""
    pair = one_written_then_cut()
    pair.a.send(message(2))
    pair.a.stop()
    assert sorted(pair.owner_a.events) == [("in_doubt", "1"), ("undeliverable", "2", "remote-server-timeout")]


def test_at_the_deadline_a_written_stanza_the_peer_had_is_settled_delivered_by_its_next_resume():
    """Past the deadline a written, unacknowledged stanza is not bounced (the peer may have it) nor written again;
    the peer's <resume/> says it had it: delivered, once."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()  # B has it, the acknowledgement never comes
    pair.cut()
    pair.a.send(message(2))  # never written
    pair.clock.advance(60.0)
    assert pair.owner_a.events == [("undeliverable", "2", "remote-server-timeout")]
    assert pair.a.describe()["in_doubt"] == 1
    pair.connect()
    pair.a.send(message(3))
    pair.flush()
    assert pair.owner_a.events[1:] == [("delivered", "1")]
    assert pair.owner_b.of("received") == ["1", "3"] and pair.b.describe()["duplicates_dropped"] == 0


def test_at_the_deadline_a_written_stanza_the_peer_never_had_bounces_at_its_next_resume_and_is_never_sent():
    """The bytes were lost in flight: the peer's <resume/> shows it never counted them, so the stanza bounces
    (certainly undelivered) and the peer skips its number."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))  # written, never pumped: lost in flight
    pair.cut()
    pair.clock.advance(60.0)
    assert pair.owner_a.events == []
    pair.connect()
    pair.a.send(message(2))
    pair.flush()
    pair.clock.advance(1.0)
    pair.flush()
    assert pair.owner_a.events == [("undeliverable", "1", "remote-server-timeout"), ("delivered", "2")]
    assert pair.owner_b.of("received") == ["2"]


def test_a_restarted_peer_cannot_settle_a_frozen_stanza_so_it_is_reported_in_doubt():
    """Frozen at the deadline, then the peer restarts: its old incarnation may have had the stanza."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()
    pair.cut()
    pair.clock.advance(60.0)
    from guard.edges.link.link import Link

    from .pairs import RecordingOwner

    pair.owner_b = RecordingOwner()
    pair.b = Link(pair.owner_b, "half-b", "half-a", pair.clock, LinkSettings(), session="sessionc")
    pair.b.start()
    pair.connect()
    assert pair.owner_a.events == [("in_doubt", "1")] and pair.owner_b.of("received") == []


def test_an_idle_link_with_a_live_peer_stays_up():
    """Keepalive requests are answered by a live peer: after ten idle minutes the link is still up."""
    pair = JoinedHalves(LinkSettings(ack_interval=1.0, keepalive=30.0, ack_timeout=5.0))
    pair.connect()
    for _ in range(600):
        pair.clock.advance(1.0)
        pair.flush()
    assert pair.a.describe()["state"] == "up" and pair.a.describe()["connections"] == 1
    stream_a, _ = pair.streams
    assert not stream_a.closing


def test_a_stanza_the_peer_refuses_is_bounced_once_and_never_resent():
    """Half B's parser refuses stanza 2 (larger than B allows): B names it in its stream error, A bounces it,
    counts 1 as delivered, and the next connection carries 3 without ever writing 2 again."""
    pair = JoinedHalves(LinkSettings(ack_every=1000), limits_b=ParserLimits(stanza_bytes=300))
    pair.connect()
    _, stream_b = pair.streams
    written_by_b = []
    write = stream_b.transport.write
    stream_b.transport.write = lambda data: (written_by_b.append(data), write(data))
    pair.a.send(message(1))
    pair.a.send(message(2, body="x" * 400))
    pair.a.send(message(3))
    pair.flush()
    assert b"<refused xmlns='urn:xmpp-guard:link:0' stanza='2'/>" in b"".join(written_by_b)
    assert pair.owner_a.events == [("delivered", "1"), ("undeliverable", "2", "not-acceptable")]
    pair.cut()
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    assert pair.owner_b.of("received") == ["1", "3"]
    assert pair.owner_a.events[2:] == [("delivered", "3")]
    assert pair.a.describe()["refused_by_peer"] == 1 and pair.b.describe()["received"] == 3


def test_reconnections_that_deliver_nothing_do_not_reset_the_deadline():
    """Connections that come and go without the peer settling anything leave the deadline running from the
    first loss: a stanza waiting behind them bounces on time."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))  # written; its acknowledgement never comes
    pair.cut()
    for _ in range(2):
        pair.clock.advance(10.0)
        stream = FakeStream()
        pair.a.stream_authenticated(stream)
        assert stream.written[-1].startswith(b"<message")  # zero handshake: 1 is written again
        pair.clock.advance(10.0)
        pair.a.stream_closed(stream)
    pair.clock.advance(5.0)
    pair.a.send(message(2))
    pair.clock.advance(15.0)  # 60 s since the first loss
    assert pair.owner_a.events == [("undeliverable", "2", "remote-server-timeout")]
    assert pair.a.describe()["in_doubt"] == 1


def test_a_connection_that_makes_progress_stops_the_deadline():
    """The peer acknowledging on a new connection is progress: nothing bounces at the old deadline."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.cut()
    pair.clock.advance(30.0)
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    pair.cut()
    pair.a.send(message(2))
    pair.clock.advance(59.0)
    assert pair.owner_a.events == [("delivered", "1")]


def test_a_stanza_larger_than_the_link_carries_is_bounced_and_never_written():
    """serialise(max_bytes) with the link's stanza limit: an oversized stanza bounces at once; the link stays up."""
    pair = JoinedHalves(limits=ParserLimits(stanza_bytes=300))
    pair.connect()
    pair.a.send(message(1, body="x" * 400))
    pair.a.send(message(2))
    pair.flush()
    pair.clock.advance(1.0)
    pair.flush()
    assert pair.owner_a.events == [("undeliverable", "1", "not-acceptable"), ("delivered", "2")]
    assert pair.owner_b.of("received") == ["2"] and pair.a.describe()["connections"] == 1


def test_the_buffer_is_bounded_in_bytes_as_well_as_in_stanzas():
    """buffer_bytes counts the serialised size: the stanza that would pass it bounces with resource-constraint."""
    pair = JoinedHalves(LinkSettings(buffer_bytes=1000))
    for number in range(3):
        pair.a.send(message(number, body="y" * 300))
    assert pair.owner_a.events == [("undeliverable", "2", "resource-constraint")]
    assert 0 < pair.a.describe()["buffer_bytes"] <= 1000


def test_the_buffer_keeps_bytes_and_addresses_not_parsed_trees():
    """What waits in the buffer is the serialised stanza and its top element (to bounce it), not its children."""
    pair = JoinedHalves()
    pair.a.send(message(1, body="z" * 100))
    (entry,) = pair.a.outbox.entries
    assert entry.parcel.parcel.stanza.children == [] and entry.parcel.parcel.stanza["id"] == "1"
    assert b"z" * 100 in entry.parcel.data and entry.size == len(entry.parcel.data)


def test_a_draining_link_is_not_held_so_acknowledgements_can_still_be_read():
    """Once the half is stopping nothing read is counted, so congestion no longer pauses the link."""
    pair = JoinedHalves()
    pair.connect()
    pair.a.hold()
    pair.a.drain()
    pair.a.hold()
    assert pair.a.describe()["held"] is False
    pair.b.send(message(1, "juliet@blue.example", "romeo@red.example"))
    pair.flush()
    assert pair.owner_a.events == [] and pair.a.inbox.not_counted == 1


def test_the_buffer_keeps_no_parsed_tree_of_a_relay_parcel_not_even_in_its_ticket():
    """A relay parcel also carries its accepted stanza in its ticket: the buffer keeps none of that tree's children either."""
    from guard.core.pipeline import Direction
    from guard.edges.relay import Parcel as RelayParcel, Ticket

    received = message(1, body="z" * 100).stanza
    ticket = Ticket(received, ("red.example", "blue.example"), 200, Direction("red", "blue"), 0)
    pair = JoinedHalves()
    pair.a.send(RelayParcel(received, received, ticket, 200))
    (entry,) = pair.a.outbox.entries
    kept = entry.parcel.parcel
    assert [kept.stanza.children, kept.original.children, kept.ticket.stanza.children] == [[], [], []]
    assert kept.ticket.stanza["id"] == "1" and received.children != []


class FailingOnce(RecordingOwner):
    """An owner with a fault: taking stanza ``failing`` raises (a bug in the half, not in the stanza)."""

    def __init__(self, failing):
        super().__init__()
        self.failing = failing

    def link_stanza_received(self, element, size):
        if element.getAttribute("id") == self.failing:
            raise RuntimeError("a fault in the half")
        super().link_stanza_received(element, size)


def test_a_stanza_the_owner_fails_to_take_is_refused_not_acknowledged():
    """When half B faults while taking stanza 2, B does not count it (so never acknowledges it as taken): it refuses it,
    A bounces it once, and what follows is carried on the next connection."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.b.owner = pair.owner_b = FailingOnce("2")
    pair.connect()
    for number in (1, 2, 3):
        pair.a.send(message(number))
    pair.flush()
    assert pair.owner_a.events == [("delivered", "1"), ("undeliverable", "2", "not-acceptable")]
    assert pair.b.describe()["received"] == 1
    pair.cut()
    pair.connect()
    pair.clock.advance(1.0)
    pair.flush()
    assert pair.owner_b.of("received") == ["1", "3"]
    assert pair.owner_a.events[2:] == [("delivered", "3")]
