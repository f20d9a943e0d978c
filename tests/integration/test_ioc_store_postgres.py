"""The IOC reading store on a real PostgreSQL server: the SQLite scenarios, plus receivers
racing on one database and the errors an operator meets (wrong schema, server down)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ioc.store import (
    ReadingStore,
    SchemaError,
    StoreConnectError,
    StoreUnavailableError,
    open_store,
)
from ioc.store.base import META_TABLE
from ioc.store.postgres import PostgresReadingStore, describe
from tests.support.postgres import PostgresServer, postgres_server
from tests.unit.test_ioc_store import (
    Factory,
    recs,
    scenario_closed,
    scenario_exactly_once,
    scenario_gaps,
    scenario_invalid_message_stores_nothing,
    scenario_round_trip,
    scenario_survives_reopen,
    seqs_of,
    stored_seqs,
)

_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def dsn(pg: PostgresServer) -> str:
    """A fresh, empty database for each test."""
    return pg.create_database(f"readings_{next(_names)}")


@pytest.fixture
def make_pg(dsn: str) -> Factory:
    return lambda: PostgresReadingStore(dsn)


def test_exactly_once(make_pg: Factory) -> None:
    scenario_exactly_once(make_pg)


def test_gaps_detected_and_filled(make_pg: Factory) -> None:
    scenario_gaps(make_pg)


def test_survives_reopen(make_pg: Factory) -> None:
    scenario_survives_reopen(make_pg)


def test_round_trip(make_pg: Factory) -> None:
    scenario_round_trip(make_pg)


def test_invalid_message_stores_nothing(make_pg: Factory) -> None:
    scenario_invalid_message_stores_nothing(make_pg)


def test_closed(make_pg: Factory) -> None:
    scenario_closed(make_pg)


def test_open_store_url(dsn: str) -> None:
    with open_store(dsn) as store:
        assert isinstance(store, PostgresReadingStore)
        assert store.where == describe(dsn)


def _race(dsn: str, receivers: int, batches: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, list[int]]]:
    """Each receiver (own thread, own connection) accepts every batch; returns what each got as new."""
    stores: list[ReadingStore] = [PostgresReadingStore(dsn) for _ in range(receivers)]
    got: list[dict[str, list[int]]] = [{} for _ in range(receivers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(receivers)

    def run(i: int) -> None:
        try:
            barrier.wait()
            # Different receivers walk the batches in different orders, so they collide on
            # sources and seqs in every combination.
            order = batches if i % 2 == 0 else batches[::-1]
            for source, records in order:
                got[i].setdefault(source, []).extend(seqs_of(stores[i].accept(source, records, received_at=1).new))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    assert errors == []
    return got


def test_racing_receivers_store_each_record_once(dsn: str) -> None:
    """Several receivers sharing a subscription (and so redeliveries) and one database: each
    (source, seq) is stored once, and what they report as new partitions the input."""
    sources = ["gw-north", "gw-south", "gw-east"]
    batches = [
        (source, recs(range(start, start + 25)))
        for start in range(0, 500, 10)  # overlapping windows: every seq in 2 or 3 batches
        for source in sources
    ]
    got = _race(dsn, 4, batches)
    with PostgresReadingStore(dsn) as store:
        stats = store.stats()
        for source in sources:
            sent = [r["seq"] for src, records in batches if src == source for r in records]
            per_receiver = [g.get(source, []) for g in got]
            merged = [s for seqs in per_receiver for s in seqs]
            assert len(merged) == len(set(merged)), "a record was reported new twice"
            assert set(merged) == set(sent)
            assert stored_seqs(store, source) == sorted(set(sent))
            assert stats[source]["stored"] == len(set(sent))
            assert stats[source]["duplicates"] == 4 * len(sent) - len(set(sent))
            assert stats[source]["missing"] == 0
            assert store.open_gaps(source) == []


def test_racing_receivers_keep_gap_bookkeeping_exact(dsn: str) -> None:
    """Holes seen by one receiver and filled by another: the shared counters stay exact."""
    # Even seqs first, then odd: whichever receiver comes first opens holes, others fill them.
    batches = [("gw", recs(range(start, 300, 2))) for start in (0, 1)]
    batches += [("gw", recs(range(300, 320)))]
    _race(dsn, 3, batches)
    with PostgresReadingStore(dsn) as store:
        stats = store.stats()["gw"]
        assert stats["stored"] == 320 and stats["highest_seq"] == 319
        assert stats["missing"] == 0 and store.open_gaps("gw") == []


def test_refuses_another_schema(dsn: str) -> None:
    PostgresReadingStore(dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {META_TABLE} SET value = '7' WHERE key = 'version'")
    with pytest.raises(SchemaError, match="schema version 7, this urbanedge understands version 1"):
        PostgresReadingStore(dsn)


def test_refuses_a_foreign_readings_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (id serial primary key, note text)")
    with pytest.raises(SchemaError, match="not an urbanedge reading store"):
        PostgresReadingStore(dsn)


def test_cannot_connect_names_the_server_not_the_password(pg: PostgresServer) -> None:
    dsn = f"postgresql://ue:s3cret@127.0.0.1:{pg.port}/no_such_db"
    with pytest.raises(StoreConnectError) as info:
        PostgresReadingStore(dsn)
    assert "cannot connect to postgresql://ue@127.0.0.1" in str(info.value)
    assert "no_such_db" in str(info.value) and "s3cret" not in str(info.value)


def test_lost_connection_fails_the_accept_then_reconnects(dsn: str) -> None:
    with PostgresReadingStore(dsn) as store:
        store.accept("gw", recs([1]), received_at=1)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(StoreUnavailableError):
            store.accept("gw", recs([2]), received_at=2)
        result = store.accept("gw", recs([2, 3]), received_at=3)
        assert seqs_of(result.new) == [2, 3]
        assert store.stats()["gw"]["stored"] == 3
