"""The catalogue as OGC API - Records: a pygeoapi ``record`` provider over the catalogue index.

pygeoapi parses the Records query (``q``, ``bbox``, ``datetime``, property equality,
``sortby``, ``filter`` as CQL2 text or JSON, ``limit``/``offset``) and calls
:meth:`CatalogueRecords.query`; it is turned into one
:class:`~providers.catalogue.CatalogueQuery`, so Records clients search exactly the
rows the GeoNode API does, ranked the same way. Record properties map onto catalogue
fields through :data:`PROPERTIES` (an allow-list: nothing else reaches the index);
CQL2 is supported where the index can answer it: comparisons, LIKE with a leading
and/or trailing wildcard, IN, BETWEEN, IS NULL, NOT and AND of those. OR and spatial
or temporal functions answer 400.

Which rows a caller may see is decided by the server (the same readers every route
enforces) and handed over in :data:`VISIBLE_TO` for the request, since pygeoapi builds
providers without knowing who asks.
"""

from __future__ import annotations

import contextvars
from datetime import date, datetime
from typing import Any

from pygeoapi.provider.base import (
    BaseProvider,
    ProviderInvalidQueryError,
    ProviderItemNotFoundError,
    ProviderQueryError,
    SchemaType,
)
from pygeofilter import ast as cql

from providers.errors import InvalidQuery, NotFound, ProviderError

#: Principals of the caller whose rows may be returned; None = every row. Set per request.
VISIBLE_TO: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "records_visible_to", default=None
)
#: The catalogue the provider reads (set by the server when it installs the records door).
CATALOGUE: dict[str, Any] = {}
#: Builds links of a record: (resource) -> list of links; set by the server.
LINKS: dict[str, Any] = {}

#: Record properties -> catalogue fields (filters and sorting).
PROPERTIES: dict[str, str] = {
    "title": "title",
    "description": "abstract",
    "type": "resource_type",
    "keywords": "keywords",
    "themes": "category",
    "category": "category",
    "owner": "owner.username",
    "created": "created",
    "updated": "last_updated",
    "date": "date",
    "alternate": "alternate",
}
#: JSON Schema of the record properties (queryables).
FIELDS: dict[str, dict[str, Any]] = {
    "title": {"type": "string"},
    "description": {"type": "string"},
    "type": {"type": "string"},
    "keywords": {"type": "string"},
    "themes": {"type": "string"},
    "category": {"type": "string"},
    "owner": {"type": "string"},
    "created": {"type": "string", "format": "date-time"},
    "updated": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date-time"},
    "alternate": {"type": "string"},
}
#: Sortable record properties -> catalogue orderings.
SORTS = {
    "title": "title",
    "type": "resource_type",
    "created": "created",
    "updated": "last_updated",
    "date": "date",
    "owner": "owner.username",
    "category": "category",
}
COMPARISONS = {
    cql.Equal: "eq",
    cql.LessThan: "lt",
    cql.LessEqual: "lte",
    cql.GreaterThan: "gt",
    cql.GreaterEqual: "gte",
}


def _catalogue() -> Any:
    try:
        return CATALOGUE["current"]()
    except KeyError:
        raise ProviderQueryError("the catalogue is not available") from None


def _field(node: Any) -> str:
    if not isinstance(node, cql.Attribute):
        raise ProviderInvalidQueryError("a filter compares a record property with a value")
    field = PROPERTIES.get(node.name)
    if field is None:
        raise ProviderInvalidQueryError(
            f"unknown property {str(node.name)[:60]!r}: use {', '.join(PROPERTIES)}"
        )
    return field


def _value(node: Any) -> Any:
    if isinstance(node, datetime | date):
        return node.isoformat()
    if isinstance(node, str | int | float | bool):
        return node
    raise ProviderInvalidQueryError("a filter value must be a string, number, boolean or timestamp")


