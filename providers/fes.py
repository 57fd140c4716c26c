"""CQL2 JSON (and ``bbox``, ``{property}=value``) as an OGC filter a remote WFS runs: FES 2.0 or Filter 1.1.

A query's conditions are AND-ed; each one the remote can run (its operator is in the
remote's filter capabilities, its operands a property and literals) becomes an XML
predicate, and the rest stays CQL2 JSON to be applied after the features arrive
(:func:`split`). Inside OR and NOT nothing can be split: such a node goes to the
remote whole or not at all. Sent to the remote, a condition cuts what crosses the
network; kept here, it is still applied, so the answer is the same either way.

Property names are checked against the collection schema (DescribeFeatureType's)
before anything is written, and literals are XML text nodes written by lxml: a
request can name only properties that exist and cannot inject XML.

Geometry literals are written in GML with an ``urn:ogc:def:crs:EPSG::n`` ``srsName``,
so their coordinates are in that CRS's own axis order (latitude first for EPSG:4326),
whatever order the client's ``filter-crs`` used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import shapely
import shapely.geometry
from lxml import etree
from pygml.pre_v32 import encode_pre_v32
from pygml.v32 import encode_v32

from providers.base import CollectionSchema
from providers.crs import CRS, parse_crs
from providers.errors import InvalidQuery
from providers.wfs_capabilities import RemoteLayer

FES20 = "http://www.opengis.net/fes/2.0"
OGC = "http://www.opengis.net/ogc"
GML32 = "http://www.opengis.net/gml/3.2"
GML31 = "http://www.opengis.net/gml"

_COMPARISON = {
    "=": "EqualTo",
    "<>": "NotEqualTo",
    "!=": "NotEqualTo",
    "<": "LessThan",
    "<=": "LessThanOrEqualTo",
    ">": "GreaterThan",
    ">=": "GreaterThanOrEqualTo",
}
#: The comparison with its operands the other way round (``5 < x`` is ``x > 5``).
_FLIPPED = {"=": "=", "<>": "<>", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_SPATIAL = {
    "s_intersects": "Intersects",
    "s_disjoint": "Disjoint",
    "s_contains": "Contains",
    "s_within": "Within",
    "s_touches": "Touches",
    "s_crosses": "Crosses",
    "s_overlaps": "Overlaps",
    "s_equals": "Equals",
}
_SPATIAL_FLIPPED = {"s_within": "s_contains", "s_contains": "s_within"}
_GEOMETRY_NAMES = ("geometry", "geom")
MAX_NODES = 2000


@dataclass(slots=True)
class Split:
    """A query's conditions: XML predicates for the remote, CQL2 JSON for after the fetch (both AND-ed)."""

    remote: list[Any] = field(default_factory=list)
    client: list[dict[str, Any]] = field(default_factory=list)

    @property
    def client_tree(self) -> dict[str, Any] | None:
        """The conditions left to apply here, as one CQL2 JSON tree (None: nothing left)."""
        if not self.client:
            return None
        return self.client[0] if len(self.client) == 1 else {"op": "and", "args": list(self.client)}


def authority_lat_first(srid: int) -> bool:
    """Whether ``urn:ogc:def:crs:EPSG::srid`` puts latitude (northing) first."""
    return parse_crs(f"EPSG:{srid}").lat_first


def srs_name(srid: int) -> str:
    return f"urn:ogc:def:crs:EPSG::{srid}"


