"""OGC API - Features query parameters parsed into the shared :class:`Query`.

Like tipg's ``dependencies.py``, parsing is kept apart from the routes: every
parameter is validated here and a malformed one is an
:class:`~providers.errors.InvalidQuery` (400) before any data access happens.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from werkzeug.datastructures import MultiDict

from providers.base import CollectionSchema, Query
from providers.crs import CRS, CRS84, parse_crs
from providers.errors import InvalidQuery
from providers.filters import parse_cql2, parse_instant

#: Parameters of Parts 1-3 that the items route understands.
ITEM_PARAMS = {
    "f",
    "limit",
    "offset",
    "bbox",
    "bbox-crs",
    "datetime",
    "crs",
    "filter",
    "filter-lang",
    "filter-crs",
    "sortby",
    "properties",
    "skipGeometry",
    "lang",
}
#: Parameters of a vector tile request.
TILE_PARAMS = {"f", "properties", "filter", "filter-lang", "filter-crs", "datetime"}
#: Parameters that real clients add and that must not be an error.
TOLERATED = {"_", "resulttype"}
FILTER_LANGS = {
    "cql2-text": "cql2-text",
    "cql-text": "cql2-text",
    "cql2-json": "cql2-json",
    "cql-json": "cql2-json",
}


def int_param(args: MultiDict, name: str, default: int, low: int, high: int | None = None) -> int:
    """An integer parameter in [low, high] (larger values are capped at ``high``); 400 otherwise."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidQuery(f"{name}: {raw[:40]!r} is not an integer") from None
    if value < low:
        raise InvalidQuery(f"{name}: must be at least {low}")
    return min(value, high) if high is not None else value


def parse_bbox(raw: str) -> tuple[float, ...]:
    parts = raw.split(",")
    if len(parts) not in (4, 6):
        raise InvalidQuery("bbox: expected 4 or 6 comma-separated numbers")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidQuery("bbox: expected 4 or 6 comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise InvalidQuery("bbox: numbers must be finite")
    lows, highs = (values[:2], values[2:]) if len(values) == 4 else (values[:3], values[3:])
    if lows[1] > highs[1]:
        raise InvalidQuery("bbox: the lower corner must be below the upper corner")
    return values


def _instant(text: str, end: bool) -> datetime | None:
    if text in ("", ".."):
        return None
    value = parse_instant(text, "datetime")
    if isinstance(value, date) and not isinstance(value, datetime):
        day = datetime.combine(value, time(0), tzinfo=UTC)
        return day + timedelta(days=1, microseconds=-1) if end else day
    return value


def parse_datetime(raw: str) -> tuple[datetime | None, datetime | None]:
    """An RFC 3339 instant or interval with open ends (``..`` or empty), as (start, end)."""
    if "/" in raw:
        start_text, _, end_text = raw.partition("/")
        start, end = _instant(start_text, False), _instant(end_text, True)
        if start is None and end is None:
            raise InvalidQuery("datetime: an interval needs at least one end")
        if start and end and start > end:
            raise InvalidQuery("datetime: the interval ends before it starts")
        return start, end
    start = _instant(raw, False)
    if start is None:
        raise InvalidQuery("datetime: expected an instant or an interval")
    if len(raw) == 10:  # a whole day
        return start, _instant(raw, True)
    return start, start


def parse_crs_param(args: MultiDict, name: str, default: CRS = CRS84) -> CRS:
    raw = args.get(name)
    if not raw:
        return default
    try:
        return parse_crs(raw)
    except InvalidQuery as exc:
        raise InvalidQuery(f"{name}: {exc.message}") from None


def parse_sortby(raw: str) -> list[tuple[str, bool]]:
    out = []
    for term in raw.split(","):
        term = term.strip()
        if not term:
            continue
        ascending = not term.startswith("-")
        name = term.lstrip("+-").strip()
        if name.endswith(" DESC") or name.endswith(" ASC"):
            name, _, direction = name.rpartition(" ")
            ascending = direction == "ASC"
        out.append((name, ascending))
    return out


def parse_bool(args: MultiDict, name: str) -> bool:
    raw = (args.get(name) or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidQuery(f"{name}: expected true or false")
    return raw in ("true", "1")


def _check_known(args: MultiDict, schema: CollectionSchema, known: set[str]) -> None:
    unknown = [
        k
        for k in args
        if k not in known and k not in TOLERATED and k not in schema.fields and k != schema.id_field
    ]
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:60]!r}")


def _conditions(args: MultiDict, schema: CollectionSchema, query: Query, filter_body: Any = None) -> None:
    """datetime, property equality, properties and filter: the parts items and tiles share."""
    if args.get("datetime"):
        query.datetime = parse_datetime(args["datetime"])
    if "properties" in args:
        names = [p.strip() for p in args["properties"].split(",") if p.strip()]
        for name in names:
            schema.check_property(name)
        query.properties = names
    for name in args:
        if name in schema.fields or name == schema.id_field:
            query.equals[name] = args[name]
    text = args.get("filter")
    lang_raw = args.get("filter-lang", "cql2-text")
    lang = FILTER_LANGS.get(lang_raw)
    if lang is None:
        raise InvalidQuery(f"filter-lang: {lang_raw[:40]!r} is not one of {sorted(FILTER_LANGS)}")
    if filter_body is not None:
        query.filter = filter_body
    elif text:
        query.filter = parse_cql2(text, lang)


def items_query(
    args: MultiDict,
    schema: CollectionSchema,
    *,
    limit_default: int,
    limit_max: int,
    filter_body: Any = None,
) -> Query:
    """The :class:`Query` of an items request; raises InvalidQuery on any bad parameter."""
    _check_known(args, schema, ITEM_PARAMS)
    query = Query(
        limit=int_param(args, "limit", limit_default, 1, limit_max),
        offset=int_param(args, "offset", 0, 0),
        crs=parse_crs_param(args, "crs"),
        bbox_crs=parse_crs_param(args, "bbox-crs"),
        filter_crs=parse_crs_param(args, "filter-crs"),
        skip_geometry=parse_bool(args, "skipGeometry"),
    )
    if args.get("bbox"):
        query.bbox = parse_bbox(args["bbox"])  # type: ignore[assignment]
    elif "bbox-crs" in args:
        raise InvalidQuery("bbox-crs: only meaningful together with bbox")
    if args.get("sortby"):
        query.sortby = parse_sortby(args["sortby"])
        for name, _ in query.sortby:
            schema.check_property(name)
    _conditions(args, schema, query, filter_body)
    return query


def tile_query(args: MultiDict, schema: CollectionSchema) -> Query:
    """The conditions of a collection's vector tile request (filter, datetime, equality, properties)."""
    _check_known(args, schema, TILE_PARAMS)
    query = Query(filter_crs=parse_crs_param(args, "filter-crs"))
    _conditions(args, schema, query)
    return query
