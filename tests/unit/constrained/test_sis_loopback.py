"""
The pair link over STANAG 5066 on real loopback sockets: two link halves
(real ``Link``/``LinkStream`` with dictionary compression, no TLS as with
security = "bearer") bind to two simulated SIS nodes through the SIS
endpoints and exchange stanzas as unit data; a node that rejects, an unbind,
a stranger's units and the MTU bound.
"""

import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from guard.edges.constrained.compression import LINK_ELEMENT_ALLOWANCE, install_compression, link_dictionary
from guard.edges.constrained.sis import (BindRequest, SisBindRejected, SisClientEndpoint, SisServerEndpoint,
                                         UnidataRequest, encode, endpoint_options, parse_address,
                                         stanza_bytes_for_mtu)
from guard.edges.link.link import Link, LinkSettings
from guard.edges.link.stream import LinkStreamFactory
from guard.edges.xmlstream import ParserLimits, serialise
from guard.lab.sisnode import SisNetwork

from ..link.pairs import AcceptingCheck, RecordingOwner, message

LIMITS = ParserLimits()
BUDGET = LIMITS.stanza_bytes + LINK_ELEMENT_ALLOWANCE
ADDRESS_A, ADDRESS_B = "0.0.6.1", "0.0.6.2"


class BearerLinkFactory(Factory):
    """The link's streams as a half with security = "bearer" and compression builds them: no TLS, compression
    installed before the connection, the peer proved by its header names (here: accepted)."""

    def __init__(self, link):
        self.inner = LinkStreamFactory(link, AcceptingCheck(), reactor, LIMITS)
        self.dictionary = link_dictionary([link.own_name], [link.peer_name])
        self.streams = []

    def buildProtocol(self, addr):
        stream = self.inner.buildProtocol(addr)
        install_compression(stream.filters, "dictionary", BUDGET, self.dictionary)
        made = stream.connectionMade

        def connection_made():
            made()
            stream.handshakeCompleted()

        lost = stream.connectionLost

        def connection_lost(reason=None):
            stream.lost_with = reason
            lost(reason)

        stream.connectionMade = connection_made
        stream.connectionLost = connection_lost
        stream.lost_with = None
        self.streams.append(stream)
        return stream


