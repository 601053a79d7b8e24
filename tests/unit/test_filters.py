"""
The byte filter chain (guard/edges/filters.py): order by priority, passing,
holding back and refusing, the two filters the guard ships, and a
transforming filter that works both ways between two real streams.
"""

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from guard.edges.filters import IN, OUT, ByteCount, FilterChain, RateBudget, Refused
from guard.edges.limits import Limits

from .streams.test_inbound_bytes import HEADER, connect, written


def test_filters_run_highest_priority_first_and_in_order_of_addition_within_a_priority():
    """Priorities order the chain (highest first); equal priorities keep the order they were added in."""
    chain = FilterChain()
    chain.add(IN, lambda data: data + b"a", priority=0)
    chain.add(IN, lambda data: data + b"b", priority=10)
    chain.add(IN, lambda data: data + b"c", priority=0)
    chain.add(IN, lambda data: data + b"d", priority=-5)
    assert chain.incoming(b">") == b">bacd"
    assert chain.outgoing(b">") == b">"


def test_a_filter_returning_none_stops_the_chain():
    """Returning None holds the bytes back: no later filter sees them and the chain answers None."""
    chain = FilterChain()
    seen = []
    chain.add(OUT, lambda data: None, priority=1)
    chain.add(OUT, seen.append, priority=0)
    assert chain.outgoing(b"x") is None and seen == []


def test_a_removed_filter_no_longer_runs():
    """remove takes a filter out of its direction's chain; removing one that is not there changes nothing."""
    chain = FilterChain()
    upper = bytes.upper
    chain.add(IN, upper)
    chain.remove(IN, upper)
    chain.remove(OUT, upper)
    assert chain.incoming(b"x") == b"x" and chain.filters(IN) == []


def test_a_refusal_carries_its_condition_and_text():
    """Refused names the stream error condition and the guard's own text."""
    chain = FilterChain()

    def refuse(data):
        raise Refused("policy-violation", "no")

    chain.add(IN, refuse)
    with pytest.raises(Refused) as refusal:
        chain.incoming(b"x")
    assert (refusal.value.condition, refusal.value.text) == ("policy-violation", "no")


def test_byte_count_counts_wire_bytes_in_and_out():
    """Counting runs first on the way in and last on the way out, so it counts what is on the wire."""
    chain = FilterChain()
    count = ByteCount().install(chain)
    chain.add(IN, lambda data: data[:1], priority=0)
    chain.add(OUT, lambda data: data * 2, priority=0)
    chain.incoming(b"abcd")
    chain.outgoing(b"xyz")
    assert count.describe() == {"bytes_in": 4, "bytes_out": 6}


class Holds:
    """Stands for a stream as the rate filter sees it: records holds, releases and timers."""

    def __init__(self, clock):
        self.clock = clock
        self.events = []

    def hold(self, reason):
        self.events.append(("hold", reason))

    def release(self, reason):
        self.events.append(("release", reason))

    def schedule(self, name, seconds, function, *args):
        self.events.append(("schedule", name, seconds))
        self.clock.callLater(seconds, function, *args)


def test_the_rate_budget_holds_the_stream_for_as_long_as_the_excess_takes():
    """Over the burst, the stream is held and released after excess/rate seconds; the bytes still pass."""
    clock = Clock()
    stream = Holds(clock)
    budget = RateBudget(stream, clock, rate=1000, burst=1000, grace=5)
    assert budget(b" " * 1000) == b" " * 1000 and stream.events == []
    assert budget(b" " * 500) == b" " * 500
    assert stream.events == [("hold", "rate"), ("schedule", "rate", 0.5)]
    clock.advance(0.5)
    assert stream.events[-1] == ("release", "rate")


def test_the_rate_budget_refuses_a_peer_over_it_past_the_grace():
    """A peer that stays over its budget for longer than the grace is refused with policy-violation."""
    clock = Clock()
    budget = RateBudget(Holds(clock), clock, rate=100, burst=100, grace=1)
    budget(b" " * 200)
    clock.advance(0.5)
    budget(b" " * 200)
    clock.advance(0.6)
    with pytest.raises(Refused) as refusal:
        budget(b" " * 200)
    assert refusal.value.condition == "policy-violation"


def test_the_inbound_stream_counts_its_bytes_in_and_out():
    """Every inbound stream has a byte count in its filter chain: the header in, our answer out."""
    stream, transport, _, _ = connect()
    stream.dataReceived(HEADER)
    assert stream.byte_count.describe() == {"bytes_in": len(HEADER), "bytes_out": len(transport.value())}


def test_the_inbound_rate_limit_is_a_filter_in_the_stream_chain():
    """The inbound byte budget runs as a filter of the stream's "in" chain, after the byte count."""
    stream, _, _, _ = connect()
    kinds = [type(getattr(each, "__self__", each)).__name__ for each in stream.filters.filters(IN)]
    assert kinds == ["ByteCount", "RateBudget"]


class Mask:
    """A test-only transforming filter: every byte XOR 0x5A, the same both ways (as compression would be, symmetric)."""

    def __call__(self, data):
        return bytes(byte ^ 0x5A for byte in data)


def test_a_transforming_filter_works_both_ways():
    """
    With a transforming filter in both chains of an inbound stream, a peer
    that speaks the transformed bytes negotiates as any other: what arrives
    is undone before the parser and what leaves is transformed after the
    serialiser.
    """
    stream, transport, _, _ = connect()
    mask = Mask()
    stream.filters.add(IN, mask, priority=500)
    stream.filters.add(OUT, mask, priority=500)
    stream.dataReceived(mask(HEADER))
    on_the_wire = transport.value()
    assert b"stream:stream" not in on_the_wire
    answer = mask(on_the_wire).decode()
    assert "from='blue.example' to='red.example'" in answer and answer.endswith("</stream:features>")
    transport.clear()
    stream.dataReceived(mask(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"))
    assert mask(transport.value()) == b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert stream.byte_count.bytes_in == len(HEADER) + len(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")


def test_bytes_sent_without_the_transform_are_refused_by_the_parser():
    """The transform really sits before the parser: plain bytes, once transformed, are not XML and close the stream."""
    stream, transport, _, _ = connect()
    stream.filters.add(IN, Mask(), priority=500)
    stream.dataReceived(HEADER)
    assert transport.disconnecting
    assert stream.closing
