"""stc-pki end to end in a temporary folder: the command line, the files it writes, OpenSSL's view of them."""

from __future__ import annotations

import json
import os
import ssl
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from stc_pki.cli import main
from stc_wire.identity import (
    CertificateRejected,
    TrustAnchors,
    check_client_certificate,
    check_server_certificate,
)
from tests.certs import make_test_pki

ZOE = "Zoë Ålice-Øster"


def now() -> datetime:
    return datetime.now(timezone.utc)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: any key file that is not 0600 would show as world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "pki"
    code, out, err = run(capsys, "--dir", str(d), "demo")
    assert (code, err) == (0, "")
    return d


def write_passphrase(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


# -- demo ----------------------------------------------------------------------


def test_demo_makes_the_whole_set(demo: Path) -> None:
    trust = TrustAnchors.load(demo / "ca.pem", demo / "crl.pem")
    for name in ("alice", "bob", "carol"):
        who = check_client_certificate(der(demo / "users" / f"{name}.pem"), trust, now())
        assert who.sip_uris == (f"sip:{name}@stc.example",)
        assert who.emails == (f"{name}@stc.example",)
        assert who.display_name.lower().startswith(name)
    for host in ("localhost", "stc-server", "127.0.0.1"):
        assert check_server_certificate(der(demo / "server.pem"), trust, host, now()).display_name == "localhost"
    ca = x509.load_pem_x509_certificate((demo / "ca.pem").read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (bc.critical, bc.value.ca, bc.value.path_length) == (True, True, 0)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    index = json.loads((demo / "index.json").read_text())
    assert sorted(e["name"] for e in index["certificates"]) == ["alice", "bob", "carol", "server"]
    assert all(not e["revoked"] for e in index["certificates"])


def test_demo_twice_keeps_what_exists(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file() and p.name != "index.json"}
    (demo / "users" / "carol.pem").unlink()
    (demo / "users" / "carol.key").unlink()
    code, out, _ = run(capsys, "--dir", str(demo), "demo")
    assert code == 0
    assert "alice exists" in out and "wrote" in out
    for path, data in before.items():
        if path.name.startswith("carol"):
            assert path.read_bytes() != data  # re-made
        else:
            assert path.read_bytes() == data


def test_key_files_are_0600_and_certificates_public(tmp_path: Path, capsys: pytest.CaptureFixture[str], open_umask: None) -> None:
    d = tmp_path / "pki"
    assert run(capsys, "--dir", str(d), "demo")[0] == 0
    pw = write_passphrase(tmp_path / "pw", "zoe's secret")
    code, _, err = run(
        capsys, "--dir", str(d), "user", "zoe", "--display-name", ZOE, "--sip", "sip:zoe@stc.example",
        "--p12-passphrase-file", str(pw),
    )
    assert (code, err) == (0, "")
    secrets = [d / "ca.key", d / "server.key", *(d / "users").glob("*.key"), d / "users" / "zoe.p12"]
    assert len(secrets) == 7
    assert {p.name: mode(p) for p in secrets} == {p.name: 0o600 for p in secrets}
    public = [d / "ca.pem", d / "crl.pem", d / "server.pem", *(d / "users").glob("*.pem")]
    assert {p.name: mode(p) for p in public} == {p.name: 0o644 for p in public}


def test_test_pki_keys_are_0600(tmp_path: Path, open_umask: None) -> None:
    pki = make_test_pki(tmp_path / "t")
    keys = [pki.ca_key, pki.server.key, pki.wrong_host_server.key, *(f.key for f in pki.users.values())]
    assert {mode(k) for k in keys} == {0o600}
    assert set(pki.users) == {
        "alice", "bob", "carol", "zoe", "expired", "not_yet_valid", "revoked", "no_client_auth", "other_ca"
    }


# -- users ---------------------------------------------------------------------


def test_unicode_user_with_p12(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = write_passphrase(tmp_path / "pw", "correct horse")
    code, out, err = run(
        capsys, "--dir", str(demo), "user", "zoe", "--display-name", ZOE, "--org", "Ørg AB", "--ou", "Tëst",
        "--sip", "sip:zoe@stc.example", "--email", "zoe@stc.example", "--p12-passphrase-file", str(pw),
    )
    assert (code, err) == (0, "")
    assert ZOE in out
    bundle = pkcs12.load_pkcs12((demo / "users" / "zoe.p12").read_bytes(), b"correct horse")
    assert bundle.cert is not None and bundle.key is not None
    cert = bundle.cert.certificate
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == ZOE
    assert cert == x509.load_pem_x509_certificate((demo / "users" / "zoe.pem").read_bytes())
    assert bundle.key.public_key() == cert.public_key()
    assert [c.certificate for c in bundle.additional_certs] == [
        x509.load_pem_x509_certificate((demo / "ca.pem").read_bytes())
    ]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12((demo / "users" / "zoe.p12").read_bytes(), b"wrong horse")
    trust = TrustAnchors.load(demo / "ca.pem", demo / "crl.pem")
    who = check_client_certificate(der(demo / "users" / "zoe.pem"), trust, now())
    assert (who.display_name, who.organization, who.org_unit) == (ZOE, "Ørg AB", "Tëst")
    assert who.sip_uris == ("sip:zoe@stc.example",) and who.emails == ("zoe@stc.example",)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign


def test_encrypted_user_key(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = write_passphrase(tmp_path / "pw", "dave's key")
    code, _, _ = run(
        capsys, "--dir", str(demo), "user", "dave", "--display-name", "Dave", "--email", "dave@stc.example",
        "--key-passphrase-file", str(pw),
    )
    assert code == 0
    data = (demo / "users" / "dave.key").read_bytes()
    assert b"ENCRYPTED" in data
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, None)
    key = serialization.load_pem_private_key(data, b"dave's key")
    cert = x509.load_pem_x509_certificate((demo / "users" / "dave.pem").read_bytes())
    assert key.public_key() == cert.public_key()


# -- revocation ----------------------------------------------------------------


def test_revoke_puts_the_serial_on_a_new_signed_crl(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = x509.load_pem_x509_certificate((demo / "ca.pem").read_bytes())
    alice = x509.load_pem_x509_certificate((demo / "users" / "alice.pem").read_bytes())
    old = x509.load_pem_x509_crl((demo / "crl.pem").read_bytes())
    assert old.get_revoked_certificate_by_serial_number(alice.serial_number) is None
    code, out, err = run(capsys, "--dir", str(demo), "revoke", "alice")
    assert (code, err) == (0, "")
    assert f"{alice.serial_number:x}" in out
    crl = x509.load_pem_x509_crl((demo / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())
    assert crl.issuer == ca.subject
    assert crl.get_revoked_certificate_by_serial_number(alice.serial_number) is not None
    assert len(crl) == 1
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None
    assert timedelta(days=6, hours=23) < crl.next_update_utc - crl.last_update_utc <= timedelta(days=7)
    trust = TrustAnchors.load(demo / "ca.pem", demo / "crl.pem")
    with pytest.raises(CertificateRejected) as info:
        check_client_certificate(der(demo / "users" / "alice.pem"), trust, now())
    assert info.value.reason == "revoked"
    assert check_client_certificate(der(demo / "users" / "bob.pem"), trust, now()).display_name == "Bob Brown"
    index = json.loads((demo / "index.json").read_text())
    assert {e["name"]: e["revoked"] for e in index["certificates"]}["alice"] is True
    _, out, _ = run(capsys, "--dir", str(demo), "list")
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("alice")] == [["alice", "user", "revoked"]]


def test_revoke_by_serial_and_crl_lifetime(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bob = x509.load_pem_x509_certificate((demo / "users" / "bob.pem").read_bytes())
    assert run(capsys, "--dir", str(demo), "revoke", "--serial", f"{bob.serial_number:x}")[0] == 0
    assert run(capsys, "--dir", str(demo), "crl", "--days", "2")[0] == 0
    crl = x509.load_pem_x509_crl((demo / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(bob.serial_number) is not None
    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - (now() + timedelta(days=2))) < timedelta(minutes=1)


# -- errors: one line, exit 2 ----------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["revoke", "nobody"], "no certificate named 'nobody'"),
        (["user", "alice", "--display-name", "Alice", "--sip", "sip:alice@stc.example"], "already exists"),
        (["server", "--dns", "localhost"], "already exists"),
        (["init-ca"], "already exists"),
        (["user", "eve", "--display-name", "Eve", "--sip", "eve@stc.example"], "not a SIP URI"),
        (["user", "eve", "--display-name", "Eve"], "give --sip and/or --email"),
        (["user", "../eve", "--display-name", "Eve", "--sip", "sip:e@x"], "user name '../eve'"),
        (["user", "eve", "--display-name", "Eve\u202eevil", "--sip", "sip:e@x"], "U+202E"),
        (["user", "eve", "--display-name", "E" * 65, "--sip", "sip:e@x"], "at most 64"),
        (["user", "eve", "--display-name", "Eve", "--email", "eve@stc.example", "--p12-passphrase-file", "/nonexistent"], "passphrase file not found"),
        (["crl", "--days", "0"], "at least 1"),
    ],
)
def test_clear_errors_exit_2(
    demo: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    code, out, err = run(capsys, "--dir", str(demo), *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("stc-pki: error: ")
    assert words in err
    assert "Traceback" not in err
    assert not (demo / "users" / "eve.pem").exists() and not (demo / "users" / "eve.key").exists()


def test_revoking_twice_is_an_error(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--dir", str(demo), "revoke", "carol")[0] == 0
    code, _, err = run(capsys, "--dir", str(demo), "revoke", "carol")
    assert (code, err) == (2, "stc-pki: error: 'carol' is already revoked\n")


@pytest.mark.parametrize("argv", [["list"], ["crl"], ["revoke", "alice"], ["server", "--dns", "x.test"]])
def test_missing_ca_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, "--dir", str(tmp_path / "empty"), *argv)
    assert code == 2
    assert "no CA in" in err and "init-ca" in err and err.count("\n") == 1


def test_usage_errors_return_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(tmp_path), "user", "x"]) == 2  # --display-name missing
    assert "--display-name" in capsys.readouterr().err
    assert main(["--dir", str(tmp_path), "server", "--dns", "ok.test", "--ip", "300.1.1.1"]) == 2


# -- an existing CA ------------------------------------------------------------


def _external_ca(
    tmp_path: Path, passphrase: bytes | None, key_usage: bool = True
) -> tuple[Path, Path, x509.Certificate]:
    """A CA made elsewhere: RSA, no pathlen, no AKI, a different subject layout."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name.from_rfc4514_string("CN=Corp Root,OU=IT,O=Corp,C=SE")
    t = now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - timedelta(days=1))
        .not_valid_after(t + timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if key_usage:
        ku = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(ku, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    cert_path, key_path = tmp_path / "corp-ca.pem", tmp_path / "corp-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return cert_path, key_path, cert


def test_use_an_existing_encrypted_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert_path, key_path, ca = _external_ca(tmp_path, b"corp pass")
    pw = write_passphrase(tmp_path / "ca-pw", "corp pass")
    d = tmp_path / "pki"
    base = ["--dir", str(d), "--ca-passphrase-file", str(pw)]
    code, out, err = run(capsys, *base, "init-ca", "--use-ca", str(cert_path), str(key_path))
    assert (code, err) == (0, "")
    assert "Corp Root" in out
    assert (d / "ca.key").read_bytes() == key_path.read_bytes()  # kept encrypted, as given
    assert mode(d / "ca.key") == 0o600
    assert run(capsys, *base, "user", "erin", "--display-name", "Erin", "--sip", "sip:erin@corp.example")[0] == 0
    trust = TrustAnchors.load(d / "ca.pem", d / "crl.pem")
    assert trust.cas == (ca,)
    who = check_client_certificate(der(d / "users" / "erin.pem"), trust, now())
    assert who.issuer == "CN=Corp Root,OU=IT,O=Corp,C=SE"
    assert run(capsys, *base, "revoke", "erin")[0] == 0
    with pytest.raises(CertificateRejected) as info:
        check_client_certificate(der(d / "users" / "erin.pem"), TrustAnchors.load(d / "ca.pem", d / "crl.pem"), now())
    assert info.value.reason == "revoked"
    code, _, err = run(capsys, "--dir", str(d), "user", "fay", "--display-name", "Fay", "--sip", "sip:fay@corp.example")
    assert code == 2 and "encrypted" in err and "passphrase" in err


def test_init_ca_with_a_passphrase_encrypts_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = write_passphrase(tmp_path / "pw", "ca secret")
    d = tmp_path / "pki"
    assert run(capsys, "--dir", str(d), "--ca-passphrase-file", str(pw), "init-ca", "--cn", "Ünïcode CA")[0] == 0
    assert b"ENCRYPTED" in (d / "ca.key").read_bytes()
    wrong = write_passphrase(tmp_path / "wrong", "not it")
    code, _, err = run(capsys, "--dir", str(d), "--ca-passphrase-file", str(wrong), "crl")
    assert code == 2 and "passphrase is wrong" in err
    assert run(capsys, "--dir", str(d), "--ca-passphrase-file", str(pw), "crl")[0] == 0
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert ca.subject.rfc4514_string() == "CN=Ünïcode CA"


def test_use_ca_refuses_what_is_not_a_usable_ca(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_cert, user_key = demo / "users" / "alice.pem", demo / "users" / "alice.key"
    code, _, err = run(capsys, "--dir", str(tmp_path / "a"), "init-ca", "--use-ca", str(user_cert), str(user_key))
    assert code == 2 and "CA:false" in err
    code, _, err = run(capsys, "--dir", str(tmp_path / "b"), "init-ca", "--use-ca", str(demo / "ca.pem"), str(user_key))
    assert code == 2 and "does not belong" in err
    cert_path, key_path, _ = _external_ca(tmp_path, None, key_usage=False)
    code, _, err = run(capsys, "--dir", str(tmp_path / "c"), "init-ca", "--use-ca", str(cert_path), str(key_path))
    assert code == 2 and "no keyUsage" in err
    assert not any((tmp_path / d / "ca.key").exists() for d in "abc")


# -- OpenSSL agrees --------------------------------------------------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS 1.3 handshake through memory BIOs: no sockets. Raises ssl.SSLError on refusal."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        # TLS 1.3: the client finishes first; the server judges its certificate last.
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish in 20 rounds")


def _contexts(demo: Path, user: str, crl: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(demo / "server.pem", demo / "server.key")
    server.load_verify_locations(cafile=demo / "ca.pem")
    if crl:
        server.load_verify_locations(cafile=demo / "crl.pem")
        server.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(cafile=demo / "ca.pem")
    client.load_cert_chain(demo / "users" / f"{user}.pem", demo / "users" / f"{user}.key")
    return server, client


def test_openssl_accepts_the_demo_set_and_agrees_on_identity(demo: Path) -> None:
    client, server = _handshake(*_contexts(demo, "alice", crl=True))
    peer = server.getpeercert(binary_form=True)
    assert peer == der(demo / "users" / "alice.pem")
    trust = TrustAnchors.load(demo / "ca.pem", demo / "crl.pem")
    assert check_client_certificate(peer, trust, now()).display_name == "Alice Adams"
    server_der = client.getpeercert(binary_form=True)
    assert check_server_certificate(server_der, trust, "localhost", now()).display_name == "localhost"


def test_openssl_refuses_a_revoked_user_with_our_crl(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--dir", str(demo), "revoke", "bob")[0] == 0
    with pytest.raises(ssl.SSLError, match="revoked"):
        _handshake(*_contexts(demo, "bob", crl=True))
    _handshake(*_contexts(demo, "carol", crl=True))  # the others still get in
