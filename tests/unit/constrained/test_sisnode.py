"""
The lab's STANAG 5066 node simulator (guard/lab/sisnode.py), bytes in and
bytes out on a clock: binds, unit data forwarded by address at a rate and
after a delay, confirms, rejections, flow control, invalid input.
"""

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from guard.edges.constrained.sis import (BindAccepted, BindRejected, BindRequest, DataflowOff, DataflowOn,
                                         PrimitiveReader, UnbindIndication, UnbindRequest, UnidataConfirm,
                                         UnidataIndication, UnidataRejected, UnidataRequest, encode,
                                         largest_primitive, parse_address)
from guard.edges.constrained.sis import ServiceType
from guard.lab.sisnode import SisNetwork, main

A, B = parse_address("0.0.6.1"), parse_address("0.0.6.2")


class Session:
    """A SIS client seen from outside: the bytes it writes, the primitives the node answers."""

    def __init__(self, node, sap=None):
        self.protocol = node.factory().buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.reader = PrimitiveReader(largest_primitive(node.mtu))
        if sap is not None:
            self.say(BindRequest(sap))
            assert self.heard() == [BindAccepted(sap, node.mtu)]

    def say(self, *primitives):
        self.protocol.dataReceived(b"".join(encode(p) for p in primitives))

    def heard(self):
        out = self.reader.feed(self.transport.value())
        self.transport.clear()
        return out


def network(**options):
    clock = Clock()
    net = SisNetwork(clock, **options)
    return clock, net, net.node("0.0.6.1"), net.node("0.0.6.2")


def test_unit_data_reaches_the_bound_sap_after_rate_and_delay_and_the_sender_gets_a_confirm():
    """At 1,200 bit/s and 1 s one way, 150 bytes take 1 s to send and arrive at 2 s: the receiver gets an
    S_UNIDATA_INDICATION naming the source, then the sender an S_UNIDATA_REQUEST_CONFIRM echoing the unit."""
    clock, net, node_a, node_b = network(rate=1200, one_way_delay=1.0)
    sender, receiver = Session(node_a, 2), Session(node_b, 2)
    sender.say(UnidataRequest(2, B, b"u" * 150))
    clock.advance(1.99)
    assert receiver.heard() == [] and sender.heard() == []
    clock.advance(0.01)
    assert receiver.heard() == [UnidataIndication(2, B, 2, A, b"u" * 150)]
    assert sender.heard() == [UnidataConfirm(2, B, b"u" * 150)]


def test_units_in_one_direction_go_one_at_a_time_at_the_rate():
    """Three units of 150 bytes at 1,200 bit/s arrive 1 s apart, in order."""
    clock, net, node_a, node_b = network(rate=1200)
    sender, receiver = Session(node_a, 2), Session(node_b, 2)
    sender.say(*(UnidataRequest(2, B, bytes([n]) * 150) for n in range(3)))
    arrivals = []
    for second in range(1, 4):
        clock.advance(1.0)
        arrivals.append([unit.data[0] for unit in receiver.heard()])
    assert arrivals == [[0], [1], [2]]


def test_a_sap_is_bound_once_and_a_refused_sap_is_rejected():
    """A second bind of the same SAP is rejected (already allocated); a SAP the node refuses is invalid; after
    the first client unbinds, the SAP can be bound again."""
    clock = Clock()
    net = SisNetwork(clock)
    node = net.node("0.0.6.1", refused_saps=[9])
    first = Session(node, 2)
    second = Session(node)
    second.say(BindRequest(2))
    assert second.heard() == [BindRejected(3)]
    refused = Session(node)
    refused.say(BindRequest(9))
    assert refused.heard() == [BindRejected(2)]
    first.say(UnbindRequest())
    assert first.transport.disconnecting
    again = Session(node)
    again.say(BindRequest(2))
    assert again.heard() == [BindAccepted(2, 2048)]


@pytest.mark.parametrize("request_, reason", [
    (UnidataRequest(2, parse_address("0.0.9.9"), b"x"), 3),
    (UnidataRequest(7, B, b"x"), 2),
    (UnidataRequest(2, B, b"x" * 2049), 4),
    (UnidataRequest(2, B, b"x", service=ServiceType(mode=2)), 5),
])
def test_unit_data_that_cannot_be_delivered_is_rejected_with_its_reason(request_, reason):
    """Unknown address: not responding; SAP not bound there: not bound; over the MTU; not ARQ."""
    clock, net, node_a, node_b = network()
    sender, _ = Session(node_a, 2), Session(node_b, 2)
    sender.protocol.reader = PrimitiveReader(largest_primitive(4096))  # let the oversized request reach the node
    sender.say(request_)
    clock.advance(0)
    assert sender.heard() == [UnidataRejected(reason, request_.destination_sap, request_.destination, request_.data)]


