"""``GET /health``: what a load balancer and an operator need to know at a glance.

It also says whether the server is protected by API keys: in *community* mode
(no key anywhere) anyone may read and every local client may write, which an
operator must not learn from an incident. Collection ids are those the caller may
read, and why a layer is not published only an admin is told (it names tables).

The GISPulse fields lead: ``status``, ``version``, ``engine`` (``postgis`` when the
store or a source is a PostGIS database, where the heavy work runs in SQL, else
``python``) and ``postgis`` (true when PostGIS sources are configured and all answer).
``components`` says ``ok`` or ``down`` for the store and each source; the details
follow (``providers``, ``store``, ``postgis_sources``, ``auth``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from server import __version__
from server.auth import current_identity, visible_collection_ids

blueprint = Blueprint("health", __name__)

COMMUNITY_WARNING = (
    "COMMUNITY MODE: no API key is configured or stored. Anyone who can reach this server may read "
    "everything, and every client on this machine (loopback) may write. Set GEOHARBOR_API_KEY or "
    "create an API key to protect it."
)


@blueprint.route("/health")
def health() -> Response:
    state = current_app.extensions["geoharbor"]
    mode = state.auth.mode
    visible = visible_collection_ids()
    sources = state.registry.health()
    if visible is not None:
        for entry in sources.values():
            entry["collections"] = [cid for cid in entry["collections"] if cid in visible]
    postgis = [s["up"] for s in sources.values() if s["type"] == "postgis"]
    config = state.config
    down = [name for name, s in sources.items() if not s["up"]]
    store: dict[str, Any] = {"up": state.registry.store_error is None}
    if state.registry.store_error:
        store["error"] = state.registry.store_error
        down.append("store")
    if state.registry.layer_errors and (mode == "community" or current_identity().admin):
        store["unpublished_layers"] = {str(k): v for k, v in state.registry.layer_errors.items()}
    auth: dict[str, Any] = {"mode": mode}
    if mode == "community":
        auth["writes"] = "local clients only (127.0.0.0/8, ::1)"
        auth["warning"] = COMMUNITY_WARNING
    components = {"store": "ok" if store["up"] else "down"}
    components.update({name: "ok" if s["up"] else "down" for name, s in sources.items()})
    body = {
        "status": "degraded" if down else "ok",
        "version": __version__,
        "engine": "postgis" if postgis or "source" in config["store"] else "python",
        "postgis": bool(postgis) and all(postgis),
        "components": components,
        "collections": len(state.registry.collections) if visible is None else len(visible),
        "providers": sources,
        "store": store,
        "postgis_sources": {"configured": bool(postgis), "reachable": all(postgis) if postgis else None},
        "auth": auth,
    }
    response = jsonify(body)
    response.status_code = 200 if not down else 503
    return response
