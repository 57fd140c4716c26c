"""Coordinate reference systems as OGC API names them, resolved to numeric SRIDs.

Every front door (OGC items, tiles, MapFish, REST) names CRSs differently: OGC URIs,
``EPSG:n`` strings, bare SRIDs. They all resolve here to one :class:`CRS` value that
carries the numeric SRID the database wants (a text SRS in ``ST_Transform`` costs
milliseconds a row on PostGIS) and whether the authority's axis order is
latitude-first, which OGC API - Features Part 2 requires us to honour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError

from providers.errors import InvalidQuery

CRS84_URI = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CRS84H_URI = "http://www.opengis.net/def/crs/OGC/0/CRS84h"
EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{}"

_PATTERNS = (
    re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/[0-9.]+/(\d+)$"),
    re.compile(r"^urn:ogc:def:crs:EPSG:[0-9.]*:(\d+)$", re.IGNORECASE),
    re.compile(r"^EPSG:(\d+)$", re.IGNORECASE),
    re.compile(r"^\[?EPSG:(\d+)\]?$", re.IGNORECASE),
    re.compile(r"^(\d+)$"),
)
_CRS84_NAMES = {
    CRS84_URI,
    CRS84_URI.replace("http://", "https://"),
    "urn:ogc:def:crs:OGC:1.3:CRS84",
    "urn:ogc:def:crs:OGC::CRS84",
    "OGC:CRS84",
    "CRS84",
    CRS84H_URI,
}


class UnknownCRS(InvalidQuery):
    """A CRS name that is malformed or unknown to PROJ."""


@dataclass(frozen=True, slots=True)
class CRS:
    """A CRS resolved for data access.

    ``srid`` is the EPSG code used in SQL and by pyproj. ``lat_first`` is True when
    coordinates must be written (and read, for ``bbox-crs``) in northing/latitude
    first order, as EPSG:4326 demands and CRS84 does not.
    """

    srid: int
    uri: str
    lat_first: bool

    @property
    def is_crs84(self) -> bool:
        return self.srid == 4326 and not self.lat_first


CRS84 = CRS(4326, CRS84_URI, False)


def epsg_uri(srid: int) -> str:
    """The OGC URI of an EPSG code, as Part 2 lists CRSs."""
    return EPSG_URI.format(srid)


@lru_cache(maxsize=512)
def _axis_lat_first(srid: int) -> bool:
    try:
        info = ProjCRS.from_epsg(srid).axis_info
    except CRSError as exc:
        raise UnknownCRS(f"EPSG:{srid} is not a CRS known to PROJ") from exc
    return bool(info) and info[0].direction.lower() in ("north", "south")


@lru_cache(maxsize=512)
def parse_crs(name: str) -> CRS:
    """Resolve an OGC CRS URI, URN, ``EPSG:n`` or bare code.

    Raises :class:`UnknownCRS` for anything else, so callers can answer 400.
    """
    text = name.strip()
    if text in _CRS84_NAMES:
        return CRS84
    for pattern in _PATTERNS:
        match = pattern.match(text)
        if match:
            code = int(match.group(1))
            if code <= 0 or code > 999_999:
                break
            return CRS(code, epsg_uri(code), _axis_lat_first(code))
    raise UnknownCRS(f"unsupported CRS {name[:200]!r}: use an OGC URI such as {CRS84_URI}")


def from_srid(srid: int) -> CRS:
    """The CRS of a storage SRID; 4326 storage is lon/lat, i.e. CRS84."""
    if srid == 4326:
        return CRS84
    return CRS(srid, epsg_uri(srid), _axis_lat_first(srid))


def crs_uri(srid: int) -> str:
    """The URI to advertise for a storage SRID (CRS84 for lon/lat 4326)."""
    return CRS84_URI if srid == 4326 else epsg_uri(srid)


@lru_cache(maxsize=512)
def _is_projected(srid: int) -> bool:
    try:
        return ProjCRS.from_epsg(srid).is_projected
    except CRSError:  # unknown to PROJ: keep full precision
        return True


def coordinate_precision(crs: CRS) -> int:
    """Decimals written in GeoJSON: 7 for degrees (about 1 cm), 3 for metres."""
    return 7 if crs.srid == 4326 or not _is_projected(crs.srid) else 3
