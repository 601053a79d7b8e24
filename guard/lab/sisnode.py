"""
A STANAG 5066 node simulator for the lab: two or more nodes in one process,
each with a SIS port (TCP, loopback) where clients bind to SAPs, forwarding
unit data between nodes by address over a simulated HF channel.

- A client binds one SAP (0-15) per SIS connection; a SAP already bound, or
  one the node refuses (``refused_saps``), gets S_BIND_REJECTED.  The node
  accepts with its MTU (S_BIND_ACCEPTED).
- S_UNIDATA_REQUEST (ARQ only) to a known node goes over the channel: each
  direction between two nodes carries one unit at a time at ``rate`` bits per
  second (none: instantly) and arrives ``one_way_delay`` seconds later.  It is
  delivered as S_UNIDATA_INDICATION if the destination SAP is bound then,
  and the sender gets S_UNIDATA_REQUEST_CONFIRM (client delivery, the whole
  U_PDU echoed); otherwise S_UNIDATA_REQUEST_REJECTED: destination SAP not
  bound, destination node not responding (unknown address, or the channel
  is down), U_PDU larger than the MTU, not ARQ.
- What a node holds for its channel is bounded in bytes (``queue_bytes``):
  over ``queue_bytes / 2`` the sending client hears S_DATAFLOW_OFF (and
  S_DATAFLOW_ON below a quarter); a unit that does not fit is rejected.
- An invalid primitive gets S_UNBIND_INDICATION (too many invalid
  primitives) and the SIS connection closes; the reader holds at most one
  frame (an S_UNIDATA_REQUEST of one MTU).

Run it::

    python -m guard.lab.sisnode --node 0.0.6.1=127.0.6.1:5066 --node 0.0.6.2=127.0.6.2:5066 --rate 1200 --delay 1
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Sequence

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from guard.edges.constrained.sis import (ANNEX_A_MTU, BIND_INVALID_SAP, BIND_SAP_TAKEN, MODE_ARQ,
                                         MODE_DEFAULT, REJECTED_MODE, REJECTED_NOT_RESPONDING,
                                         REJECTED_SAP_NOT_BOUND, REJECTED_TOO_LARGE, SAP_COUNT,
                                         UNBIND_INVALID_PRIMITIVES, UNIDATA_REQUEST_FIELDS, BindAccepted,
                                         BindRejected, BindRequest, DataflowOff, DataflowOn, PrimitiveReader,
                                         SisError, UnbindIndication, UnbindRequest, UnidataConfirm,
                                         UnidataIndication, UnidataRejected, UnidataRequest, check_mtu, encode,
                                         format_address, parse_address)

log = Logger()

DEFAULT_QUEUE_BYTES = 256 * 1024
TEXT_INVALID = "an invalid primitive"


@dataclass
class Unit:
    """A U_PDU on its way: who sent it, where to, and when it arrives."""

    source: "SisNode"
    source_sap: int
    destination: int
    destination_sap: int
    data: bytes
    priority: int
    client: "NodeSession"
    call: object = None


@dataclass
class SisNetwork:
    """The nodes and the channel between them (one unit at a time per direction, at ``rate``, after a delay)."""

    clock: object
    rate: int | None = None  # bits per second; None: no serialisation time
    one_way_delay: float = 0.0
    nodes: dict = field(default_factory=dict)
    down: set = field(default_factory=set)  # frozensets of two node addresses whose channel is down
    busy_until: dict = field(default_factory=dict)  # (from, to) -> when the channel is free
    pending: set = field(default_factory=set)  # units on the channel (their delayed calls)

    def stop(self) -> None:
        """Drop every unit still on the channel (the simulator stops)."""
        for call in list(self.pending):
            if call.active():
                call.cancel()
        self.pending.clear()

    def node(self, address: str, mtu: int = ANNEX_A_MTU, queue_bytes: int = DEFAULT_QUEUE_BYTES,
             refused_saps: Sequence[int] = ()) -> "SisNode":
        node = SisNode(self, parse_address(address), mtu, queue_bytes, frozenset(refused_saps))
        if node.address in self.nodes:
            raise ValueError(f"node {address} exists")
        self.nodes[node.address] = node
        return node

    def set_down(self, a: "SisNode", b: "SisNode", down: bool = True) -> None:
        """Take the channel between two nodes down (units are rejected: destination not responding) or up."""
        pair = frozenset((a.address, b.address))
        if down:
            self.down.add(pair)
        else:
            self.down.discard(pair)

    def carry(self, unit: Unit) -> float | None:
        """Put ``unit`` on the channel: when it arrives (from now), or None if it cannot go."""
        destination = self.nodes.get(unit.destination)
        if destination is None or frozenset((unit.source.address, unit.destination)) in self.down:
            return None
        now = self.clock.seconds()
        key = (unit.source.address, unit.destination)
        start = max(now, self.busy_until.get(key, now))
        sending = 0.0 if self.rate is None else len(unit.data) * 8.0 / self.rate
        self.busy_until[key] = start + sending
        return start + sending + self.one_way_delay - now


class SisNode:
    """One node: its SIS sessions by SAP, the bytes it holds for the channel."""

    def __init__(self, network: SisNetwork, address: int, mtu: int, queue_bytes: int, refused_saps: frozenset):
        check_mtu(mtu)
        self.network = network
        self.address = address
        self.mtu = mtu
        self.queue_bytes = queue_bytes
        self.refused_saps = refused_saps
        self.bound: dict[int, NodeSession] = {}
        self.held = 0
        self.delivered = 0
        self.rejected = 0
        self.port = None

    def __repr__(self):
        return f"SisNode({format_address(self.address)})"

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: NodeSession(self))

    def listen(self, reactor, port: int, interface: str):
        """Open the node's SIS port (a Deferred firing with the listening port)."""

        def listening(listening_port):
            self.port = listening_port
            return listening_port

        return TCP4ServerEndpoint(reactor, port, interface=interface).listen(self.factory()).addCallback(listening)

    # what sessions ask
    def bind(self, session: "NodeSession", request: BindRequest):
        if request.sap in self.refused_saps or not 0 <= request.sap < SAP_COUNT:
            return BindRejected(BIND_INVALID_SAP)
        if request.sap in self.bound:
            return BindRejected(BIND_SAP_TAKEN)
        self.bound[request.sap] = session
        return BindAccepted(request.sap, self.mtu)

    def unbind(self, session: "NodeSession"):
        if session.sap is not None and self.bound.get(session.sap) is session:
            del self.bound[session.sap]

    def send(self, session: "NodeSession", request: UnidataRequest) -> None:
        reason = None
        if len(request.data) > self.mtu:
            reason = REJECTED_TOO_LARGE
        elif request.service.mode not in (MODE_ARQ, MODE_DEFAULT):
            reason = REJECTED_MODE
        elif self.held + len(request.data) > self.queue_bytes:
            reason = REJECTED_NOT_RESPONDING
        if reason is None:
            unit = Unit(self, session.sap, request.destination, request.destination_sap, request.data,
                        request.priority, session)
            delay = self.network.carry(unit)
            if delay is None:
                reason = REJECTED_NOT_RESPONDING
        if reason is not None:
            self.rejected += 1
            session.say(UnidataRejected(reason, request.destination_sap, request.destination, request.data))
            return
        self.held += len(unit.data)
        session.units_in_flight += 1
        if self.held > self.queue_bytes // 2 and not session.told_off:
            session.told_off = True
            session.say(DataflowOff())
        call = self.network.clock.callLater(delay, self._arrive, unit)
        self.network.pending.add(call)
        unit.call = call

    def _arrive(self, unit: Unit) -> None:
        self.network.pending.discard(unit.call)
        self.held -= len(unit.data)
        sender = unit.client
        sender.units_in_flight -= 1
        if sender.told_off and self.held <= self.queue_bytes // 4:
            sender.told_off = False
            sender.say(DataflowOn())
        destination = self.network.nodes.get(unit.destination)
        if destination is None or frozenset((self.address, unit.destination)) in self.network.down:
            reason = REJECTED_NOT_RESPONDING
        else:
            reason = destination.deliver(unit)
        if reason is None:
            self.delivered += 1
            sender.say(UnidataConfirm(unit.destination_sap, unit.destination, unit.data))
        else:
            self.rejected += 1
            sender.say(UnidataRejected(reason, unit.destination_sap, unit.destination, unit.data))

    def deliver(self, unit: Unit) -> int | None:
        """Hand ``unit`` to the client bound to its SAP here: None, or the reason it was rejected."""
        session = self.bound.get(unit.destination_sap)
        if session is None:
            return REJECTED_SAP_NOT_BOUND
        session.say(UnidataIndication(unit.destination_sap, self.address, unit.source_sap, unit.source.address,
                                      unit.data, unit.priority))
        return None