def filters(node: Any) -> list[Any]:
    """The catalogue filters of a pygeofilter tree (AND of supported predicates)."""
    from providers.catalogue import Filter

    if isinstance(node, cql.And):
        return filters(node.lhs) + filters(node.rhs)
    if isinstance(node, cql.Not):
        inner = filters(node.sub_node)
        if len(inner) != 1:
            raise ProviderInvalidQueryError("NOT applies to one comparison here")
        flt = inner[0]
        return [Filter(flt.field, flt.op, flt.value, not flt.negate)]
    if type(node) in COMPARISONS:
        return [Filter(_field(node.lhs), COMPARISONS[type(node)], _value(node.rhs))]
    if isinstance(node, cql.NotEqual):
        return [Filter(_field(node.lhs), "eq", _value(node.rhs), True)]
    if isinstance(node, cql.Like):
        return [Filter(_field(node.lhs), *_like(node.pattern, node.wildcard, node.nocase), node.not_)]
    if isinstance(node, cql.In):
        return [Filter(_field(node.lhs), "in", [_value(v) for v in node.sub_nodes], node.not_)]
    if isinstance(node, cql.Between):
        return [Filter(_field(node.lhs), "range", [_value(node.low), _value(node.high)], node.not_)]
    if isinstance(node, cql.IsNull):
        return [Filter(_field(node.lhs), "isnull", True, node.not_)]
    raise ProviderInvalidQueryError(
        "this filter is not supported on the catalogue: use AND, NOT, comparisons, LIKE, IN, BETWEEN, IS NULL"
    )


def _like(pattern: Any, wildcard: str, nocase: bool) -> tuple[str, str]:
    """(operator, text) of a LIKE pattern the index can answer: ``%x%``, ``x%`` or ``x``."""
    if not isinstance(pattern, str):
        raise ProviderInvalidQueryError("LIKE needs a text pattern")
    inner = pattern.strip(wildcard)
    if wildcard in inner or not inner:
        raise ProviderInvalidQueryError("LIKE patterns here are 'text%', '%text%' or '%text'... with text")
    if pattern.startswith(wildcard):
        return ("icontains" if nocase else "contains"), inner
    if pattern.endswith(wildcard):
        return ("istartswith" if nocase else "startswith"), inner
    return ("iexact" if nocase else "eq"), inner


def _datetime(value: str | None) -> list[Any]:
    """Filters of an OGC ``datetime`` (an instant or an interval, ``..`` open) on the time the
    resource last changed (catalogue rows keep no temporal extent of their data)."""
    from providers.catalogue import Filter

    if not value:
        return []
    if "/" not in value:
        return [Filter("last_updated", "eq", value)]
    start, _, end = value.partition("/")
    out = []
    if start not in ("", ".."):
        out.append(Filter("last_updated", "gte", start))
    if end not in ("", ".."):
        out.append(Filter("last_updated", "lte", end))
    return out


