"""A complete test PKI on disk, made with stc_pki in well under a second (EC P-256).

    pki = make_test_pki(tmp_path)
    pki.ca, pki.crl                      # PEM files to trust / to check revocation with
    pki.server.cert, pki.server.key      # DNS localhost + stc-server.test, IP 127.0.0.1
    pki.users["alice"].cert, ...         # see TestPki.users

Every user certificate has SAN sip:NAME@stc.test and NAME@stc.test (zoe: sip:zoe@stc.test).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stc_pki.files import write_public, write_secret
from stc_pki.pki import CertificateAuthority, Validity, cert_pem, crl_pem, generate_key, key_pem

TEST_DOMAIN = "stc.test"
ZOE_DISPLAY_NAME = "Zoë Ålice-Øster"


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPki:
    """Paths of the test PKI. `users` keys:

    alice, bob, carol      valid clientAuth users (CN 'Alice', 'Bob', 'Carol', O 'stc test')
    zoe                    valid, CN 'Zoë Ålice-Øster', O 'Ørganisation', OU 'Tëst'
    expired                expired a day ago
    not_yet_valid          valid from tomorrow
    revoked                valid but on the CRL
    no_client_auth         EKU serverAuth only
    other_ca               signed by a CA that is not in `ca`
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    dir: Path
    ca: Path
    ca_key: Path
    crl: Path
    server: CertFiles
    wrong_host_server: CertFiles
    users: dict[str, CertFiles]


def make_test_pki(dir: Path) -> TestPki:
    now = datetime.now(timezone.utc)
    year = Validity.for_days(365, now=now)
    dir.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(common_name="stc test CA", organization="stc test", validity=year)
    other_ca = CertificateAuthority.create(common_name="stc other CA", validity=year)
    ca_path, ca_key_path = dir / "ca.pem", dir / "ca.key"
    write_public(ca_path, cert_pem(ca.cert))
    write_secret(ca_key_path, key_pem(ca.key))

    def save(name: str, cert: x509.Certificate, key_pem_data: bytes) -> CertFiles:
        files = CertFiles(dir / f"{name}.pem", dir / f"{name}.key")
        write_secret(files.key, key_pem_data)
        write_public(files.cert, cert_pem(cert))
        return files

    def server(name: str, dns: list[str], ips: list[str]) -> CertFiles:
        key = generate_key()
        cert = ca.issue_server(
            key.public_key(),
            dns_names=dns,
            ip_addresses=[ipaddress.ip_address(ip) for ip in ips],
            validity=year,
        )
        return save(name, cert, key_pem(key))

    def user(
        name: str,
        display_name: str,
        *,
        issuer: CertificateAuthority = ca,
        validity: Validity = year,
        ekus: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        organization: str | None = "stc test",
        org_unit: str | None = None,
    ) -> tuple[CertFiles, x509.Certificate]:
        key = generate_key()
        cert = issuer.issue_user(
            key.public_key(),
            display_name=display_name,
            sip_uris=[f"sip:{name}@{TEST_DOMAIN}"],
            emails=[f"{name}@{TEST_DOMAIN}"],
            organization=organization,
            org_unit=org_unit,
            validity=validity,
            extended_key_usages=ekus,
        )
        return save(f"user-{name}", cert, key_pem(key)), cert

    users: dict[str, CertFiles] = {}
    for name in ("alice", "bob", "carol"):
        users[name], _ = user(name, name.capitalize())
    users["zoe"], _ = user("zoe", ZOE_DISPLAY_NAME, organization="Ørganisation", org_unit="Tëst")
    users["expired"], _ = user(
        "expired", "Expired User", validity=Validity(now - timedelta(days=30), now - timedelta(days=1))
    )
    users["not_yet_valid"], _ = user(
        "not_yet_valid", "Future User", validity=Validity(now + timedelta(days=1), now + timedelta(days=30))
    )
    users["revoked"], revoked_cert = user("revoked", "Revoked User")
    users["no_client_auth"], _ = user("no_client_auth", "Server Only", ekus=(ExtendedKeyUsageOID.SERVER_AUTH,))
    users["other_ca"], _ = user("other_ca", "Other CA User", issuer=other_ca)

    crl_path = dir / "crl.pem"
    crl = ca.issue_crl([(revoked_cert.serial_number, now - timedelta(minutes=1))], now=now - timedelta(minutes=1))
    write_public(crl_path, crl_pem(crl))

    return TestPki(
        dir=dir,
        ca=ca_path,
        ca_key=ca_key_path,
        crl=crl_path,
        server=server("server", ["localhost", "stc-server.test"], ["127.0.0.1"]),
        wrong_host_server=server("wrong-host-server", ["other.test"], []),
        users=users,
    )
