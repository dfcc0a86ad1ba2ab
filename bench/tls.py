"""A throwaway certificate for 127.0.0.1, so that daphne can serve the sound scenario's
browser over TLS (`bench/run.py --path-tls`), as production serves readers: the page and
its POST over https, its sockets over wss, each new connection paying TLS's round trip on
the modelled path (its handshake's bytes go through bench/netdelay.py like any others)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from pathlib import Path


def make_certificate(directory: Path) -> tuple[Path, Path, str]:
    """(certificate, key) PEM files for 127.0.0.1, self-signed, valid for a day, and the
    key's SPKI hash (base64 of the SHA-256 of its SubjectPublicKeyInfo), which Chromium
    trusts with ``--ignore-certificate-errors-spki-list``: as a certificate it trusts, so
    that it keeps and reuses its connections. Playwright's ``ignore_https_errors`` made
    it open a new connection (TCP's and TLS's round trips) for nearly every request."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert_path, key_path, base64.b64encode(hashlib.sha256(spki).digest()).decode()


def daphne_endpoint(port: int, cert: Path, key: Path) -> list[str]:
    """daphne's arguments for a TLS endpoint on 127.0.0.1:``port`` (Twisted's ``ssl:``
    endpoint; pyOpenSSL comes with daphne's twisted[tls])."""
    return ["-e", f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"]
