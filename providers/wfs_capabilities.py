"""What a remote WFS says about one of its feature types, read once and kept as a plain record.

GetCapabilities (WFS 2.0.0 or 1.1.0) gives the feature type's name, CRSs, WGS84
bounding box and output formats, and what the server can do: result paging, sorting,
``resultType=hits``, and which filter operators it understands (FES 2.0 or Filter
1.1). DescribeFeatureType gives the properties, their XML Schema types and the
geometry property. Both are parsed with lxml (no DTD, no entity, no network).

:class:`RemoteLayer` is what geoharbor keeps of all this: a JSON-able record. A layer
registered at run time stores it in the store, so every process publishes the layer
from the record without asking the remote again (and keeps publishing it while the
remote is down); the provider is built from it.

How the whole description is asked for, and how a GeoJSON output is checked before
it is used, is :func:`providers.wfs.describe`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lxml import etree

from providers.base import CollectionSchema, Field
from providers.crs import UnknownCRS, from_srid, parse_crs
from providers.errors import BadGateway, InvalidData
from providers.wfs_http import parse_xml

VERSIONS = ("2.0.0", "1.1.0")
#: The id of a WFS feature (its ``gml:id``), as a property name in queries and the schema.
ID_FIELD = "gml_id"

XSD = "http://www.w3.org/2001/XMLSchema"
GML_NAMESPACES = {"http://www.opengis.net/gml", "http://www.opengis.net/gml/3.2"}

#: XML Schema types as JSON Schema (type, format).
_XSD_TYPES: dict[str, tuple[str, str | None]] = {
    "string": ("string", None),
    "normalizedString": ("string", None),
    "token": ("string", None),
    "anyURI": ("string", None),
    "boolean": ("boolean", None),
    "int": ("integer", None),
    "integer": ("integer", None),
    "long": ("integer", None),
    "short": ("integer", None),
    "byte": ("integer", None),
    "nonNegativeInteger": ("integer", None),
    "positiveInteger": ("integer", None),
    "negativeInteger": ("integer", None),
    "nonPositiveInteger": ("integer", None),
    "unsignedInt": ("integer", None),
    "unsignedLong": ("integer", None),
    "unsignedShort": ("integer", None),
    "decimal": ("number", None),
    "double": ("number", None),
    "float": ("number", None),
    "date": ("string", "date"),
    "dateTime": ("string", "date-time"),
}

#: GML geometry property types as OGC geometry type names.
_GEOMETRY_TYPES = {
    "PointPropertyType": "POINT",
    "MultiPointPropertyType": "MULTIPOINT",
    "LineStringPropertyType": "LINESTRING",
    "CurvePropertyType": "LINESTRING",
    "MultiLineStringPropertyType": "MULTILINESTRING",
    "MultiCurvePropertyType": "MULTILINESTRING",
    "PolygonPropertyType": "POLYGON",
    "SurfacePropertyType": "POLYGON",
    "MultiPolygonPropertyType": "MULTIPOLYGON",
    "MultiSurfacePropertyType": "MULTIPOLYGON",
    "GeometryPropertyType": "GEOMETRY",
    "GeometryAssociationType": "GEOMETRY",
    "MultiGeometryPropertyType": "GEOMETRY",
}

#: Comparison operators, by their FES 2.0 name without ``PropertyIs``.
COMPARISONS = (
    "EqualTo",
    "NotEqualTo",
    "LessThan",
    "GreaterThan",
    "LessThanOrEqualTo",
    "GreaterThanOrEqualTo",
    "Like",
    "Between",
    "Null",
)


@dataclass(slots=True)
class RemoteLayer:
    """One feature type of one remote WFS, as geoharbor publishes it."""

    url: str
    version: str
    type_name: str  # as the capabilities name it, usually prefixed (ms:countries)
    title: str = ""
    abstract: str = ""
    crs: list[int] = field(default_factory=list)  # EPSG codes; the default first
    bbox: list[float] | None = None  # CRS84
    gml_format: str | None = None
    geojson_format: str | None = None
    #: The GeoJSON's axis order in a latitude-first CRS: "xy" (as GeoJSON says) or "yx".
    geojson_axis: str = "xy"
    #: Prepended to GeoJSON feature ids to make them the ``gml:id`` ("countries." + 43).
    geojson_id_prefix: str = ""
    paging: bool = False
    sorting: bool = False
    hits: bool = False
    #: The most features one answer holds, when the server says (CountDefault).
    max_count: int | None = None
    logical: bool = False
    comparisons: list[str] = field(default_factory=list)
    spatial: list[str] = field(default_factory=list)
    geometry_field: str | None = None
    geometry_type: str | None = None
    #: name -> {"type", "format", "native", "nullable"} from DescribeFeatureType, in order.
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def default_srid(self) -> int:
        return self.crs[0] if self.crs else 4326

    @property
    def local_name(self) -> str:
        return self.type_name.rpartition(":")[2]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RemoteLayer:
        """The record back; InvalidData when it is not one (a hand-edited layer record, say)."""
        if not isinstance(data, dict):
            raise InvalidData("a remote layer record must be an object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InvalidData(f"incomplete remote layer record: {exc}") from exc

    def schema(self) -> CollectionSchema:
        """The collection's schema: the remote's properties, ``gml_id`` as the (string) id."""
        attrs = {
            name: Field(
                name,
                spec.get("type", "string"),
                spec.get("format"),
                nullable=spec.get("nullable", True),
                native_type=spec.get("native", ""),
            )
            for name, spec in self.fields.items()
        }
        bbox = tuple(self.bbox) if self.bbox and len(self.bbox) == 4 else None
        return CollectionSchema(
            id_field=ID_FIELD,
            geometry_field=self.geometry_field,
            geometry_type=self.geometry_type,
            storage_crs=from_srid(self.default_srid),
            fields=attrs,
            id_type="string",
            id_native_type="gml:id",
            id_has_default=False,
            bbox=bbox,  # type: ignore[arg-type]
        )


# -- GetCapabilities ------------------------------------------------------------------------------
def _local(element: Any) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _children(element: Any, name: str) -> list[Any]:
    return [c for c in element if _local(c) == name]


def _child(element: Any, name: str) -> Any:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: Any, name: str) -> str:
    found = _child(element, name)
    return " ".join((found.text or "").split()) if found is not None else ""


def _descendants(element: Any, name: str) -> list[Any]:
    return [e for e in element.iter() if _local(e) == name]


def _srid(name: str) -> int | None:
    try:
        return parse_crs(name.replace("urn:x-ogc:", "urn:ogc:")).srid
    except UnknownCRS:
        return None


def _bool_constraint(root: Any, name: str) -> bool | None:
    """An OWS constraint's TRUE/FALSE value (``ows:Constraint`` or ``fes:Constraint``)."""
    for constraint in _descendants(root, "Constraint"):
        if constraint.get("name") == name:
            value = _text(constraint, "DefaultValue") or _text(constraint, "Value")
            return value.strip().upper() == "TRUE"
    return None