def record(resource: dict[str, Any]) -> dict[str, Any]:
    """A catalogue resource as an OGC API - Records record (a GeoJSON feature)."""
    bbox = resource.get("bbox")
    geometry = None
    if bbox:
        minx, miny, maxx, maxy = bbox
        geometry = {
            "type": "Polygon",
            "coordinates": [[[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]],
        }
    keywords = [k.get("name") if isinstance(k, dict) else k for k in resource.get("keywords") or []]
    category = resource.get("category") or {}
    owner = resource.get("owner") or {}
    properties: dict[str, Any] = {
        "type": resource.get("resource_type"),
        "title": resource.get("title"),
        "description": resource.get("abstract") or "",
        "keywords": keywords,
        "created": resource.get("created"),
        "updated": resource.get("last_updated"),
        "date": resource.get("date"),
        "owner": owner.get("username"),
        "alternate": resource.get("alternate"),
        "pk": resource.get("pk"),
    }
    if category.get("identifier"):
        properties["themes"] = [
            {
                "concepts": [{"id": category["identifier"]}],
                "scheme": "https://www.isotc211.org/2005/resources/Codelist/gmxCodelists.xml#MD_TopicCategoryCode",
            }
        ]
        properties["category"] = category["identifier"]
    if resource.get("regions"):
        properties["regions"] = resource["regions"]
    if resource.get("srid"):
        properties["crs"] = resource["srid"]
    links = LINKS["build"](resource) if "build" in LINKS else []
    return {
        "id": resource.get("uuid"),
        "type": "Feature",
        "conformsTo": ["http://www.opengis.net/spec/ogcapi-records-1/1.0/req/record-core"],
        "geometry": geometry,
        "properties": properties,
        "links": links,
    }


class CatalogueRecords(BaseProvider):
    """pygeoapi's ``record`` provider of the ``catalogue`` collection."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_def)
        self.id_field = "id"
        self._fields = dict(FIELDS)

    def get_fields(self) -> dict[str, Any]:
        return dict(FIELDS)

    def get_schema(self, schema_type: SchemaType = SchemaType.item) -> tuple[str, dict[str, Any]]:
        return "application/schema+json", {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {**FIELDS, "id": {"type": "string", "x-ogc-role": "id"}},
        }

    def query(
        self,
        offset: int = 0,
        limit: int = 10,
        resulttype: str = "results",
        bbox: list | None = None,
        datetime_: str | None = None,
        properties: list | None = None,
        sortby: list | None = None,
        select_properties: list | None = None,
        skip_geometry: bool = False,
        q: str | None = None,
        filterq: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        from providers.catalogue import CatalogueQuery, Filter

        wanted: list[Any] = []
        for name, value in properties or []:
            field = PROPERTIES.get(name)
            if field is None:
                raise ProviderInvalidQueryError(f"unknown property {str(name)[:60]!r}")
            exact = field in ("created", "last_updated", "date")
            wanted.append(Filter(field, "eq" if exact else "iexact", value))
        wanted += _datetime(datetime_)
        if filterq is not None:
            wanted += filters(filterq)
        ordering = []
        for item in sortby or []:
            name = SORTS.get(item["property"])
            if name is None:
                raise ProviderInvalidQueryError(f"cannot sort by {str(item['property'])[:60]!r}")
            ordering.append((name, item.get("order") == "-"))
        query = CatalogueQuery(
            search=q,
            bbox=tuple(float(v) for v in bbox) if bbox else None,  # type: ignore[arg-type]
            filters=wanted,
            ordering=ordering,
            offset=offset,
            limit=0 if resulttype == "hits" else limit,
            visible_to=VISIBLE_TO.get(),
        )
        try:
            rows, total = _catalogue().search(query)
        except InvalidQuery as exc:
            raise ProviderInvalidQueryError(exc.message) from exc
        except ProviderError as exc:
            raise ProviderQueryError(exc.message) from exc
        features = [record(r) for r in rows]
        if skip_geometry:
            for feature in features:
                feature["geometry"] = None
        if select_properties:
            for feature in features:
                feature["properties"] = {
                    k: v for k, v in feature["properties"].items() if k in select_properties
                }
        return {
            "type": "FeatureCollection",
            "features": features,
            "numberMatched": total,
            "numberReturned": len(features),
        }

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resource = _catalogue().get_by_uuid(str(identifier))
        except NotFound:
            raise ProviderItemNotFoundError(f"record {str(identifier)[:60]!r} not found") from None
        visible = VISIBLE_TO.get()
        if visible is not None and not visible & set(resource.get("readers") or []):
            raise ProviderItemNotFoundError(f"record {str(identifier)[:60]!r} not found")
        return record(resource)


#: The collection id of the catalogue in OGC API - Records.
COLLECTION_ID = "catalogue"
PLUGIN = "providers.records.CatalogueRecords"


def pygeoapi_resource(title: str) -> dict[str, Any]:
    """The catalogue collection in pygeoapi's configuration (a ``record`` collection)."""
    return {
        "type": "collection",
        "itemType": "record",
        "title": f"{title}: catalogue",
        "description": "Every dataset, map and document of this server (OGC API - Records)",
        "keywords": ["catalogue", "records", "metadata"],
        "links": [],
        "extents": {
            "spatial": {
                "bbox": [-180.0, -90.0, 180.0, 90.0],
                "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
            }
        },
        "providers": [
            {
                "type": "record",
                "name": PLUGIN,
                "data": COLLECTION_ID,
                "id_field": "id",
                "title_field": "title",
            }
        ],
    }
