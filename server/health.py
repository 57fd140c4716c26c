"""``GET /health``: what a load balancer and an operator need to know at a glance.

It also says whether the server is protected by API keys: in *community* mode
(no key anywhere) anyone may read and every local client may write, which an
operator must not learn from an incident. Collection ids are those the caller may
read, and why a layer is not published only an admin is told (it names tables).

The GISPulse fields lead: ``status``, ``version``, ``engine`` (``postgis`` when the
store or a source is a PostGIS database, where the heavy work runs in SQL, else
``python``) and ``postgis`` (true when PostGIS sources are configured and all answer).
``components`` says ``ok`` or ``down`` for the store and each source; the details
follow (``providers``, ``store``, ``postgis_sources``, ``auth``). A PostGIS source with a
read replica reports it under ``providers.<source>.replica``: ``up``, ``lag_s`` and
``lag_bytes``; a replica down does not make the server unhealthy (its reads go to the
primary).

Load balancers and orchestrators get two probes of their own:

* ``GET /health/live``: the process is up and answering. Answered before the
  application runs (no database, no registry, no access check), so a busy or degraded
  server is not killed for what a restart would not fix.
* ``GET /health/ready``: this process should get traffic: every PostGIS source answers,
  the collections are published (no source failed at start-up), the store answers and
  its schema is in place, and the process is not stopping (SIGTERM received). 200
  ``{"status": "ready"}``, else 503 with the ``reasons``. ``checks.jobs_queue`` tells
  whether procrastinate's tables exist (a ``geoharbor worker`` creates them); a missing
  queue does not hold readiness back, since everything but jobs works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from providers.errors import ProviderError, Unavailable
from providers.postgis import PostGISDatabase
from providers.store import PostgresStore
from server import __version__, streams
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
    try:
        visible = visible_collection_ids()
    except Unavailable:
        # Who may see what is unknown while the store is down: name no collection, and go
        # on reporting (the store's own state says why).
        visible = frozenset()
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


#: The liveness probe's path, answered before the application (see :class:`Live`).
LIVE_PATH = "/health/live"
#: The endpoints of the probes: no registry sync before them (``ready`` syncs itself).
PROBES = frozenset({"health.ready"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Live:
    """WSGI middleware answering ``GET``/``HEAD /health/live`` at once: the process is up."""

    BODY = b'{"status":"alive"}'

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != LIVE_PATH or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(self.BODY))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else self.BODY]


@blueprint.route("/health/ready")
def ready() -> Response:
    """200 when this process should get traffic, else 503 with the reasons (see the module doc)."""
    state = current_app.extensions["geoharbor"]
    registry = state.registry
    reasons: list[str] = []
    checks: dict[str, str] = {}
    if streams.SHUTDOWN.is_set():
        reasons.append("shutting down")
    for name, error in registry.source_errors.items():
        reasons.append(f"source {name}: {error}")
    for name, source in registry.sources.items():
        if isinstance(source, PostGISDatabase):
            up = source.ping()
            checks[name] = "ok" if up else "down"
            if not up:
                reasons.append(f"source {name}: database unreachable")
    registry.sync()  # the registry as the store has it now (one read when nothing changed)
    try:
        registry.store.count("layer")  # the store's schema is made on first use: in place after this
        checks["store"] = "ok"
    except ProviderError as exc:
        checks["store"] = "down"
        reasons.append(f"store: {exc.message}")
    if registry.store_error and checks["store"] == "ok":
        reasons.append(f"store: {registry.store_error}")
    if isinstance(registry.store, PostgresStore) and checks["store"] == "ok":
        checks["jobs_queue"] = "ok" if _queue_schema(registry.store.db) else "missing"
    body: dict[str, Any] = {"status": "not ready" if reasons else "ready", "checks": checks}
    if reasons:
        body["reasons"] = reasons
    response = jsonify(body)
    response.status_code = 503 if reasons else 200
    response.headers["Cache-Control"] = "no-store"
    return response


def _queue_schema(db: PostGISDatabase) -> bool:
    """Whether procrastinate's tables exist in the store's database."""
    try:
        with db.connection() as conn:
            row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
    except Exception:  # noqa: BLE001 - reported as missing; the store's own check says why
        return False
    return bool(row and row[0])


def install(app: Flask) -> None:
    """Answer liveness probes before anything else (call after every other middleware)."""
    app.wsgi_app = Live(app.wsgi_app)  # type: ignore[method-assign]