def _int_constraint(root: Any, *names: str) -> int | None:
    for constraint in _descendants(root, "Constraint"):
        if constraint.get("name") in names:
            value = _text(constraint, "DefaultValue") or _text(constraint, "Value")
            if value.strip().isdigit() and int(value) > 0:
                return int(value)
    return None


def _operation(root: Any, name: str) -> Any:
    for operation in _descendants(root, "Operation"):
        if operation.get("name") == name:
            return operation
    return None


def _parameter_values(operation: Any, name: str) -> list[str]:
    if operation is None:
        return []
    for parameter in _children(operation, "Parameter"):
        if parameter.get("name", "").lower() == name.lower():
            return [" ".join((v.text or "").split()) for v in _descendants(parameter, "Value")]
    return []


def _comparison_name(raw: str) -> str:
    """Filter 1.1 and FES 2.0 spellings of a comparison operator as one name."""
    name = raw.strip().removeprefix("PropertyIs")
    name = name.replace("ThanEqualTo", "ThanOrEqualTo")
    return {"NullCheck": "Null", "Simple_Comparisons": "EqualTo"}.get(name, name)


def _find_type(root: Any, wanted: str) -> Any:
    """The FeatureType element named ``wanted`` (prefixed or not)."""
    local = wanted.rpartition(":")[2]
    candidates = []
    for feature_type in _descendants(root, "FeatureType"):
        name = _text(feature_type, "Name")
        if name == wanted:
            return feature_type
        if name.rpartition(":")[2] == local:
            candidates.append(feature_type)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise InvalidData(f"the WFS has several feature types named {local!r}: give the prefixed name")
    raise InvalidData(f"the WFS has no feature type {wanted[:200]!r}")


