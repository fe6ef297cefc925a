"""TLS for the local identity platform: a CA made at start, a server certificate it signs, a bundle clients trust.

azure-identity refuses an authority that is not https, and its async transport (aiohttp) verifies the server
against the default trust store, which OpenSSL reads from ``SSL_CERT_FILE``. aiohttp builds its verifying
context when it is imported, so the variable must be in the environment before that: the dev host sets it for
the function host it starts, and the test session sets it before anything imports aiohttp.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class LocalCA:
    """Files of one CA: ``ca_file`` (its certificate), ``bundle_file`` (public roots + it), the server's cert and key."""

    folder: Path
    ca_file: Path
    bundle_file: Path
    server_cert_file: Path
    server_key_file: Path

    @classmethod
    def create(cls, folder: str | Path | None = None, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> "LocalCA":
        """A new CA and a server certificate for ``hosts``, written to ``folder`` (default: a new temporary folder)."""
        where = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="local-authority-"))
        where.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Directory Sync local authority CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        server_key = _key()
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        server = (x509.CertificateBuilder()
                  .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                  .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
                  .add_extension(x509.SubjectAlternativeName(names), critical=False)
                  .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                  .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                  .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                  .sign(ca_key, hashes.SHA256()))
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        (where / "ca.pem").write_bytes(ca_pem)
        (where / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
        (where / "server-key.pem").write_bytes(_pem_key(server_key))
        try:
            import certifi

            public = Path(certifi.where()).read_bytes()
        except ImportError:  # no public roots to keep: the local stack reaches nothing else over TLS
            public = b""
        (where / "bundle.pem").write_bytes(public + b"\n" + ca_pem)
        return cls(where, where / "ca.pem", where / "bundle.pem", where / "server.pem", where / "server-key.pem")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert_file, self.server_key_file)
        return context


def trust_in_this_process(ca_file: str | Path) -> None:
    """Make already-imported clients of this process trust ``ca_file`` too (tests; the dev host uses SSL_CERT_FILE).

    aiohttp keeps one verifying context made at import; adding the CA to it is what SSL_CERT_FILE would have done.
    """
    import sys

    connector = sys.modules.get("aiohttp.connector")
    if connector is not None and getattr(connector, "_SSL_CONTEXT_VERIFIED", None) is not None:
        connector._SSL_CONTEXT_VERIFIED.load_verify_locations(cafile=str(ca_file))


def self_signed_client_certificate(folder: str | Path, common_name: str = "directory-sync-local") -> tuple[Path, str]:
    """A client certificate with its key in one PEM (what CertificateCredential reads) and its public PEM text."""
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    public = cert.public_bytes(serialization.Encoding.PEM)
    path = Path(folder) / "app-certificate.pem"
    path.write_bytes(_pem_key(key) + public)
    path.chmod(0o600)
    return path, public.decode()
