"""``GET /health``: what a load balancer and an operator need to know at a glance."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from server import __version__

blueprint = Blueprint("health", __name__)


@blueprint.route("/health")
def health() -> Response:
    state = current_app.extensions["geoharbor"]
    sources = state.registry.health()
    postgis = [s["up"] for s in sources.values() if s["type"] == "postgis"]
    down = [name for name, s in sources.items() if not s["up"]]
    store = {"up": state.registry.store_error is None}
    if state.registry.store_error:
        store["error"] = state.registry.store_error
        down.append("store")
    if state.registry.layer_errors:
        store["unpublished_layers"] = {str(k): v for k, v in state.registry.layer_errors.items()}
    body = {
        "status": "degraded" if down else "ok",
        "version": __version__,
        "collections": len(state.registry.collections),
        "providers": sources,
        "store": store,
        "postgis": {"configured": bool(postgis), "reachable": all(postgis) if postgis else None},
    }
    response = jsonify(body)
    response.status_code = 200 if not down else 503
    return response
