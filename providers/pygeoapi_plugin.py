"""Our providers seen through pygeoapi's provider plugin interface.

pygeoapi instantiates a provider plugin on every request that needs one (collection
metadata, queryables, the OpenAPI document). This adapter is therefore a thin,
cheap view over the long-lived :class:`~providers.base.FeatureProvider` of the
collection, which the server registers in :data:`ACTIVE` when it builds its
registry. Feature reads and writes are served by geoharbor's own routes; the query
methods here exist so that any pygeoapi code path that does call them gets the same
answers.
"""

from __future__ import annotations

from typing import Any

import orjson
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError, SchemaType

from providers.base import FeatureProvider, Query
from providers.errors import NotFound

#: collection id -> provider, filled by the server's registry.
ACTIVE: dict[str, FeatureProvider] = {}


class GeoharborProvider(BaseProvider):
    """pygeoapi's view of one geoharbor collection."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_def)
        self.provider = ACTIVE[provider_def["data"]]
        schema = self.provider.schema
        self.id_field = schema.id_field
        self.time_field = schema.time_field
        self.editable = self.provider.editable
        self._fields = {name: f.json_schema() for name, f in schema.fields.items()}

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def get_schema(self, schema_type: SchemaType = SchemaType.item) -> tuple[str, dict[str, Any]]:
        schema = self.provider.schema
        properties = dict(self._fields)
        if schema.geometry_field:
            properties["geometry"] = {
                "$ref": "https://geojson.org/schema/Geometry.json",
                "x-ogc-role": "primary-geometry",
            }
        properties[schema.id_field] = {"type": schema.id_type, "x-ogc-role": "id"}
        return "application/schema+json", {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
        }

    def query(
        self,
        offset: int = 0,
        limit: int = 10,
        resulttype: str = "results",
        bbox: list | None = None,
        properties: list | None = None,
        sortby: list | None = None,
        select_properties: list | None = None,
        skip_geometry: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        query = Query(
            limit=limit,
            offset=offset,
            bbox=tuple(bbox) if bbox else None,
            equals=dict(properties or []),
            sortby=[(s["property"], s.get("order", "+") != "-") for s in (sortby or [])],
            properties=list(select_properties) if select_properties else None,
            skip_geometry=skip_geometry,
            count="exact" if resulttype == "hits" else "auto",
        )
        page = self.provider.query(query)
        features = [orjson.loads(f) for f in page.features] if resulttype != "hits" else []
        result: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": features,
            "numberReturned": len(features),
        }
        if page.matched is not None:
            result["numberMatched"] = page.matched.value
        return result

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return orjson.loads(self.provider.get(str(identifier)).body)
        except NotFound as exc:
            raise ProviderItemNotFoundError(exc.message) from exc

    def __repr__(self) -> str:
        return f"<GeoharborProvider {self.data}>"
