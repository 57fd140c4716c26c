"""CQL2 JSON to FES 2.0 / Filter 1.1: what goes to the remote, what stays, and how it is written.

Pure unit tests of :mod:`providers.fes` (the end-to-end behaviour against MapServer is
in ``test_wfs.py``): filters are parsed from CQL2 text by the same parser the items
route uses, written for a remote layer whose capabilities say what it supports, and
the XML is read back with lxml.
"""

from __future__ import annotations

from typing import Any

import pytest
import shapely
from lxml import etree

from providers.crs import CRS84, parse_crs
from providers.errors import InvalidQuery
from providers.fes import FES20, GML31, GML32, OGC, FilterWriter
from providers.filters import parse_cql2
from providers.wfs import _box_geometry, _for_matching, _sorted, _xy_box
from providers.wfs_capabilities import RemoteLayer
from providers.wfs_features import RemoteFeature

ALL_COMPARISONS = [
    "EqualTo",
    "NotEqualTo",
    "LessThan",
    "GreaterThan",
    "LessThanOrEqualTo",
    "GreaterThanOrEqualTo",
    "Like",
    "Between",
    "Null",
]
ALL_SPATIAL = ["BBOX", "Intersects", "Within", "Contains", "Disjoint"]


def _layer(version: str = "2.0.0", **changes: Any) -> RemoteLayer:
    layer = RemoteLayer(
        url="http://127.0.0.1/wfs",
        version=version,
        type_name="ms:countries",
        crs=[4326, 3857],
        logical=True,
        comparisons=list(ALL_COMPARISONS),
        spatial=list(ALL_SPATIAL),
        geometry_field="msGeometry",
        geometry_type="MULTIPOLYGON",
        fields={
            "name": {"type": "string"},
            "pop_est": {"type": "integer"},
            "updated": {"type": "string", "format": "date-time"},
        },
    )
    for key, value in changes.items():
        setattr(layer, key, value)
    return layer


def _writer(layer: RemoteLayer | None = None) -> FilterWriter:
    layer = layer or _layer()
    return FilterWriter(layer, layer.schema())


def _split(text: str, layer: RemoteLayer | None = None, crs=CRS84):
    writer = _writer(layer)
    split = writer.split(tree=parse_cql2(text, "cql2-text"), filter_crs=crs)
    document = writer.document(split.remote)
    return (etree.fromstring(document) if document else None), split.client_tree


def _local(element: Any) -> str:
    return etree.QName(element).localname


def test_everything_supported_goes_to_the_remote() -> None:
    root, client = _split("pop_est > 1000 AND name LIKE 'F%' AND pop_est BETWEEN 1 AND 5 AND name IS NULL")
    assert client is None
    assert root.tag == f"{{{FES20}}}Filter"
    (both,) = root
    assert _local(both) == "And"
    assert [_local(p) for p in both] == [
        "PropertyIsGreaterThan",
        "PropertyIsLike",
        "PropertyIsBetween",
        "PropertyIsNull",
    ]
    greater = both[0]
    assert [(_local(c), c.text) for c in greater] == [("ValueReference", "pop_est"), ("Literal", "1000")]
    like = both[1]
    assert like.get("wildCard") == "%" and like.get("singleChar") == "_" and like.get("escapeChar") == "\\"


def test_literal_first_is_flipped() -> None:
    root, _ = _split("1000 < pop_est")
    (predicate,) = root
    assert _local(predicate) == "PropertyIsGreaterThan"
    assert [c.text for c in predicate] == ["pop_est", "1000"]


def test_what_the_remote_cannot_run_stays_here() -> None:
    root, client = _split(
        "pop_est > 5 AND CASEI(name) = 'france' AND T_AFTER(updated, TIMESTAMP('2020-01-01T00:00:00Z'))"
    )
    assert [_local(p) for p in root] == ["PropertyIsGreaterThan"]
    assert client["op"] == "and" and [a["op"] for a in client["args"]] == ["=", "t_after"]


def test_or_and_not_go_whole_or_not_at_all() -> None:
    root, client = _split("name = 'a' OR CASEI(name) = 'b'")
    assert root is None and client["op"] == "or"
    root, client = _split("NOT (name = 'a' OR pop_est < 3)")
    assert client is None
    (negation,) = root
    assert _local(negation) == "Not" and _local(negation[0]) == "Or"


def test_operators_the_remote_lacks_stay_here() -> None:
    layer = _layer(comparisons=["EqualTo"], logical=False)
    root, client = _split("name = 'x' AND pop_est > 3", layer)
    assert [_local(p) for p in root] == ["PropertyIsEqualTo"]
    assert client["op"] == ">"
    root, client = _split("name IN ('a', 'b')", layer)  # needs OR
    assert root is None and client["op"] == "in"
    root, client = _split("name IN ('a')", layer)
    assert [_local(p) for p in root] == ["PropertyIsEqualTo"] and client is None


