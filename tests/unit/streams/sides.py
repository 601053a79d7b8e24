"""Real sides for stream tests: the lab's throwaway PKI, two sides, and a relay that writes down what it is asked."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from twisted.internet import defer

from guard.core.topology import Topology
from guard.edges.limits import Limits
from guard.edges.side import Side
from guard.edges.tlsidentity import Identity, TrustAnchors
from guard.edges.xmlstream import serialise
from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS, write_lab_pki

TOPOLOGY = Topology({"red": frozenset(RED_DOMAINS), "blue": frozenset(BLUE_DOMAINS)})
SECRET = "unit-test-dialback-secret"


@functools.cache
def pki():
    return write_lab_pki(Path(tempfile.mkdtemp(prefix="guard-unit-pki-")))


class RecordingRelay:
    """Stands where the relay would: appends ("event", args) tuples to one list."""

    def __init__(self, dialback_answers=None):
        self.events = []
        self.dialback_answers = dialback_answers if dialback_answers is not None else {}

    def stanza_received(self, side, stanza, addressed, size):
        self.events.append(("stanza", side.name, serialise(stanza), addressed.pair))

    def check_dialback(self, side, peer, fronted):
        self.events.append(("check_dialback", side.name, peer, fronted))
        answer = self.dialback_answers.get((peer, fronted), False)
        if isinstance(answer, defer.Deferred):
            return answer
        return defer.succeed(answer)


class RecordingVerifier:
    """Stands where a side's dialback Verifier would: the recording relay writes down and answers each question."""

    def __init__(self, side, relay):
        self.side = side
        self.relay = relay

    def check_dialback(self, asker, originating, receiving, stream_id, key):
        return self.relay.check_dialback(self.side, originating, receiving)

    def shut_down(self):
        pass


def make_side(name, reactor, authentication="certificate", relay=None, limits=None,
              routes=None, certificate=None, key=None, presents_for=None):
    """
    A Side as the service would build it, from the lab PKI.  ``certificate``/``key``
    override what it presents and ``presents_for`` for which domains (by default
    the guard's own certificate for the far side's domains).
    """
    material = pki()
    anchors = TrustAnchors(str(material.side_ca(name)))
    facing = material.guard_facing(name)
    fronted = presents_for or TOPOLOGY.fronted_on(name)
    identity = Identity(fronted, str(certificate or facing.certificate), str(key or facing.key), anchors)
    side = Side(
        name=name,
        topology=TOPOLOGY,
        authentication=authentication,
        identities={domain: identity for domain in fronted},
        anchors=anchors,
        routes=routes or {},
        limits=limits or Limits(),
        dialback_secret=SECRET,
        reactor=reactor,
    )
    side.relay = relay if relay is not None else RecordingRelay()
    if isinstance(side.relay, RecordingRelay):
        side.verifier = RecordingVerifier(side, side.relay)
    return side
