"""The technician's inventory: a real SQLite file, real openssl output, the real CLI parser."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioning.inventory import (
    Inventory,
    InventoryEntry,
    InventoryError,
    default_inventory_path,
)
from provisioning.inventory_cli import add_inventory_parser
from tests.support.testpki import device

T0 = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def entry(device_id: str = "node-hc-001", *, action: str = "provision", result: str = "ok", kind: str = "node",
          cert_serial: str = "", cert_sha256: str = "", at: datetime = T0, detail: str = "",
          technician: str = "Nguyễn Văn An", site: str = "Hải Châu, trạm 3") -> InventoryEntry:
    return InventoryEntry(action=action, kind=kind, device_id=device_id, serial="SN-0042", site=site,
                          cert_serial=cert_serial, cert_sha256=cert_sha256, technician=technician,
                          result=result, detail=detail, at=at)


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return Inventory(tmp_path / "inventory.db")


def test_record_and_history_round_trip(inv: Inventory) -> None:
    a = entry(cert_serial="0A1B", cert_sha256="ab" * 32, detail="ioc verified 3 telemetry records")
    b = entry(action="decommission", at=T0 + timedelta(days=30), detail="revoked 0a1b, CRL 4")
    other = entry("node-hc-002")
    ids = [inv.record(a), inv.record(other), inv.record(b)]
    assert ids == sorted(ids) and len(set(ids)) == 3

    got = inv.history("node-hc-001")
    assert got == [a, b]  # every field, Vietnamese text and microseconds included
    assert [e.id for e in got] == [ids[0], ids[2]]
    assert got[0].at == T0 and got[0].at.tzinfo is not None
    assert inv.history("nobody") == []


def test_times_are_stored_in_utc(inv: Inventory) -> None:
    hanoi = timezone(timedelta(hours=7))
    inv.record(entry(at=datetime(2025, 3, 1, 15, 30, tzinfo=hanoi)))
    (got,) = inv.history("node-hc-001")
    assert got.at == datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    assert got.at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("field,value", [("action", "install"), ("kind", "meter"), ("result", "done"),
                                          ("device_id", ""), ("cert_serial", "xyz"), ("cert_sha256", "abcd")])
def test_invalid_fields_are_refused(field: str, value: str) -> None:
    kw = dict(action="provision", kind="node", device_id="n1", serial="", site="", cert_serial="",
              cert_sha256="", technician="", result="ok", detail="", at=T0)
    kw[field] = value
    with pytest.raises(InventoryError) as err:
        InventoryEntry(**kw)  # type: ignore[arg-type]
    assert err.value.reason == "invalid"


def test_naive_time_is_refused() -> None:
    with pytest.raises(InventoryError, match="time zone"):
        entry(at=datetime(2025, 3, 1, 8, 30))


def _openssl(cert: Path, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def _self_signed(tmp_path: Path, serial: int) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "serial-test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(T0).not_valid_after(T0 + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path / f"{serial:x}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("which", ["issued", "odd-length serial"])
def test_certificate_fields_match_openssl(tmp_path: Path, inv: Inventory, which: str) -> None:
    """What openssl prints can be pasted in as it is, and what is stored is what openssl shows."""
    path = device("node-inv-openssl").cert if which == "issued" else _self_signed(tmp_path, 0xABC)
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    printed_serial = _openssl(path, "-serial")  # "serial=0ABC"
    printed_fp = _openssl(path, "-fingerprint", "-sha256")  # "sha256 Fingerprint=AB:CD:..."
    inv.record(entry(cert_serial=printed_serial, cert_sha256=printed_fp))
    (got,) = inv.history("node-hc-001")
    assert got.cert_serial == printed_serial.split("=", 1)[1]
    assert int(got.cert_serial, 16) == cert.serial_number
    assert got.cert_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    # The same values written as the flows compute them (lower-case, no padding) read back alike.
    again = entry(cert_serial=f"{cert.serial_number:x}", cert_sha256=cert.fingerprint(hashes.SHA256()).hex())
    assert (again.cert_serial, again.cert_sha256) == (got.cert_serial, got.cert_sha256)


def test_current_follows_provision_replace_and_decommission(inv: Inventory) -> None:
    dev = "gw-dn-001"
    assert inv.current(dev) is None
    inv.record(entry(dev, kind="gateway", cert_serial="01"))
    assert (c := inv.current(dev)) is not None and c.cert_serial == "01"
    inv.record(entry(dev, kind="gateway", action="replace", result="failed", cert_serial="02"))
    inv.record(entry(dev, kind="gateway", action="replace", result="in_progress", cert_serial="03"))
    assert (c := inv.current(dev)) is not None and c.cert_serial == "01"  # neither took effect
    inv.record(entry(dev, kind="gateway", action="replace", cert_serial="04"))
    assert (c := inv.current(dev)) is not None and c.cert_serial == "04" and c.action == "replace"
    inv.record(entry(dev, kind="gateway", action="decommission", result="failed"))
    assert (c := inv.current(dev)) is not None and c.cert_serial == "04"  # a failed revocation revokes nothing
    inv.record(entry(dev, kind="gateway", action="decommission"))
    assert inv.current(dev) is None
    inv.record(entry("gw-dn-002", kind="gateway", cert_serial="05"))  # another device does not count
    assert inv.current(dev) is None
    inv.record(entry(dev, kind="gateway", cert_serial="06"))  # the id put back into service
    assert (c := inv.current(dev)) is not None and c.cert_serial == "06"


def test_interrupted_run_is_found_and_resumed(inv: Inventory) -> None:
    dev = "node-hc-007"
    assert inv.in_progress(dev) is None
    row = inv.record(entry(dev, result="in_progress", detail="started"))
    found = inv.in_progress(dev)
    assert found is not None and found.id == row and found.result == "in_progress"
    assert inv.in_progress(dev, action="replace") is None
    assert inv.in_progress("node-hc-008") is None
    # A re-run that failed early (cable still out) has not finished the interrupted one.
    inv.record(entry(dev, result="failed", detail="unplugged: port vanished"))
    assert (found := inv.in_progress(dev)) is not None and found.id == row
    # The resumed run closes the same row, with the certificate it learnt half-way.
    inv.update_result(row, "ok", "ioc verified 2 telemetry records", cert_serial="7f01", cert_sha256="cd" * 32)
    assert inv.in_progress(dev) is None
    cur = inv.current(dev)
    assert cur is not None and cur.id == row and cur.cert_serial == "7F01" and cur.cert_sha256 == "cd" * 32
    assert [e.result for e in inv.history(dev)] == ["ok", "failed"]
    # An interrupted run that a later, complete run made moot is not offered for resuming.
    inv.record(entry(dev, action="replace", result="in_progress"))
    assert inv.in_progress(dev) is not None
    inv.record(entry(dev, action="replace", cert_serial="7F02"))
    assert inv.in_progress(dev) is None


def test_update_result_checks_its_input(inv: Inventory) -> None:
    row = inv.record(entry(result="in_progress"))
    with pytest.raises(InventoryError) as err:
        inv.update_result(row + 100, "ok", "")
    assert err.value.reason == "not_found"
    with pytest.raises(InventoryError) as err:
        inv.update_result(row, "finished", "")
    assert err.value.reason == "invalid"
    assert inv.history("node-hc-001")[0].result == "in_progress"


TRICKY = 'ống "A", dòng 2\nphẩy, ngoặc "kép"'


def _fill(inv: Inventory) -> list[InventoryEntry]:
    rows = [entry(cert_serial="0A1B", cert_sha256="ef" * 32, detail=TRICKY),
            entry("gw-dn-001", kind="gateway", result="failed", detail="token_expired: uet1.x expired"),
            entry(action="decommission", at=T0 + timedelta(hours=1))]
    for r in rows:
        inv.record(r)
    return inv.entries()


def test_export_csv_parses_back(inv: Inventory) -> None:
    stored = _fill(inv)
    out = io.StringIO(newline="")
    assert inv.export("csv", out) == 3
    text = out.getvalue()
    assert text.splitlines()[0] == ("id,at,action,kind,device_id,serial,site,cert_serial,cert_sha256,technician,"
                                    "result,detail")
    back = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(back) == 3
    for row, e in zip(back, stored, strict=True):
        assert row == {k: str(v) for k, v in e.as_export().items()}
        assert datetime.fromisoformat(row["at"]) == e.at
    assert back[0]["detail"] == TRICKY and back[0]["technician"] == "Nguyễn Văn An"


def test_export_json_parses_back(inv: Inventory) -> None:
    stored = _fill(inv)
    out = io.StringIO()
    inv.export("json", out)
    back = json.loads(out.getvalue())
    assert [r["id"] for r in back] == [e.id for e in stored]
    rebuilt = [InventoryEntry(**{**{k: v for k, v in r.items() if k != "id"}, "at": datetime.fromisoformat(r["at"])})
               for r in back]
    assert rebuilt == stored
    assert "Nguyễn Văn An" in out.getvalue()  # readable, not \u-escaped


def test_export_of_an_empty_inventory(inv: Inventory) -> None:
    out = io.StringIO()
    assert inv.export("json", out) == 0 and json.loads(out.getvalue()) == []


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave files world-readable: the 0600 must come from the code."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_files_are_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "data" / "urbanedge" / "inventory.db"
    inv = Inventory(path)
    inv.record(entry())
    with closing(sqlite3.connect(path)) as reader:  # keeps the WAL and shm files in place while looked at
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        files = [path, *(p for p in (path.with_name(path.name + s) for s in ("-wal", "-shm")) if p.exists())]
        assert len(files) >= 2
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_default_path(tmp_path: Path) -> None:
    assert default_inventory_path({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "urbanedge" / "inventory.db"
    assert default_inventory_path({}) == Path.home() / ".local" / "share" / "urbanedge" / "inventory.db"
    assert default_inventory_path({"XDG_DATA_HOME": ""}) == default_inventory_path({})


def test_another_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY)")
        conn.commit()
    with pytest.raises(InventoryError) as err:
        Inventory(path)
    assert err.value.reason == "storage"
    with closing(sqlite3.connect(path)) as conn:  # untouched
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["records"]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InventoryError) as err:
        Inventory(garbage)
    assert err.value.reason == "storage"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            inv = Inventory(path)  # each its own, as two tools on one laptop would be
            for i in range(20):
                inv.record(entry(f"node-{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = Inventory(path).entries()
    assert len(rows) == 80 and len({r.id for r in rows}) == 80
    assert {r.device_id for r in rows} == {f"node-{n}-{i}" for n in range(4) for i in range(20)}


# --- the CLI ------------------------------------------------------------------------------------

def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="urbanedge provision")
    add_inventory_parser(parser.add_subparsers(dest="provision_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_export_to_file(tmp_path: Path, inv: Inventory, capsys: pytest.CaptureFixture[str]) -> None:
    stored = _fill(inv)
    out = tmp_path / "handover" / "inventory.csv"
    assert _run(["inventory", "export", "--format", "csv", "--out", str(out), "--inventory", str(inv.path),
                 "--lang", "vi"]) == 0
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # so a spreadsheet reads the Vietnamese as UTF-8
    back = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert [r["id"] for r in back] == [str(e.id) for e in stored] and back[0]["detail"] == TRICKY
    err = capsys.readouterr().err
    assert f"Đã ghi sổ thiết bị ra {out}." in err and "records=3" in err

    js = tmp_path / "inventory.json"
    assert _run(["inventory", "export", "--format", "json", "--out", str(js), "--inventory", str(inv.path)]) == 0
    assert [r["device_id"] for r in json.loads(js.read_text(encoding="utf-8"))] == [e.device_id for e in stored]


def test_cli_export_to_stdout(inv: Inventory, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(inv)
    assert _run(["inventory", "export", "--format", "json", "--inventory", str(inv.path)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_cli_show(inv: Inventory, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(inv)
    assert _run(["inventory", "show", "gw-dn-001", "--inventory", str(inv.path), "--lang", "en"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "failed" in out[0] and "token_expired" in out[0]
    assert out[1] == "gw-dn-001 has no active certificate."

    inv.record(entry("gw-dn-001", kind="gateway", cert_serial="0B", cert_sha256="12" * 32))
    assert _run(["inventory", "show", "gw-dn-001", "--inventory", str(inv.path), "--lang", "vi"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"Chứng thư đang hiệu lực của gw-dn-001: số serial 0B, SHA-256 {'12' * 32}."

    assert _run(["inventory", "show", "nobody", "--inventory", str(inv.path), "--lang", "en"]) == 1
    assert capsys.readouterr().out.strip() == "No inventory record for nobody."


def test_cli_does_not_create_a_missing_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo.db"
    assert _run(["inventory", "export", "--inventory", str(missing), "--lang", "en"]) == 2
    assert _run(["inventory", "show", "x", "--inventory", str(missing), "--lang", "en"]) == 2
    assert not missing.exists()
    assert f"No inventory at {missing}." in capsys.readouterr().err
