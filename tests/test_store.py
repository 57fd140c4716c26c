"""The record store behaves the same on PostgreSQL and on SQLite (embedded mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.errors import Conflict, NotFound
from providers.postgis import PostGISDatabase
from providers.store import PostgresStore, SQLiteStore, Store


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        found: Store = SQLiteStore(tmp_path / "state.sqlite")
        yield found
        found.close()
    else:
        db = PostGISDatabase(pg_url, pool_min=0, pool_max=2)
        yield PostgresStore(db)
        db.close()


def test_records_round_trip_with_keys_and_times(store: Store) -> None:
    record = store.insert("map", {"name": "Europe", "layers": [3, 1]}, key=None)
    assert record.body == {"name": "Europe", "layers": [3, 1]}
    assert record.created == pytest.approx(record.modified, abs=1)
    assert store.get("map", record.id).body["layers"] == [3, 1]
    changed = store.update("map", record.id, {"name": "Europa"})
    assert changed.body == {"name": "Europa"} and changed.modified >= record.modified
    assert [r.id for r in store.list("map")].count(record.id) == 1
    assert store.delete("map", record.id).body == {"name": "Europa"}
    with pytest.raises(NotFound):
        store.get("map", record.id)
    with pytest.raises(NotFound):
        store.delete("map", record.id)


def test_kinds_are_apart_and_keys_unique_within_a_kind(store: Store) -> None:
    key = f"k-{id(store)}"
    first = store.insert("layer", {"n": 1}, key=key)
    try:
        with pytest.raises(Conflict):
            store.insert("layer", {"n": 2}, key=key)
        other = store.insert("map", {"n": 3}, key=key)  # same key, other kind: fine
        assert store.find("layer", key).id == first.id
        assert store.find("map", key).id == other.id
        with pytest.raises(NotFound):
            store.get("map", first.id)  # an id of another kind is not found
        store.delete("map", other.id)
    finally:
        store.delete("layer", first.id)
    assert store.find("layer", key) is None


def test_only_registry_kinds_move_the_generation(store: Store) -> None:
    start = store.generation()
    record = store.insert("map", {"name": "no effect"})
    assert store.generation() == start
    layer = store.insert("layer", {"collection": "g"}, key=f"gen-{record.id}")
    after_insert = store.generation()
    assert after_insert > start
    store.update("layer", layer.id, {"collection": "g2"}, key=f"gen-{record.id}")
    assert store.generation() > after_insert
    before_delete = store.generation()
    store.delete("layer", layer.id)
    assert store.generation() > before_delete
    store.delete("map", record.id)


def test_a_failed_write_moves_nothing(store: Store) -> None:
    key = f"dup-{id(store)}"
    first = store.insert("layer", {"n": 1}, key=key)
    generation = store.generation()
    with pytest.raises(Conflict):
        store.insert("layer", {"n": 2}, key=key)
    assert store.generation() == generation
    assert [r.body for r in store.list("layer") if r.key == key] == [{"n": 1}]
    store.delete("layer", first.id)
