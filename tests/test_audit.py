"""The audit trail's chain and signatures, in memory (and the file's rotation and reopening in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from stc_asterisk.audit import GENESIS, AuditChain, AuditLog, AuditLogError, Line, read_lines, verify_records
from stc_asterisk.audit_cli import describe, records_of, select
from stc_asterisk.cli import main
from stc_wire.roster import canonical_json

KEYS = {
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
KEY = KEYS["ec"]


def chain_lines(n: int = 6, key=KEY) -> list[str]:  # type: ignore[no-untyped-def]
    chain = AuditChain()
    lines = []
    for i in range(n):
        lines.append(canonical_json(chain.append("join", f"2026-12-02T10:00:0{i}.000000Z",
                                                 {"room": "1000", "subject": f"CN=user{i}"})).decode())
        if i == 2:
            lines.append(canonical_json(chain.sign(key, "2026-12-02T10:00:02.500000Z", "srv")).decode())
    lines.append(canonical_json(chain.sign(key, "2026-12-02T10:00:09.000000Z", "srv")).decode())
    return lines


def as_lines(texts: list[str]) -> list[Line]:
    return [Line("audit.jsonl", i, t) for i, t in enumerate(texts, 1)]


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_an_untouched_chain_verifies_with_each_kind_of_server_key(kind: str) -> None:
    key = KEYS[kind]
    verdict = verify_records(as_lines(chain_lines(key=key)), key.public_key())
    assert verdict.ok, verdict.error
    assert verdict.records == 8 and verdict.signatures == 2


def test_records_link_by_sha256_from_the_genesis() -> None:
    records = [json.loads(t) for t in chain_lines()]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] and b["seq"] == a["seq"] + 1 for a, b in zip(records, records[1:]))


def test_a_signature_by_another_key_fails() -> None:
    verdict = verify_records(as_lines(chain_lines()), ec.generate_private_key(ec.SECP256R1()).public_key())
    assert not verdict.ok and "audit.jsonl:4:" in (verdict.error or "") and "signature" in (verdict.error or "")


@pytest.mark.parametrize("index", range(8))
def test_editing_any_line_is_named(index: int) -> None:
    texts = chain_lines()
    record = json.loads(texts[index])
    record["room"] = "2000" if "room" in record else "x"
    record["time"] = "2026-12-02T11:00:00.000000Z"
    texts[index] = canonical_json(record).decode()
    verdict = verify_records(as_lines(texts), KEY.public_key())
    assert verdict.error is not None and verdict.error.startswith(f"audit.jsonl:{index + 1}: ") and "edited" in verdict.error


@pytest.mark.parametrize("index", range(8))
def test_deleting_any_line_is_named(index: int) -> None:
    texts = chain_lines()
    del texts[index]
    verdict = verify_records(as_lines(texts), KEY.public_key())
    assert verdict.error is not None
    # The record now at the deleted line's place (or the end, for the last line) is named.
    assert verdict.error.startswith(f"audit.jsonl:{index + 1}: "), verdict.error


@pytest.mark.parametrize("index", range(7))
def test_swapping_two_lines_is_named(index: int) -> None:
    texts = chain_lines()
    texts[index], texts[index + 1] = texts[index + 1], texts[index]
    verdict = verify_records(as_lines(texts), KEY.public_key())
    assert verdict.error is not None and verdict.error.startswith(f"audit.jsonl:{index + 1}: "), verdict.error


def test_rewriting_every_later_hash_still_needs_the_key() -> None:
    texts = chain_lines()
    records = [json.loads(t) for t in texts]
    records[4]["subject"] = "CN=mallory"
    from stc_asterisk.audit import record_hash

    for i in range(4, len(records)):
        records[i]["prev"] = records[i - 1]["hash"]
        records[i]["hash"] = record_hash(records[i])
    verdict = verify_records(as_lines([canonical_json(r).decode() for r in records]), KEY.public_key())
    assert verdict.error is not None and verdict.error.startswith("audit.jsonl:8: ") and "signature" in verdict.error


def test_an_unsigned_tail_fails_unless_the_log_is_open() -> None:
    texts = chain_lines()[:-1]
    assert "no signature covers" in (verify_records(as_lines(texts), KEY.public_key()).error or "")
    assert verify_records(as_lines(texts), KEY.public_key(), allow_unsigned_tail=True).ok


def test_the_file_rotates_reopens_and_keeps_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, "srv", rotate_bytes=2000)
    for i in range(20):
        log.record("join", room="1000", subject=f"CN=user{i}")
    log.close()
    again = AuditLog(path, KEY, "srv", rotate_bytes=2000)  # a restart continues the chain
    again.record("leave", room="1000", subject="CN=user0")
    again.close()
    files = sorted(tmp_path.glob("audit.jsonl.*")) + [path]
    assert len(files) >= 3
    verdict = verify_records(read_lines(files), KEY.public_key())
    assert verdict.ok, verdict.error
    assert verdict.records > 21
    # The newest file alone verifies from its chain-continued link on.
    assert verify_records(read_lines([path]), KEY.public_key()).ok
    # Leaving out a middle file breaks the chain at the next file's first record.
    broken = verify_records(read_lines([files[0], *files[2:]]), KEY.public_key())
    assert broken.error is not None and broken.error.startswith(f"{files[2]}:1: ")


def test_a_damaged_last_line_refuses_to_continue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"seq": 1, "half a reco\n')
    with pytest.raises(AuditLogError, match="audit verify"):
        AuditLog(path, KEY, "srv")


def test_show_selects_a_room_and_a_time_window() -> None:
    records = list(records_of(chain_lines()))
    from datetime import datetime, timezone

    chosen = select(records, room="1000", since=datetime(2026, 12, 2, 10, 0, 2, tzinfo=timezone.utc))
    assert [r["subject"] for r in chosen] == ["CN=user2", "CN=user3", "CN=user4", "CN=user5"]
    assert "join" in describe(chosen[0]) and "room 1000" in describe(chosen[0])
    assert select(records, room="2000") == []


def test_cli_verify_names_the_broken_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from datetime import datetime, timedelta, timezone

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "srv")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(KEY.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(KEY, hashes.SHA256()))
    cert_path = tmp_path / "server.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    log_path = tmp_path / "audit.jsonl"
    texts = chain_lines()
    log_path.write_text("\n".join(texts) + "\n")
    assert main(["audit", "verify", str(log_path), "--cert", str(cert_path)]) == 0
    assert "8 records, 2 signatures" in capsys.readouterr().out
    texts[2] = texts[2].replace("user2", "user9")
    log_path.write_text("\n".join(texts) + "\n")
    assert main(["audit", "verify", str(log_path), "--cert", str(cert_path)]) == 1
    assert f"{log_path}:3: record 3 was edited" in capsys.readouterr().err


def test_files_are_taken_in_chain_order_whatever_order_the_glob_gives(tmp_path: Path) -> None:
    from stc_asterisk.audit_cli import chain_order

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, "srv", rotate_bytes=1500)
    for i in range(12):
        log.record("join", room="1000", subject=f"CN=user{i}")
    log.close()
    globbed = sorted(tmp_path.glob("audit.jsonl*"))  # audit.jsonl first, as a shell would
    assert globbed[0] == path and len(globbed) >= 3
    ordered = chain_order(globbed)
    assert ordered[-1] == path
    assert verify_records(read_lines(ordered), KEY.public_key()).ok


def test_a_change_of_server_key_verifies_with_both_certificates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEYS["ec"], "old")
    log.record("join", room="1000", subject="CN=a")
    log.change_key(KEYS["ed25519"], "new")
    log.record("leave", room="1000", subject="CN=a")
    log.close()
    both = [KEYS["ec"].public_key(), KEYS["ed25519"].public_key()]
    assert verify_records(read_lines([path]), both).ok
    only_new = verify_records(read_lines([path]), KEYS["ed25519"].public_key())
    assert only_new.error is not None and only_new.error.startswith(f"{path}:2: ")
