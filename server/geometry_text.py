"""Geometries to and from the text forms the REST API speaks: WKT, GeoJSON, KML and GML.

The REST CRUD reference sends geometries as WKT (``"POINT(15 45)"``) and answers
them as ``geometry=wkt|geojson|kml|gml``; providers read and write GeoJSON. This
module converts between the two through shapely, so a geometry is validated once,
the same way, whatever the client sent.

shapely reads and writes WKT and GeoJSON; KML goes through fastkml and GML through
pygml (GML 3.2 out, GML 3.x in), rather than XML written by hand: both handle the
details that hand-written encoders get wrong (GML's axis order for EPSG:4326, ring
and multi-part nesting, namespaces).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import orjson
import shapely
import shapely.geometry
from lxml import etree

from providers.crs import CRS84_URI, parse_crs
from providers.errors import InvalidData, InvalidQuery

GeometryFormat = Literal["geojson", "wkt", "kml", "gml"]
FORMATS: tuple[GeometryFormat, ...] = ("geojson", "wkt", "kml", "gml")

KML_NAMESPACE = "http://www.opengis.net/kml/2.2"
CRS84_URN = "urn:ogc:def:crs:OGC::CRS84"
GML_NAMESPACES = ("http://www.opengis.net/gml", "http://www.opengis.net/gml/3.2")
#: Longest geometry text accepted in a body (10 MB): a request body limit in disguise.
MAX_TEXT = 10 * 1024 * 1024

#: XML parser that never fetches anything and never expands entities (hostile input).
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)


def geometry_format(raw: str | None, default: GeometryFormat = "wkt") -> GeometryFormat:
    """The ``geometry`` query parameter, checked: 400 for anything but the four formats."""
    if raw is None or raw == "":
        return default
    value = raw.lower()
    if value not in FORMATS:
        raise InvalidQuery(f"geometry must be one of {', '.join(FORMATS)}, not {raw[:40]!r}")
    return value  # type: ignore[return-value]


# -- in -------------------------------------------------------------------------------------
def parse_geometry(value: Any, srid: int = 4326) -> shapely.Geometry:
    """A geometry from a request body: a GeoJSON object or a WKT, GeoJSON, KML or GML string.

    Coordinates are x/y (lon/lat) in EPSG ``srid``, the CRS the client said it writes
    in; a GML ``srsName`` naming another CRS is refused rather than silently ignored.
    Anything that is not a well-formed geometry is :class:`InvalidData` (422), with
    what is wrong with it. Whether its type suits the target is the provider's call.
    """
    if isinstance(value, dict):
        return _from_geojson(value)
    if not isinstance(value, str):
        raise InvalidData("geometry must be a WKT string or a GeoJSON geometry object")
    text = value.strip()
    if not text:
        raise InvalidData("geometry is empty")
    if len(text) > MAX_TEXT:
        raise InvalidData("geometry text is too long")
    if text.startswith("{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidData(f"geometry is not valid GeoJSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidData("geometry must be a GeoJSON geometry object")
        return _from_geojson(parsed)
    if text.startswith("<"):
        return _from_xml(text, srid)
    return _from_wkt(text)


def _checked(geom: shapely.Geometry, what: str) -> shapely.Geometry:
    """NaN or infinite coordinates would be stored as such by SQLite and refused by PostGIS."""
    if not np.isfinite(shapely.get_coordinates(geom, include_z=bool(shapely.has_z(geom)))).all():
        raise InvalidData(f"{what} has coordinates that are not finite numbers")
    return geom


def _from_wkt(text: str) -> shapely.Geometry:
    try:
        geom = shapely.from_wkt(text)
    except shapely.errors.ShapelyError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise InvalidData(f"geometry is not valid WKT: {detail[:200]}") from None
    if geom is None:
        raise InvalidData("geometry is not valid WKT")
    return _checked(geom, "the WKT geometry")


def _from_geojson(obj: dict[str, Any]) -> shapely.Geometry:
    kind = obj.get("type")
    if kind in ("Feature", "FeatureCollection"):
        raise InvalidData("geometry must be a GeoJSON geometry, not a Feature or FeatureCollection")
    if not isinstance(kind, str) or ("coordinates" not in obj and "geometries" not in obj):
        raise InvalidData("geometry must be a GeoJSON geometry object with 'type' and 'coordinates'")
    try:
        geom = shapely.geometry.shape(obj)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, shapely.errors.ShapelyError) as exc:
        raise InvalidData(f"geometry is not a valid GeoJSON {kind[:40]}: {str(exc)[:200]}") from None
    return _checked(geom, "the GeoJSON geometry")


def _from_xml(text: str, srid: int) -> shapely.Geometry:
    try:
        root = etree.fromstring(text.encode(), parser=_XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidData(f"geometry is not well-formed XML: {str(exc)[:200]}") from None
    if root.getroottree().docinfo.doctype:
        raise InvalidData("geometry: XML with a DOCTYPE is not accepted")
    namespace = etree.QName(root).namespace
    if namespace in GML_NAMESPACES:
        return _from_gml(root, srid)
    if namespace in (KML_NAMESPACE, None):
        return _from_kml(text, etree.QName(root).localname)
    raise InvalidData(f"geometry: XML in namespace {str(namespace)[:100]!r} is neither KML nor GML")


def _from_kml(text: str, element: str) -> shapely.Geometry:
    import fastkml.geometry as kml
    from fastkml.exceptions import KMLParseError

    classes = {
        "Point": kml.Point,
        "LineString": kml.LineString,
        "LinearRing": kml.LinearRing,
        "Polygon": kml.Polygon,
        "MultiGeometry": kml.MultiGeometry,
    }
    cls = classes.get(element)
    if cls is None:
        raise InvalidData(f"geometry: KML element {element[:60]!r} is not a geometry")
    try:
        parsed = cls.from_string(text)
    except (KMLParseError, etree.XMLSyntaxError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidData(f"geometry is not valid KML: {str(exc).splitlines()[0][:200]}") from None
    if parsed.geometry is None:
        raise InvalidData("geometry: the KML element holds no geometry")
    return _checked(shapely.geometry.shape(parsed.geometry), "the KML geometry")


def _from_gml(root: Any, srid: int) -> shapely.Geometry:
    """GML 3.x (``gml:pos``/``gml:posList``); pygml puts latitude-first axes in x/y order."""
    import pygml

    srs_name = root.get("srsName")
    if srs_name:
        try:
            named = parse_crs(srs_name).srid
        except InvalidQuery:
            raise InvalidData(f"geometry: unknown GML srsName {srs_name[:100]!r}") from None
        if named != srid:
            raise InvalidData(f"geometry: GML srsName is EPSG:{named}, coordinates are read as EPSG:{srid}")
    try:
        parsed = dict(pygml.parse(root).__geo_interface__)
    except Exception as exc:  # noqa: BLE001 - pygml raises bare ValueError/KeyError/... on bad input
        raise InvalidData(f"geometry is not valid GML: {str(exc)[:200]}") from None
    parsed.pop("crs", None)
    return _from_geojson(parsed)


# -- out ------------------------------------------------------------------------------------
def to_geojson(geom: shapely.Geometry) -> dict[str, Any]:
    """A GeoJSON geometry object (what providers write)."""
    return shapely.geometry.mapping(geom)


def format_geometry(
    geom: shapely.Geometry | None, fmt: GeometryFormat, crs_uri: str, identifier: str = "g"
) -> Any:
    """``geom`` (x/y order, in the CRS named by ``crs_uri``) as the client asked for it.

    GeoJSON is an object, the others text. KML states no CRS: its coordinates are those
    of the output CRS (lon/lat unless the client asked for another). GML names the CRS
    in ``srsName`` and writes EPSG:4326 latitude first, as that CRS's axis order says.
    """
    if geom is None:
        return None
    if fmt == "geojson":
        return to_geojson(geom)
    if fmt == "wkt":
        return shapely.to_wkt(geom, rounding_precision=-1)
    if geom.is_empty:
        return None
    if fmt == "kml":
        from fastkml.geometry import create_kml_geometry

        return create_kml_geometry(geom).to_string(prettyprint=False)
    from pygml.v32 import encode_v32

    name = CRS84_URN if crs_uri == CRS84_URI else crs_uri  # the CRS84 name pygml knows
    return etree.tostring(encode_v32(_named(to_geojson(geom), name), identifier)).decode()


def _named(geojson: dict[str, Any], crs_name: str) -> dict[str, Any]:
    """GeoJSON with the (2008) ``crs`` member pygml reads the axis order from.

    A collection carries it on its members: pygml swaps the axes of each member by
    its own CRS and cannot swap those of a collection as a whole.
    """
    if geojson["type"] == "GeometryCollection":
        members = [_named(g, crs_name) for g in geojson["geometries"]]
        return {"type": "GeometryCollection", "geometries": members}
    return {**geojson, "crs": {"type": "name", "properties": {"name": crs_name}}}
