"""The constrained profile's security: TLS 1.3 only with session resumption, or no TLS at all (security = "bearer")."""

import pytest
from twisted.internet.task import Clock
from twisted.test import iosim

from guard.edges.link.link import Link
from guard.edges.link.profile import BEARER_WARNING, HeaderNamesOnly
from guard.edges.link.stream import LinkStreamFactory
from guard.edges.link.tls import LinkTLS, PeerCheck, certificate_fingerprint
from guard.lab.pki import CertificateAuthority

from .pairs import RecordingOwner, message


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constrained-pki")
    ca = CertificateAuthority.create("link-ca")
    return {"a": ca.write_leaf(folder, "half-a", ["half-a"]), "b": ca.write_leaf(folder, "half-b", ["half-b"]),
            "ca": ca.write(folder)}


def counted(transport, tally, key):
    """Count every byte ``transport`` writes into ``tally[key]`` (the bytes on the bearer)."""
    write = transport.write

    def counting(data):
        tally[key] += len(data)
        write(data)

    transport.write = counting


class Halves:
    """half-a dials half-b over TLS 1.3 in memory, again and again, with the same links and TLS contexts."""

    def __init__(self, material, tls13_only=True, by_ca=False):
        self.clock = Clock()
        a, b = material["a"], material["b"]
        self.owner_a, self.owner_b = RecordingOwner(), RecordingOwner()
        self.link_a = Link(self.owner_a, "half-a", "half-b", self.clock, session="sessiona")
        self.link_b = Link(self.owner_b, "half-b", "half-a", self.clock, session="sessionb")
        self.tls_a = LinkTLS(str(a.certificate), str(a.key), tls13_only=tls13_only)
        self.tls_b = LinkTLS(str(b.certificate), str(b.key), tls13_only=tls13_only)
        if by_ca:
            self.check_a = PeerCheck("half-b", ca_path=str(material["ca"]))
            self.check_b = PeerCheck("half-a", ca_path=str(material["ca"]))
        else:
            self.check_a = PeerCheck("half-b", pins=[certificate_fingerprint(str(b.certificate))])
            self.check_b = PeerCheck("half-a", pins=[certificate_fingerprint(str(a.certificate))])
        self.pump = None

    def connect(self):
        """One connection; the bytes both ends wrote until the link opened both ways."""
        client = self.tls_a.dialling(LinkStreamFactory(self.link_a, self.check_a, self.clock), self.clock) \
            .buildProtocol(None)
        server = self.tls_b.listening(LinkStreamFactory(self.link_b, self.check_b, self.clock), self.clock) \
            .buildProtocol(None)
        tally = {"a": 0, "b": 0}
        client_transport, server_transport = iosim.makeFakeClient(client), iosim.makeFakeServer(server)
        counted(client_transport, tally, "a")
        counted(server_transport, tally, "b")
        self.pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
        for _ in range(20):
            self.pump.pump()
            self.clock.advance(0)
        self.client = client
        return tally

    def keep_session(self):
        """What the leg does when a dialled connection opened: keep its TLS session for the next one."""
        self.tls_a.sessions.watch(self.client.wrappedProtocol)

    def cut(self):
        """The bearer drops the connection (no close_notify); the leg tells the kept session it is over."""
        self.client.transport.loseConnection()
        for _ in range(5):
            self.pump.pump()
            self.clock.advance(0)


def test_a_constrained_link_speaks_tls_1_3_only(material):
    """The handshake under the profile is TLS 1.3, and the link opens both ways."""
    halves = Halves(material)
    halves.connect()
    assert halves.link_a.describe()["state"] == "up" and halves.link_b.describe()["state"] == "up"
    assert halves.client.getHandle().get_protocol_version_name() == "TLSv1.3"


@pytest.mark.parametrize("by_ca", [False, True])
def test_a_reconnection_resumes_the_session_with_fewer_bytes_and_still_proves_the_peer(material, by_ca):
    """The second connection offers the kept session: no certificates cross, and both peers are still proved
    (by pinned fingerprints, or by the link CA and the name in the certificate kept in the session)."""
    halves = Halves(material, by_ca=by_ca)
    full = halves.connect()
    halves.keep_session()
    halves.cut()
    assert halves.link_a.describe()["state"] == "down"
    resumed = halves.connect()
    assert halves.tls_a.sessions.offered == 1
    assert halves.link_a.describe()["state"] == "up" and halves.link_b.describe()["state"] == "up"
    assert halves.link_b.describe()["peer_fingerprint"] == certificate_fingerprint(str(material["a"].certificate))
    assert halves.link_a.describe()["peer_fingerprint"] == certificate_fingerprint(str(material["b"].certificate))
    # Each certificate is about 700 bytes of DER: a resumed handshake leaves both out.
    assert resumed["a"] + resumed["b"] < full["a"] + full["b"] - 1000, (full, resumed)
    halves.link_a.send(message(1))
    for _ in range(5):
        halves.clock.advance(0)
        halves.pump.pump()
    assert halves.owner_b.of("received") == ["1"]
    print(f"bytes before the link opened: full handshake {full}, resumed {resumed}")


def test_a_session_is_only_kept_from_a_connection_that_opened(material):
    """Nothing is kept before the first connection opens: the first dial is a full handshake."""
    halves = Halves(material)
    assert halves.tls_a.sessions.kept is None
    halves.connect()
    assert halves.tls_a.sessions.offered == 0


def bearer_pair():
    """Two halves on plain TCP in memory (security = "bearer": no TLS, the peer proved by header names only)."""
    clock = Clock()
    owner_a, owner_b = RecordingOwner(), RecordingOwner()
    link_a = Link(owner_a, "half-a", "half-b", clock, session="sessiona")
    link_b = Link(owner_b, "half-b", "half-a", clock, session="sessionb")
    client = LinkStreamFactory(link_a, HeaderNamesOnly(), clock).buildProtocol(None)
    server = LinkStreamFactory(link_b, HeaderNamesOnly(), clock).buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
    pump.flush()
    return clock, pump, (link_a, owner_a, client), (link_b, owner_b, server)


def test_security_bearer_carries_stanzas_in_the_clear_and_warns_on_every_connection():
    """No TLS: the link opens on TCP alone, a WARNING names the missing encryption, and chat crosses both ways."""
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        clock, pump, (link_a, owner_a, client), (link_b, owner_b, server) = bearer_pair()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    warnings = [event for event in seen if event.get("log_level").name == "warn"
                and BEARER_WARNING == event.get("warning")]
    assert len(warnings) == 2  # one per end of the connection
    link_a.send(message("a1"))
    link_b.send(message("b1", "juliet@blue.example", "romeo@red.example"))
    pump.flush()
    assert owner_b.of("received") == ["a1"] and owner_a.of("received") == ["b1"]
    assert link_b.describe()["peer_fingerprint"] == HeaderNamesOnly.fingerprint


def test_security_bearer_still_refuses_a_header_that_does_not_name_the_peer_half():
    """With no certificate, the header names are all that proves the peer: a wrong name closes the connection."""
    clock = Clock()
    link_b = Link(RecordingOwner(), "half-b", "half-a", clock, session="sessionb")
    impostor = Link(RecordingOwner(), "half-x", "half-b", clock, session="sessionx")
    client = LinkStreamFactory(impostor, HeaderNamesOnly(), clock).buildProtocol(None)
    server = LinkStreamFactory(link_b, HeaderNamesOnly(), clock).buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
    pump.flush()
    assert link_b.describe()["state"] == "down"
    assert server.closing
