"""Mutual TLS on the link, in memory: pinned fingerprints and a dedicated CA prove the peer; others are refused."""

import pytest
from twisted.internet.task import Clock
from twisted.test import iosim

from guard.edges.link.link import Link
from guard.edges.link.stream import LinkStreamFactory
from guard.edges.link.tls import LinkTLS, PeerCheck, certificate_fingerprint, normalise_fingerprint
from guard.lab.pki import CertificateAuthority

from .pairs import RecordingOwner, message


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("link-pki")
    ca = CertificateAuthority.create("link-ca")
    other = CertificateAuthority.create("other-ca")
    return {
        "ca": ca.write(folder),
        "a": ca.write_leaf(folder, "half-a", ["half-a"]),
        "b": ca.write_leaf(folder, "half-b", ["half-b"]),
        "stranger": other.write_leaf(folder, "stranger", ["half-a"]),
        "misnamed": ca.write_leaf(folder, "misnamed", ["half-x"]),
    }


def join(a_pair, b_check, b_pair, a_check):
    """half-a dials half-b over TLS in memory; returns both links and owners after the handshake."""
    clock = Clock()
    owner_a, owner_b = RecordingOwner(), RecordingOwner()
    link_a = Link(owner_a, "half-a", "half-b", clock, session="sessiona")
    link_b = Link(owner_b, "half-b", "half-a", clock, session="sessionb")
    tls_a = LinkTLS(str(a_pair.certificate), str(a_pair.key))
    tls_b = LinkTLS(str(b_pair.certificate), str(b_pair.key))
    client = tls_a.dialling(LinkStreamFactory(link_a, a_check, clock), clock).buildProtocol(None)
    server = tls_b.listening(LinkStreamFactory(link_b, b_check, clock), clock).buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
    for _ in range(20):
        pump.pump()
        clock.advance(0)
    return link_a, link_b, owner_a, owner_b, pump


def test_fingerprints_are_normalised():
    """Pins may be written with or without colons, in either case; anything else is refused."""
    bare = "AB" * 32
    assert normalise_fingerprint(bare) == ":".join(["ab"] * 32)
    assert normalise_fingerprint(":".join(["Ab"] * 32)) == ":".join(["ab"] * 32)
    assert normalise_fingerprint("ab" * 31) is None


def test_pinned_peers_open_the_link_and_carry_a_stanza(material):
    """Each half pins the other's certificate: the link opens and a stanza crosses."""
    a, b = material["a"], material["b"]
    check_at_a = PeerCheck("half-b", pins=[certificate_fingerprint(str(b.certificate))])
    check_at_b = PeerCheck("half-a", pins=[certificate_fingerprint(str(a.certificate))])
    link_a, link_b, _, owner_b, pump = join(a, check_at_b, b, check_at_a)
    assert link_a.describe()["state"] == "up" and link_b.describe()["state"] == "up"
    assert link_b.describe()["peer_fingerprint"] == certificate_fingerprint(str(a.certificate))
    link_a.send(message(1))
    for _ in range(5):
        link_a.clock.advance(0)
        pump.pump()
    assert owner_b.of("received") == ["1"]


def test_a_dedicated_ca_and_the_peer_name_open_the_link(material):
    """Without pins, a certificate from the link CA naming the peer half proves it."""
    ca = str(material["ca"])
    link_a, link_b, *_ = join(material["a"], PeerCheck("half-a", ca_path=ca),
                              material["b"], PeerCheck("half-b", ca_path=ca))
    assert link_a.describe()["state"] == "up" and link_b.describe()["state"] == "up"


def test_an_unpinned_certificate_is_refused(material):
    """A certificate from another CA, not pinned, never gets the link up."""
    ca = str(material["ca"])
    link_a, link_b, *_ = join(material["stranger"], PeerCheck("half-a", ca_path=ca),
                              material["b"], PeerCheck("half-b", ca_path=ca))
    assert link_b.describe()["state"] == "down"


def test_a_certificate_naming_another_half_is_refused(material):
    """The link CA's certificate for half-x does not prove half-a."""
    ca = str(material["ca"])
    _, link_b, *_ = join(material["misnamed"], PeerCheck("half-a", ca_path=ca),
                         material["b"], PeerCheck("half-b", ca_path=ca))
    assert link_b.describe()["state"] == "down"


def test_a_check_needs_pins_or_a_ca():
    """A peer check with nothing to check against is a configuration error, not an open door."""
    with pytest.raises(ValueError):
        PeerCheck("half-b")


def test_a_link_listening_on_a_socket_systemd_did_not_pass_says_so(material, monkeypatch):
    """A systemd: link listen string with no such passed socket fails with NoSuchSocket naming it, not a bare KeyError."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.edges.link.leg import LegConfig, LinkLeg, NoSuchSocket

    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    a = material["a"]
    config = LegConfig("half-a", "half-b", str(a.certificate), str(a.key), ca=str(material["ca"]),
                       listen="systemd:domain=INET:name=link")
    leg = LinkLeg(config, RecordingOwner(), MemoryReactorClock())
    failure = leg.start()
    problem = failure.result.value if hasattr(failure, "result") else None
    failure.addErrback(lambda _: None)
    assert isinstance(problem, NoSuchSocket)
    assert "systemd:domain=INET:name=link: no such socket was passed by systemd" in str(problem)
