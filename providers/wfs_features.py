"""GetFeature answers read into features: GML (lxml + pygml) or GeoJSON (orjson + shapely).

Every feature comes out the same way whatever the remote sent: its ``gml:id``, its
properties typed as DescribeFeatureType says (GML carries only text), and its
geometry as a shapely geometry with x/y (east, north) coordinates.

Axis order is decided here, not guessed per geometry. geoharbor always asks for
features with an ``urn:ogc:def:crs:EPSG::n`` ``srsName``, for which WFS 1.1 and 2.0
and GML 3 put coordinates in the CRS's own axis order (latitude first for
EPSG:4326); the caller says whether that order is latitude-first. pygml would swap
by its own list of CRSs: the ``srsName`` attributes are taken off before it parses,
and the swap is done here for the whole answer. GeoJSON's axis order was checked
when the layer was registered (``RemoteLayer.geojson_axis``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pygml
import shapely
import shapely.geometry
from lxml import etree

from providers.errors import BadGateway
from providers.wfs_capabilities import GML_NAMESPACES, RemoteLayer
from providers.wfs_http import parse_xml

#: Elements of a feature that are GML's own, not the feature type's properties.
_GML_OWN = {"boundedBy", "name", "description", "identifier", "descriptionReference", "location"}
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_MEMBERS = {"member", "featureMember"}


@dataclass(slots=True)
class RemoteFeature:
    """One feature as the remote holds it (geometry x/y in the CRS it was asked in)."""

    id: str
    properties: dict[str, Any]
    geometry: shapely.Geometry | None


@dataclass(slots=True)
class FeatureAnswer:
    features: list[RemoteFeature]
    #: ``numberMatched`` (WFS 2.0) or ``numberOfFeatures`` (1.1) when the remote gave a number.
    matched: int | None


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def read_hits(data: bytes) -> int:
    """The count of a ``resultType=hits`` answer."""
    root = parse_xml(data, "to GetFeature (hits)")
    found = _number(root.get("numberMatched"))
    if found is None:
        found = _number(root.get("numberOfFeatures"))
    if found is None:
        raise BadGateway("the remote did not say how many features match (resultType=hits)")
    return found


def read(layer: RemoteLayer, data: bytes, lat_first: bool, geojson: bool) -> FeatureAnswer:
    """The features of a GetFeature answer in GeoJSON (``geojson``) or GML."""
    if geojson and data.lstrip()[:1] != b"<":
        return read_geojson(layer, data, lat_first)
    return read_collection(layer, data, lat_first)


# -- GML --------------------------------------------------------------------------------------------
def read_collection(layer: RemoteLayer, data: bytes, lat_first: bool) -> FeatureAnswer:
    """The features of a GML ``wfs:FeatureCollection``; BadGateway for anything else."""
    root = parse_xml(data, "to GetFeature")
    if etree.QName(root).localname != "FeatureCollection":
        raise BadGateway("the remote's GetFeature answer is not a feature collection")
    features = []
    for member in root:
        if not isinstance(member.tag, str):
            continue
        name = etree.QName(member).localname
        if name in _MEMBERS:
            items = [c for c in member if isinstance(c.tag, str)]
        elif name == "featureMembers":
            items = [c for c in member if isinstance(c.tag, str)]
        else:
            continue
        for item in items:
            if etree.QName(item).localname == "FeatureCollection":  # WFS 2.0 joins nest collections
                continue
            features.append(_feature(layer, item))
    if lat_first:
        _swap_axes(features)
    matched = _number(root.get("numberMatched"))
    return FeatureAnswer(features, matched)


def _feature(layer: RemoteLayer, element: Any) -> RemoteFeature:
    fid = None
    for namespace in GML_NAMESPACES:
        fid = fid or element.get(f"{{{namespace}}}id")
    fid = fid or element.get("fid") or element.get("id")
    if not fid:
        raise BadGateway("the remote sent a feature without gml:id")
    props: dict[str, Any] = {}
    geometry = None
    for child in element:
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        if qname.namespace in GML_NAMESPACES and qname.localname in _GML_OWN:
            continue
        name = qname.localname
        if name == layer.geometry_field:
            geometry = _geometry(child)
            continue
        spec = layer.fields.get(name)
        if spec is None:
            continue
        if child.get(_XSI_NIL) == "true":
            props[name] = None
        else:
            props[name] = typed(spec, child.text)
    return RemoteFeature(str(fid), props, geometry)


def _geometry(prop: Any) -> shapely.Geometry | None:
    """The geometry inside a GML geometry property, coordinates as the document writes them."""
    inner = next((c for c in prop if isinstance(c.tag, str)), None)
    if inner is None:
        return None
    for element in inner.iter():
        if isinstance(element.tag, str):
            element.attrib.pop("srsName", None)  # pygml would swap axes by its own CRS list
    try:
        parsed = pygml.parse(inner)
        return shapely.geometry.shape(parsed.__geo_interface__)
    except (ValueError, TypeError, KeyError, IndexError, shapely.errors.GEOSException) as exc:
        raise BadGateway(f"the remote sent a GML geometry geoharbor cannot read: {str(exc)[:200]}") from exc


def _swap_axes(features: list[RemoteFeature]) -> None:
    """Latitude-first coordinates as x/y, for the whole answer at once."""
    geoms = [f.geometry for f in features]
    if not any(g is not None for g in geoms):
        return
    swapped = shapely.transform(np.array(geoms, dtype=object), lambda coords: coords[:, ::-1])
    for feature, geom in zip(features, swapped, strict=True):
        feature.geometry = geom


def typed(spec: Mapping[str, Any], text: str | None) -> Any:
    """A GML property's text as its schema type (integer, number, boolean; the rest as text)."""
    if text is None:
        return None
    kind = spec.get("type")
    value = text.strip()
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return value.lower() in ("true", "1")
    return text


# -- GeoJSON --------------------------------------------------------------------------------------
def read_geojson(layer: RemoteLayer, data: bytes, lat_first: bool) -> FeatureAnswer:
    """The features of a GeoJSON answer, named with their ``gml:id``."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadGateway("the remote answered GeoJSON that is not JSON") from exc
    raw = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise BadGateway("the remote answered JSON that is not a FeatureCollection")
    features = []
    for item in raw:
        if not isinstance(item, dict) or item.get("id") is None:
            raise BadGateway("the remote sent a GeoJSON feature without id")
        props = item.get("properties") or {}
        values = {name: props.get(name) for name in layer.fields if name in props}
        geometry = item.get("geometry")
        try:
            geom = shapely.from_geojson(orjson.dumps(geometry)) if geometry else None
        except (shapely.errors.GEOSException, ValueError) as exc:
            raise BadGateway("the remote sent a GeoJSON geometry that cannot be read") from exc
        features.append(RemoteFeature(layer.geojson_id_prefix + str(item["id"]), values, geom))
    if lat_first and layer.geojson_axis == "yx":
        _swap_axes(features)
    matched = doc.get("numberMatched") if isinstance(doc.get("numberMatched"), int) else None
    return FeatureAnswer(features, matched)
