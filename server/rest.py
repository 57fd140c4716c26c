"""REST CRUD conventions shared by every resource under the versioned prefix.

The REST API (``/rest/1`` by default) follows the conventions of its reference
(GIS Cloud's REST API): a ``.json`` suffix on any URL, ``_method`` to send PUT or
DELETE from clients that cannot, ``page``/``perpage`` paging (100 by default, 1000
at most), ``order_by=field:asc|desc``, ``nototal``, ``expand``, and list envelopes
``{"type", "total", "page", "data"}``. Errors answer ``{"code", "msg"}`` JSON.

The resource modules (``rest_layers``, ``rest_tables``, ``rest_maps``,
``rest_search``) register their routes on :data:`blueprint`; this module holds only
what they share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Response, current_app, request

from providers.errors import InvalidData, InvalidQuery
from server import bodies
from server.params import int_param
from server.responses import json_response

blueprint = Blueprint("rest", __name__)

#: Methods a client may ask for through ``_method`` (GIS Cloud: "maps.json?_method=POST").
OVERRIDABLE = {"GET", "POST", "PUT", "PATCH", "DELETE"}

#: REST error codes by HTTP status, in the ``{"code", "msg"}`` body.
CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_DATA",
    429: "TOO_MANY_REQUESTS",
    503: "UNAVAILABLE",
}


def rest_error(status: int, message: str) -> Response:
    """The REST API's error document."""
    body = orjson.dumps({"code": CODES.get(status, "SERVER_ERROR"), "msg": message})
    return Response(body, status=status, mimetype="application/json")


class RestPaths:
    """WSGI middleware: ``.json`` suffixes and ``_method`` overrides under the REST prefix.

    Done before routing so every route is declared once, without its suffix, and a
    ``DELETE`` sent as ``POST ...?_method=DELETE`` reaches the DELETE view.
    """

    def __init__(self, app: Callable, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self.prefix + "/") or path == self.prefix + ".json":
            if path.endswith(".json"):
                environ["PATH_INFO"] = path[: -len(".json")]
            query = environ.get("QUERY_STRING", "")
            if "_method=" in query:
                wanted = dict(parse_qsl(query)).get("_method", "").upper()
                if wanted in OVERRIDABLE and environ.get("REQUEST_METHOD") in ("GET", "POST"):
                    environ["REQUEST_METHOD"] = wanted
        return self.app(environ, start_response)


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    perpage: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.perpage


def paging() -> Paging:
    """``page`` (from 1) and ``perpage`` (default 100, capped at the configured maximum)."""
    cap = current_app.config["GEOHARBOR"]["rest"]["perpage_max"]
    perpage = int_param(request.args, "perpage", min(100, cap), 1, cap)
    return Paging(int_param(request.args, "page", 1, 1), perpage)


def order_by(allowed: Iterable[str], default: list[tuple[str, bool]] | None = None) -> list[tuple[str, bool]]:
    """``order_by=field[:asc|desc][,field...]`` as (field, ascending), fields checked first."""
    raw = request.args.get("order_by")
    if not raw:
        return list(default or [])
    names = set(allowed)
    out = []
    for part in raw.split(","):
        name, _, direction = part.strip().partition(":")
        direction = direction.lower() or "asc"
        if name not in names:
            raise InvalidQuery(f"cannot order by {name[:100]!r}")
        if direction not in ("asc", "desc"):
            raise InvalidQuery(f"order direction must be asc or desc, not {direction[:20]!r}")
        out.append((name, direction == "asc"))
    return out


def flag(name: str) -> bool:
    """A boolean query parameter: present and not false/0/no."""
    raw = request.args.get(name)
    return raw is not None and raw.lower() not in ("false", "0", "no", "f")


def expand() -> set[str]:
    """The ``expand`` list (``expand=columns,form``)."""
    return {p.strip() for p in request.args.get("expand", "").split(",") if p.strip()}


def wants_total() -> bool:
    return not flag("nototal")


def json_body() -> dict[str, Any]:
    """The request body as a JSON object (empty: ``{}``), whatever Content-Type was sent."""
    if not request.get_data(cache=True).strip():
        return {}
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise InvalidData("the body must be a JSON object")
    return body


def document(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """One resource (or any JSON value) as a response."""
    return json_response(data, status, headers=headers)


def envelope(kind: str, data: list[Any], total: int | None, page: int) -> Response:
    """A list in the reference's envelope; ``total`` is left out when not counted (``nototal``)."""
    body: dict[str, Any] = {"type": kind}
    if total is not None:
        body["total"] = total
    body["page"] = page
    body["data"] = data
    return document(body)


def rest_url(path: str) -> str:
    """An absolute URL under the REST prefix, for ``Location`` headers."""
    prefix = current_app.config["GEOHARBOR"]["rest"]["prefix"].rstrip("/")
    return request.host_url.rstrip("/") + request.script_root + prefix + path


def no_content() -> Response:
    return Response(status=204)
