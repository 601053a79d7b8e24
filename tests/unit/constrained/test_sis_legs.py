"""Two LinkLegs of the constrained profile (security = "bearer", dictionary compression) over two simulated
STANAG 5066 nodes on loopback: stanzas both ways, acknowledged; a node dropping the listener, then redial."""
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from guard.edges.link.leg import LegConfig, LinkLeg
from guard.edges.link.link import LinkSettings
from guard.edges.link.profile import ConstrainedProfile
from guard.edges.xmlstream import ParserLimits
from guard.lab.sisnode import SisNetwork

from ..link.pairs import RecordingOwner, message


async def until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await deferLater(reactor, 0.02, lambda: None)
    return condition()


class Legs(unittest.TestCase):
    timeout = 30

    async def test_two_constrained_legs_carry_stanzas_over_sis_and_survive_a_node_dropping_one(self):
        """Half B dials through node 0.0.6.2, half A listens on 0.0.6.1; after node A drops half A, half A binds
        again and half B's next stanza arrives on a new connection."""
        network = SisNetwork(reactor, 9600, 0.1)
        self.addCleanup(network.stop)
        a, b = network.node("0.0.6.1"), network.node("0.0.6.2")
        ports = []
        for node in (a, b):
            port = await node.listen(reactor, 0, "127.0.0.1")
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        profile = ConstrainedProfile(security="bearer", compression="dictionary", rate=9600, round_trip=0.3)
        limits = ParserLimits(stanza_bytes=1700)
        config_a = LegConfig("half-a", "half-b", None, None, listen=f"stanag5066:node=127.0.0.1:port={ports[0]}:peer=0.0.6.2",
                             settings=LinkSettings(), profile=profile)
        config_b = LegConfig("half-b", "half-a", None, None, dial=f"stanag5066:node=127.0.0.1:port={ports[1]}:peer=0.0.6.1",
                             settings=LinkSettings(), profile=profile)
        owner_a, owner_b = RecordingOwner(), RecordingOwner()
        leg_a = LinkLeg(config_a, owner_a, reactor, limits, near_domains=("red.example",), far_domains=("blue.example",))
        leg_b = LinkLeg(config_b, owner_b, reactor, limits, near_domains=("blue.example",), far_domains=("red.example",))
        await leg_a.start()
        self.addCleanup(leg_a.stop)
        await leg_b.start()
        self.addCleanup(leg_b.stop)
        for n in range(1, 4):
            leg_b.link.send(message(n, sender="juliet@blue.example", recipient="romeo@red.example"))
            leg_a.link.send(message(10 + n))
        ok = await until(lambda: len(owner_a.of("received")) == 3 and len(owner_b.of("received")) == 3
                         and len(owner_a.of("delivered")) == 3 and len(owner_b.of("delivered")) == 3)
        self.assertTrue(ok)
        # cut: node A drops half A's session; the legs reconnect and carry on
        a.bound[2].transport.loseConnection()
        leg_b.link.send(message(4, sender="juliet@blue.example", recipient="romeo@red.example"))
        ok = await until(lambda: owner_a.of("received")[-1:] == ["4"], 20)
        self.assertTrue(ok)