async def until(condition, seconds=5.0):
    """Wait on the real reactor until ``condition()`` holds (at most ``seconds``)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await deferLater(reactor, 0.02, lambda: None)
    return condition()


class LinkOverSis(unittest.TestCase):
    timeout = 30

    async def start_nodes(self, mtu=2048, rate=None, delay=0.0):
        self.network = SisNetwork(reactor, rate, delay)
        self.addCleanup(self.network.stop)
        self.node_a = self.network.node(ADDRESS_A, mtu=mtu)
        self.node_b = self.network.node(ADDRESS_B, mtu=mtu)
        self.ports = {}
        for node in (self.node_a, self.node_b):
            port = await node.listen(reactor, 0, "127.0.0.1")
            self.addCleanup(port.stopListening)
            self.ports[node] = port.getHost().port

    def endpoint_string(self, node, peer_address, mtu=2048):
        return f"stanag5066:node=127.0.0.1:port={self.ports[node]}:sap=2:peer={peer_address}:mtu={mtu}"

    def half(self, own, peer):
        owner = RecordingOwner()
        link = Link(owner, own, peer, reactor, LinkSettings(ack_every=1, ack_interval=0.1), session=f"s-{own}",
                    stanza_bytes=LIMITS.stanza_bytes)
        link.start()
        self.addCleanup(link.stop)
        return owner, link, BearerLinkFactory(link)

    async def listening_half(self, mtu=2048):
        owner, link, factory = self.half("half-a", "half-b")
        endpoint = SisServerEndpoint(reactor, endpoint_options(self.endpoint_string(self.node_a, ADDRESS_B, mtu)))
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        self.port_a = port
        return owner, link, factory

    async def dialling_half(self, mtu=2048):
        owner, link, factory = self.half("half-b", "half-a")
        endpoint = SisClientEndpoint(reactor, endpoint_options(self.endpoint_string(self.node_b, ADDRESS_A, mtu)))
        stream = await endpoint.connect(factory)
        self.addCleanup(stream.transport.loseConnection)
        return owner, link, factory, stream

    async def test_stanzas_cross_both_ways_as_unit_data_and_are_acknowledged(self):
        """Half B dials through node 0.0.6.2, half A listens on node 0.0.6.1: both open the link, stanzas go
        both ways, each end delivers them in order and hears them acknowledged; one U_PDU per write."""
        await self.start_nodes(rate=64000, delay=0.05)
        owner_a, link_a, _ = await self.listening_half()
        owner_b, link_b, _, stream_b = await self.dialling_half()
        for number in range(1, 6):
            link_b.send(message(number, sender="juliet@blue.example", recipient="romeo@red.example"))
        for number in range(11, 14):
            link_a.send(message(number))
        self.assertTrue(await until(lambda: len(owner_a.of("received")) == 5 and len(owner_b.of("received")) == 3
                                    and len(owner_a.of("delivered")) == 3 and len(owner_b.of("delivered")) == 5))
        self.assertEqual(owner_a.of("received"), ["1", "2", "3", "4", "5"])
        self.assertEqual(owner_b.of("received"), ["11", "12", "13"])
        transport_b = stream_b.transport
        self.assertTrue(await until(lambda: not transport_b.window.outstanding))
        self.assertEqual(transport_b.units_out, self.node_b.delivered)
        self.assertEqual(self.node_a.rejected + self.node_b.rejected, 0)

    async def test_a_node_that_rejects_unit_data_ends_the_connection_and_nothing_is_taken_as_delivered(self):
        """Nobody is bound at the peer's SAP: the first unit (the stream header) is rejected 'destination SAP ID
        not bound', the dialled stream is lost, and the stanza sent stays unacknowledged (resent later)."""
        await self.start_nodes()
        owner_b, link_b, factory_b, stream_b = await self.dialling_half()
        link_b.send(message(1))
        self.assertTrue(await until(lambda: stream_b.lost_with is not None))
        self.assertGreaterEqual(self.node_b.rejected, 1)
        self.assertIn("destination SAP ID not bound", str(stream_b.lost_with.value))
        self.assertEqual(owner_b.of("delivered"), [])
        self.assertTrue(await until(lambda: 2 not in self.node_b.bound))

    async def test_a_sap_already_bound_refuses_a_second_half(self):
        """A second listener for the same SAP on the same node fails with the node's reason."""
        await self.start_nodes()
        await self.listening_half()
        endpoint = SisServerEndpoint(reactor, endpoint_options(self.endpoint_string(self.node_a, ADDRESS_B)))
        with self.assertRaises(SisBindRejected) as caught:
            await endpoint.listen(Factory())
        self.assertIn("SAP ID already allocated", str(caught.exception))

    async def test_closing_the_dialled_connection_unbinds_and_the_listener_sees_it_end(self):
        """The dialling half closes: its close unit ends the listening half's stream (connection done), its SAP
        is unbound at node B; a new dial opens a new connection that carries stanzas again."""
        await self.start_nodes()
        owner_a, link_a, factory_a = await self.listening_half()
        owner_b, link_b, factory_b, stream_b = await self.dialling_half()
        link_b.send(message(1))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["1"]))
        stream_b.transport.loseConnection()
        first = factory_a.streams[0]
        self.assertTrue(await until(lambda: first.transport.disconnected and 2 not in self.node_b.bound))
        endpoint = SisClientEndpoint(reactor, endpoint_options(self.endpoint_string(self.node_b, ADDRESS_A)))
        again = await endpoint.connect(factory_b)
        self.addCleanup(again.transport.loseConnection)
        link_b.send(message(2))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["1", "2"]))
        self.assertEqual(len(factory_a.streams), 2)

    async def test_units_from_a_stranger_are_dropped_and_the_link_carries_on(self):
        """A third client on another node address sends unit data to half A's SAP: it is dropped (logged), and
        the link from half B still carries its stanzas."""
        await self.start_nodes()
        owner_a, link_a, factory_a = await self.listening_half()
        stranger_node = self.network.node("0.0.6.3")
        session = stranger_node.factory().buildProtocol(None)  # the stranger speaks to its node in memory
        session.makeConnection(_Wire())
        session.dataReceived(encode(BindRequest(2)))
        session.dataReceived(encode(UnidataRequest(2, parse_address(ADDRESS_A), b"\x05<stream:stream>")))
        owner_b, link_b, _, _ = await self.dialling_half()
        link_b.send(message(7))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["7"]))
        self.assertEqual(len(factory_a.streams), 1)
        self.assertEqual(stranger_node.delivered, 1)

    async def test_a_node_that_never_answers_the_bind_is_given_up_after_the_bind_timeout(self):
        """A SIS port that reads and says nothing: the dial fails with the guard's reason after bind_timeout and
        the TCP connection is closed (the dialler then backs off and tries again)."""
        silent = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(silent.stopListening)
        options = endpoint_options(f"stanag5066:node=127.0.0.1:port={silent.getHost().port}:peer={ADDRESS_A}")
        endpoint = SisClientEndpoint(reactor, replace(options, bind_timeout=0.3))
        with self.assertRaises(SisBindRejected) as caught:
            await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertIn("did not answer the bind in time", str(caught.exception))

    async def test_a_listening_half_whose_node_drops_it_binds_again_and_takes_the_next_dial(self):
        """Node A ends the listening half's SIS session (as a node restart would): the half binds its SAP again
        after its back-off and the next dial from half B carries stanzas."""
        await self.start_nodes()
        owner_a, link_a, factory_a = await self.listening_half()
        self.node_a.bound[2].transport.loseConnection()
        self.assertTrue(await until(lambda: self.port_a.rebinds == 1 and 2 in self.node_a.bound))
        owner_b, link_b, _, _ = await self.dialling_half()
        link_b.send(message(3))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["3"]))

    async def test_with_the_stanza_bytes_the_mtu_allows_the_largest_stanza_crosses(self):
        """With stanza_bytes = stanza_bytes_for_mtu(512) on both links, a stanza of random text as large as the
        limit allows crosses a 512-byte-MTU node; one a byte larger is bounced by the link, never written."""
        await self.start_nodes(mtu=512)
        limit = stanza_bytes_for_mtu(512)
        owner_a, link_a, factory_a = await self.listening_half(mtu=512)
        owner_b, link_b, _, stream_b = await self.dialling_half(mtu=512)
        for link in (link_a, link_b):
            link.stanza_bytes = limit
        empty = len(serialise(message(1, body="x").stanza).encode()) - 1
        link_b.send(message(1, body=os.urandom(limit).hex()[:limit - empty]))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["1"]))
        link_b.send(message(2, body=os.urandom(limit).hex()[:limit - empty + 1]))
        link_b.send(message(3))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["1", "3"]))
        self.assertEqual(owner_b.of("undeliverable"), ["2"])
        self.assertIsNone(stream_b.lost_with)

    async def test_a_stanza_whose_frame_is_over_the_mtu_drops_the_connection_loudly(self):
        """With a 512-byte MTU, a stanza of 1,500 random (incompressible) characters makes a frame larger than a
        U_PDU: the write is refused, the dialled connection is lost, and nothing reaches half A."""
        await self.start_nodes(mtu=512)
        owner_a, link_a, factory_a = await self.listening_half(mtu=512)
        owner_b, link_b, _, stream_b = await self.dialling_half(mtu=512)
        link_b.send(message(1))
        self.assertTrue(await until(lambda: owner_a.of("received") == ["1"]))
        link_b.send(message(2, body=os.urandom(1100).hex()[:1500]))
        self.assertTrue(await until(lambda: stream_b.lost_with is not None))
        self.assertIn("a write larger than the SIS MTU", str(stream_b.lost_with.value))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(owner_a.of("received"), ["1"])


class _Wire:
    """A transport that swallows what is written (for the stranger's in-memory session)."""

    disconnecting = False

    def write(self, data):
        pass

    def loseConnection(self):
        self.disconnecting = True

    def getPeer(self):
        return None

    def getHost(self):
        return None
