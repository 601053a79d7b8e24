"""
The management page (``[management]`` in the configuration): service status
and uptime, the peers connected now, outbound links and queues, the pair link
and the release authority, the policies in force with a reload action, the
recent refusals from the audit trail, and a live chart of stanzas per second.

Everything shown comes from ``guard.app.snapshot`` and the metrics registry;
this package only reads.  ``listen_management`` wires it to a running
``GuardProcess`` (standalone guard or pair half) and listens.
"""

from __future__ import annotations

from guard.edges.tlsidentity import load_pem_chain

from ..config import ConfigError, read_token
from .access import Access
from .rates import process_stanza_counts
from .refusals import recent_refusals
from .site import ManagementPage, ReloadAction, at_most_connections, management_site


def management_page(process, snapshot_of) -> ManagementPage:
    """The page of ``process`` (a GuardProcess whose configuration has a [management] table)."""
    from ..cli import checked_configuration

    config = process.config.management
    clock = process.reactor.seconds
    reload = None
    if config.allow_reload:
        reload = ReloadAction(check=lambda: checked_configuration(process.config.path)[1],
                              reload=process.reload_policies, refusal=ConfigError)
    return ManagementPage(
        Access(read_token(config.token_file) if config.token_file is not None else None, clock),
        snapshot_of=lambda: {**snapshot_of(process), "audit": audit_status(process)},
        counts_of=lambda: process_stanza_counts(process),
        refusals_of=lambda: recent_refusals(process.config.audit_path),
        clock=clock,
        reload=reload,
        tls=config.tls,
        client_certificates=config.client_ca is not None,
    )


def audit_status(process) -> dict:
    """What the page says of the audit trail: records that could not be written, and what the guard does then."""
    return {"write_failures": getattr(process.audit, "write_failures", 0),
            "failure_mode": process.config.audit_failure}


def tls_options(certificate: str, key: str, client_ca: str | None = None):
    """The TLS server options of the page: its certificate and key, and, with a client CA, a client certificate
    from that CA required on every connection (OpenSSL refuses the handshake without one)."""
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate

    with open(certificate, "rb") as certificate_file, open(key, "rb") as key_file:
        own = PrivateCertificate.loadPEM(certificate_file.read() + b"\n" + key_file.read())
    if client_ca is None:
        return CertificateOptions(privateKey=own.privateKey.original, certificate=own.original)
    authorities = load_pem_chain(client_ca)
    if not authorities:
        raise ValueError(f"{client_ca}: no certificates")
    return CertificateOptions(privateKey=own.privateKey.original, certificate=own.original, verify=True,
                              caCerts=authorities, requireCertificate=True)


def listen_management(process, snapshot_of):
    """Listen on ``[management] listen`` for ``process``; a Deferred firing with the listening port."""
    from twisted.internet.endpoints import serverFromString
    from twisted.protocols.tls import TLSMemoryBIOFactory

    config = process.config.management
    factory = management_site(management_page(process, snapshot_of), process.reactor)
    if config.tls:
        factory = TLSMemoryBIOFactory(tls_options(config.certificate, config.key, config.client_ca), False, factory,
                                      clock=process.reactor)
    return serverFromString(process.reactor, config.listen).listen(at_most_connections(factory))
