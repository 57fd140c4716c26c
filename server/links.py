"""Absolute links for the address the client used, or the configured public URL.

GDAL and QGIS follow ``next`` links exactly as given, so they must be absolute and
must point where the client can reach us: behind a proxy that is the public URL
(``server.url``) or what ``X-Forwarded-*`` says when proxy headers are trusted
(werkzeug's ProxyFix, installed by the app, rewrites the request for that).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import current_app, request
from werkzeug.datastructures import MultiDict

MEDIA = {
    "json": "application/geo+json",
    "html": "text/html",
    "jsonl": "application/x-ndjson",
    "geojsonseq": "application/geo+json-seq",
    "csv": "text/csv",
}


def base_url() -> str:
    """Scheme, host and mount prefix of the service, without a trailing slash."""
    configured = current_app.config["GEOHARBOR"]["server"]["url"]
    if configured:
        return configured.rstrip("/")
    return (request.host_url.rstrip("/") + request.script_root).rstrip("/")


def url(path: str, args: MultiDict | dict[str, Any] | None = None) -> str:
    """An absolute URL for ``path`` (starting with ``/``) with query ``args``."""
    query = ""
    if args:
        items = args.items(multi=True) if isinstance(args, MultiDict) else args.items()
        query = "?" + urlencode([(k, v) for k, v in items if v is not None])
    return f"{base_url()}{path}{query}"


def link(href: str, rel: str, media: str, title: str | None = None) -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": media}
    if title:
        out["title"] = title
    return out


def link_header(links: list[dict[str, str]]) -> str:
    """The HTTP ``Link`` header for navigation links (OGC test suites read it)."""
    return ", ".join(
        f'<{item["href"]}>; rel="{item["rel"]}"; type="{item["type"]}"'
        for item in links
        if item["rel"] in ("self", "next", "prev", "alternate", "collection")
    )
