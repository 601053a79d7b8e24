"""Test doubles for the link: an owner that records events, a peer check, and two halves joined in memory."""

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionLost
from twisted.test import iosim
from twisted.words.xish import domish

from guard.edges.link.link import Link, LinkSettings
from guard.edges.link.stream import LinkStreamFactory
from guard.edges.xmlstream import ParserLimits


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

    def link_in_doubt(self, parcel):
        self.events.append(("in_doubt", parcel.stanza.getAttribute("id")))

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


def message(number, sender="romeo@red.example", recipient="juliet@blue.example", body=None):
    stanza = domish.Element(("jabber:server", "message"))
    stanza["from"] = sender
    stanza["to"] = recipient
    stanza["id"] = str(number)
    stanza.addElement("body", content=f"message {number}" if body is None else body)
    return Parcel(stanza)


class FakeStream:
    """A connection that proves the peer and then carries nothing (its bytes go nowhere)."""

    peer_fingerprint = "ff"

    def __init__(self):
        self.written = []
        self.closed = None
        self.paused = False

    def write(self, data):
        self.written.append(data)

    def close(self, condition, text):
        self.closed = condition

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


class JoinedHalves:
    """Two links, 'half-a' and 'half-b', whose connections are pumped in memory."""

    def __init__(self, settings=LinkSettings(ack_every=10), clock=None, limits=ParserLimits(), limits_b=None,
                 owner_a=None):
        self.clock = clock or Clock()
        self.limits = limits
        self.limits_b = limits_b or limits  # half B's parser may be stricter than half A's
        self.owner_a, self.owner_b = owner_a or RecordingOwner(), RecordingOwner()
        self.a = Link(self.owner_a, "half-a", "half-b", self.clock, settings, session="sessiona",
                      stanza_bytes=limits.stanza_bytes)
        self.b = Link(self.owner_b, "half-b", "half-a", self.clock, settings, session="sessionb",
                      stanza_bytes=limits.stanza_bytes)
        self.a.start()
        self.b.start()
        self.pump = None
        self.streams = None

    def connect(self):
        stream_a = LinkStreamFactory(self.a, AcceptingCheck("bb"), self.clock, self.limits).buildProtocol(None)
        stream_b = LinkStreamFactory(self.b, AcceptingCheck("aa"), self.clock, self.limits_b).buildProtocol(None)
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
