"""Microsoft Entra ID, as far as a test on loopback needs it.

A self-signed certificate for 127.0.0.1 (Azurite serves OAuth over HTTPS only),
and access tokens with the claims Azurite checks in `--oauth basic` mode: an
audience of the storage resource, an issuer under https://sts.windows.net/,
nbf/iat/exp, and oid/tid for user delegation keys. Azurite does not check the
signature, so any key signs them.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TENANT_ID = str(uuid.UUID(int=0x7E57))
OBJECT_ID = str(uuid.UUID(int=0x0B1EC7))


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key (PEM) for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)  # its own trust anchor
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def access_token(resource: str, lifetime: int = 3600) -> tuple[str, int]:
    """A JWT for `resource` and its expiry (epoch seconds)."""
    now = int(time.time())
    claims = {
        "aud": resource,
        "iss": f"https://sts.windows.net/{TENANT_ID}/",
        "iat": now,
        "nbf": now - 300,
        "exp": now + lifetime,
        "oid": OBJECT_ID,
        "tid": TENANT_ID,
        "sub": OBJECT_ID,
        "ver": "1.0",
    }
    return jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256"), claims["exp"]
