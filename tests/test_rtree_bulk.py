"""The packed R-tree writer against SQLite's own R-tree module: the tree it writes passes
``rtreecheck``, answers box queries as a scan of the boxes does, and stays a working
R-tree for the module's later inserts and deletes."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from providers.rtree_bulk import fill


def rtree(boxes: np.ndarray, ids: np.ndarray) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE r USING rtree(id, minx, maxx, miny, maxy)")
    fill(conn, "r", ids, boxes)
    return conn


def check(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT rtreecheck('r')").fetchone()[0]


def found(conn: sqlite3.Connection, box: tuple[float, float, float, float]) -> set[int]:
    rows = conn.execute(
        "SELECT id FROM r WHERE maxx >= ? AND minx <= ? AND maxy >= ? AND miny <= ?", box
    ).fetchall()
    return {r[0] for r in rows}


# 51 boxes fill the root leaf, 52 need a second level, 51 * 51 fill two levels, one more a third.
@pytest.mark.parametrize("count", [1, 2, 51, 52, 2601, 2602, 20_000])
def test_the_packed_tree_is_what_sqlite_would_answer_from(count: int) -> None:
    rng = np.random.default_rng(count)
    x, y, size = rng.uniform(-180, 180, count), rng.uniform(-90, 90, count), rng.uniform(0, 2, count)
    boxes = np.column_stack([x, x + size, y, y + size])
    ids = rng.permutation(np.arange(1, 3 * count + 1))[:count]
    conn = rtree(boxes, ids)
    assert check(conn) == "ok"
    assert conn.execute("SELECT count(*) FROM r").fetchone()[0] == count
    for _ in range(40):
        qx, qy = rng.uniform(-180, 180), rng.uniform(-90, 90)
        query = (qx, qx + 8, qy, qy + 8)
        inside = (boxes[:, 1] >= query[0]) & (boxes[:, 0] <= query[1])
        inside &= (boxes[:, 3] >= query[2]) & (boxes[:, 2] <= query[3])
        assert found(conn, query) == set(ids[inside].tolist())
    # The module goes on maintaining it.
    conn.execute("INSERT INTO r VALUES (?, 0, 1, 0, 1)", (10**9,))
    conn.execute("DELETE FROM r WHERE id = ?", (int(ids[0]),))
    assert check(conn) == "ok"
    assert 10**9 in found(conn, (0.5, 0.5, 0.5, 0.5)) and int(ids[0]) not in found(conn, tuple(boxes[0]))


def test_boxes_are_rounded_outwards_to_float32() -> None:
    # 0.1 and 0.7 have no float32 of their own: the nearest lies above 0.1 and below 0.7.
    assert float(np.float32(0.1)) > 0.1 and float(np.float32(0.7)) < 0.7
    conn = rtree(np.array([[0.1, 0.7, 0.1, 0.7]]), np.array([7]))
    assert check(conn) == "ok"
    assert found(conn, (0.1, 0.1, 0.1, 0.1)) == {7}  # its lower-left corner
    assert found(conn, (0.7, 0.7, 0.7, 0.7)) == {7}  # its upper-right corner


def test_nothing_to_index_leaves_the_empty_tree() -> None:
    conn = rtree(np.empty((0, 4)), np.empty(0, dtype=np.int64))
    assert check(conn) == "ok" and conn.execute("SELECT count(*) FROM r").fetchone()[0] == 0