class NodeSession(Protocol):
    """One SIS connection to a node: bind, unit data, unbind; an invalid primitive ends it."""

    def __init__(self, node: SisNode):
        self.node = node
        self.sap: int | None = None
        self.reader = PrimitiveReader(UNIDATA_REQUEST_FIELDS + node.mtu)
        self.told_off = False
        self.units_in_flight = 0
        self.gone = False

    def say(self, primitive) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(encode(primitive))

    def dataReceived(self, data):
        try:
            primitives = self.reader.feed(data)
        except SisError as problem:
            self._refuse(str(problem))
            return
        for primitive in primitives:
            if self.gone:
                return
            kind = type(primitive)
            if kind is BindRequest and self.sap is None:
                answer = self.node.bind(self, primitive)
                if isinstance(answer, BindAccepted):
                    self.sap = primitive.sap
                self.say(answer)
            elif kind is UnbindRequest and self.sap is not None:
                self.node.unbind(self)
                self.sap = None
                self.gone = True
                self.transport.loseConnection()
            elif kind is UnidataRequest and self.sap is not None:
                self.node.send(self, primitive)
            else:
                self._refuse(f"{kind.__name__} {'before a bind' if self.sap is None else 'out of place'}")

    def _refuse(self, text: str) -> None:
        log.info("SIS node {node}: {text}; session ended", node=format_address(self.node.address), text=text)
        self.say(UnbindIndication(UNBIND_INVALID_PRIMITIVES))
        self.node.unbind(self)
        self.gone = True
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.gone = True
        self.node.unbind(self)


