"""Output formats of feature responses: negotiation and streaming encoders.

GeoJSON pages are written by splicing the providers' already-encoded features into
the collection document; nothing is parsed and re-serialised per feature. Large
pages are generators, so a 100,000-feature response streams in bounded memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import orjson
from flask import Request

from providers.errors import InvalidQuery

FORMATS = {"json", "geojson", "html", "jsonl", "ndjson", "geojsonseq", "csv"}
ALIASES = {"geojson": "json", "ndjson": "jsonl"}

_ACCEPT = [
    ("application/geo+json", "json"),
    ("application/json", "json"),
    ("text/html", "html"),
    ("application/x-ndjson", "jsonl"),
    ("application/geo+json-seq", "geojsonseq"),
    ("text/csv", "csv"),
]


def negotiate(request: Request, allowed: set[str] = FORMATS) -> str:
    """The output format: ``f`` wins, then ``Accept``; ``*/*`` or nothing is JSON."""
    explicit = request.args.get("f")
    if explicit:
        fmt = ALIASES.get(explicit.lower(), explicit.lower())
        if fmt not in allowed and explicit.lower() not in allowed:
            raise InvalidQuery(f"f: unsupported format {explicit[:40]!r}; use one of {sorted(allowed)}")
        return fmt
    best = request.accept_mimetypes.best_match([m for m, _ in _ACCEPT], default="application/json")
    # A browser's Accept lists text/html first and */* last: only then is it HTML.
    if (
        best == "text/html"
        and request.accept_mimetypes["text/html"] <= request.accept_mimetypes["application/json"]
    ):
        best = "application/json"
    fmt = dict(_ACCEPT).get(best or "application/json", "json")
    return fmt if fmt in allowed else "json"


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def feature_collection(
    features: Iterable[bytes],
    head: dict[str, Any],
    tail: dict[str, Any] | Any,
) -> Iterator[bytes]:
    """A GeoJSON FeatureCollection built around encoded features.

    ``head`` members are written before the features; ``tail`` (a dict, or a
    callable returning one once the features are consumed) after them, which is
    how a streamed page reports ``numberReturned`` and its ``next`` link.
    """
    yield orjson.dumps({"type": "FeatureCollection", **head})[:-1] + b',"features":['
    buffer: list[bytes] = []
    size = 0
    first = True
    for feature in features:
        if not first:
            buffer.append(b",")
        buffer.append(feature)
        first = False
        size += len(feature)
        if size > 256 * 1024:
            yield b"".join(buffer)
            buffer, size = [], 0
    trailer = tail() if callable(tail) else tail
    buffer.append(b"]")
    if trailer:
        buffer.append(b"," + orjson.dumps(trailer)[1:-1])
    buffer.append(b"}")
    yield b"".join(buffer)


def feature_lines(features: Iterable[bytes], record_separator: bool) -> Iterator[bytes]:
    """Newline-delimited GeoJSON, or RFC 8142 GeoJSON text sequences."""
    prefix = b"\x1e" if record_separator else b""
    batch: list[bytes] = []
    for feature in features:
        batch.append(prefix + feature + b"\n")
        if len(batch) >= 500:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


def csv_rows(header: list[str], rows: Iterable[tuple]) -> Iterator[bytes]:
    """CSV with a header row; the geometry column is WKT."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow([_cell(v) for v in row])
        count += 1
        if count % 1000 == 0:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()
