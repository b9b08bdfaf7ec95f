"""A throw-away public key infrastructure for tests, built with the ``cryptography`` package.

:func:`make_pki` writes, into one directory, PEM files for:

- ``ca``: a self-signed root CA ("meta1py Test Root CA");
- ``intermediate``: an intermediate CA signed by the root;
- ``server``: a server certificate signed by the root, with the given subjectAltNames;
- ``chained_server``: a server certificate signed by the intermediate; its ``cert`` file holds the leaf
  followed by the intermediate, as a real server would send it;
- ``client``: a client certificate (extendedKeyUsage clientAuth) signed by the root;
- ``expired``: a server certificate signed by the root that expired yesterday;
- ``self_signed``: a self-signed server certificate no CA knows;
- ``other_ca`` / ``other_client``: a second, unrelated CA and a client certificate it signed;
- ``crl``: a CRL of the root CA that revokes ``revoked_client`` (also signed by the root).

Keys are EC P-256: generating the whole set takes a few milliseconds. Every certificate comes with the
SHA-256 fingerprint of its DER encoding in the two spellings that ``tls_requirements`` accepts
(``AB:CD:...`` and ``abcd...``).

Nothing here is secret or meant for production: the keys are written unencrypted, mode 0600.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "Pki", "issue_cert", "make_ca", "make_pki", "make_self_signed"]

DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "mx1.example.test")

_ONE_DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True, slots=True)
class CertFiles:
    """One certificate and its key on disk.

    Attributes:
        name: the file stem (``<name>.crt`` / ``<name>.key``).
        cert: PEM certificate file (for chained certificates: leaf first, then the intermediates).
        key: PEM private key file (PKCS#8, unencrypted).
        der: DER encoding of the (leaf) certificate.
        subject: the subject as an RFC 4514 string (``CN=localhost,O=meta1py tests``).
        issuer: the issuer as an RFC 4514 string.
        fingerprint: SHA-256 of ``der``, upper-case hex pairs separated by colons.
        fingerprint_hex: the same, lower-case hex without separators.
        certificate: the parsed certificate.
        private_key: the private key object (to sign further certificates with a CA).
    """

    name: str
    cert: Path
    key: Path
    der: bytes
    subject: str
    issuer: str
    fingerprint: str
    fingerprint_hex: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    """The certificates written by :func:`make_pki` (see the module docstring for what each is)."""

    directory: Path
    ca: CertFiles
    intermediate: CertFiles
    server: CertFiles
    chained_server: CertFiles
    client: CertFiles
    revoked_client: CertFiles
    expired: CertFiles
    self_signed: CertFiles
    other_ca: CertFiles
    other_client: CertFiles
    crl: Path


def _name(common_name: str, organization: str = "meta1py tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alt_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


def _write(
    directory: Path,
    name: str,
    certs: Sequence[x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    leaf = certs[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    return CertFiles(
        name=name,
        cert=cert_path,
        key=key_path,
        der=der,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper(),
        fingerprint_hex=digest,
        certificate=leaf,
        private_key=key,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(
    directory: Path,
    name: str = "ca",
    common_name: str = "meta1py Test Root CA",
    issuer: CertFiles | None = None,
    days: int = 30,
) -> CertFiles:
    """Create a CA certificate: self-signed when ``issuer`` is None, else an intermediate.

    Args:
        directory: where to write ``<name>.crt`` and ``<name>.key``.
        name: file stem.
        common_name: the CA's CN.
        issuer: the CA that signs this one (None: self-signed root).
        days: validity from now (it starts one day in the past to tolerate clock skew).

    Returns:
        The files and fingerprints.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    signer_key = issuer.private_key if issuer else key
    builder = (
        _builder(
            subject,
            issuer.certificate.subject if issuer else subject,
            key.public_key(),
            now - _ONE_DAY,
            now + datetime.timedelta(days=days),
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())
    return _write(Path(directory), name, [cert], key)


def issue_cert(
    directory: Path,
    name: str,
    ca: CertFiles | None,
    common_name: str,
    san: Sequence[str] = (),
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    include_chain: bool = False,
) -> CertFiles:
    """Create an end-entity certificate signed by ``ca`` (or self-signed when ``ca`` is None).

    Args:
        directory: where to write the files.
        name: file stem.
        ca: the issuing CA; None makes a self-signed certificate.
        common_name: the subject CN.
        san: subjectAltNames; IP literals become iPAddress entries, everything else dNSName.
        client: mark it for TLS client authentication (else server authentication).
        not_before: start of validity (default: one day ago).
        not_after: end of validity (default: 30 days from now).
        include_chain: append the CA certificate to the ``cert`` file (for intermediates).

    Returns:
        The files and fingerprints of the leaf certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    builder = _builder(
        subject,
        ca.certificate.subject if ca else subject,
        key.public_key(),
        not_before or now - _ONE_DAY,
        not_after or now + datetime.timedelta(days=30),
    ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(_subject_alt_names(san), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    cert = builder.sign(ca.private_key if ca else key, hashes.SHA256())
    chain = [cert, ca.certificate] if (ca and include_chain) else [cert]
    return _write(Path(directory), name, chain, key)


def make_self_signed(directory: Path, name: str, san: Sequence[str]) -> CertFiles:
    """A self-signed server certificate for ``san`` (CN = the first name)."""
    return issue_cert(directory, name, None, san[0] if san else name, san)


def _write_crl(directory: Path, ca: CertFiles, revoked: Sequence[CertFiles]) -> Path:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - _ONE_DAY)
        .next_update(now + datetime.timedelta(days=30))
    )
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.certificate.serial_number)
            .revocation_date(now - _ONE_DAY)
            .build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    path = Path(directory) / f"{ca.name}.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path, server_names: Sequence[str] = DEFAULT_SERVER_NAMES) -> Pki:
    """Write the whole test PKI into ``directory`` (created if missing).

    Args:
        directory: target directory.
        server_names: subjectAltNames of ``server``, ``chained_server``, ``expired`` and
            ``self_signed`` (DNS names and IP literals).

    Returns:
        A :class:`Pki` naming every file.
    """
    directory = Path(directory)
    names = tuple(server_names)
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca(directory)
    intermediate = make_ca(directory, "intermediate", "meta1py Test Intermediate CA", issuer=ca)
    other_ca = make_ca(directory, "other_ca", "meta1py Other Test CA")
    revoked_client = issue_cert(directory, "revoked_client", ca, "revoked client", client=True)
    return Pki(
        directory=directory,
        ca=ca,
        intermediate=intermediate,
        server=issue_cert(directory, "server", ca, names[0], names),
        chained_server=issue_cert(
            directory, "chained_server", intermediate, names[0], names, include_chain=True
        ),
        client=issue_cert(directory, "client", ca, "client.example.test", client=True),
        revoked_client=revoked_client,
        expired=issue_cert(
            directory,
            "expired",
            ca,
            names[0],
            names,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - _ONE_DAY,
        ),
        self_signed=make_self_signed(directory, "self_signed", names),
        other_ca=other_ca,
        other_client=issue_cert(directory, "other_client", other_ca, "stranger.example.test", client=True),
        crl=_write_crl(directory, ca, [revoked_client]),
    )
