"""Arrow record batches encoded as PostgreSQL's binary COPY format, column-wise with numpy.

Turning a million rows into Python objects to hand them to ``copy.write_row`` costs
more than the database spends storing them; the binary COPY format is simple enough
to build from Arrow's buffers directly: each row is a 16-bit field count, then per
field a 32-bit length (-1 for NULL) and the value in the type's binary ("send")
form, all big-endian. Each column is turned into byte *pieces* (a start and a length
per row in a source buffer) and scattered into the output with vectorised indexing.

Geometries are written as EWKB (the SRID inside), which PostGIS's binary input
reads: from GDAL's ISO WKB by inserting the SRID after the type code, and wrapping a
single geometry into a one-part multi when the column is of the multi type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from providers.errors import InvalidData

#: The binary COPY header (signature, flags, header extension length) and trailer.
HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

_EPOCH_DAYS = 10_957  # 2000-01-01, PostgreSQL's epoch, in days since 1970-01-01
_EPOCH_US = _EPOCH_DAYS * 86_400_000_000
_FIXED = {
    "smallint": ">i2",
    "integer": ">i4",
    "bigint": ">i8",
    "real": ">f4",
    "double": ">f8",
    "boolean": "u1",
    "date": ">i4",
    "timestamp": ">i8",
    "timestamptz": ">i8",
    "time": ">i8",
}
_SRID_FLAG = 0x20000000
_MULTI_OF = {1: 4, 2: 5, 3: 6}


@dataclass(slots=True)
class _Piece:
    """Bytes of one field in every row: ``source[starts[i]:starts[i] + lengths[i]]`` (0 length: none)."""

    source: np.ndarray  # uint8
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64, >= 0


def encode(columns: list[tuple[pa.Array, str]], geometry: pa.Array, srid: int, multi: int | None) -> bytes:
    """The binary COPY rows (no header) of attribute ``columns`` (array, kind) then ``geometry``.

    ``multi``: the multi type code single geometries are wrapped into, or None.
    """
    n = len(geometry)
    fields: list[tuple[np.ndarray, list[_Piece]]] = [_column(array, kind, n) for array, kind in columns]
    fields.append(_geometry(geometry, srid, multi))
    # Row layout: count, then per field: length word, its pieces.
    row_length = np.full(n, 2, dtype=np.int64)
    for _declared, pieces in fields:
        row_length += 4
        for piece in pieces:
            row_length += piece.lengths
    row_start = np.zeros(n, dtype=np.int64)
    np.cumsum(row_length[:-1], out=row_start[1:])
    out = np.empty(int(row_length.sum()), dtype=np.uint8)
    _fixed(out, row_start, np.full(n, len(fields), dtype=">i2"))
    cursor = row_start + 2
    for declared, pieces in fields:
        _fixed(out, cursor, declared.astype(">i4"))
        cursor += 4
        for piece in pieces:
            _scatter(out, cursor, piece)
            cursor += piece.lengths
    return out.tobytes()


def _fixed(out: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    """Write one fixed-width value per row at ``at``."""
    width = values.dtype.itemsize
    raw = values.view(np.uint8).reshape(len(values), width)
    out[at[:, None] + np.arange(width)] = raw


def _scatter(out: np.ndarray, at: np.ndarray, piece: _Piece) -> None:
    lengths = piece.lengths
    total = int(lengths.sum())
    if total == 0:
        return
    first = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(first, lengths)
    out[np.repeat(at, lengths) + within] = piece.source[np.repeat(piece.starts, lengths) + within]


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _column(array: pa.Array, kind: str, n: int) -> tuple[np.ndarray, list[_Piece]]:
    """(declared length per row, -1 for NULL; pieces) of one attribute column."""
    valid = _valid(array)
    dtype = _FIXED.get(kind)
    if dtype is not None:
        values = _numbers(array, kind)
        width = np.dtype(dtype).itemsize
        raw = np.ascontiguousarray(values.astype(dtype)).view(np.uint8)
        lengths = np.where(valid, width, 0).astype(np.int64)
        piece = _Piece(raw, np.arange(n, dtype=np.int64) * width, lengths)
        return np.where(valid, width, -1), [piece]
    if kind == "json":
        import orjson

        # jsonb's binary form: a version byte (1), then the JSON text.
        texts = [
            None if v is None else "\x01" + orjson.dumps(v, default=str).decode() for v in array.to_pylist()
        ]
        array = pa.array(texts, type=pa.large_string())
    elif pa.types.is_string_view(array.type):
        array = array.cast(pa.large_string())
    elif pa.types.is_fixed_size_binary(array.type):
        array = array.cast(pa.large_binary())
    piece = _variable(array, valid)
    return np.where(valid, piece.lengths, -1), [piece]


def _numbers(array: pa.Array, kind: str) -> np.ndarray:
    """The values of a fixed-width column as numbers in PostgreSQL's units (nulls as 0)."""
    try:
        if kind == "date":
            days = array.cast(pa.date32()).cast(pa.int32())
            return pc.subtract(pc.fill_null(days, _EPOCH_DAYS), _EPOCH_DAYS).to_numpy(zero_copy_only=False)
        if kind in ("timestamp", "timestamptz"):
            micros = array.cast(pa.timestamp("us", array.type.tz)).cast(pa.int64())
            return pc.subtract(pc.fill_null(micros, _EPOCH_US), _EPOCH_US).to_numpy(zero_copy_only=False)
        if kind == "time":
            micros = array.cast(pa.time64("us")).cast(pa.int64())
            return pc.fill_null(micros, 0).to_numpy(zero_copy_only=False)
        if kind == "boolean":
            return pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.uint8)
        if kind == "bigint" and pa.types.is_uint64(array.type):
            array = array.cast(pa.int64())  # safe cast: a value past int64 is an error
        if kind == "double" and pa.types.is_decimal(array.type):
            array = array.cast(pa.float64())
        return pc.fill_null(array, 0).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidData(f"a {kind} column cannot be stored: {exc}") from exc