def test_a_channel_taken_down_rejects_what_is_on_it_and_what_comes_after():
    """Units in flight when the channel goes down and units sent while it is down are rejected as 'destination
    node not responding'; once it is up again units pass."""
    clock, net, node_a, node_b = network(one_way_delay=1.0)
    sender, receiver = Session(node_a, 2), Session(node_b, 2)
    sender.say(UnidataRequest(2, B, b"one"))
    net.set_down(node_a, node_b)
    sender.say(UnidataRequest(2, B, b"two"))
    clock.advance(1.0)
    assert sender.heard() == [UnidataRejected(3, 2, B, b"two"), UnidataRejected(3, 2, B, b"one")]
    net.set_down(node_a, node_b, down=False)
    sender.say(UnidataRequest(2, B, b"three"))
    clock.advance(1.0)
    assert receiver.heard() == [UnidataIndication(2, B, 2, A, b"three")]


def test_the_node_says_dataflow_off_over_half_its_queue_and_rejects_what_does_not_fit():
    """With 1,000 bytes of queue: past 500 held the client hears S_DATAFLOW_OFF; a unit that would pass 1,000 is
    rejected; when the queue drains below 250, S_DATAFLOW_ON."""
    clock = Clock()
    net = SisNetwork(clock, rate=8000)
    node_a, node_b = net.node("0.0.6.1", queue_bytes=1000), net.node("0.0.6.2")
    sender, receiver = Session(node_a, 2), Session(node_b, 2)
    sender.say(*(UnidataRequest(2, B, bytes([n]) * 300) for n in range(4)))
    assert sender.heard() == [DataflowOff(), UnidataRejected(3, 2, B, bytes([3]) * 300)]
    assert node_a.held == 900
    clock.advance(0.3)
    heard = sender.heard()
    assert heard == [UnidataConfirm(2, B, bytes([0]) * 300)]
    clock.advance(0.3)
    assert sender.heard() == [UnidataConfirm(2, B, bytes([1]) * 300)]
    clock.advance(0.3)
    assert sender.heard() == [DataflowOn(), UnidataConfirm(2, B, bytes([2]) * 300)]
    assert len(receiver.heard()) == 3


def test_an_invalid_primitive_ends_the_session_with_an_unbind_indication():
    """Bad bytes, unit data before a bind, or a frame larger than one MTU's request: S_UNBIND_INDICATION (too
    many invalid primitives), the connection closes and the SAP is free."""
    clock, net, node_a, _ = network()
    for wire in (b"\x90\xea", encode(UnidataRequest(2, B, b"x")),
                 b"\x90\xeb\x00" + (12 + 2048 + 1).to_bytes(2, "big")):
        session = Session(node_a)
        session.protocol.dataReceived(wire)
        assert session.heard() == [UnbindIndication(3)] and session.transport.disconnecting
    bound = Session(node_a, 2)
    bound.protocol.dataReceived(b"\x00")
    assert bound.heard() == [UnbindIndication(3)] and 2 not in node_a.bound


def test_units_for_a_client_that_left_are_rejected_as_not_bound():
    """A unit on its way to a SAP whose client disconnects is rejected when it arrives (SAP not bound)."""
    clock, net, node_a, node_b = network(one_way_delay=0.5)
    sender, receiver = Session(node_a, 2), Session(node_b, 2)
    sender.say(UnidataRequest(2, B, b"late"))
    receiver.protocol.connectionLost(None)
    clock.advance(0.5)
    assert sender.heard() == [UnidataRejected(2, 2, B, b"late")]


def test_the_command_line_refuses_a_node_off_loopback():
    """--node must be ADDRESS=HOST:PORT on 127.0.0.0/8."""
    with pytest.raises(SystemExit):
        main(["--node", "0.0.6.1=192.0.2.1:5066"])
    with pytest.raises(SystemExit):
        main(["--node", "0.0.6.1"])
