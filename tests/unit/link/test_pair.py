"""Two halves joined in memory: nothing lost, nothing doubled, across cuts; bounces after the deadline."""

from guard.edges.link.link import LinkSettings

from .pairs import JoinedHalves, message


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


def test_a_restarted_peer_receives_everything_unacknowledged():
    """A new incarnation of B (new session, counters zero) gets every unacknowledged stanza once."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()
    pair.cut()
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
    assert old_a._closing
    pair.a.send(message(1))
    pair.flush()
    assert pair.owner_b.of("received") == ["1"]


def test_stopping_bounces_waiting_stanzas_and_closes_the_connection():
    """A stopping half bounces what is still unacknowledged and says system-shutdown."""
    pair = JoinedHalves(LinkSettings(ack_every=1000))
    pair.connect()
    stream_a, _ = pair.streams
    pair.a.send(message(1))
    pair.a.stop()
    assert pair.owner_a.events == [("undeliverable", "1", "remote-server-timeout")]
    assert stream_a._closing
    pair.a.send(message(2))
    assert pair.owner_a.of("undeliverable") == ["1", "2"]


def test_stanzas_sent_but_unacknowledged_bounce_after_the_deadline_and_are_never_delivered_twice():
    """The XEP-0198 trade-off: an unacknowledged stanza bounces after the deadline even if the peer had it;
    when the link is back, the peer skips its number, so it is never delivered a second time."""
    pair = JoinedHalves(LinkSettings(down_deadline=60.0, ack_every=1000))
    pair.connect()
    pair.a.send(message(1))
    pair.flush()  # B has it, the acknowledgement never comes
    pair.cut()
    pair.clock.advance(60.0)
    assert pair.owner_a.of("undeliverable") == ["1"]
    pair.connect()
    pair.a.send(message(2))
    pair.flush()
    assert pair.owner_b.of("received") == ["1", "2"]


def test_an_idle_link_with_a_live_peer_stays_up():
    """Keepalive requests are answered by a live peer: after ten idle minutes the link is still up."""
    pair = JoinedHalves(LinkSettings(ack_interval=1.0, keepalive=30.0, ack_timeout=5.0))
    pair.connect()
    for _ in range(600):
        pair.clock.advance(1.0)
        pair.flush()
    assert pair.a.describe()["state"] == "up" and pair.a.describe()["connections"] == 1
    stream_a, _ = pair.streams
    assert not stream_a._closing
