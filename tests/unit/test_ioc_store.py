"""The IOC reading store on SQLite: exactly once per (source, seq), gaps, restarts, schema.

The ``scenario_*`` functions take a store factory and are run against PostgreSQL too
(tests/integration/test_ioc_store_postgres.py).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer.store import Outbox
from ioc.gaps import Gap, SeqState, advance
from ioc.store import (
    InvalidRecordError,
    ReadingStore,
    SchemaError,
    SqliteReadingStore,
    StoreClosedError,
    StoreConfigError,
    StoreConnectError,
    open_store,
)
from ioc.store.base import META_TABLE

Factory = Callable[[], ReadingStore]


def rec(seq: int, device: str = "sl-001", **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "telemetry", "device_id": device, "kind": "streetlight",
            "ts": 1764000000.0 + seq, "quality": "good", "values": {"dim_level": seq % 101}, **extra}


def recs(seqs: Iterable[int]) -> list[dict[str, Any]]:
    return [rec(s) for s in seqs]


def seqs_of(records: Iterable[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in records]


def stored_seqs(store: ReadingStore, source: str) -> list[int]:
    return seqs_of(store.records(source, limit=1_000_000))


# --- scenarios shared with the PostgreSQL tests ------------------------------------------


def scenario_exactly_once(make: Factory) -> None:
    with make() as store:
        first = store.accept("gw-a", recs([1, 2, 3]), received_at=10.0)
        assert seqs_of(first.new) == [1, 2, 3]
        assert first.duplicates == 0 and first.gaps == []
        again = store.accept("gw-a", recs([3, 2, 1]), received_at=11.0)
        assert again.new == [] and again.duplicates == 3
        # Overlap plus a repeat inside the message: the first copy counts, the rest are duplicates.
        mixed = store.accept("gw-a", recs([3, 4, 4, 5]), received_at=12.0)
        assert seqs_of(mixed.new) == [4, 5] and mixed.duplicates == 2
        # Another gateway's seq 1 is another record.
        other = store.accept("gw-b", recs([1]), received_at=12.0)
        assert seqs_of(other.new) == [1]
        assert stored_seqs(store, "gw-a") == [1, 2, 3, 4, 5]
        stats = store.stats()
        assert stats["gw-a"] == {"stored": 5, "duplicates": 5, "first_seq": 1, "highest_seq": 5, "missing": 0}
        assert stats["gw-b"]["stored"] == 1


def scenario_gaps(make: Factory) -> None:
    with make() as store:
        assert store.accept("gw", recs([10, 11]), received_at=1).gaps == []
        # Alarms overtake telemetry: 15 arrives before 12..14.
        jump = store.accept("gw", recs([15, 17]), received_at=2)
        assert jump.gaps == [Gap("gw", 12, 14), Gap("gw", 16, 16)]
        assert store.stats()["gw"]["missing"] == 4
        assert store.open_gaps("gw") == [Gap("gw", 12, 14), Gap("gw", 16, 16)]
        # Filling part of a hole is no new gap; the rest stays open.
        fill = store.accept("gw", recs([13, 16]), received_at=3)
        assert seqs_of(fill.new) == [13, 16] and fill.gaps == []
        assert store.stats()["gw"]["missing"] == 2
        assert store.open_gaps("gw") == [Gap("gw", 12, 12), Gap("gw", 14, 14)]
        # Older than the first record ever stored: kept, but it neither opens nor fills a hole.
        old = store.accept("gw", recs([3]), received_at=4)
        assert seqs_of(old.new) == [3] and old.gaps == []
        assert store.stats()["gw"] == {"stored": 7, "duplicates": 0, "first_seq": 10, "highest_seq": 17,
                                       "missing": 2}
        store.accept("gw", recs([12, 14]), received_at=5)
        assert store.stats()["gw"]["missing"] == 0 and store.open_gaps("gw") == []
        assert store.open_gaps("never-seen") == []


def scenario_survives_reopen(make: Factory) -> None:
    with make() as store:
        store.accept("gw", recs([1, 2, 6]), received_at=1)
    with make() as store:
        again = store.accept("gw", recs([2, 6, 7, 9]), received_at=2)
        assert seqs_of(again.new) == [7, 9] and again.duplicates == 2
        assert again.gaps == [Gap("gw", 8, 8)]
        assert store.stats()["gw"] == {"stored": 5, "duplicates": 2, "first_seq": 1, "highest_seq": 9,
                                       "missing": 4}
        assert store.open_gaps("gw") == [Gap("gw", 3, 5), Gap("gw", 8, 8)]


def scenario_round_trip(make: Factory) -> None:
    alarm = {"seq": 8, "type": "alarm", "device_id": "fl-001", "kind": "flood-sensor", "ts": 1764000000.5,
             "alarm": "flood_danger", "state": "raised", "severity": "danger", "point": "water_level",
             "value": Decimal("204.2"), "threshold": 200}
    event = {"seq": 7, "type": "event", "device_id": "gw", "ts": 1764000000, "event": "agent_started",
             "version": "0.1.0"}
    with make() as store:
        result = store.accept("gw", [alarm, event], received_at=1764000001.25)
        # The caller gets its own records back, Decimal and all, in seq order.
        assert result.new == [event, alarm]
        back = store.records("gw")
        assert back[0] == event
        assert back[1] == {**alarm, "value": 204.2}
        assert store.records("gw", after_seq=7) == [back[1]]
        assert store.records("gw", limit=1) == [back[0]]


def scenario_invalid_message_stores_nothing(make: Factory) -> None:
    with make() as store:
        bad: list[dict[str, Any]] = [rec(1), {"seq": 2, "type": "telemetry", "ts": 1.0}]
        with pytest.raises(InvalidRecordError, match=r"record 1 \(seq 2\): device_id"):
            store.accept("gw", bad, received_at=1)
        with pytest.raises(InvalidRecordError, match="not representable as JSON"):
            store.accept("gw", [rec(1), rec(3, values={"x": float("nan")})], received_at=1)
        for broken in ({**rec(1), "seq": -1}, {**rec(1), "seq": True}, {**rec(1), "seq": 2**63},
                       {**rec(1), "ts": "now"}, {**rec(1), "ts": float("inf")}, {**rec(1), "type": ""},
                       {**rec(1), "kind": 3}):
            with pytest.raises(InvalidRecordError):
                store.accept("gw", [broken], received_at=1)
        with pytest.raises(InvalidRecordError, match="source"):
            store.accept("", [rec(1)], received_at=1)
        assert store.stats() == {} and store.records("gw") == []
        assert store.accept("gw", [], received_at=1).new == []


def scenario_closed(make: Factory) -> None:
    store = make()
    store.close()
    with pytest.raises(StoreClosedError):
        store.accept("gw", recs([1]), received_at=1)
    with pytest.raises(StoreClosedError):
        store.stats()
    store.close()  # twice is fine


# --- SQLite --------------------------------------------------------------------------------


@pytest.fixture
def make_sqlite(tmp_path: Path) -> Factory:
    return lambda: SqliteReadingStore(tmp_path / "readings.db")


def test_exactly_once(make_sqlite: Factory) -> None:
    scenario_exactly_once(make_sqlite)


def test_gaps_detected_and_filled(make_sqlite: Factory) -> None:
    scenario_gaps(make_sqlite)


def test_survives_reopen(make_sqlite: Factory) -> None:
    scenario_survives_reopen(make_sqlite)


def test_round_trip(make_sqlite: Factory) -> None:
    scenario_round_trip(make_sqlite)


def test_invalid_message_stores_nothing(make_sqlite: Factory) -> None:
    scenario_invalid_message_stores_nothing(make_sqlite)


def test_closed(make_sqlite: Factory) -> None:
    scenario_closed(make_sqlite)


def test_files_are_private(tmp_path: Path) -> None:
    with SqliteReadingStore(tmp_path / "r.db") as store:
        store.accept("gw", recs([1]), received_at=1)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["r.db", "r.db-shm", "r.db-wal"]
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
        conn = sqlite3.connect(tmp_path / "r.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_open_store_urls(tmp_path: Path) -> None:
    for url in (f"sqlite:{tmp_path}/a.db", f"sqlite://{tmp_path}/b.db", str(tmp_path / "c.db")):
        with open_store(url) as store:
            assert isinstance(store, SqliteReadingStore)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["a.db", "b.db", "c.db"]
    with pytest.raises(StoreConfigError, match="scheme 'mysql'"):
        open_store("mysql://db/x")
    with pytest.raises(StoreConfigError):
        open_store("")
    with pytest.raises(StoreConfigError, match="names no file"):
        open_store("sqlite:")
    with pytest.raises(StoreConnectError, match="cannot open"):
        open_store(str(tmp_path / "no-such-dir" / "r.db"))


def test_refuses_what_is_not_a_reading_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite at all, just some bytes" * 100)
    with pytest.raises(SchemaError, match="not an SQLite database"):
        SqliteReadingStore(junk)

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE readings (x)")
    conn.close()
    with pytest.raises(SchemaError, match=r"something else .*readings"):
        SqliteReadingStore(other)

    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20)
    outbox.close()
    with pytest.raises(SchemaError, match="gateway outbox"):
        SqliteReadingStore(tmp_path / "outbox.db")


def test_refuses_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteReadingStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE {META_TABLE} SET value = '2' WHERE key = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="schema version 2, this urbanedge understands version 1"):
        SqliteReadingStore(path)


def test_two_connections_to_one_file_store_once(tmp_path: Path) -> None:
    """Two receivers on one host sharing the SQLite file: BEGIN IMMEDIATE serialises them."""
    path = tmp_path / "shared.db"
    SqliteReadingStore(path).close()
    batches = [recs(range(start, start + 20)) for start in range(0, 400, 10)]  # every seq twice
    news: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def receiver(i: int) -> None:
        with SqliteReadingStore(path) as store:
            barrier.wait()
            for batch in batches:
                news[i] += seqs_of(store.accept("gw", batch, received_at=1).new)

    threads = [threading.Thread(target=receiver, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(news[0]) & set(news[1])
    assert sorted(news[0] + news[1]) == list(range(0, 410))
    with SqliteReadingStore(path) as store:
        stats = store.stats()["gw"]
        assert stats["stored"] == 410 and stats["missing"] == 0
        assert stats["duplicates"] == 2 * len(batches) * 20 - 410


# --- the pure gap bookkeeping ------------------------------------------------------------


def test_advance() -> None:
    state, gaps = advance("s", SeqState(), [5, 6, 9])
    assert state == SeqState(baseline=5, highest=9, missing=2) and gaps == [Gap("s", 7, 8)]
    state, gaps = advance("s", state, [1, 8, 12])
    assert state == SeqState(baseline=5, highest=12, missing=3) and gaps == [Gap("s", 10, 11)]
    assert Gap("s", 10, 11).size == 2


# --- property: any order, any duplication ------------------------------------------------

batches_st = st.lists(
    st.tuples(st.sampled_from(["gw-a", "gw-b"]), st.lists(st.integers(0, 60), max_size=12)),
    max_size=14,
)


@settings(max_examples=120, deadline=None)
@given(batches=batches_st, reopen_at=st.integers(0, 14))
def test_any_interleaving_is_stored_exactly_once(batches: list[tuple[str, list[int]]], reopen_at: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r.db")
        store = SqliteReadingStore(path)
        try:
            new: dict[str, list[int]] = {"gw-a": [], "gw-b": []}
            reported: dict[str, list[Gap]] = {"gw-a": [], "gw-b": []}
            first_batch: dict[str, list[int]] = {}
            for i, (source, seqs) in enumerate(batches):
                if i == reopen_at:
                    store.close()
                    store = SqliteReadingStore(path)
                result = store.accept(source, recs(seqs), received_at=float(i))
                assert seqs_of(result.new) == sorted(set(seqs_of(result.new)))
                new[source] += seqs_of(result.new)
                reported[source] += result.gaps
                if seqs and source not in first_batch:
                    first_batch[source] = seqs
            stats = store.stats()
            for source in ("gw-a", "gw-b"):
                sent = [s for src, seqs in batches if src == source for s in seqs]
                union = set(sent)
                assert set(stored_seqs(store, source)) == union
                assert sorted(new[source]) == sorted(union)  # each seq reported new exactly once
                if not union:
                    assert source not in stats
                    continue
                base, top = min(first_batch[source]), max(union)
                holes = [s for s in range(base, top + 1) if s not in union]
                assert stats[source]["stored"] == len(union)
                assert stats[source]["duplicates"] == len(sent) - len(union)
                assert stats[source]["highest_seq"] == top
                assert stats[source]["missing"] == len(holes)
                assert [s for g in store.open_gaps(source)
                        for s in range(g.first_missing, g.last_missing + 1)] == holes
                # Every hole still open was reported when it opened, and reports never overlap.
                covered = [s for g in reported[source] for s in range(g.first_missing, g.last_missing + 1)]
                assert len(covered) == len(set(covered))
                assert set(holes) <= set(covered)
        finally:
            store.close()
