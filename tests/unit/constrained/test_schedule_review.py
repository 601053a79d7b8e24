"""Review of the bearer schedule (issue 13): a stanza type outside RFC 6120/6121 is refused for every kind of stanza
(fail closed), and the bearer's backlog in seconds is what the link's ack timeout waits for."""

import pytest
from twisted.words.xish import domish

from guard.core.constrained.schedule import (REFUSED, UNKNOWN_TYPE, BearerSchedule, Outgoing, ScheduleLimits,
                                             classify)


def stanza(name, kind_type):
    element = domish.Element(("jabber:server", name))
    element["from"], element["to"], element["id"] = "romeo@red.example/a", "juliet@blue.example/b", "x1"
    if kind_type is not None:
        element["type"] = kind_type
    return element


def offered(element, schedule=None, now=0.0):
    schedule = schedule or BearerSchedule(1200, "all", 0.25)
    return schedule.offer(Outgoing(object(), element, 100, element["from"], element["to"], classify(element)), now)


@pytest.mark.parametrize("name", ["message", "presence", "iq"])
def test_a_type_outside_the_rfcs_is_refused_for_every_kind_of_stanza(name):
    """A message, presence or IQ of type "bogus" is refused (an unknown IQ type is no result to carry without a deadline)."""
    result = offered(stanza(name, "bogus"))
    assert (result.outcome, result.reason) == (REFUSED, UNKNOWN_TYPE)


@pytest.mark.parametrize("name, kind_type", [("message", None), ("message", "headline"), ("iq", "result"),
                                             ("iq", "get"), ("presence", None), ("presence", "probe")])
def test_every_type_the_rfcs_define_is_still_taken(name, kind_type):
    """The types RFC 6120/6121 define (and the default of an absent type) are queued as before."""
    assert offered(stanza(name, kind_type)).outcome == "queued"


def test_the_backlog_is_the_rate_debt_of_what_left_in_seconds():
    """1,500 bytes handed out at 1,200 bit/s leave a backlog of 10 s, falling with time to zero."""
    schedule = BearerSchedule(1200, "all", 0.0, ScheduleLimits())
    element = stanza("message", "chat")
    schedule.offer(Outgoing(object(), element, 1500, element["from"], element["to"], "chat"), 0.0)
    assert schedule.backlog_seconds(0.0) == 0.0
    assert schedule.next_due(0.0).item is not None
    assert schedule.backlog_seconds(0.0) == pytest.approx(10.0)
    assert schedule.backlog_seconds(4.0) == pytest.approx(6.0)
    assert schedule.backlog_seconds(11.0) == 0.0
