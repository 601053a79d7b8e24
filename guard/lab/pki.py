"""
A throwaway public-key infrastructure for the lab: one certificate authority
per side, the certificates each Prosody presents, the certificates the guard
presents to each side while standing in for the other side's domains, and a
few deliberately wrong certificates for hostile tests.

Nothing here is fit for production: keys are written unencrypted and live
for a couple of days.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")

RED_DOMAINS = ("red.example", "conference.red.example")
BLUE_DOMAINS = ("blue.example", "conference.blue.example")

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)


def der_utf8_string(text: str) -> bytes:
    """DER encoding of an ASN.1 UTF8String, the value type of an XmppAddr."""
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 0x80:
        header = bytes([length])
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x80 | len(size)]) + size
    return b"\x0c" + header + payload


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xmpp-guard lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class KeyPair:
    """A certificate (PEM chain, leaf first) and its private key on disk."""

    certificate: Path
    key: Path


class CertificateAuthority:
    """A self-signed root that issues lab leaf certificates."""

    def __init__(self, name: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate):
        self.name = name
        self.key = key
        self.certificate = certificate

    @classmethod
    def create(cls, name: str) -> "CertificateAuthority":
        key = _new_key()
        subject = _name(name)
        now = _now()
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, certificate)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        domains: Sequence[str],
        *,
        common_name: str | None = None,
        with_subject_alt_names: bool = True,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Issue a server+client leaf for ``domains`` (dNSName and XmppAddr for each)."""
        key = _new_key()
        public = key.public_key()
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or domains[0]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if with_subject_alt_names:
            names: list[x509.GeneralName] = [x509.DNSName(domain) for domain in domains]
            names += [x509.OtherName(ID_ON_XMPPADDR, der_utf8_string(domain)) for domain in domains]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def write(self, folder: Path) -> Path:
        """Write this authority's certificate as ``<name>.pem`` and return its path."""
        path = folder / f"{self.name}.pem"
        path.write_bytes(self.certificate_pem())
        return path

    def write_leaf(
        self,
        folder: Path,
        stem: str,
        domains: Sequence[str],
        *,
        common_name: str | None = None,
        with_subject_alt_names: bool = True,
    ) -> KeyPair:
        """Issue a leaf and write ``<stem>.pem`` (leaf only) and ``<stem>.key``."""
        certificate, key = self.issue(
            domains, common_name=common_name, with_subject_alt_names=with_subject_alt_names
        )
        certificate_path = folder / f"{stem}.pem"
        key_path = folder / f"{stem}.key"
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return KeyPair(certificate_path, key_path)


def write_bundle(path: Path, authorities: Iterable[CertificateAuthority]) -> Path:
    """Concatenate the authorities' certificates into one PEM file."""
    path.write_bytes(b"".join(authority.certificate_pem() for authority in authorities))
    return path


@dataclass(frozen=True)
class LabPki:
    """Paths of every file of the lab's PKI."""

    folder: Path
    red_ca: Path
    blue_ca: Path
    both_cas: Path
    red_server: KeyPair  # red Prosody: red.example, conference.red.example
    blue_server: KeyPair  # blue Prosody: blue.example, conference.blue.example
    guard_red_facing: KeyPair  # guard toward red: blue's domains, from red-ca
    guard_blue_facing: KeyPair  # guard toward blue: red's domains, from blue-ca
    red_common_name_only: KeyPair  # red-ca, CN red.example, no subjectAltName
    red_from_blue_ca: KeyPair  # red.example issued by the wrong side's CA
    blue_common_name_only: KeyPair
    blue_from_red_ca: KeyPair

    def side_ca(self, side: str) -> Path:
        return {"red": self.red_ca, "blue": self.blue_ca}[side]

    def server(self, side: str) -> KeyPair:
        return {"red": self.red_server, "blue": self.blue_server}[side]

    def guard_facing(self, side: str) -> KeyPair:
        return {"red": self.guard_red_facing, "blue": self.guard_blue_facing}[side]


def write_lab_pki(folder: Path) -> LabPki:
    """Generate a fresh lab PKI into ``folder`` (created if missing)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    red = CertificateAuthority.create("red-ca")
    blue = CertificateAuthority.create("blue-ca")
    return LabPki(
        folder=folder,
        red_ca=red.write(folder),
        blue_ca=blue.write(folder),
        both_cas=write_bundle(folder / "both-cas.pem", [red, blue]),
        red_server=red.write_leaf(folder, "red-server", RED_DOMAINS),
        blue_server=blue.write_leaf(folder, "blue-server", BLUE_DOMAINS),
        guard_red_facing=red.write_leaf(folder, "guard-red-facing", BLUE_DOMAINS),
        guard_blue_facing=blue.write_leaf(folder, "guard-blue-facing", RED_DOMAINS),
        red_common_name_only=red.write_leaf(
            folder, "hostile-red-cn-only", ["red.example"], with_subject_alt_names=False
        ),
        red_from_blue_ca=blue.write_leaf(folder, "hostile-red-from-blue-ca", RED_DOMAINS),
        blue_common_name_only=blue.write_leaf(
            folder, "hostile-blue-cn-only", ["blue.example"], with_subject_alt_names=False
        ),
        blue_from_red_ca=red.write_leaf(folder, "hostile-blue-from-red-ca", BLUE_DOMAINS),
    )


def main(argv: Sequence[str]) -> int:
    """Command line: ``python -m guard.lab.pki FOLDER``."""
    if len(argv) != 1:
        print("usage: python -m guard.lab.pki FOLDER")
        return 2
    pki = write_lab_pki(Path(argv[0]))
    for path in sorted(pki.folder.iterdir()):
        print(path)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
