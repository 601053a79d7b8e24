"""The management page over TLS with a client CA: real TLS handshakes pumped in memory (twisted.test.iosim).
A certificate from the configured CA opens the page without a token; none, or one from another CA, gets no page."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from guard.app.config import ConfigError
from guard.app.management import tls_options
from guard.app.management.access import Access
from guard.app.management.site import ManagementPage, management_site

from .streams.sides import pki
from .test_management import a_snapshot

ADDRESS = IPv4Address("TCP", "127.0.0.1", 9443)


class HttpClient(Protocol):
    """Sends one request once connected and keeps every byte of the answer."""

    def __init__(self):
        self.answer = b""

    def connectionMade(self):
        self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data):
        self.answer += data


def exchange(client_pair=None):
    """The answer to GET / over TLS from a client showing ``client_pair``'s certificate (or none)."""
    lab = pki()
    clock = MemoryReactorClock()
    page = ManagementPage(Access(None, clock.seconds), a_snapshot, dict, list, clock.seconds, tls=True,
                          client_certificates=True)
    server = TLSMemoryBIOFactory(tls_options(str(lab.blue_server.certificate), str(lab.blue_server.key),
                                             str(lab.red_ca)), False, management_site(page, clock), clock=clock)
    if client_pair is None:
        options = CertificateOptions(verify=False)
    else:
        with open(client_pair.certificate, "rb") as certificate, open(client_pair.key, "rb") as key:
            own = PrivateCertificate.loadPEM(certificate.read() + b"\n" + key.read())
        options = CertificateOptions(privateKey=own.privateKey.original, certificate=own.original, verify=False)
    client = HttpClient()
    client_factory = TLSMemoryBIOFactory(options, True, _factory_of(client), clock=clock)
    _, _, pump = iosim.connectedServerAndClient(lambda: server.buildProtocol(ADDRESS),
                                                lambda: client_factory.buildProtocol(ADDRESS), greet=True)
    for _ in range(50):  # bounded: a handshake and one answer take a handful of rounds
        clock.advance(0)  # the TLS transports write what they gathered on the next turn of the clock
        pump.pump()
    return client.answer


def _factory_of(protocol):
    from twisted.internet.protocol import Factory

    factory = Factory()
    factory.buildProtocol = lambda address: protocol
    return factory


def test_a_client_certificate_from_the_client_ca_opens_the_page_without_a_token():
    """red's server certificate is issued by the configured client CA (red-ca): 200 and the status page."""
    answer = exchange(pki().red_server)
    assert answer.startswith(b"HTTP/1.1 200") and b'id="service-state"' in answer


@pytest.mark.parametrize("pair", [None, "red_from_blue_ca"])
def test_no_client_certificate_or_one_from_another_ca_gets_no_page(pair):
    """Without a certificate, or with one from blue-ca, the handshake fails: not a byte of HTTP comes back."""
    answer = exchange(None if pair is None else getattr(pki(), pair))
    assert b"HTTP/1.1" not in answer and b"service-state" not in answer


def test_a_certificate_that_does_not_fit_its_key_is_refused_at_configuration(tmp_path):
    """management.certificate with another certificate's key is a ConfigError naming the key."""
    from .test_management import management_config

    lab = pki()
    block = (f'listen = "tcp:9443"\ncertificate = "{lab.blue_server.certificate}"\nkey = "{lab.red_server.key}"\n'
             f'client_ca = "{lab.red_ca}"\n')
    path, _ = management_config(tmp_path, block)
    from guard.app.config import load_config

    with pytest.raises(ConfigError, match="management.certificate: cannot use"):
        load_config(path)
