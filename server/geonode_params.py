"""GeoNode's query language (DRF paging, dynamic-rest filters) parsed into a CatalogueQuery.

The words GeoNode clients send: ``page``/``page_size``, ``search``, ``ordering``,
``sort_by`` or ``sort[]`` (several fields, comma-separated or repeated, ``-`` for
descending), ``filter{field}``, ``filter{field.op}`` and ``filter{-field}`` (negation),
on related fields too (``filter{owner.username}``), ``extent`` and ``bbox_filter``
(a bounding box in EPSG:4326), ``include[]``/``exclude[]`` of fields.

Every field name is checked against the catalogue's allow-lists here and again by the
catalogue itself; an unknown name, an operator it does not know, a path deeper than the
allow-list or a malformed value is an :class:`~providers.errors.InvalidQuery` (400).
Parameters GeoNode itself ignores (``format``, ``api_key`` ...) are ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.datastructures import MultiDict

from providers.catalogue import COLUMNS, FIELDS, OPERATORS, ORDERINGS, CatalogueQuery, Filter
from providers.errors import InvalidQuery

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
MAX_FILTERS = 50
#: dynamic-rest's operators; ``eq`` is what a filter without one means.
KNOWN_OPERATORS = frozenset(
    {
        "icontains",
        "contains",
        "iexact",
        "exact",
        "in",
        "gte",
        "lte",
        "gt",
        "lt",
        "isnull",
        "startswith",
        "istartswith",
        "range",
        "eq",
    }
)
FILTER_KEY = re.compile(r"^filter\{(-?)([A-Za-z_][A-Za-z0-9_.]{0,80})\}$")


@dataclass(slots=True)
class GeonodeQuery:
    """A list request: the catalogue query and what the response should carry."""

    query: CatalogueQuery
    page: int
    page_size: int
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


def page_numbers(args: MultiDict[str, str]) -> tuple[int, int]:
    """``page`` (from 1) and ``page_size`` (default 10, at most 1000)."""
    try:
        page = int(args.get("page", "1"))
        size = int(args.get("page_size", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        raise InvalidQuery("page and page_size must be integers") from None
    if page < 1 or size < 1:
        raise InvalidQuery("page and page_size start at 1")
    return page, min(size, MAX_PAGE_SIZE)


def parse_filter(key: str, values: list[str]) -> Filter:
    """One ``filter{...}`` parameter as a Filter; InvalidQuery unless its path is allowed."""
    match = FILTER_KEY.match(key)
    if match is None:
        raise InvalidQuery(f"malformed filter parameter {key[:80]!r}")
    negate, path = match.group(1) == "-", match.group(2)
    name, _, last = path.rpartition(".")
    if name and last in KNOWN_OPERATORS:
        op = "eq" if last == "exact" else last
    else:
        name, op = path, "eq"
    if name not in FIELDS:
        raise InvalidQuery(f"unknown filter field {name[:80]!r}")
    if op not in OPERATORS[COLUMNS[FIELDS[name]]]:
        raise InvalidQuery(f"operator {op!r} is not available on {name!r}")
    if op in ("in", "range"):
        value: Any = [part for v in values for part in v.split(",")]
    else:
        value = values[-1]
    return Filter(name, op, value, negate)


def parse_ordering(args: MultiDict[str, str]) -> list[tuple[str, bool]]:
    """``ordering``, ``sort_by`` and ``sort[]``: field names, ``-`` first for descending."""
    out: list[tuple[str, bool]] = []
    for key in ("ordering", "sort_by", "sort[]", "sort"):
        for value in args.getlist(key):
            for part in value.split(","):
                part = part.strip()
                if not part:
                    continue
                descending = part.startswith("-")
                name = part.lstrip("-")
                if name not in ORDERINGS:
                    raise InvalidQuery(f"cannot order by {name[:60]!r}")
                out.append((name, descending))
    if len(out) > 10:
        raise InvalidQuery("order by at most 10 fields")
    return out


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` in EPSG:4326 (or GeoNode's ``bbox_filter`` JSON with a ``bbox``)."""
    raw: Any = text
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            raw = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            raise InvalidQuery("bbox_filter is not JSON") from None
        if isinstance(raw, dict):
            srid = str(raw.get("srid", "4326")).upper().removeprefix("EPSG:")
            if srid != "4326":
                raise InvalidQuery("bbox_filter: only EPSG:4326 boxes are accepted")
            raw = raw.get("bbox")
    parts = raw.split(",") if isinstance(raw, str) else raw
    try:
        if not isinstance(parts, list) or len(parts) != 4 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        box = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise InvalidQuery("a bbox is minx,miny,maxx,maxy") from None
    if not all(math.isfinite(v) for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise InvalidQuery("a bbox needs finite numbers with minx <= maxx and miny <= maxy")
    return box  # type: ignore[return-value]


def parse(args: MultiDict[str, str], visible_to: set[str] | None) -> GeonodeQuery:
    """A GeoNode list request's parameters as a GeonodeQuery."""
    page, size = page_numbers(args)
    filters: list[Filter] = []
    for key in args:
        if key.startswith("filter{") or key.startswith("filter%7B"):
            filters.append(parse_filter(key, args.getlist(key)))
        elif key.startswith("filter"):
            raise InvalidQuery(f"malformed filter parameter {key[:80]!r}")
    if len(filters) > MAX_FILTERS:
        raise InvalidQuery(f"at most {MAX_FILTERS} filters")
    boxes = [parse_bbox(v) for key in ("extent", "bbox_filter") for v in args.getlist(key)]
    bbox = None
    if boxes:
        # Several boxes must all hold: their intersection (an empty one matches nothing).
        bbox = (
            max(b[0] for b in boxes),
            max(b[1] for b in boxes),
            min(b[2] for b in boxes),
            min(b[3] for b in boxes),
        )
        if bbox[0] > bbox[2] or bbox[1] > bbox[3]:
            filters.append(Filter("pk", "in", ["-1"]))
            bbox = None
    search = (args.get("search") or "").strip() or None
    if search is not None and len(search) > 500:
        raise InvalidQuery("search text is limited to 500 characters")
    query = CatalogueQuery(
        search=search,
        bbox=bbox,
        filters=filters,
        ordering=parse_ordering(args),
        offset=(page - 1) * size,
        limit=size,
        visible_to=visible_to,
    )
    include = [f for v in args.getlist("include[]") for f in v.split(",") if f]
    exclude = [f for v in args.getlist("exclude[]") for f in v.split(",") if f]
    return GeonodeQuery(query, page, size, include, exclude)
