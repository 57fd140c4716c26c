"""Fill an empty SQLite R-tree (a GeoPackage's spatial index) in one pass, packed.

Inserting a million boxes through the R-tree module costs a node split here and a
re-insert there: about 11 s on these machines, most of a GeoPackage write. A tree built
beforehand needs none of that. The boxes are packed Sort-Tile-Recursive (sorted into
vertical slices by the centres' x, then by y within a slice), 51 to a node, level by
level up to the root. Then the module's own shadow tables are written directly:

* ``<rtree>_node``: each node's blob;
* ``<rtree>_rowid``: each feature's leaf;
* ``<rtree>_parent``: each node's parent.

GDAL fills GeoPackage R-trees the same way.

The format is SQLite's (``ext/rtree/rtree.c``). A node is a blob as long as the root the
module created (``length(data)`` of node 1, as the module itself finds it). The blob
holds a big-endian 16-bit depth of the tree (meaningful at the root only), a 16-bit cell
count, and the cells. A cell is a big-endian 64-bit id (the feature's at a leaf, the
child node's above) and four big-endian 32-bit floats: min x, max x, min y, max y. Like
the module, minima are rounded down to float32 and maxima up, so a stored box always
holds the real one. ``SELECT rtreecheck(...)`` verifies what is written.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np

from providers.geopackage import _compose, quote_ident

#: The most cells SQLite puts in a node (RTREE_MAXCELLS), whatever the node size.
MAX_CELLS = 51
_HEADER = 4
_CELL = np.dtype([("id", ">i8"), ("box", ">f4", (4,))])


def fill(conn: sqlite3.Connection, rtree: str, ids: np.ndarray, boxes: np.ndarray) -> None:
    """Write the packed tree of ``boxes`` (rows of min x, max x, min y, max y; float64)
    keyed by ``ids`` into the empty 2D R-tree table ``rtree``, in ``conn``'s transaction."""
    if len(ids) == 0:
        return
    node_table, rowid_table, parent_table = (
        quote_ident(f"{rtree}_{part}") for part in ("node", "rowid", "parent")
    )
    size = conn.execute(_compose("SELECT length(data) FROM {} WHERE nodeno = 1", node_table)).fetchone()[0]
    capacity = min(MAX_CELLS, (size - _HEADER) // _CELL.itemsize)
    levels = _pack(
        np.asarray(ids, dtype=np.int64), _float32_boxes(np.asarray(boxes, dtype=np.float64)), capacity
    )
    # Node numbers: the root is 1 (where the module looks for it), the others follow level by level.
    numbers: list[np.ndarray] = []
    next_number = 2
    for level, (_cells, starts) in enumerate(reversed(levels)):
        count = len(starts)
        if level == 0:
            numbers.append(np.array([1], dtype=np.int64))
        else:
            numbers.append(np.arange(next_number, next_number + count, dtype=np.int64))
            next_number += count
    numbers.reverse()  # numbers[k]: the node numbers of level k (0: the leaves)
    depth = len(levels) - 1
    rows: list[tuple[int, bytes]] = []
    for k, (cells, starts) in enumerate(levels):
        if k > 0:
            cells["id"] = numbers[k - 1][cells["id"]]  # a cell above the leaves names its child node
        data = cells.tobytes()
        ends = np.append(starts[1:], len(cells))
        for number, start, end in zip(numbers[k].tolist(), starts.tolist(), ends.tolist(), strict=True):
            head = (depth if number == 1 else 0).to_bytes(2, "big") + (end - start).to_bytes(2, "big")
            body = data[start * _CELL.itemsize : end * _CELL.itemsize]
            rows.append((number, (head + body).ljust(size, b"\0")))
    conn.execute(_compose("DELETE FROM {}", node_table))
    conn.executemany(_compose("INSERT INTO {} (nodeno, data) VALUES (?, ?)", node_table), rows)
    leaves, starts = levels[0]
    owner = np.repeat(numbers[0], np.diff(np.append(starts, len(leaves))))
    conn.executemany(
        _compose("INSERT INTO {} (rowid, nodeno) VALUES (?, ?)", rowid_table),
        zip(leaves["id"].astype(np.int64).tolist(), owner.tolist(), strict=True),
    )
    parents = []
    for k in range(1, len(levels)):
        cells, starts = levels[k]
        above = np.repeat(numbers[k], np.diff(np.append(starts, len(cells))))
        parents.extend(zip(cells["id"].astype(np.int64).tolist(), above.tolist(), strict=True))
    conn.executemany(_compose("INSERT INTO {} (nodeno, parentnode) VALUES (?, ?)", parent_table), parents)


def _float32_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes as float32 that still hold the float64 ones: minima rounded down, maxima up."""
    out = boxes.astype(np.float32)
    for column, toward in ((0, -np.inf), (1, np.inf), (2, -np.inf), (3, np.inf)):
        values = out[:, column]
        off = values > boxes[:, column] if toward < 0 else values < boxes[:, column]
        values[off] = np.nextafter(values[off], np.float32(toward))
    return out


def _pack(ids: np.ndarray, boxes: np.ndarray, capacity: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tree's levels from the leaves up: each the cells of its nodes one node after
    another and where each node's cells start. A leaf cell's id is its feature's; above,
    it is the index of its child among the nodes of the level below."""
    levels = []
    while True:
        order = _str_order(boxes, capacity)
        cells = np.empty(len(order), dtype=_CELL)
        cells["id"] = ids[order]
        cells["box"] = boxes[order]
        starts = np.arange(0, len(order), capacity)
        levels.append((cells, starts))
        if len(starts) == 1:
            return levels
        sorted_boxes = boxes[order]
        boxes = np.column_stack(
            [
                np.minimum.reduceat(sorted_boxes[:, 0], starts),
                np.maximum.reduceat(sorted_boxes[:, 1], starts),
                np.minimum.reduceat(sorted_boxes[:, 2], starts),
                np.maximum.reduceat(sorted_boxes[:, 3], starts),
            ]
        )
        ids = np.arange(len(starts), dtype=np.int64)


def _str_order(boxes: np.ndarray, capacity: int) -> np.ndarray:
    """Sort-Tile-Recursive order: slices of whole nodes by the centres' x, by y inside each."""
    count = len(boxes)
    nodes = math.ceil(count / capacity)
    per_slice = math.ceil(math.sqrt(nodes)) * capacity
    cx = (boxes[:, 0].astype(np.float64) + boxes[:, 1]) / 2
    cy = (boxes[:, 2].astype(np.float64) + boxes[:, 3]) / 2
    by_x = np.argsort(cx, kind="stable")
    rank = np.empty(count, dtype=np.int64)
    rank[by_x] = np.arange(count)
    return np.lexsort((cy, rank // per_slice))