def _node_argument(text: str) -> tuple[str, str, int]:
    address, equals, where = text.partition("=")
    host, colon, port = where.rpartition(":")
    if not equals or not colon or not port.isdigit():
        raise argparse.ArgumentTypeError("a node is ADDRESS=HOST:PORT, e.g. 0.0.6.1=127.0.6.1:5066")
    parse_address(address)
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError("the lab listens on loopback only (127.0.0.0/8)")
    return address, host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.lab.sisnode",
                                     description="STANAG 5066 SIS nodes on loopback, forwarding unit data between "
                                                 "them (a lab simulator, not a radio).")
    parser.add_argument("--node", action="append", type=_node_argument, required=True,
                        help="ADDRESS=HOST:PORT, e.g. 0.0.6.1=127.0.6.1:5066 (repeat for each node)")
    parser.add_argument("--rate", type=int, default=None, help="channel rate in bits per second (default: none)")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds (default 0)")
    parser.add_argument("--mtu", type=int, default=ANNEX_A_MTU, help=f"U_PDU MTU in bytes (default {ANNEX_A_MTU})")
    arguments = parser.parse_args(argv)

    def serve(reactor):
        """Listen on every node's SIS port until the process is stopped (the reactor is given by task.react)."""
        network = SisNetwork(reactor, arguments.rate, arguments.delay)
        for address, host, port in arguments.node:
            network.node(address, mtu=arguments.mtu).listen(reactor, port, host)
            print(f"node {address}: SIS port {host}:{port}", flush=True)
        return defer.Deferred()  # never fires: SIGINT or SIGTERM stops the reactor

    task.react(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
