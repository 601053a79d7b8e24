"""The link's counting: retransmission buffer and duplicate suppression, no I/O."""

import pytest

from guard.edges.link.ledger import Inbox, LinkFault, Outbox
from guard.edges.link.wire import Resume


def test_outbox_numbers_stanzas_and_settles_them_in_order_on_acknowledgement():
    """Stanzas get 1, 2, 3 and an acknowledgement of 2 settles the first two, oldest first."""
    outbox = Outbox(10, session="mine")
    assert [outbox.add(name) for name in "abc"] == [1, 2, 3]
    outbox.rewind()
    for entry in outbox.unsent():
        outbox.mark_sent(entry.sequence)
    assert outbox.acknowledge(2) == ["a", "b"]
    assert len(outbox) == 1 and outbox.unacknowledged == 1


def test_outbox_is_bounded():
    """A full buffer refuses the next stanza instead of growing."""
    outbox = Outbox(2)
    assert outbox.add("a") == 1 and outbox.add("b") == 2
    assert outbox.add("c") is None


def test_outbox_sends_unacknowledged_stanzas_again_after_rewind():
    """A new connection starts from the oldest unacknowledged stanza."""
    outbox = Outbox(10)
    for name in "abcd":
        outbox.add(name)
    outbox.rewind()
    for entry in outbox.unsent():
        outbox.mark_sent(entry.sequence)
    outbox.acknowledge(1)
    assert outbox.rewind() == 2
    assert [entry.parcel for entry in outbox.unsent()] == ["b", "c", "d"]


def test_outbox_refuses_an_acknowledgement_of_stanzas_never_sent():
    """The peer cannot acknowledge what was never written: the connection is faulty."""
    outbox = Outbox(10)
    outbox.add("a")
    with pytest.raises(LinkFault):
        outbox.acknowledge(1)


def test_outbox_ignores_a_resume_about_another_session():
    """A peer that counted a previous incarnation of this half settles nothing."""
    outbox = Outbox(10, session="now")
    outbox.add("a")
    outbox.rewind()
    outbox.mark_sent(1)
    assert not outbox.resume_from(Resume("peer", 1, "before", 1))
    assert outbox.resume_from(Resume("peer", 1, "now", 1)).delivered == ["a"]


def test_outbox_gives_up_on_everything_at_stop_unwritten_refused_written_in_doubt():
    """At stop, what was never written is certainly undelivered; what was written is in doubt."""
    outbox = Outbox(10)
    for name in "abc":
        outbox.add(name)
    outbox.rewind()
    outbox.mark_sent(1)
    settlement = outbox.take_all()
    assert (settlement.delivered, settlement.refused, settlement.in_doubt) == ([], ["b", "c"], ["a"])
    assert len(outbox) == 0 and outbox.bytes == 0


def test_inbox_drops_what_it_counted_before_a_reconnect():
    """The peer resends 2 and 3 after a cut although 2 arrived: 2 is a duplicate, 3 is new."""
    inbox = Inbox()
    inbox.resume(Resume("peer", 1, None, 0))
    assert [inbox.accept() for _ in range(2)] == [True, True]
    inbox.connection_over()
    inbox.resume(Resume("peer", 2, None, 0))
    assert [inbox.accept() for _ in range(2)] == [False, True]
    assert inbox.received == 3 and inbox.duplicates == 1


def test_inbox_starts_afresh_for_a_new_peer_session():
    """A restarted peer numbers from 1 again and nothing of it is a duplicate."""
    inbox = Inbox()
    inbox.resume(Resume("first", 1, None, 0))
    inbox.accept()
    inbox.resume(Resume("second", 1, None, 0))
    assert inbox.accept() is True


def test_inbox_skips_numbers_the_peer_gave_up_on():
    """A gap in the numbering (stanzas bounced while down) is skipped, not waited for."""
    inbox = Inbox()
    inbox.resume(Resume("peer", 1, None, 0))
    inbox.accept()
    inbox.resume(Resume("peer", 5, None, 0))
    assert inbox.accept() is True
    assert inbox.received == 5 and inbox.skipped == 3


def test_inbox_refuses_a_stanza_before_resume():
    """Without <resume/> the numbering is unknown, so the stanza cannot be counted."""
    with pytest.raises(LinkFault):
        Inbox().accept()


def test_outbox_counts_hold_across_sends_acknowledgements_and_rewinds():
    """queued, unacknowledged and unsent agree with a plain count at every step."""
    outbox = Outbox(100)
    for name in range(10):
        outbox.add(name)
    outbox.rewind()
    for entry in outbox.unsent()[:6]:
        outbox.mark_sent(entry.sequence)
    assert (outbox.queued, outbox.unacknowledged) == (4, 6)
    outbox.acknowledge(3)
    assert (outbox.queued, outbox.unacknowledged, len(outbox)) == (4, 3, 7)
    assert outbox.rewind() == 4
    assert [entry.sequence for entry in outbox.unsent()] == [4, 5, 6, 7, 8, 9, 10]
    assert (outbox.queued, outbox.unacknowledged) == (7, 3)


def test_while_not_taking_no_stanza_is_counted_and_after_one_passed_over_none_on_that_connection_is():
    """Over the memory budget the inbox counts nothing new; taking again does not count the rest of a connection on
    which one was passed over (its numbers would skip it), only a new connection's, from the peer's resume."""
    inbox = Inbox()
    inbox.resume(Resume("peer", 1, None, 0))
    assert inbox.accept() is True
    inbox.stop_taking()
    assert (inbox.accept(), inbox.received, inbox.not_counted) == (False, 1, 1)
    inbox.take_again()
    assert (inbox.accept(), inbox.received, inbox.passed_over) == (False, 1, True)
    inbox.connection_over()
    inbox.resume(Resume("peer", 2, None, 0))
    assert (inbox.accept(), inbox.received, inbox.passed_over) == (True, 2, False)
