"""Test doubles for the link: an owner that records events, a peer check, and two halves joined in memory."""

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionLost
from twisted.test import iosim
from twisted.words.xish import domish

from guard.edges.link.link import Link, LinkSettings
from guard.edges.link.stream import LinkStreamFactory


class RecordingOwner:
    """Appends ("event", args) tuples to one list, as the link tells its owner things."""

    def __init__(self):
        self.events = []

    def link_stanza_received(self, element, size):
        self.events.append(("received", element.getAttribute("id")))

    def link_delivered(self, parcel):
        self.events.append(("delivered", parcel.stanza.getAttribute("id")))

    def link_undeliverable(self, parcel, condition, text):
        self.events.append(("undeliverable", parcel.stanza.getAttribute("id"), condition))

    def of(self, kind):
        return [event[1] for event in self.events if event[0] == kind]


class AcceptingCheck:
    """Proves every peer, with a fixed fingerprint (TLS itself is tested in test_tls)."""

    def __init__(self, fingerprint="aa:bb"):
        self.fingerprint = fingerprint

    def judge(self, transport):
        return self.fingerprint, None


class RefusingCheck:
    def judge(self, transport):
        return "cc:dd", "certificate cc:dd is not pinned"


class Parcel:
    def __init__(self, stanza):
        self.stanza = stanza


def message(number, sender="romeo@red.example", recipient="juliet@blue.example"):
    stanza = domish.Element(("jabber:server", "message"))
    stanza["from"] = sender
    stanza["to"] = recipient
    stanza["id"] = str(number)
    stanza.addElement("body", content=f"message {number}")
    return Parcel(stanza)


class JoinedHalves:
    """Two links, 'half-a' and 'half-b', whose connections are pumped in memory."""

    def __init__(self, settings=LinkSettings(ack_every=10), clock=None):
        self.clock = clock or Clock()
        self.owner_a, self.owner_b = RecordingOwner(), RecordingOwner()
        self.a = Link(self.owner_a, "half-a", "half-b", self.clock, settings, session="sessiona")
        self.b = Link(self.owner_b, "half-b", "half-a", self.clock, settings, session="sessionb")
        self.a.start()
        self.b.start()
        self.pump = None
        self.streams = None

    def connect(self):
        stream_a = LinkStreamFactory(self.a, AcceptingCheck("bb"), self.clock).buildProtocol(None)
        stream_b = LinkStreamFactory(self.b, AcceptingCheck("aa"), self.clock).buildProtocol(None)
        self.pump = iosim.connect(stream_b, iosim.makeFakeServer(stream_b), stream_a,
                                  iosim.makeFakeClient(stream_a), greet=False)
        self.streams = (stream_a, stream_b)
        stream_a.handshakeCompleted()
        stream_b.handshakeCompleted()
        self.pump.flush()

    def cut(self):
        """Both ends see the connection die; bytes still in flight are lost."""
        stream_a, stream_b = self.streams
        self.pump = None
        for stream in (stream_a, stream_b):
            stream.transport.disconnecting = True
            stream.connectionLost(Failure(ConnectionLost("cut")))

    def flush(self):
        if self.pump is not None:
            self.pump.flush()
