"""CORS: web maps on other origins (OpenLayers, MapLibre) read every OGC response.

``server.cors_origins`` lists the origins allowed (``*``: any). :meth:`Cors.headers` is
the one rule: Flask adds its headers to every response (:func:`install`), and the lean
tile path (server/tile_fast_path.py) to the tiles it answers, so both send the same.
"""

from __future__ import annotations

from flask import Flask, Response, request

#: Response headers a script on another origin may read.
EXPOSED = "ETag, Location, Link, Content-Crs, OGC-NumberMatched-Estimated, X-Geoharbor-Revision"
#: What a preflight allows.
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Content-Type, If-Match, Content-Crs"


class Cors:
    """The CORS headers of responses, for the configured origins."""

    def __init__(self, origins: list[str]) -> None:
        self.allowed = frozenset(origins)

    def headers(
        self, origin: str | None, method: str, requested_headers: str | None
    ) -> list[tuple[str, str]]:
        """The headers to add to the response to a ``method`` request from ``origin``, in order.

        ``Vary`` is added beside the response's own; every other one replaces any of its name.
        ``requested_headers`` is a preflight's ``Access-Control-Request-Headers``.
        """
        if "*" in self.allowed:
            found = [("Access-Control-Allow-Origin", "*")]
        elif origin and origin in self.allowed:
            found = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        else:
            return []
        found.append(("Access-Control-Expose-Headers", EXPOSED))
        if method == "OPTIONS":
            found.append(("Access-Control-Allow-Methods", ALLOWED_METHODS))
            found.append(("Access-Control-Allow-Headers", requested_headers or DEFAULT_ALLOWED_HEADERS))
        return found


def install(app: Flask, origins: list[str]) -> Cors:
    """Add the CORS headers to every response Flask makes; the rule, for other paths to use."""
    cors = Cors(origins)

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        for name, value in cors.headers(
            request.headers.get("Origin"),
            request.method,
            request.headers.get("Access-Control-Request-Headers"),
        ):
            if name == "Vary":
                response.headers.add(name, value)
            else:
                response.headers[name] = value
        return response

    return cors