class FilterWriter:
    """Writes one query's predicates in the filter dialect of one remote layer."""

    def __init__(self, layer: RemoteLayer, schema: CollectionSchema) -> None:
        self.layer = layer
        self.schema = schema
        self.v2 = layer.version == "2.0.0"
        self.ns = FES20 if self.v2 else OGC
        self.gml = GML32 if self.v2 else GML31
        self._ids = 0

    # -- the query's conditions ---------------------------------------------------------------------
    def split(
        self,
        *,
        bbox: tuple[float, float, float, float] | None = None,
        bbox_srid: int = 4326,
        equals: dict[str, Any] | None = None,
        tree: Any = None,
        filter_crs: CRS | None = None,
    ) -> Split:
        """The conditions of a query, each sent to the remote when it can run it.

        ``bbox`` is x/y in EPSG ``bbox_srid``; ``tree`` a CQL2 JSON tree whose literals
        are in ``filter_crs``'s axis order.
        """
        out = Split()
        if bbox is not None:
            box = self.bbox(bbox, bbox_srid)
            if box is None:
                out.client.append(
                    {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": list(bbox)}]}
                )
            else:
                out.remote.append(box)
        for name, value in (equals or {}).items():
            node = {"op": "=", "args": [{"property": name}, value]}
            self.check_names(node)
            predicate = self.translate(node, filter_crs)
            (out.remote if predicate is not None else out.client).append(
                predicate if predicate is not None else node
            )
        if tree is not None:
            self.check_names(tree)
            self._split(tree, filter_crs, out)
        return out

    def _split(self, node: Any, crs: CRS | None, out: Split) -> None:
        if isinstance(node, dict) and node.get("op") == "and" and isinstance(node.get("args"), list):
            for arg in node["args"]:
                self._split(arg, crs, out)
            return
        predicate = self.translate(node, crs)
        if predicate is None:
            out.client.append(node)
        else:
            out.remote.append(predicate)

    def document(self, predicates: Sequence[Any]) -> str | None:
        """The ``Filter`` element of AND-ed ``predicates`` as text (None when there are none)."""
        if not predicates:
            return None
        root = etree.Element(self._q("Filter"), nsmap={"fes" if self.v2 else "ogc": self.ns, "gml": self.gml})
        if len(predicates) == 1:
            root.append(predicates[0])
        else:
            both = etree.SubElement(root, self._q("And"))
            for predicate in predicates:
                both.append(predicate)
        return etree.tostring(root, encoding="unicode")

    def bbox(self, box: tuple[float, float, float, float], srid: int) -> Any:
        """A BBOX predicate on the geometry property, x/y ``box`` in EPSG ``srid`` (None: cannot)."""
        if not self.layer.geometry_field or "BBOX" not in self.layer.spatial:
            return None
        minx, miny, maxx, maxy = box
        if minx > maxx:  # crosses the antimeridian: two boxes, which needs OR
            if not self.layer.logical:
                return None
            either = etree.Element(self._q("Or"))
            either.append(self.bbox((minx, miny, 180.0, maxy), srid))
            either.append(self.bbox((-180.0, miny, maxx, maxy), srid))
            return either
        element = etree.Element(self._q("BBOX"))
        element.append(self._property(self.layer.geometry_field))
        element.append(self._envelope((minx, miny, maxx, maxy), srid))
        return element

    # -- checks ---------------------------------------------------------------------------------------
    def check_names(self, node: Any) -> None:
        """Every property the tree names exists in the schema; InvalidQuery names the first that does not."""
        seen = 0
        stack = [node]
        while stack:
            item = stack.pop()
            seen += 1
            if seen > MAX_NODES:
                raise InvalidQuery("filter is too large")
            if isinstance(item, dict):
                if "property" in item and len(item) == 1:
                    name = item["property"]
                    if not isinstance(name, str):
                        raise InvalidQuery("filter: property names are strings")
                    if name not in _GEOMETRY_NAMES and name != self.layer.geometry_field:
                        self.schema.check_property(name)
                    continue
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)

    # -- one predicate ------------------------------------------------------------------------------
    def translate(self, node: Any, crs: CRS | None) -> Any:
        """``node`` as one XML predicate, or None when the remote cannot run it (all of it)."""
        try:
            return self._translate(node, crs)
        except ValueError:  # text XML cannot carry (control characters): applied here instead
            return None

    def _translate(self, node: Any, crs: CRS | None) -> Any:
        if not isinstance(node, dict):
            return None
        op, args = node.get("op"), node.get("args")
        if not isinstance(op, str) or not isinstance(args, list):
            return None
        op = op.lower() if op.lower() in (*_SPATIAL, "and", "or", "not", "like", "between", "in") else op
        if op in ("and", "or"):
            if not self.layer.logical or len(args) < 2:
                return None
            parts = [self.translate(a, crs) for a in args]
            if any(p is None for p in parts):
                return None
            joined = etree.Element(self._q(op.capitalize()))
            for part in parts:
                joined.append(part)
            return joined
        if op == "not":
            inner = self.translate(args[0], crs) if self.layer.logical and len(args) == 1 else None
            if inner is None:
                return None
            negated = etree.Element(self._q("Not"))
            negated.append(inner)
            return negated
        if op in _COMPARISON and len(args) == 2:
            return self._comparison(op, args)
        if op == "like" and len(args) == 2:
            return self._like(args)
        if op == "between" and len(args) == 3:
            return self._between(args)
        if op == "in" and len(args) == 2:
            return self._in(args)
        if op == "isNull" and len(args) == 1:
            name = self._name(args[0])
            if name is None or "Null" not in self.layer.comparisons:
                return None
            element = etree.Element(self._q("PropertyIsNull"))
            element.append(self._property(name))
            return element
        if op in _SPATIAL and len(args) == 2 and crs is not None:
            return self._spatial(op, args, crs)
        return None  # temporal, CASEI, arithmetic, functions, s_dwithin ...

    def _name(self, arg: Any) -> str | None:
        """The attribute an operand names; None for literals, the geometry and the feature id."""
        if isinstance(arg, dict) and set(arg) == {"property"}:
            name = arg["property"]
            if name in self.schema.fields:
                return name
        return None

    def _comparison(self, op: str, args: list) -> Any:
        name, value = self._name(args[0]), _literal(args[1])
        if name is None:
            name, value, op = self._name(args[1]), _literal(args[0]), _FLIPPED[op]
        kind = _COMPARISON[op]
        if name is None or value is None or kind not in self.layer.comparisons:
            return None
        element = etree.Element(self._q("PropertyIs" + kind), matchCase="true")
        element.append(self._property(name))
        element.append(self._value(value))
        return element

    def _like(self, args: list) -> Any:
        name, pattern = self._name(args[0]), args[1]
        if name is None or not isinstance(pattern, str) or "Like" not in self.layer.comparisons:
            return None
        element = etree.Element(
            self._q("PropertyIsLike"), wildCard="%", singleChar="_", escapeChar="\\", matchCase="true"
        )
        element.append(self._property(name))
        element.append(self._value(pattern))
        return element

    def _between(self, args: list) -> Any:
        name, low, high = self._name(args[0]), _literal(args[1]), _literal(args[2])
        if name is None or low is None or high is None or "Between" not in self.layer.comparisons:
            return None
        element = etree.Element(self._q("PropertyIsBetween"))
        element.append(self._property(name))
        for bound, value in (("LowerBoundary", low), ("UpperBoundary", high)):
            etree.SubElement(element, self._q(bound)).append(self._value(value))
        return element

    def _in(self, args: list) -> Any:
        name, items = self._name(args[0]), args[1]
        if name is None or not isinstance(items, list) or not items:
            return None
        parts = [self._comparison("=", [args[0], item]) for item in items]
        if any(p is None for p in parts):
            return None
        if len(parts) == 1:
            return parts[0]
        if not self.layer.logical:
            return None
        either = etree.Element(self._q("Or"))
        for part in parts:
            either.append(part)
        return either

    def _spatial(self, op: str, args: list, crs: CRS) -> Any:
        if self._is_geometry(args[1]) and not self._is_geometry(args[0]):
            args, op = [args[1], args[0]], _SPATIAL_FLIPPED.get(op, op)
        if not self._is_geometry(args[0]) or not self.layer.geometry_field:
            return None
        kind = _SPATIAL[op]
        literal = args[1]
        if kind not in self.layer.spatial:
            return None
        if isinstance(literal, dict) and "bbox" in literal:
            box = literal["bbox"]
            if not isinstance(box, list) or len(box) not in (4, 6):
                return None
            box = [box[0], box[1], box[3], box[4]] if len(box) == 6 else box
            try:
                values = [float(v) for v in box]
            except (TypeError, ValueError):
                return None
            if crs.lat_first:
                values = [values[1], values[0], values[3], values[2]]
            if values[0] > values[2] or not all(math.isfinite(v) for v in values):
                return None
            operand = self._envelope(tuple(values), crs.srid)  # type: ignore[arg-type]
        elif isinstance(literal, dict) and "type" in literal:
            operand = self._gml_geometry(literal, crs)
            if operand is None:
                return None
        else:
            return None
        element = etree.Element(self._q(kind))
        element.append(self._property(self.layer.geometry_field))
        element.append(operand)
        return element

    def _is_geometry(self, arg: Any) -> bool:
        return (
            isinstance(arg, dict)
            and set(arg) == {"property"}
            and (arg["property"] in _GEOMETRY_NAMES or arg["property"] == self.layer.geometry_field)
        )

    # -- XML pieces -----------------------------------------------------------------------------------
    def _q(self, name: str) -> str:
        return f"{{{self.ns}}}{name}"

    def _property(self, name: str) -> Any:
        element = etree.Element(self._q("ValueReference" if self.v2 else "PropertyName"))
        element.text = name
        return element

    def _value(self, value: Any) -> Any:
        element = etree.Element(self._q("Literal"))
        element.text = value
        return element

    def _envelope(self, box: tuple[float, float, float, float], srid: int) -> Any:
        minx, miny, maxx, maxy = box
        lower, upper = (minx, miny), (maxx, maxy)
        if authority_lat_first(srid):
            lower, upper = (miny, minx), (maxy, maxx)
        envelope = etree.Element(f"{{{self.gml}}}Envelope", srsName=srs_name(srid))
        etree.SubElement(envelope, f"{{{self.gml}}}lowerCorner").text = f"{lower[0]!r} {lower[1]!r}"
        etree.SubElement(envelope, f"{{{self.gml}}}upperCorner").text = f"{upper[0]!r} {upper[1]!r}"
        return envelope

    def _gml_geometry(self, literal: dict[str, Any], crs: CRS) -> Any:
        """A GeoJSON literal (in ``crs``'s axis order) as GML in the authority axis order of its CRS."""
        try:
            geom = shapely.from_geojson(orjson.dumps(literal))
        except (shapely.errors.GEOSException, ValueError, TypeError, orjson.JSONEncodeError):
            return None
        if geom is None or geom.is_empty or geom.geom_type == "GeometryCollection":
            return None
        if crs.lat_first != authority_lat_first(crs.srid):
            geom = shapely.transform(geom, lambda c: c[:, ::-1])
        mapping = dict(shapely.geometry.mapping(geom))
        # pygml swaps axes by its own CRS list: it is given a lon/lat name that it leaves
        # alone, and the real srsName is set afterwards.
        mapping["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC::CRS84"}}
        self._ids += 1
        try:
            encoder = encode_v32 if self.v2 else encode_pre_v32
            element = encoder(mapping, f"filter-{self._ids}")
        except (ValueError, KeyError, TypeError):
            return None
        element.set("srsName", srs_name(crs.srid))
        return element


def _literal(node: Any) -> str | None:
    """A scalar CQL2 literal as filter text; None for anything else (properties, null, functions)."""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int):
        return str(node)
    if isinstance(node, float):
        if not math.isfinite(node):
            return None
        return str(int(node)) if node.is_integer() and abs(node) < 2**53 else repr(node)
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and set(node) in ({"timestamp"}, {"date"}):
        value = node.get("timestamp") or node.get("date")
        return value if isinstance(value, str) else None
    return None