def read_capabilities(url: str, data: bytes, layer_name: str) -> RemoteLayer:
    """The :class:`RemoteLayer` of ``layer_name`` as the capabilities document ``data`` describes it
    (fields come later, from :func:`read_feature_type`)."""
    root = parse_xml(data, "to GetCapabilities")
    if _local(root) != "WFS_Capabilities":
        raise BadGateway("the remote's GetCapabilities answer is not a WFS capabilities document")
    version = root.get("version", "")
    if version not in VERSIONS:
        raise InvalidData(
            f"the remote speaks WFS {version[:20] or '(unknown)'}; geoharbor reads 2.0.0 and 1.1.0"
        )
    feature_type = _find_type(root, layer_name)
    crs: list[int] = []
    for tag in ("DefaultCRS", "DefaultSRS", "OtherCRS", "OtherSRS"):
        for element in _children(feature_type, tag):
            srid = _srid(element.text or "")
            if srid is not None and srid not in crs:
                crs.append(srid)
    bbox = None
    box = _child(feature_type, "WGS84BoundingBox")
    if box is not None:
        try:
            lower = [float(v) for v in _text(box, "LowerCorner").split()]
            upper = [float(v) for v in _text(box, "UpperCorner").split()]
            if len(lower) == 2 and len(upper) == 2 and all(math.isfinite(v) for v in lower + upper):
                bbox = [lower[0], lower[1], upper[0], upper[1]]
        except ValueError:
            bbox = None
    # The feature type's own list when it has one (a server may offer a format for some types only).
    formats = [" ".join((f.text or "").split()) for f in _descendants(feature_type, "Format")]
    get_feature = _operation(root, "GetFeature")
    formats = formats or _parameter_values(get_feature, "outputFormat")
    result_types = [v.lower() for v in _parameter_values(get_feature, "resultType")]
    layer = RemoteLayer(
        url=url,
        version=version,
        type_name=_text(feature_type, "Name"),
        title=_text(feature_type, "Title"),
        abstract=_text(feature_type, "Abstract"),
        crs=crs or [4326],
        bbox=bbox,
        gml_format=_gml_format(formats, version),
        geojson_format=next((f for f in formats if "json" in f.lower()), None),
        max_count=_int_constraint(root, "CountDefault", "DefaultMaxFeatures"),
    )
    filter_caps = next(iter(_descendants(root, "Filter_Capabilities")), None)
    if version == "2.0.0":
        layer.paging = bool(_bool_constraint(root, "ImplementsResultPaging"))
        layer.sorting = bool(filter_caps is not None and _bool_constraint(filter_caps, "ImplementsSorting"))
        layer.hits = True  # resultType=hits is part of basic WFS 2.0
    else:
        layer.paging = False  # startIndex is not WFS 1.1: paged here
        layer.sorting = True  # SortBy is part of WFS 1.1 GetFeature
        layer.hits = "hits" in result_types
    if filter_caps is not None:
        layer.logical = bool(_descendants(filter_caps, "LogicalOperators"))
        comparisons = []
        for element in _descendants(filter_caps, "ComparisonOperator"):
            name = _comparison_name(element.get("name") or element.text or "")
            if name in COMPARISONS and name not in comparisons:
                comparisons.append(name)
        layer.comparisons = comparisons
        layer.spatial = [
            e.get("name") or (e.text or "").strip() for e in _descendants(filter_caps, "SpatialOperator")
        ]
    return layer


def _gml_format(formats: list[str], version: str) -> str | None:
    """The GML output format to ask for: the version's own (3.2 for WFS 2.0, 3.1.1 for 1.1)."""
    wanted = ("3.2", "gml32") if version == "2.0.0" else ("3.1.1", "gml3")
    for fmt in formats:
        if any(w in fmt.lower() for w in wanted):
            return fmt
    return None  # the version's default, by not naming one


# -- DescribeFeatureType -------------------------------------------------------------------------
def read_feature_type(layer: RemoteLayer, data: bytes) -> None:
    """Fill ``layer``'s fields and geometry property from a DescribeFeatureType XML Schema."""
    root = parse_xml(data, "to DescribeFeatureType")
    if _local(root) != "schema":
        raise BadGateway("the remote's DescribeFeatureType answer is not an XML Schema")
    local = layer.local_name
    element = next(
        (e for e in _children(root, "element") if e.get("name") == local),
        next(iter(_children(root, "element")), None),
    )
    if element is None:
        raise BadGateway(f"the remote's schema does not describe {layer.type_name!r}")
    complex_type = _child(element, "complexType")
    if complex_type is None:
        type_name = (element.get("type") or "").rpartition(":")[2]
        complex_type = next((t for t in _children(root, "complexType") if t.get("name") == type_name), None)
    if complex_type is None:
        raise BadGateway(f"the remote's schema has no type for {layer.type_name!r}")
    for prop in _descendants(complex_type, "element"):
        name = prop.get("name") or (prop.get("ref") or "").rpartition(":")[2]
        if not name:
            continue
        type_ref = prop.get("type") or ""
        if not type_ref:
            restriction = next(iter(_descendants(prop, "restriction")), None)
            type_ref = restriction.get("base", "") if restriction is not None else "string"
        prefix, _, type_local = type_ref.rpartition(":")
        namespace = prop.nsmap.get(prefix or None, "")
        if type_local in _GEOMETRY_TYPES and (namespace in GML_NAMESPACES or not prefix or prefix == "gml"):
            if layer.geometry_field is None:
                layer.geometry_field = name
                layer.geometry_type = _GEOMETRY_TYPES[type_local]
            continue
        json_type, fmt = _XSD_TYPES.get(type_local, ("string", None))
        layer.fields[name] = {
            "type": json_type,
            "format": fmt,
            "native": type_ref,
            "nullable": prop.get("minOccurs", "1") == "0" or prop.get("nillable") == "true",
        }
    if ID_FIELD in layer.fields:
        raise BadGateway(f"the remote's feature type has a property named {ID_FIELD!r}, which geoharbor uses")