def test_filter_1_1_spelling() -> None:
    root, client = _split("name = 'x' AND S_INTERSECTS(geometry, POINT(2 48))", _layer("1.1.0"))
    assert client is None and root.tag == f"{{{OGC}}}Filter"
    equal, intersects = root[0]
    assert _local(equal[0]) == "PropertyName"
    point = intersects[1]
    assert point.tag == f"{{{GML31}}}Point"


def test_geometry_literals_in_the_authority_axis_order() -> None:
    # CRS84 literal (lon/lat) -> urn EPSG:4326, which is lat/lon
    root, _ = _split("S_WITHIN(geometry, POLYGON((0 40, 10 40, 10 50, 0 50, 0 40)))")
    (within,) = root
    polygon = within[1]
    assert polygon.tag == f"{{{GML32}}}Polygon"
    assert polygon.get("srsName") == "urn:ogc:def:crs:EPSG::4326"
    positions = polygon.find(f".//{{{GML32}}}posList").text.split()
    assert positions[:4] == ["40.0", "0.0", "40.0", "10.0"]
    # the same literal given in EPSG:4326 (lat/lon already): written as it is
    root, _ = _split(
        "S_WITHIN(geometry, POLYGON((40 0, 40 10, 50 10, 50 0, 40 0)))", crs=parse_crs("EPSG:4326")
    )
    assert root.find(f".//{{{GML32}}}posList").text.split()[:4] == ["40.0", "0.0", "40.0", "10.0"]
    # web mercator is x/y
    root, _ = _split("S_INTERSECTS(geometry, BBOX(0, 1, 2, 3))", crs=parse_crs("EPSG:3857"))
    envelope = root[0][1]
    assert envelope.get("srsName") == "urn:ogc:def:crs:EPSG::3857"
    assert [c.text for c in envelope] == ["0.0 1.0", "2.0 3.0"]


def test_bbox_parameter_and_the_antimeridian() -> None:
    writer = _writer()
    box = writer.bbox((-5.0, 41.0, 10.0, 52.0), 4326)
    assert _local(box) == "BBOX"
    assert [c.text for c in box[1]] == ["41.0 -5.0", "52.0 10.0"]
    crossing = writer.bbox((170.0, -20.0, -170.0, -10.0), 4326)
    assert _local(crossing) == "Or" and len(crossing) == 2
    assert _writer(_layer(spatial=["Intersects"])).bbox((0.0, 0.0, 1.0, 1.0), 4326) is None
    assert _xy_box((41, -5, 52, 10), parse_crs("EPSG:4326")) == (-5, 41, 10, 52)


def test_names_are_checked_and_literals_cannot_inject_xml() -> None:
    with pytest.raises(InvalidQuery):
        _split("no_such = 1")
    with pytest.raises(InvalidQuery):
        _split("name = 'a' OR nothing IS NULL")
    root, _ = _split("name = '</fes:Literal><fes:Or>'")
    (equal,) = root
    assert equal[1].text == "</fes:Literal><fes:Or>" and len(equal) == 2
    # a text XML cannot carry is applied here instead of breaking the request
    root, client = _split("name = 'a\x01b'")
    assert root is None and client is not None


def test_client_side_evaluation_helpers() -> None:
    tree = parse_cql2("S_INTERSECTS(msGeometry, BBOX(40, 0, 50, 10)) AND gml_id = 'countries.1'", "cql2-text")
    ready = _for_matching(tree, "msGeometry", lat_first=True)
    assert ready["args"][0]["args"] == [{"property": "geometry"}, {"bbox": [0, 40, 10, 50]}]
    assert ready["args"][1]["args"][0] == {"property": "id"}
    features = [
        RemoteFeature("a", {"name": "b", "pop": 3}, None),
        RemoteFeature("b", {"name": None, "pop": 1}, None),
        RemoteFeature("c", {"name": "a", "pop": 3}, None),
    ]
    assert [f.id for f in _sorted(features, [("name", True)])] == ["c", "a", "b"]  # nulls last
    assert [f.id for f in _sorted(features, [("name", False)])] == ["b", "a", "c"]  # nulls first
    assert [f.id for f in _sorted(features, [("pop", False), ("name", True)])] == ["c", "a", "b"]
    # a bbox across the antimeridian, tested here when the remote cannot: two boxes, 20 x 10 degrees
    crossing = _box_geometry((170.0, -20.0, -170.0, -10.0))
    assert crossing.area == pytest.approx(200.0)
    assert crossing.contains(shapely.Point(175, -15)) and not crossing.intersects(shapely.Point(0, -15))


def test_remote_layer_record_round_trip() -> None:
    layer = _layer()
    again = RemoteLayer.from_json(layer.to_json())
    assert again == layer
    schema = again.schema()
    assert schema.id_field == "gml_id" and schema.id_type == "string"
    assert schema.storage_crs == CRS84 and list(schema.fields) == ["name", "pop_est", "updated"]
