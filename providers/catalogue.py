"""The catalogue index: one row per published resource (dataset, map, document, geoapp).

The GeoNode API and the OGC API - Records door search the same rows. They live next
to the store's records, so every worker and host reads one index: the table
``geoharbor.catalogue`` of the store's PostgreSQL database (a weighted ``tsvector``
with a GIN index for ranked full text, a GiST index on the bounding box), or, in
embedded mode, a table of the store's SQLite file with an FTS5 index ranked by bm25.

Field names reach SQL only through :data:`FIELDS` and :data:`ORDERINGS`: a name
not in them is an :class:`~providers.errors.InvalidQuery`, and values are always
bound parameters. On PostgreSQL identifiers are composed with :mod:`psycopg.sql`.
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from providers.errors import InvalidQuery, NotFound
from providers.store import PostgresStore, PostgresTables, SQLiteConnections, SQLiteStore, Store

RESOURCE_TYPES = ("dataset", "map", "document", "geoapp")

#: Columns of the index and their kinds (text, int, float, time, bool, array).
COLUMNS: dict[str, str] = {
    "pk": "int",
    "uuid": "text",
    "resource_type": "text",
    "subtype": "text",
    "title": "text",
    "abstract": "text",
    "owner_id": "int",
    "owner_name": "text",
    "category": "text",
    "keywords": "array",
    "regions": "array",
    "group_name": "text",
    "created": "time",
    "last_updated": "time",
    "date": "time",
    "minx": "float",
    "miny": "float",
    "maxx": "float",
    "maxy": "float",
    "srid": "text",
    "is_published": "bool",
    "is_approved": "bool",
    "advertised": "bool",
    "featured": "bool",
    "alternate": "text",
    "readers": "array",
    "sync_hash": "text",
    "extras": "json",
}

#: Filterable fields as the API names them -> column. Related paths are spelled out:
#: anything deeper or not listed (``owner.password``) is refused.
FIELDS: dict[str, str] = {
    "pk": "pk",
    "id": "pk",
    "uuid": "uuid",
    "resource_type": "resource_type",
    "subtype": "subtype",
    "title": "title",
    "abstract": "abstract",
    "owner": "owner_id",
    "owner.pk": "owner_id",
    "owner.id": "owner_id",
    "owner.username": "owner_name",
    "category": "category",
    "category.identifier": "category",
    "keywords": "keywords",
    "keywords.name": "keywords",
    "keywords.slug": "keywords",
    "regions": "regions",
    "regions.name": "regions",
    "regions.code": "regions",
    "group": "group_name",
    "group.name": "group_name",
    "created": "created",
    "last_updated": "last_updated",
    "date": "date",
    "srid": "srid",
    "is_published": "is_published",
    "is_approved": "is_approved",
    "advertised": "advertised",
    "featured": "featured",
    "alternate": "alternate",
}

#: Orderable fields -> column (``date_updated`` is what geonodectl sends by default).
ORDERINGS: dict[str, str] = {
    "pk": "pk",
    "id": "pk",
    "uuid": "uuid",
    "title": "title",
    "resource_type": "resource_type",
    "subtype": "subtype",
    "owner.username": "owner_name",
    "owner": "owner_name",
    "category": "category",
    "category.identifier": "category",
    "created": "created",
    "last_updated": "last_updated",
    "date_updated": "last_updated",
    "date": "date",
    "featured": "featured",
    "is_published": "is_published",
    "is_approved": "is_approved",
    "alternate": "alternate",
    "rank": "rank",
    "relevance": "rank",
}

#: Operators each column kind accepts.
OPERATORS: dict[str, frozenset[str]] = {
    "text": frozenset(
        {
            "eq",
            "iexact",
            "contains",
            "icontains",
            "startswith",
            "istartswith",
            "in",
            "isnull",
            "gt",
            "gte",
            "lt",
            "lte",
        }
    ),
    "int": frozenset({"eq", "in", "isnull", "gt", "gte", "lt", "lte", "range"}),
    "time": frozenset({"eq", "in", "isnull", "gt", "gte", "lt", "lte", "range"}),
    "bool": frozenset({"eq", "isnull"}),
    "array": frozenset(
        {"eq", "iexact", "contains", "icontains", "startswith", "istartswith", "in", "isnull"}
    ),
}

FACETS = {"category": "category", "keywords": "keywords", "regions": "regions", "owners": "owner_name"}
MAX_IN = 500
MAX_TEXT = 1000


@dataclass(slots=True)
class Filter:
    """One condition: ``field`` is an API name of :data:`FIELDS`, ``op`` of :data:`OPERATORS`."""

    field: str
    op: str
    value: Any
    negate: bool = False


@dataclass(slots=True)
class CatalogueQuery:
    """A validated search of the index (field names from the allow-lists only)."""

    search: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    filters: list[Filter] = field(default_factory=list)
    ordering: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    offset: int = 0
    limit: int = 10
    visible_to: set[str] | None = None  # principals allowed to read; None = everything


# -- values ------------------------------------------------------------------------------------
def parse_time(value: Any) -> datetime:
    """A filter's time value (ISO 8601 date or date-time, a zone-less one is UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), UTC)
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidQuery(f"not a date or time: {str(value)[:40]!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def time_text(moment: datetime) -> str:
    """The one text form of a time in the SQLite index: sortable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "t"):
        return True
    if text in ("false", "0", "no", "f"):
        return False
    raise InvalidQuery(f"not true or false: {str(value)[:40]!r}")


def _int(value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise InvalidQuery(f"not an integer: {str(value)[:40]!r}") from None


def _scalar(kind: str, value: Any, pg: bool) -> Any:
    """A filter value converted to its column's kind (a bad value is a 400, never a 500)."""
    if kind == "int":
        number = _int(value)
        if abs(number) >= 2**63:
            raise InvalidQuery("integer out of range")
        return number
    if kind == "bool":
        return _bool(value)
    if kind == "time":
        moment = parse_time(value)
        return moment if pg else time_text(moment)
    text = str(value)
    if len(text) > MAX_TEXT or "\x00" in text:
        raise InvalidQuery("filter value too long or not text")
    return text


def search_terms(text: str) -> list[str]:
    """The words of a search, each matched as a prefix; nothing else of the text reaches a query."""
    return re.findall(r"\w+", text.lower())[:32]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- conditions, written once for both dialects ------------------------------------------------------
# A template names its column as {c} and its values as %s; the column comes from COLUMNS only.
_ARRAY_ELEMENT = {
    "pg": "EXISTS (SELECT 1 FROM unnest({c}) AS e(v) WHERE {cond})",
    "sqlite": "EXISTS (SELECT 1 FROM json_each({c}) AS e WHERE {cond})",
}


def _condition(flt: Filter, pg: bool) -> tuple[str, str, list[Any]]:
    """(template, column, params) of one filter; InvalidQuery for a name, operator or value out of bounds."""
    column = FIELDS.get(flt.field)
    if column is None:
        raise InvalidQuery(f"unknown filter field {flt.field[:60]!r}")
    kind = COLUMNS[column]
    op = flt.op
    if op not in OPERATORS[kind]:
        raise InvalidQuery(f"operator {op[:20]!r} is not available on {flt.field!r}")
    value = flt.value
    if op == "isnull":
        empty = _bool(value)
        if kind == "array":
            template = (
                "coalesce(cardinality({c}), 0) = 0" if pg else "coalesce(json_array_length({c}), 0) = 0"
            )
        else:
            template = "{c} IS NULL"
        return (template if empty else f"NOT ({template})"), column, []
    if kind == "array":
        element = "e.v" if pg else "e.value"
        text, params = _text_condition(element, op, value, pg)
        return _ARRAY_ELEMENT["pg" if pg else "sqlite"].replace("{cond}", text), column, params
    if kind == "text":
        text, params = _text_condition("{c}", op, value, pg)
        return text, column, params
    if op == "in":
        values = [_scalar(kind, v, pg) for v in _listed(value)]
        return "{c} IN (" + ", ".join(["%s"] * len(values)) + ")", column, values
    if op == "range":
        low, high = _listed(value, exactly=2)
        return "{c} BETWEEN %s AND %s", column, [_scalar(kind, low, pg), _scalar(kind, high, pg)]
    symbol = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    return "{c} " + symbol + " %s", column, [_scalar(kind, value, pg)]


def _text_condition(target: str, op: str, value: Any, pg: bool) -> tuple[str, list[Any]]:
    if op == "in":
        values = [_scalar("text", v, pg) for v in _listed(value)]
        return target + " IN (" + ", ".join(["%s"] * len(values)) + ")", values
    text = _scalar("text", value, pg)
    escape = " ESCAPE '\\'"
    if op == "eq":
        return f"{target} = %s", [text]
    if op == "iexact":
        return f"lower({target}) = lower(%s)", [text]
    if op in ("contains", "startswith"):
        pattern = _like(text) + "%" if op == "startswith" else "%" + _like(text) + "%"
        if pg:
            return f"{target} LIKE %s{escape}", [pattern]
        # SQLite's LIKE ignores ASCII case: instr/substr keep contains case-sensitive.
        if op == "contains":
            return f"instr({target}, %s) > 0", [text]
        return f"substr({target}, 1, length(%s)) = %s", [text, text]
    if op in ("icontains", "istartswith"):
        pattern = _like(text) + "%" if op == "istartswith" else "%" + _like(text) + "%"
        return (f"{target} ILIKE %s{escape}" if pg else f"lower({target}) LIKE lower(%s){escape}"), [pattern]
    symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    return f"{target} {symbol} %s", [text]


def _listed(value: Any, exactly: int | None = None) -> list[Any]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [i.strip() if isinstance(i, str) else i for i in items]
    items = [i for i in items if i != ""]
    if not items or len(items) > MAX_IN or (exactly is not None and len(items) != exactly):
        want = f"exactly {exactly}" if exactly else f"1 to {MAX_IN}"
        raise InvalidQuery(f"a list filter needs {want} comma-separated values")
    return items


def _check_ordering(ordering: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    out = []
    for name, descending in ordering:
        column = ORDERINGS.get(name)
        if column is None:
            raise InvalidQuery(f"cannot order by {name[:60]!r}")
        out.append((column, descending))
    return out


def _check_bbox(bbox: tuple[float, float, float, float] | None) -> None:
    if bbox is None:
        return
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        raise InvalidQuery("a bbox is four finite numbers")


# -- the index ------------------------------------------------------------------------------
class Catalogue:
    """The resource index over a store's database (PostgreSQL or the embedded SQLite file)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        if isinstance(store, PostgresStore):
            self._impl: _Backend = _PostgresCatalogue(store)
        elif isinstance(store, SQLiteStore):
            self._impl = _SQLiteCatalogue(store.path)
        else:
            raise TypeError(f"no catalogue for a {type(store).__name__}")

    def search(self, query: CatalogueQuery) -> tuple[list[dict[str, Any]], int]:
        """The page of rows the query asks for, and how many rows match in all."""
        _check_bbox(query.bbox)
        if query.limit < 0 or query.offset < 0:
            raise InvalidQuery("offset and limit must not be negative")
        ordering = _check_ordering(query.ordering)
        pg = isinstance(self._impl, _PostgresCatalogue)
        conditions = [_condition(f, pg) + (f.negate,) for f in query.filters]
        terms = search_terms(query.search) if query.search else []
        return self._impl.search(query, conditions, ordering, terms)

    def get(self, pk: int) -> dict[str, Any]:
        found = self._impl.one("pk", pk)
        if found is None:
            raise NotFound(f"resource {pk} not found")
        return found

    def get_by_uuid(self, uuid: str) -> dict[str, Any]:
        found = self._impl.one("uuid", str(uuid))
        if found is None:
            raise NotFound(f"resource {str(uuid)[:40]!r} not found")
        return found

    def upsert(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace the row of ``resource['pk']``; returns it as stored."""
        row = self._row(resource)
        self._impl.upsert(row)
        return self.get(row["pk"])

    def upsert_many(self, resources: Iterable[dict[str, Any]], batch: int = 2000) -> int:
        """Insert or replace many rows, ``batch`` per transaction (a bulk load); how many."""
        count, rows = 0, []
        for resource in resources:
            rows.append(self._row(resource))
            if len(rows) >= batch:
                self._impl.upsert_many(rows)
                count, rows = count + len(rows), []
        if rows:
            self._impl.upsert_many(rows)
            count += len(rows)
        return count

    def patch(self, pk: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some members of a row (unknown members go to its extras)."""
        current = self.get(pk)
        return self.upsert({**current, **changes, "pk": pk})

    def delete(self, pk: int) -> None:
        if not self._impl.delete(pk):
            raise NotFound(f"resource {pk} not found")

    def facets(self, field: str) -> list[tuple[str, int]]:
        """Values of a facet (``category``, ``keywords``, ``regions``, ``owners``) with their counts."""
        column = FACETS.get(field)
        if column is None:
            raise InvalidQuery(f"no facet {field[:40]!r}")
        return self._impl.facets(column, COLUMNS[column] == "array")

    def hashes(self, resource_type: str) -> dict[int, str | None]:
        """pk -> sync_hash of every row of one type: what the sync compares before writing."""
        return self._impl.hashes(resource_type)

    @staticmethod
    def _row(resource: dict[str, Any]) -> dict[str, Any]:
        """The columns of a resource dict; members without a column are kept in ``extras``."""
        pk = resource.get("pk")
        if not isinstance(pk, int) or isinstance(pk, bool):
            raise InvalidQuery("a resource needs an integer pk")
        owner = resource.get("owner") or {}
        category = resource.get("category") or None
        group = resource.get("group") or None
        bbox = resource.get("bbox") or [None] * 4
        row: dict[str, Any] = {
            "pk": pk,
            "uuid": str(resource.get("uuid") or ""),
            "resource_type": resource.get("resource_type") or "dataset",
            "subtype": resource.get("subtype"),
            "title": resource.get("title") or "",
            "abstract": resource.get("abstract") or "",
            "owner_id": owner.get("pk"),
            "owner_name": owner.get("username"),
            "category": category.get("identifier") if isinstance(category, dict) else category,
            "keywords": [str(k) for k in resource.get("keywords") or []],
            "regions": [str(r) for r in resource.get("regions") or []],
            "group_name": group.get("name") if isinstance(group, dict) else group,
            "created": resource.get("created"),
            "last_updated": resource.get("last_updated"),
            "date": resource.get("date"),
            "minx": bbox[0],
            "miny": bbox[1],
            "maxx": bbox[2],
            "maxy": bbox[3],
            "srid": resource.get("srid"),
            "is_published": bool(resource.get("is_published", True)),
            "is_approved": bool(resource.get("is_approved", True)),
            "advertised": bool(resource.get("advertised", True)),
            "featured": bool(resource.get("featured", False)),
            "alternate": resource.get("alternate"),
            "readers": sorted(str(p) for p in resource.get("readers") or []),
            "sync_hash": resource.get("sync_hash"),
        }
        for name in ("created", "last_updated", "date"):
            if row[name] is not None:
                row[name] = parse_time(row[name])
        handled = {*row, "owner", "bbox", "group", "category", "extras", "rank"}
        extras = dict(resource.get("extras") or {})
        extras.update({k: v for k, v in resource.items() if k not in handled})
        if isinstance(category, dict):
            extras["category_description"] = category.get("gn_description")
        row["extras"] = extras
        return row


def _resource(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row back as a resource dict."""
    extras = row.pop("extras") or {}
    out: dict[str, Any] = {**extras}
    for name in ("created", "last_updated", "date"):
        value = row[name]
        if isinstance(value, str):
            value = parse_time(value)
        row[name] = value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
    box = [row.pop(k) for k in ("minx", "miny", "maxx", "maxy")]
    category_description = extras.get("category_description")
    out.update(row)
    out.pop("category_description", None)
    out["owner"] = {"pk": row.pop("owner_id"), "username": row.pop("owner_name")}
    out.pop("owner_id", None)
    out.pop("owner_name", None)
    out["bbox"] = box if None not in box else None
    identifier = out.pop("category")
    out["category"] = (
        None if identifier is None else {"identifier": identifier, "gn_description": category_description}
    )
    name = out.pop("group_name")
    out["group"] = None if name is None else {"name": name}
    return out


class _Backend:
    def search(
        self,
        query: CatalogueQuery,
        conditions: list[tuple[str, str, list[Any], bool]],
        ordering: list[tuple[str, bool]],
        terms: list[str],
    ) -> tuple[list[dict[str, Any]], int]:
        raise NotImplementedError

    def one(self, column: str, value: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def upsert(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def upsert_many(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def delete(self, pk: int) -> bool:
        raise NotImplementedError

    def facets(self, column: str, array: bool) -> list[tuple[str, int]]:
        raise NotImplementedError

    def hashes(self, resource_type: str) -> dict[int, str | None]:
        raise NotImplementedError


# -- PostgreSQL -------------------------------------------------------------------------------
_PG_DDL = """
CREATE SCHEMA IF NOT EXISTS geoharbor;
CREATE TABLE IF NOT EXISTS geoharbor.catalogue (
  pk bigint PRIMARY KEY,
  uuid text NOT NULL UNIQUE,
  resource_type text NOT NULL,
  subtype text,
  title text NOT NULL DEFAULT '',
  abstract text NOT NULL DEFAULT '',
  owner_id bigint,
  owner_name text,
  category text,
  keywords text[] NOT NULL DEFAULT '{}',
  regions text[] NOT NULL DEFAULT '{}',
  group_name text,
  created timestamptz,
  last_updated timestamptz,
  date timestamptz,
  minx double precision, miny double precision, maxx double precision, maxy double precision,
  srid text,
  is_published boolean NOT NULL DEFAULT true,
  is_approved boolean NOT NULL DEFAULT true,
  advertised boolean NOT NULL DEFAULT true,
  featured boolean NOT NULL DEFAULT false,
  alternate text,
  readers text[] NOT NULL DEFAULT '{}',
  sync_hash text,
  extras jsonb NOT NULL DEFAULT '{}',
  document tsvector NOT NULL DEFAULT ''::tsvector
);
CREATE INDEX IF NOT EXISTS catalogue_document ON geoharbor.catalogue USING gin (document);
CREATE INDEX IF NOT EXISTS catalogue_box ON geoharbor.catalogue
  USING gist (box(point(minx, miny), point(maxx, maxy)));
CREATE INDEX IF NOT EXISTS catalogue_type ON geoharbor.catalogue (resource_type, pk);
CREATE INDEX IF NOT EXISTS catalogue_readers ON geoharbor.catalogue USING gin (readers);
"""

#: The weighted document of a row: title A, keywords B, abstract C (English stemming), and
#: every word as written at weight D, so that a search made only of English stop words
#: ("more", "other", "over") still finds what an ``icontains`` search would.
_PG_DOCUMENT = (
    "setweight(to_tsvector('english', coalesce(%(title)s, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(array_to_string(%(keywords)s::text[], ' '), '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(%(abstract)s, '')), 'C') || "
    "setweight(to_tsvector('simple', concat_ws(' ', %(title)s, array_to_string(%(keywords)s::text[], ' '), "
    "%(abstract)s)), 'D')"
)
#: One search word as a prefix: stemmed in English, or as written when English drops it.
_PG_TERM = "(to_tsquery('english', %s) || to_tsquery('simple', %s))"

_ROW_COLUMNS = [c for c in COLUMNS]


class _PostgresCatalogue(_Backend):
    def __init__(self, store: PostgresStore) -> None:
        self.db = store.db
        self._tables = PostgresTables(store.db, "geoharbor.catalogue", _PG_DDL, "catalogue")

    def _connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return self._tables.connection()

    @staticmethod
    def _select() -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in _ROW_COLUMNS)

    @staticmethod
    def _read(cursor: psycopg.Cursor) -> list[dict[str, Any]]:
        names = [d.name for d in cursor.description or []]
        return [_resource(dict(zip(names, r, strict=True))) for r in cursor.fetchall()]

    def search(self, query, conditions, ordering, terms):  # type: ignore[no-untyped-def]
        where: list[sql.Composable] = []
        params: list[Any] = []
        rank: sql.Composable = sql.SQL("0::real")
        term_params: list[str] = []
        if terms:
            tsquery = sql.SQL("(" + " && ".join([_PG_TERM] * len(terms)) + ")")
            term_params = [p for t in terms for p in (f"{t}:*", f"{t}:*")]
            where.append(sql.SQL("document @@ {}").format(tsquery))
            params.extend(term_params)
            rank = sql.SQL("ts_rank_cd(document, {})").format(tsquery)
        if query.bbox is not None:
            where.append(
                sql.SQL("box(point(minx, miny), point(maxx, maxy)) && box(point(%s, %s), point(%s, %s))")
            )
            params.extend(query.bbox)
        for template, column, values, negate in conditions:
            text = sql.SQL(template.replace("{c}", "{col}")).format(col=sql.Identifier(column))
            where.append(sql.SQL("NOT coalesce(({}), false)").format(text) if negate else text)
            params.extend(values)
        if query.visible_to is not None:
            where.append(sql.SQL("readers && %s::text[]"))
            params.append(sorted(query.visible_to))
        clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        order: list[sql.Composable] = []
        for column, descending in ordering or ([("rank", True)] if terms else []):
            direction = sql.SQL(" DESC NULLS LAST" if descending else " ASC NULLS FIRST")
            target = sql.SQL("rank") if column == "rank" else sql.Identifier(column)
            order.append(target + direction)
        order.append(sql.SQL("pk DESC" if not ordering and not terms else "pk ASC"))
        statement = sql.SQL(
            "SELECT {cols}, {rank} AS rank, count(*) OVER () AS total FROM geoharbor.catalogue{where} "
            "ORDER BY {order} LIMIT %s OFFSET %s"
        ).format(cols=self._select(), rank=rank, where=clause, order=sql.SQL(", ").join(order))
        rank_params = term_params
        with self._connection() as conn:
            cur = conn.execute(statement, [*rank_params, *params, query.limit, query.offset])
            names = [d.name for d in cur.description or []]
            raw = cur.fetchall()
            if raw:
                total = int(raw[0][-1])
            else:
                total_statement = sql.SQL("SELECT count(*) FROM geoharbor.catalogue{where}").format(
                    where=clause
                )
                total = int(conn.execute(total_statement, params).fetchone()[0])  # type: ignore[index]
        rows = []
        for values in raw:
            record = dict(zip(names, values, strict=True))
            record.pop("total")
            score = record.pop("rank")
            resource = _resource(record)
            if terms:
                resource["rank"] = float(score)
            rows.append(resource)
        return rows, total

    def one(self, column, value):  # type: ignore[no-untyped-def]
        statement = sql.SQL("SELECT {} FROM geoharbor.catalogue WHERE {} = %s").format(
            self._select(), sql.Identifier(column)
        )
        with self._connection() as conn:
            found = self._read(conn.execute(statement, (value,)))
        return found[0] if found else None

    def upsert(self, row):  # type: ignore[no-untyped-def]
        self.upsert_many([row])

    @staticmethod
    def _upsert_statement() -> sql.Composed:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _ROW_COLUMNS)
        placeholders = sql.SQL(", ").join(sql.Placeholder(c) for c in _ROW_COLUMNS)
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in [*_ROW_COLUMNS[1:], "document"]
        )
        statement = sql.SQL(
            "INSERT INTO geoharbor.catalogue ({cols}, document) VALUES ({vals}, "  # noqa: S608 - constant text
            + _PG_DOCUMENT
            + ") "
            "ON CONFLICT (pk) DO UPDATE SET {updates}"
        ).format(cols=columns, vals=placeholders, updates=updates)
        return statement

    def upsert_many(self, rows):  # type: ignore[no-untyped-def]
        statement = self._upsert_statement()
        values = [{**row, "extras": Jsonb(row["extras"])} for row in rows]
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(statement, values)

    def delete(self, pk):  # type: ignore[no-untyped-def]
        with self._connection() as conn:
            return conn.execute("DELETE FROM geoharbor.catalogue WHERE pk = %s", (pk,)).rowcount > 0

    def facets(self, column, array):  # type: ignore[no-untyped-def]
        target = sql.SQL("unnest({})" if array else "{}").format(sql.Identifier(column))
        statement = sql.SQL(
            "SELECT v, count(*) FROM (SELECT {} AS v FROM geoharbor.catalogue) AS f "
            "WHERE v IS NOT NULL GROUP BY v ORDER BY count(*) DESC, v"
        ).format(target)
        with self._connection() as conn:
            return [(str(v), int(n)) for v, n in conn.execute(statement).fetchall()]

    def hashes(self, resource_type):  # type: ignore[no-untyped-def]
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT pk, sync_hash FROM geoharbor.catalogue WHERE resource_type = %s", (resource_type,)
            ).fetchall()
        return {int(pk): h for pk, h in rows}


# -- SQLite (embedded mode) ------------------------------------------------------------------------
_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS catalogue (
  pk INTEGER PRIMARY KEY,
  uuid TEXT NOT NULL UNIQUE,
  resource_type TEXT NOT NULL,
  subtype TEXT,
  title TEXT NOT NULL DEFAULT '',
  abstract TEXT NOT NULL DEFAULT '',
  owner_id INTEGER,
  owner_name TEXT,
  category TEXT,
  keywords TEXT NOT NULL DEFAULT '[]',
  regions TEXT NOT NULL DEFAULT '[]',
  group_name TEXT,
  created TEXT, last_updated TEXT, date TEXT,
  minx REAL, miny REAL, maxx REAL, maxy REAL,
  srid TEXT,
  is_published INTEGER NOT NULL DEFAULT 1,
  is_approved INTEGER NOT NULL DEFAULT 1,
  advertised INTEGER NOT NULL DEFAULT 1,
  featured INTEGER NOT NULL DEFAULT 0,
  alternate TEXT,
  readers TEXT NOT NULL DEFAULT '[]',
  sync_hash TEXT,
  extras TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS catalogue_type ON catalogue (resource_type, pk);
CREATE VIRTUAL TABLE IF NOT EXISTS catalogue_fts
  USING fts5(title, keywords, abstract, tokenize = 'porter unicode61');
"""

_JSON_COLUMNS = {c for c, k in COLUMNS.items() if k in ("array", "json")}
_BOOL_COLUMNS = {c for c, k in COLUMNS.items() if k == "bool"}


class _SQLiteCatalogue(_Backend):
    def __init__(self, path: str) -> None:
        self.path = path
        self._connections = SQLiteConnections(path, _SQLITE_DDL)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    @staticmethod
    def _quote(column: str) -> str:
        if column not in COLUMNS:  # the allow-list is the only source of names
            raise InvalidQuery(f"unknown column {column[:40]!r}")
        return f'"{column}"'

    def _select(self, prefix: str = "") -> str:
        return ", ".join(prefix + self._quote(c) for c in _ROW_COLUMNS)

    def _read(self, cursor: sqlite3.Cursor, extra: int = 0) -> list[tuple[dict[str, Any], tuple]]:
        names = [d[0] for d in cursor.description][: len(_ROW_COLUMNS)]
        out = []
        for values in cursor.fetchall():
            record = dict(zip(names, values[: len(_ROW_COLUMNS)], strict=True))
            for column in _JSON_COLUMNS:
                record[column] = orjson.loads(record[column]) if record[column] is not None else None
            for column in _BOOL_COLUMNS:
                record[column] = bool(record[column])
            out.append((_resource(record), tuple(values[len(_ROW_COLUMNS) :])))
        return out

    def search(self, query, conditions, ordering, terms):  # type: ignore[no-untyped-def]
        where: list[str] = []
        params: list[Any] = []
        joins = ""
        rank = "0.0"
        if terms:
            joins = " JOIN catalogue_fts ON catalogue_fts.rowid = c.pk"
            where.append("catalogue_fts MATCH ?")
            params.append(" AND ".join(f'"{t}"*' for t in terms))
            rank = "-bm25(catalogue_fts, 10.0, 5.0, 1.0)"
        if query.bbox is not None:
            where.append("c.minx <= ? AND c.maxx >= ? AND c.miny <= ? AND c.maxy >= ?")
            minx, miny, maxx, maxy = query.bbox
            params.extend([maxx, minx, maxy, miny])
        for template, column, values, negate in conditions:
            text = template.replace("{c}", "c." + self._quote(column)).replace("%s", "?")
            where.append(f"NOT coalesce(({text}), 0)" if negate else text)
            params.extend(values)
        if query.visible_to is not None:
            principals = sorted(query.visible_to)
            where.append(
                "EXISTS (SELECT 1 FROM json_each(c.readers) AS r WHERE r.value IN ("  # noqa: S608 - placeholders
                + ", ".join("?" * len(principals))
                + "))"
                if principals
                else "0"
            )
            params.extend(principals)
        clause = " WHERE " + " AND ".join(where) if where else ""
        order = []
        for column, descending in ordering or ([("rank", True)] if terms else []):
            target = "rank" if column == "rank" else "c." + self._quote(column)
            # NULLs last when descending, first when ascending (as PostgreSQL's defaults here).
            nulls, direction = ("ASC", "DESC") if descending else ("DESC", "ASC")
            order.append(f"{target} IS NULL {nulls}, {target} {direction}")
        order.append("c.pk DESC" if not ordering and not terms else "c.pk ASC")
        statement = (
            f"SELECT {self._select('c.')}, {rank} AS rank FROM catalogue AS c{joins}{clause} "  # noqa: S608
            f"ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
        )
        conn = self._conn
        found = self._read(conn.execute(statement, [*params, query.limit, query.offset]))
        total = int(
            conn.execute(f"SELECT count(*) FROM catalogue AS c{joins}{clause}", params).fetchone()[0]  # noqa: S608
        )
        rows = []
        for resource, (score,) in found:
            if terms:
                resource["rank"] = float(score)
            rows.append(resource)
        return rows, total

    def one(self, column, value):  # type: ignore[no-untyped-def]
        statement = f"SELECT {self._select()} FROM catalogue WHERE {self._quote(column)} = ?"  # noqa: S608
        found = self._read(self._conn.execute(statement, (value,)))
        return found[0][0] if found else None

    def upsert(self, row):  # type: ignore[no-untyped-def]
        self.upsert_many([row])

    @staticmethod
    def _values(row: dict[str, Any]) -> list[Any]:
        values = []
        for column in _ROW_COLUMNS:
            value = row[column]
            if column in _JSON_COLUMNS:
                value = orjson.dumps(value).decode()
            elif COLUMNS[column] == "time" and value is not None:
                value = time_text(value)
            elif column in _BOOL_COLUMNS:
                value = int(bool(value))
            values.append(value)
        return values

    def upsert_many(self, rows):  # type: ignore[no-untyped-def]
        columns = ", ".join(self._quote(c) for c in _ROW_COLUMNS)
        updates = ", ".join(f"{self._quote(c)} = excluded.{self._quote(c)}" for c in _ROW_COLUMNS[1:])
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO catalogue ({columns}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))}) "  # noqa: S608
                f"ON CONFLICT (pk) DO UPDATE SET {updates}",
                [self._values(row) for row in rows],
            )
            conn.executemany("DELETE FROM catalogue_fts WHERE rowid = ?", [(row["pk"],) for row in rows])
            conn.executemany(
                "INSERT INTO catalogue_fts (rowid, title, keywords, abstract) VALUES (?, ?, ?, ?)",
                [(row["pk"], row["title"], " ".join(row["keywords"]), row["abstract"]) for row in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete(self, pk):  # type: ignore[no-untyped-def]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            gone = conn.execute("DELETE FROM catalogue WHERE pk = ?", (pk,)).rowcount > 0
            conn.execute("DELETE FROM catalogue_fts WHERE rowid = ?", (pk,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return gone

    def facets(self, column, array):  # type: ignore[no-untyped-def]
        name = self._quote(column)
        source = (
            f"SELECT e.value AS v FROM catalogue, json_each(catalogue.{name}) AS e"  # noqa: S608 - COLUMNS
            if array
            else f"SELECT {name} AS v FROM catalogue"  # noqa: S608 - COLUMNS
        )
        rows = self._conn.execute(
            f"SELECT v, count(*) FROM ({source}) WHERE v IS NOT NULL GROUP BY v ORDER BY count(*) DESC, v"  # noqa: S608
        ).fetchall()
        return [(str(v), int(n)) for v, n in rows]

    def hashes(self, resource_type):  # type: ignore[no-untyped-def]
        rows = self._conn.execute(
            "SELECT pk, sync_hash FROM catalogue WHERE resource_type = ?", (resource_type,)
        ).fetchall()
        return {int(pk): h for pk, h in rows}
