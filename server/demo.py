"""The embedded demo: a GeoPackage of real open data, built reproducibly at first start.

Natural Earth's admin-0 countries (public domain) ship inside the pyogrio wheel as a
test fixture; the demo copies them into a GeoPackage with pyogrio (GDAL) and adds a
point layer of each country's representative point, so the demo has polygons to
look at and a small point layer to edit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import shapely

LOGGER = logging.getLogger(__name__)


def natural_earth_countries() -> Path:
    """The Natural Earth low-resolution countries shapefile bundled with pyogrio."""
    path = (
        Path(pyogrio.__file__).parent
        / "tests"
        / "fixtures"
        / "naturalearth_lowres"
        / "naturalearth_lowres.shp"
    )
    if not path.exists():
        raise FileNotFoundError(f"Natural Earth fixture not found in this pyogrio install: {path}")
    return path


def build(target: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the demo GeoPackage to ``target`` unless it exists; returns its path."""
    target = Path(target)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".building.gpkg")
    tmp.unlink(missing_ok=True)
    meta, _fids, wkb, values = pyogrio.raw.read(natural_earth_countries())
    names = list(meta["fields"])
    fields = dict(zip(names, values, strict=True))
    geoms = shapely.from_wkb(wkb)
    pyogrio.raw.write(
        tmp,
        wkb,
        list(fields.values()),
        names,
        layer="countries",
        driver="GPKG",
        crs="EPSG:4326",
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        layer_options={
            "IDENTIFIER": "Countries",
            "DESCRIPTION": "Natural Earth admin-0 countries (public domain)",
        },
    )
    labels = shapely.to_wkb(shapely.point_on_surface(geoms))
    keep = ["name", "iso_a3", "continent", "pop_est"]
    pyogrio.raw.write(
        tmp,
        np.asarray(labels, dtype=object),
        [fields[k] for k in keep],
        keep,
        layer="country_points",
        driver="GPKG",
        crs="EPSG:4326",
        geometry_type="Point",
        append=True,
        layer_options={
            "IDENTIFIER": "Country points",
            "DESCRIPTION": "A point inside each Natural Earth country",
        },
    )
    tmp.replace(target)
    LOGGER.info("built demo GeoPackage %s", target)
    return target
