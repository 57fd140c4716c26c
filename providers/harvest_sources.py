"""What a harvester reads from a remote service: its resources, and the features of one of them.

Three kinds of remote: an OGC API - Features server (its ``/collections``), a WFS (its
GetCapabilities' feature types) and an OGC API - Records collection (its records;
each record whose links name an OGC API - Features ``items`` URL can be harvested).
:func:`list_resources` says what a remote offers; :func:`fetch_features` copies the
features of one OGC API - Features collection into a GeoJSON file the loader reads,
following ``next`` links, within a feature and byte budget (the bytes are counted as
they arrive, so a remote cannot fill the disk).

URLs are http(s) only (:func:`providers.wfs_http.check_url`); documents from the remote
are parsed with a parser that resolves no entity and fetches nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from lxml import etree

from providers.errors import InvalidData, ProviderError
from providers.wfs_http import check_url

#: Harvester types and what they read.
OGCAPI_FEATURES, WFS, OGCAPI_RECORDS = "ogcapi-features", "wfs", "ogcapi-records"
TYPES = (OGCAPI_FEATURES, WFS, OGCAPI_RECORDS)
PAGE = 1000
MAX_RECORDS = 10_000
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


class RemoteUnavailable(ProviderError):
    """The remote service did not answer as its kind should (down, error status, not JSON/XML)."""

    status = 502
    code = "BadGateway"


@dataclass(slots=True)
class RemoteResource:
    """One resource a remote offers."""

    unique_identifier: str
    title: str
    abstract: str = ""
    resource_type: str = "dataset"
    #: Where its features are read (OGC API - Features items), or None (a WFS type: described instead).
    items_url: str | None = None
    keywords: list[str] = field(default_factory=list)


def _get(url: str, timeout_s: float, **params: Any) -> requests.Response:
    try:
        response = requests.get(
            check_url(url), params=params or None, timeout=timeout_s, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise RemoteUnavailable(f"{urlsplit(url).netloc} did not answer: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise RemoteUnavailable(f"{urlsplit(url).netloc} answered {response.status_code}")
    return response


def _json(url: str, timeout_s: float, **params: Any) -> dict[str, Any]:
    response = _get(url, timeout_s, **params)
    try:
        found = response.json()
    except ValueError as exc:
        raise RemoteUnavailable(f"{url[:200]} did not answer JSON") from exc
    if not isinstance(found, dict):
        raise RemoteUnavailable(f"{url[:200]} did not answer a JSON object")
    return found


def list_resources(kind: str, url: str, timeout_s: float = 30.0) -> list[RemoteResource]:
    """The resources the remote of ``kind`` at ``url`` offers now."""
    if kind == OGCAPI_FEATURES:
        return _features_collections(url, timeout_s)
    if kind == WFS:
        return _wfs_types(url, timeout_s)
    if kind == OGCAPI_RECORDS:
        return _records(url, timeout_s)
    raise InvalidData(f"harvester_type must be one of {', '.join(TYPES)}")


def _features_collections(url: str, timeout_s: float) -> list[RemoteResource]:
    base = url.rstrip("/")
    found = _json(f"{base}/collections", timeout_s, f="json")
    out = []
    for coll in found.get("collections") or []:
        if not isinstance(coll, dict) or not isinstance(coll.get("id"), str):
            continue
        if coll.get("itemType", "feature") != "feature":
            continue  # a records collection (a catalogue) has no features to copy
        out.append(
            RemoteResource(
                unique_identifier=coll["id"],
                title=str(coll.get("title") or coll["id"]),
                abstract=str(coll.get("description") or ""),
                items_url=f"{base}/collections/{coll['id']}/items",
                keywords=[str(k) for k in coll.get("keywords") or [] if isinstance(k, str)],
            )
        )
    return out


def _wfs_types(url: str, timeout_s: float) -> list[RemoteResource]:
    response = _get(url, timeout_s, service="WFS", request="GetCapabilities")
    try:
        root = etree.fromstring(response.content, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise RemoteUnavailable(f"{urlsplit(url).netloc} answered no capabilities document") from exc
    out = []
    for element in root.iter():
        if not isinstance(element.tag, str) or etree.QName(element).localname != "FeatureType":
            continue
        texts = {
            etree.QName(child).localname: (child.text or "").strip()
            for child in element
            if isinstance(child.tag, str)
        }
        if texts.get("Name"):
            out.append(
                RemoteResource(
                    unique_identifier=texts["Name"],
                    title=texts.get("Title") or texts["Name"],
                    abstract=texts.get("Abstract", ""),
                )
            )
    return out


def _records(url: str, timeout_s: float) -> list[RemoteResource]:
    """The records of an OGC API - Records collection (``.../collections/{id}``), paged."""
    items = url.rstrip("/")
    if not items.endswith("/items"):
        items += "/items"
    out: list[RemoteResource] = []
    offset = 0
    while len(out) < MAX_RECORDS:
        page = _json(items, timeout_s, f="json", limit=PAGE, offset=offset)
        features = [f for f in page.get("features") or [] if isinstance(f, dict)]
        for record in features:
            props = record.get("properties") or {}
            link = next(
                (
                    link.get("href")
                    for link in record.get("links") or []
                    if isinstance(link, dict)
                    and isinstance(link.get("href"), str)
                    and urlsplit(link["href"]).path.rstrip("/").endswith("/items")
                ),
                None,
            )
            out.append(
                RemoteResource(
                    unique_identifier=str(record.get("id")),
                    title=str(props.get("title") or record.get("id")),
                    abstract=str(props.get("description") or ""),
                    resource_type=str(props.get("type") or "dataset"),
                    items_url=link,
                    keywords=[str(k) for k in props.get("keywords") or [] if isinstance(k, str)],
                )
            )
        if len(features) < PAGE:
            break
        offset += PAGE
    return out


def fetch_features(
    items_url: str, target: Path, max_features: int, max_bytes: int, timeout_s: float = 60.0
) -> int:
    """Copy the features at ``items_url`` (OGC API - Features) into the GeoJSON file ``target``.

    Follows ``next`` links (same host only) until the remote has no more or
    ``max_features`` are copied; returns how many were. InvalidData past ``max_bytes``.
    """
    host = urlsplit(check_url(items_url)).netloc
    url: str | None = items_url
    params: dict[str, Any] | None = {"f": "json", "limit": PAGE}
    copied, size = 0, 0
    with open(target, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        while url and copied < max_features:
            response = _get(url, timeout_s, **(params or {}))
            size += len(response.content)
            if size > max_bytes:
                raise InvalidData(f"the remote collection is larger than {max_bytes >> 20} MB")
            try:
                page = response.json()
            except ValueError as exc:
                raise RemoteUnavailable(f"{url[:200]} did not answer GeoJSON") from exc
            features = page.get("features") if isinstance(page, dict) else None
            if not isinstance(features, list):
                raise RemoteUnavailable(f"{url[:200]} did not answer a FeatureCollection")
            for feature in features[: max_features - copied]:
                out.write(("," if copied else "") + json.dumps(feature))
                copied += 1
            following = next(
                (
                    link.get("href")
                    for link in page.get("links") or []
                    if isinstance(link, dict)
                    and link.get("rel") == "next"
                    and isinstance(link.get("href"), str)
                ),
                None,
            )
            url = urljoin(url, following) if following and features else None
            if url and urlsplit(url).netloc != host:
                raise RemoteUnavailable("the remote's next link leads to another host")
            params = None  # a next link carries its own query
        out.write("]}")
    return copied