def _variable(array: pa.Array, valid: np.ndarray) -> _Piece:
    """Pieces of a string or binary array straight from its offsets and data buffers."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    _validity, offsets_buffer, data_buffer = array.buffers()[:3]
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if large else np.int32)
    offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    lengths = np.where(valid, np.diff(offsets), 0)
    return _Piece(data, offsets[:-1], lengths)


def _geometry(array: pa.Array, srid: int, multi: int | None) -> tuple[np.ndarray, list[_Piece]]:
    """EWKB of ISO WKB geometries: a header per row (byte order, type | SRID flag, SRID
    [, part count]) then the WKB after its type code, or all of it when wrapped."""
    if pa.types.is_large_binary(array.type) or pa.types.is_binary(array.type):
        body = _variable(array, _valid(array))
    else:
        body = _variable(array.cast(pa.large_binary()), _valid(array))
    n = len(array)
    present = body.lengths >= 5
    starts = np.where(present, body.starts, 0)
    source = body.source if len(body.source) >= 5 else np.zeros(5, np.uint8)
    little = source[starts] == 1
    type_bytes = source[starts[:, None] + np.arange(1, 5)].astype(np.uint32)
    code = np.where(
        little,
        type_bytes[:, 0] | type_bytes[:, 1] << 8 | type_bytes[:, 2] << 16 | type_bytes[:, 3] << 24,
        type_bytes[:, 3] | type_bytes[:, 2] << 8 | type_bytes[:, 1] << 16 | type_bytes[:, 0] << 24,
    )
    wrap = np.zeros(n, dtype=bool)
    if multi is not None:
        dims, simple = np.divmod(code & 0x0FFFFFFF, 1000)
        single = [k for k, v in _MULTI_OF.items() if v == multi][0]
        wrap = present & (simple == single)
        code = np.where(wrap, multi + dims * 1000, code)
    code = code | _SRID_FLAG
    header = np.zeros((n, 13), dtype=np.uint8)
    header[:, 0] = np.where(little, 1, 0)
    header[:, 1:5] = _words(code, little)
    header[:, 5:9] = _words(np.full(n, srid, dtype=np.uint32), little)
    header[:, 9:13] = _words(np.ones(n, dtype=np.uint32), little)
    header_lengths = np.where(present, np.where(wrap, 13, 9), 0).astype(np.int64)
    header_piece = _Piece(header.reshape(-1), np.arange(n, dtype=np.int64) * 13, header_lengths)
    skip = np.where(wrap, 0, 5)
    body_piece = _Piece(body.source, body.starts + skip, np.where(present, body.lengths - skip, 0))
    declared = np.where(present, header_lengths + body_piece.lengths, -1)
    return declared, [header_piece, body_piece]


def _words(values: np.ndarray, little: np.ndarray) -> np.ndarray:
    """32-bit unsigned ``values`` as 4 bytes each, in each row's byte order."""
    le = values.astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.where(little[:, None], le, le[:, ::-1])
