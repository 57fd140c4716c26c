"""A layer's thumbnail: a PNG of its features, drawn on the server from the data itself.

The features in the extent (the layer's own, or a bbox the caller gives in any EPSG
CRS) are read through the provider's :class:`~providers.base.Query` already projected
to Web Mercator (the projection of every web map, so the picture looks like the map
a user will open), then drawn with Pillow: polygons filled and outlined, lines
stroked, points as dots. At most :data:`MAX_FEATURES` features are drawn, so that a
thumbnail of a huge layer costs a bounded read; the extent is padded and stretched to
the picture's proportions so nothing is distorted.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

import shapely
from PIL import Image, ImageDraw
from pyproj import Transformer

from providers.base import FeatureProvider, Query
from providers.crs import CRS84, from_srid
from providers.errors import InvalidData, InvalidQuery

#: GeoNode's thumbnail size.
WIDTH, HEIGHT = 240, 200
MAX_FEATURES = 20_000
#: Web Mercator stops at this latitude.
MAX_LATITUDE = 85.0511287798
BACKGROUND = (246, 248, 250, 255)
FILL = (52, 120, 190, 150)
STROKE = (22, 66, 122, 255)
POINT = (200, 60, 40, 255)

_TO_MERCATOR = Transformer.from_crs(4326, 3857, always_xy=True)


def extent_3857(
    bbox: tuple[float, float, float, float], srid: int = 4326
) -> tuple[float, float, float, float]:
    """``bbox`` (minx, miny, maxx, maxy in EPSG ``srid``, x = longitude for 4326) in Web Mercator."""
    minx, miny, maxx, maxy = bbox
    if not all(math.isfinite(v) for v in bbox) or minx > maxx or miny > maxy:
        raise InvalidQuery("the bbox must be four finite numbers: minx, miny, maxx, maxy")
    if srid != 4326:
        try:
            to_lonlat = Transformer.from_crs(srid, 4326, always_xy=True)
        except Exception as exc:  # noqa: BLE001 - pyproj raises CRSError and others
            raise InvalidQuery(f"unknown CRS EPSG:{srid}") from exc
        minx, miny, maxx, maxy = to_lonlat.transform_bounds(minx, miny, maxx, maxy)
    miny, maxy = max(miny, -MAX_LATITUDE), min(maxy, MAX_LATITUDE)
    minx, maxx = max(minx, -180.0), min(maxx, 180.0)
    return _TO_MERCATOR.transform_bounds(minx, miny, maxx, maxy)


def _framed(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """``box`` padded by 5% and widened or heightened to the picture's proportions."""
    minx, miny, maxx, maxy = box
    w, h = max(maxx - minx, 1.0), max(maxy - miny, 1.0)
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    w, h = w * 1.1, h * 1.1
    if w / h > width / height:
        h = w * height / width
    else:
        w = h * width / height
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def render(
    provider: FeatureProvider,
    bbox: tuple[float, float, float, float] | None = None,
    srid: int = 4326,
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> bytes:
    """A PNG of the provider's features in ``bbox`` (EPSG ``srid``; default: the layer's extent)."""
    width, height = size
    if bbox is None:
        if provider.schema.bbox is None:
            raise InvalidData("the layer has no extent to draw (it holds no geometry)")
        bbox, srid = provider.schema.bbox, 4326
    box = extent_3857(bbox, srid)
    frame = _framed(box, width, height)
    lonlat = Transformer.from_crs(3857, 4326, always_xy=True).transform_bounds(*frame)
    query = Query(
        limit=MAX_FEATURES,
        bbox=(max(lonlat[0], -180.0), max(lonlat[1], -90.0), min(lonlat[2], 180.0), min(lonlat[3], 90.0)),
        bbox_crs=CRS84,
        crs=from_srid(3857),
        properties=[],
        count="none",
    )
    _, rows = provider.records(query, "wkb")
    geometries = (shapely.from_wkb(row[1]) for row in rows if row[1] is not None)
    return draw(geometries, frame, width, height)


def _parts(geom: shapely.Geometry) -> Iterable[shapely.Geometry]:
    """The simple parts of a geometry (multi-parts and collections, however nested)."""
    if geom.is_empty:
        return
    if hasattr(geom, "geoms"):
        for part in geom.geoms:
            yield from _parts(part)
    else:
        yield geom


def draw(
    geometries: Iterable[shapely.Geometry], frame: tuple[float, float, float, float], width: int, height: int
) -> bytes:
    """Geometries in Web Mercator drawn into a ``width`` x ``height`` PNG showing ``frame``."""
    minx, miny, maxx, maxy = frame
    sx, sy = width / (maxx - minx), height / (maxy - miny)
    image = Image.new("RGBA", (width, height), BACKGROUND)
    fills = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    fill_pen, pen = ImageDraw.Draw(fills), ImageDraw.Draw(image)
    strokes: list[list[tuple[float, float]]] = []
    points: list[tuple[float, float]] = []

    def pixels(coords: Any) -> list[tuple[float, float]]:
        return [((x - minx) * sx, (maxy - y) * sy) for x, y, *_ in coords]

    for geom in geometries:
        for part in _parts(geom):
            kind = part.geom_type
            if kind == "Polygon":
                ring = pixels(part.exterior.coords)
                if len(ring) >= 3:
                    fill_pen.polygon(ring, fill=FILL)
                    strokes.append(ring)
                for hole in part.interiors:
                    inner = pixels(hole.coords)
                    if len(inner) >= 3:
                        fill_pen.polygon(inner, fill=(0, 0, 0, 0))
                        strokes.append(inner)
            elif kind in ("LineString", "LinearRing"):
                strokes.append(pixels(part.coords))
            elif kind == "Point":
                points.extend(pixels(part.coords))
    image.alpha_composite(fills)
    for line in strokes:
        if len(line) >= 2:
            pen.line(line, fill=STROKE, width=1)
    for x, y in points:
        pen.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=POINT, outline=STROKE)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()
