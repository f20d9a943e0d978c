"""The SQLite outbox on a real database file: ordering, acks, eviction, full disk, status."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, Priority, alarm, event, telemetry
from agent.buffer.store import (
    Outbox,
    OutboxClosed,
    OutboxCorrupt,
    OutboxReadOnly,
)

MB = 1024 * 1024


def tele(i: int, device: str = "flood-0001") -> NewRecord:
    values = {"level_cm": 100 + i % 300, "rain_mm": 0.2, "battery_v": 3.71, "temp_c": 21.5}
    return telemetry(device, "flood_sensor", 1_700_000_000 + i, values)


def alm(i: int, device: str = "flood-0001") -> NewRecord:
    return alarm(device, "flood_sensor", 1_700_000_000 + i, "high_water", "raised", "major",
                 "level_cm", 350 + i, 300)


def evt(i: int) -> NewRecord:
    return event("gw-1", 1_700_000_000 + i, "device_offline", device="flood-0001", n=i)


def all_seqs(ob: Outbox, prio: Priority) -> list[int]:
    return [r.seq for r in ob.fetch(prio, 0, 10**9)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_append_then_fetch_returns_the_records_as_stored(db: Path) -> None:
    ob = Outbox(db, max_bytes=8 * MB)
    batch = [tele(1), alm(2), evt(3), tele(4, "water-7")]
    res = ob.append(batch)
    assert res.evicted == 0 and res.dropped == 0
    assert res.seqs == sorted(res.seqs) and len(set(res.seqs)) == 4
    got = {r.seq: r for p in Priority for r in ob.fetch(p, 0, 100)}
    for seq, rec in zip(res.seqs, batch, strict=True):
        stored = got[seq]
        assert (stored.prio, stored.device_id, stored.ts, stored.body) == (
            rec.prio, rec.device_id, rec.ts, rec.body)
    ob.close()


def test_fetch_is_per_priority_in_seq_order_with_a_cursor(db: Path) -> None:
    ob = Outbox(db, max_bytes=8 * MB)
    seqs = ob.append([tele(i) if i % 3 else alm(i) for i in range(30)]).seqs
    tele_seqs = [s for i, s in enumerate(seqs) if i % 3]
    alarm_seqs = [s for i, s in enumerate(seqs) if not i % 3]
    assert all_seqs(ob, Priority.TELEMETRY) == tele_seqs
    assert all_seqs(ob, Priority.ALARM) == alarm_seqs
    assert all_seqs(ob, Priority.EVENT) == []
    page = ob.fetch(Priority.TELEMETRY, tele_seqs[4], 5)
    assert [r.seq for r in page] == tele_seqs[5:10]
    assert ob.fetch(Priority.ALARM, alarm_seqs[-1], 10) == []
    assert ob.fetch(Priority.TELEMETRY, 0, 0) == []
    ob.close()


def test_fetch_stops_at_the_body_budget_but_returns_at_least_one(db: Path) -> None:
    ob = Outbox(db, max_bytes=8 * MB)
    ob.append([tele(i) for i in range(10)])
    size = len(tele(0).body)
    assert len(ob.fetch(Priority.TELEMETRY, 0, 10, max_body_bytes=3 * size + 1)) == 3
    assert len(ob.fetch(Priority.TELEMETRY, 0, 10, max_body_bytes=1)) == 1
    ob.close()


def test_delete_counts_only_rows_that_exist(db: Path) -> None:
    ob = Outbox(db, max_bytes=8 * MB)
    seqs = ob.append([tele(i) for i in range(5)] + [alm(9)]).seqs
    assert ob.delete(seqs[:2]) == 2
    assert ob.delete(seqs[:3]) == 1
    assert ob.delete([]) == 0
    assert (ob.pending(seqs), ob.pending(seqs[:3]), ob.pending([])) == (3, 0, 0)
    assert all_seqs(ob, Priority.TELEMETRY) == seqs[3:5]
    st_ = ob.stats()
    assert st_.depth == {Priority.ALARM: 1, Priority.EVENT: 0, Priority.TELEMETRY: 2}
    assert st_.records == 3
    ob.close()


def test_seqs_never_repeat_after_delete_all_and_reopen(db: Path) -> None:
    ob = Outbox(db, max_bytes=8 * MB)
    first = ob.append([tele(i) for i in range(20)]).seqs
    assert ob.delete(first) == 20
    ob.close()
    ob = Outbox(db, max_bytes=8 * MB)
    assert ob.stats().records == 0 and ob.stats().last_seq == first[-1]
    second = ob.append([tele(i) for i in range(3)]).seqs
    assert min(second) > max(first)
    assert second == list(range(second[0], second[0] + 3))
    ob.close()


def test_eviction_takes_oldest_telemetry_keeps_alarms_and_persists_counters(db: Path) -> None:
    limit = 256 * 1024
    ob = Outbox(db, max_bytes=limit)
    alarm_seqs = ob.append([alm(i) for i in range(20)]).seqs
    event_seqs = ob.append([evt(i) for i in range(20)]).seqs
    tele_seqs: list[int] = []
    evicted = 0
    for k in range(40):
        res = ob.append([tele(k * 100 + i) for i in range(100)])
        tele_seqs += res.seqs
        evicted += res.evicted
        assert ob.stats().used_bytes <= limit
    st_ = ob.stats()
    assert evicted == st_.evicted_total > 0
    assert st_.evicted_by_prio[Priority.TELEMETRY] == evicted
    assert all_seqs(ob, Priority.ALARM) == alarm_seqs
    assert all_seqs(ob, Priority.EVENT) == event_seqs
    kept = all_seqs(ob, Priority.TELEMETRY)
    assert kept == tele_seqs[-len(kept):]  # the newest survive, the oldest went first
    ob.close()
    ob = Outbox(db, max_bytes=limit)
    again = ob.stats()
    assert again.evicted_total == evicted and again.depth == st_.depth
    ob.close()


def test_events_go_before_alarms_and_alarms_go_oldest_first_last(db: Path) -> None:
    ob = Outbox(db, max_bytes=128 * 1024)
    alarm_seqs = ob.append([alm(i) for i in range(50)]).seqs
    event_seqs: list[int] = []
    for k in range(20):
        event_seqs += ob.append([evt(k * 100 + i) for i in range(100)]).seqs
    st_ = ob.stats()
    assert st_.evicted_by_prio[Priority.EVENT] > 0
    assert st_.evicted_by_prio[Priority.ALARM] == 0
    assert all_seqs(ob, Priority.ALARM) == alarm_seqs
    kept = all_seqs(ob, Priority.EVENT)
    assert kept == event_seqs[-len(kept):]
    # Alarms only: over the limit, the oldest alarms finally go too.
    for k in range(20):
        alarm_seqs += ob.append([alm(k * 100 + i) for i in range(100)]).seqs
    st_ = ob.stats()
    assert st_.depth[Priority.EVENT] == 0 and st_.evicted_by_prio[Priority.ALARM] > 0
    kept = all_seqs(ob, Priority.ALARM)
    assert kept == alarm_seqs[-len(kept):]
    assert st_.used_bytes <= 128 * 1024
    ob.close()


def test_file_stays_near_the_byte_bound_under_a_long_stream(db: Path) -> None:
    limit = 512 * 1024
    ob = Outbox(db, max_bytes=limit)
    for k in range(120):
        ob.append([tele(k * 100 + i, f"dev-{i % 50}") for i in range(100)])
        st_ = ob.stats()
        assert st_.used_bytes <= limit
        assert db.stat().st_size <= limit * 1.1
        assert st_.file_bytes <= limit * 1.5  # the WAL is kept small next to the limit
    # 12,000 appended into room for a few thousand: everything not kept was evicted, and counted.
    assert st_.evicted_total == 12_000 - st_.records
    assert st_.evicted_total > 6_000
    ob.close()  # checkpoints the WAL into the file
    assert db.stat().st_size <= limit * 1.1


def _cap_pages(ob: Outbox, extra: int) -> None:
    # Simulates a full disk: SQLite answers SQLITE_FULL beyond this many pages.
    pages = ob._conn.execute("PRAGMA page_count").fetchone()[0]
    ob._conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_full_disk_evicts_telemetry_for_alarms_then_drops_and_counts(db: Path) -> None:
    ob = Outbox(db, max_bytes=64 * MB)
    kept_alarms = ob.append([alm(i) for i in range(10)]).seqs
    _cap_pages(ob, 40)
    evicted = 0
    for k in range(40):  # far more telemetry than 40 pages hold: old telemetry makes room
        res = ob.append([tele(k * 50 + i) for i in range(50)])
        assert len(res.seqs) == 50 and res.dropped == 0
        evicted += res.evicted
    assert evicted > 0 and ob.stats().evicted_total == evicted
    assert all_seqs(ob, Priority.ALARM) == kept_alarms
    # An alarm from a device never seen before still gets in.
    res = ob.append([alm(100, "new-device")])
    assert len(res.seqs) == 1
    kept_alarms += res.seqs
    # A flood of alarms: telemetry goes first, then new alarms are dropped and counted;
    # stored alarms are never evicted for room.
    dropped = 0
    for k in range(100):
        dropped += ob.append([alm(1000 + k * 40 + i) for i in range(40)]).dropped
    assert dropped > 0
    st_ = ob.stats()
    assert st_.depth[Priority.TELEMETRY] == 0
    assert st_.dropped_total == dropped
    assert st_.evicted_by_prio[Priority.ALARM] == 0
    assert all_seqs(ob, Priority.ALARM)[: len(kept_alarms)] == kept_alarms
    ob.close()
    ob = Outbox(db, max_bytes=64 * MB)  # a fresh connection: no page cap
    assert ob.stats().dropped_total == dropped
    assert [r.device_id for r in ob.fetch(Priority.ALARM, kept_alarms[-2], 1)] == ["new-device"]
    assert ob.append([tele(1)]).dropped == 0
    ob.close()


def test_a_file_that_is_not_sqlite_is_a_clear_error(db: Path) -> None:
    db.write_bytes(b"this is not a database, it is a flood sensor log\n" * 200)
    with pytest.raises(OutboxCorrupt, match=str(db)):
        Outbox(db, max_bytes=MB)
    with pytest.raises(OutboxCorrupt, match=str(db)):
        Outbox.open_readonly(db)


def test_another_sqlite_database_is_not_taken_over(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE readings (x)")
    conn.close()
    with pytest.raises(OutboxCorrupt, match="not an outbox"):
        Outbox(db, max_bytes=MB)


def test_readonly_open_reads_stats_and_health_of_a_live_outbox(db: Path) -> None:
    assert Outbox.open_readonly(db) is None
    ob = Outbox(db, max_bytes=2 * MB)
    ob.append([alm(1), tele(2), tele(3)])
    ob.put_health("agent", '{"ok":true}')
    ro = Outbox.open_readonly(db)
    assert ro is not None
    st_ = ro.stats()
    assert st_.records == 3 and st_.max_bytes == 2 * MB and st_.oldest_ts == alm(1).ts
    assert st_.last_seq == ob.stats().last_seq
    assert ro.health() == {"agent": '{"ok":true}'}
    ob.append([tele(4)])
    ob.put_health("agent", '{"ok":false}')
    assert ro.stats().records == 4
    assert ro.health() == {"agent": '{"ok":false}'}
    with pytest.raises(OutboxReadOnly):
        ro.append([tele(5)])
    with pytest.raises(OutboxReadOnly):
        ro.put_health("x", "1")
    ro.close()
    ob.close()
    ro = Outbox.open_readonly(db)  # writer gone: still readable
    assert ro is not None and ro.stats().records == 4
    ro.close()


def test_health_survives_reopen_and_use_after_close_fails(db: Path) -> None:
    ob = Outbox(db, max_bytes=MB)
    ob.put_health("uplink", '{"connected":false}')
    ob.close()
    ob.close()
    with pytest.raises(OutboxClosed):
        ob.append([tele(1)])
    ob = Outbox(db, max_bytes=MB)
    assert ob.health() == {"uplink": '{"connected":false}'}
    ob.close()


def test_compact_returns_space_only_once_mostly_empty(db: Path) -> None:
    ob = Outbox(db, max_bytes=64 * MB)
    seqs: list[int] = []
    for k in range(20):
        seqs += ob.append([tele(k * 100 + i) for i in range(100)]).seqs
    ob.delete(seqs[:200])
    assert ob.compact() == 0  # a little free space: appends will reuse it
    ob.delete(seqs)
    used_before = ob.stats().file_bytes
    freed = ob.compact(max_pages=50)
    assert freed == 50
    assert ob.compact() > 0
    assert ob.stats().file_bytes < used_before
    with pytest.raises(ValueError):
        ob.compact(0)
    ob.close()


def test_bad_arguments_are_rejected(db: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(db, max_bytes=1000)
    with pytest.raises(ValueError, match="durability"):
        Outbox(db, max_bytes=MB, durability="fast")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=120),
        min_size=1, max_size=25,
    )
)
def test_model_eviction_is_oldest_first_and_least_important_first(
    batches: list[list[Priority]],
) -> None:
    make = {Priority.ALARM: alm, Priority.EVENT: evt, Priority.TELEMETRY: tele}
    appended: dict[Priority, list[int]] = {p: [] for p in Priority}
    with tempfile.TemporaryDirectory() as tmp:
        ob = Outbox(Path(tmp) / "o.db", max_bytes=96 * 1024)
        before = ob.stats()
        for i, batch in enumerate(batches):
            res = ob.append([make[p](i * 1000 + j) for j, p in enumerate(batch)])
            for p, s in zip(batch, res.seqs, strict=True):
                appended[p].append(s)
            after = ob.stats()
            lost = {p: after.evicted_by_prio[p] - before.evicted_by_prio[p] for p in Priority}
            assert sum(lost.values()) == res.evicted
            if lost[Priority.ALARM]:
                assert after.depth[Priority.TELEMETRY] == after.depth[Priority.EVENT] == 0
            if lost[Priority.EVENT]:
                assert after.depth[Priority.TELEMETRY] == 0
            before = after
        for p in Priority:
            kept = all_seqs(ob, p)
            assert kept == appended[p][len(appended[p]) - len(kept):]  # a suffix: oldest went
            assert len(appended[p]) - len(kept) == before.evicted_by_prio[p]
        ob.close()


def test_async_outbox_runs_on_one_thread_and_signals_appends(db: Path) -> None:
    async def scenario() -> None:
        ob = await AsyncOutbox.open(db, max_bytes=2 * MB, durability="normal")
        assert not ob.changed.is_set()
        await ob.append([])
        assert not ob.changed.is_set()
        res = await ob.append([tele(1), alm(2)])
        await asyncio.sleep(0)  # the set() is scheduled from the worker thread
        assert ob.changed.is_set()
        ob.changed.clear()
        got = await ob.fetch(Priority.ALARM, 0, 10)
        assert [r.seq for r in got] == res.seqs[1:]
        # Many concurrent calls: one connection, one thread, all served.
        results = await asyncio.gather(*(ob.append([tele(i)]) for i in range(20)))
        assert len({s for r in results for s in r.seqs}) == 20
        assert await ob.delete(res.seqs) == 2
        await ob.put_health("agent", "{}")
        assert await ob.health() == {"agent": "{}"}
        assert (await ob.stats()).records == 20
        assert await ob.compact() == 0
        await ob.close()
        with pytest.raises(OutboxClosed):
            await ob.stats()
        ro = await AsyncOutbox.open_readonly(db)
        assert ro is not None
        async with ro:
            assert (await ro.stats()).records == 20

    before = threading.active_count()
    asyncio.run(scenario())
    # close() shut the worker thread down (it may take a moment to exit).
    for t in threading.enumerate():
        if t.name.startswith("outbox"):
            t.join(5)
    assert threading.active_count() <= before


def test_async_open_of_a_corrupt_file_raises(db: Path) -> None:
    db.write_bytes(b"\x00garbage" * 1000)

    async def scenario() -> None:
        with pytest.raises(OutboxCorrupt):
            await AsyncOutbox.open(db, max_bytes=MB)

    asyncio.run(scenario())


def test_outbox_file_is_private(db: Path) -> None:
    # It holds readings in plaintext until they are sealed and sent.
    ob = Outbox(db, max_bytes=8 * MB)
    ob.close()
    assert db.stat().st_mode & 0o777 == 0o600
