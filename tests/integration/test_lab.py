"""
Checks of the laboratory's own parts (PKI, DNS table, configurations) that
need no running peers.  They run with ``-m direct`` and ``-m relay`` because
they validate the lab those modes rely on.
"""

from __future__ import annotations

import subprocess
import tomllib

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.names import dns

from guard.lab.dns import ServerAddress, answer_for
from guard.lab.pki import ID_ON_XMPPADDR, der_utf8_string, write_lab_pki
from guard.lab.prosody import ProsodyServer, ProsodySettings, require_executable
from guard.lab.tcprelay import Route
from guard.lab.topology import Mode, dns_table, render_guard_config

pytestmark = [pytest.mark.direct, pytest.mark.relay]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A freshly generated lab PKI."""
    return write_lab_pki(tmp_path_factory.mktemp("pki"))


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def alt_names(certificate):
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], []
    names = extension.value
    xmpp_addrs = [name.value for name in names.get_values_for_type(x509.OtherName) if name.type_id == ID_ON_XMPPADDR]
    return names.get_values_for_type(x509.DNSName), xmpp_addrs


def test_xmpp_addr_is_a_der_utf8_string():
    """An XmppAddr value is encoded as a DER UTF8String (tag 0x0c, short and long lengths)."""
    assert der_utf8_string("red.example") == b"\x0c\x0bred.example"
    assert der_utf8_string("x" * 200)[:3] == b"\x0c\x81\xc8"


@pytest.mark.parametrize(
    "attribute, ca, domains",
    [
        ("red_server", "red_ca", ["red.example", "conference.red.example"]),
        ("blue_server", "blue_ca", ["blue.example", "conference.blue.example"]),
        ("guard_red_facing", "red_ca", ["blue.example", "conference.blue.example"]),
        ("guard_blue_facing", "blue_ca", ["red.example", "conference.red.example"]),
    ],
)
def test_leaves_name_their_domains_and_serve_both_roles(pki, attribute, ca, domains):
    """Each leaf carries dNSName and XmppAddr for its domains, serverAuth and clientAuth, from its side's CA."""
    leaf = load(getattr(pki, attribute).certificate)
    dns_names, xmpp_addrs = alt_names(leaf)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert dns_names == domains
    assert xmpp_addrs == [der_utf8_string(domain) for domain in domains]
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages
    leaf.verify_directly_issued_by(load(getattr(pki, ca)))


def test_hostile_certificates_are_wrong_in_the_intended_way(pki):
    """The CN-only cert names the domain but has no SAN; the wrong-side cert is issued by the other CA."""
    cn_only = load(pki.red_common_name_only.certificate)
    assert cn_only.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "red.example"
    assert alt_names(cn_only) == ([], [])
    cn_only.verify_directly_issued_by(load(pki.red_ca))

    wrong_side = load(pki.red_from_blue_ca.certificate)
    assert alt_names(wrong_side)[0] == ["red.example", "conference.red.example"]
    wrong_side.verify_directly_issued_by(load(pki.blue_ca))
    with pytest.raises(Exception):
        wrong_side.verify_directly_issued_by(load(pki.red_ca))


def test_dns_answers_srv_and_a_and_nothing_else():
    """The lab DNS answers SRV and A for table domains, an empty answer for other types, NXDOMAIN otherwise."""
    table = {"blue.example": ServerAddress("127.0.3.1", 5269)}

    (srv,) = answer_for(table, "_xmpp-server._tcp.blue.example", dns.SRV)
    (a,) = answer_for(table, "blue.example.", dns.A)

    assert (srv.payload.target.name, srv.payload.port) == (b"blue.example", 5269)
    assert a.payload.dottedQuad() == "127.0.3.1"
    assert answer_for(table, "blue.example", dns.AAAA) == []
    assert answer_for(table, "red.example", dns.A) is None
    assert answer_for(table, "_xmpps-server._tcp.red.example", dns.SRV) is None


def test_dns_points_each_side_at_the_right_place():
    """Direct mode sends each side to the other Prosody; relay and guard modes send it to the facing guard address."""
    assert dns_table(Mode.DIRECT)["blue.example"] == "127.0.2.1:5269"
    assert dns_table(Mode.DIRECT)["conference.red.example"] == "127.0.1.1:5269"
    assert dns_table(Mode.GUARD)["blue.example"] == "127.0.3.1:5269"
    assert dns_table(Mode.RELAY)["red.example"] == "127.0.3.2:5269"


@pytest.mark.parametrize("authentication", ["certificate", "dialback"])
def test_guard_config_has_the_agreed_shape(pki, authentication):
    """The guard configuration the lab writes is TOML with exactly the agreed sides, domains and certificates."""
    config = tomllib.loads(render_guard_config(pki, authentication, log_level="info"))

    red = config["sides"]["red"]
    assert config["guard"] == {"log_level": "info"}
    assert red["listen"] == "tcp:5269:interface=127.0.3.1"
    assert red["ca"] == str(pki.red_ca)
    assert red["authentication"] == authentication
    assert red["domains"] == {"red.example": "127.0.1.1:5269", "conference.red.example": "127.0.1.1:5269"}
    assert red["certificates"] == [
        {
            "domains": ["blue.example", "conference.blue.example"],
            "certificate": str(pki.guard_red_facing.certificate),
            "key": str(pki.guard_red_facing.key),
        }
    ]
    assert config["sides"]["blue"]["listen"] == "tcp:5269:interface=127.0.3.2"


def test_relay_routes_parse():
    """A relay route reads listen=destination, both as host:port."""
    assert Route.parse("127.0.3.1:5269=127.0.2.1:5269") == Route("127.0.3.1", 5269, "127.0.2.1", 5269)


def test_prosody_config_passes_prosodyctl_check(pki, tmp_path):
    """The generated prosody.cfg.lua passes `prosodyctl check config` and binds no wildcard address."""
    server = ProsodyServer(
        ProsodySettings("red", "red.example", "conference.red.example", "127.0.1.1",
                        pki.red_server, pki.red_ca, secure_auth=True),
        tmp_path / "red",
    )  # fmt: skip
    config = server.write_config()

    result = subprocess.run(
        [require_executable("prosodyctl"), "--config", str(config), "check", "config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert '"*"' not in text and "0.0.0.0" not in text
    assert '"limits"' not in text
