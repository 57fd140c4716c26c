"""The Flask application: pygeoapi's OGC routes, our feature routes and blueprints."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from providers.base import WRITE_HOOKS, FeatureProvider
from server import (
    audit,
    consistency,
    cors,
    datasets,
    errors,
    features,
    geonode,
    geonode_commands,
    geonode_harvest,
    geonode_thumbnails,
    geonode_uploads,
    health,
    importer,
    mapfish,
    metadata_routes,
    metrics,
    ogc,
    ogc_mount,
    portal_export,
    processes,
    ratelimit,
    records,
    rest,
    rest_audit,  # noqa: F401 - registers its routes on rest.blueprint
    rest_buffer,  # noqa: F401
    rest_export,  # noqa: F401
    rest_layers,  # noqa: F401
    rest_maps,  # noqa: F401
    rest_search,  # noqa: F401
    rest_tables,  # noqa: F401
    rest_users,  # noqa: F401
    rule_jobs,
    rule_runs,
    rules,
    schedules,
    sql_console,
    streams,
    tile_fast_path,
    tiles,
    triggers,
    viewer,
)
from server import auth as auth_module
from server import config as config_module
from server.auth import Auth
from server.jobs import Jobs
from server.pygeoapi_bridge import PygeoapiCore
from server.registry import Registry
from server.tiles import TileCache

LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class State:
    """What the routes share within one process (nothing another process needs)."""

    config: dict[str, Any]
    registry: Registry
    core: PygeoapiCore
    tile_cache: TileCache
    auth: Auth
    jobs: Jobs


def create_app(config: dict[str, Any] | str | os.PathLike[str]) -> Flask:
    """Build the app from a validated config dict or the path of a YAML config file."""
    config = config_module.validate(config) if isinstance(config, dict) else config_module.load(config)
    logging.basicConfig(
        level=config["server"]["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pygeoapi's localisation warns about every non-locale key of the config it renders.
    logging.getLogger("pygeoapi.l10n").setLevel(logging.ERROR)
    registry = Registry(config)
    # No app-wide /static route: /static serves pygeoapi's files (ogc.py), our assets live under /assets.
    app = Flask(__name__, static_folder=None)
    app.config["GEOHARBOR"] = config
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    tile_cache = TileCache(config["server"]["tiles"]["cache_mb"] << 20)
    auth = Auth(config, registry)
    app.extensions["geoharbor"] = State(
        config, registry, PygeoapiCore(config, registry), tile_cache, auth, Jobs(config, registry)
    )
    # Event streams, metrics, SQL console, the /ogc mirror and the portal's export body: before
    # ProxyFix (the /ogc mount adds to the prefix it sets) and the datasets blueprint (the
    # portal export answers their shared path first).
    streams.install(app)
    metrics.install(app)
    for blueprint in (ogc_mount.blueprint, sql_console.blueprint, portal_export.blueprint):
        app.register_blueprint(blueprint)
    app.wsgi_app = ogc_mount.OgcMount(app.wsgi_app)  # type: ignore[method-assign]
    if config["server"]["trust_proxy_headers"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
    errors.install(app)

    state: State = app.extensions["geoharbor"]
    registry.listeners += [state.core.refresh, state.tile_cache.clear]

    @app.before_request
    def follow_registry() -> None:
        """Publish layers created or deleted by any process before answering.

        Tile routes check it themselves, in the same round trip as their revisions,
        unless a key is presented: a revoked key must be refused before anything runs.
        """
        if request.endpoint in health.PROBES:
            return  # a readiness probe syncs itself, and answers 503 rather than failing here
        if request.endpoint not in tiles.SYNCS_ITSELF or auth_module.presented_key(request):
            state.registry.sync()

    auth_module.install(app, auth)
    ratelimit.install(app)
    audit.install(app)

    # Our feature routes first: they own items and item for every method.
    app.register_blueprint(features.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(tiles.blueprint)
    app.register_blueprint(ogc.blueprint)
    app.register_blueprint(viewer.blueprint)
    rest_prefix = config["rest"]["prefix"]
    app.register_blueprint(rest.blueprint, url_prefix=rest_prefix)
    errors.use_format(app, rest_prefix, rest.rest_error)
    app.wsgi_app = rest.RestPaths(app.wsgi_app, rest_prefix)  # type: ignore[method-assign]
    mapfish_prefix = config["mapfish"]["prefix"]
    app.register_blueprint(mapfish.blueprint, url_prefix=mapfish_prefix)
    errors.use_format(app, mapfish_prefix, mapfish.mapfish_error)
    imports_prefix = config["imports"]["prefix"]
    app.register_blueprint(importer.blueprint, url_prefix=imports_prefix)
    errors.use_format(app, imports_prefix, importer.importer_error)
    app.register_blueprint(datasets.blueprint)
    errors.use_format(app, "/datasets", datasets.detail_error)
    errors.use_format(app, "/api/portal", datasets.detail_error)
    geonode_uploads.install(app)
    geonode_harvest.install(app)
    geonode_commands.install(app)
    geonode_thumbnails.install(app)
    metadata_routes.install(app)
    records.install(app)
    _install_platform(app, state)
    geonode.install(app)
    # CORS on every response; tiles cached under the current revision answered before Flask.
    tile_fast_path.install(app, cors.install(app, config["server"]["cors_origins"]))
    # Outermost: every request (tiles answered before Flask too) reads within its scope, then
    # load balancers' liveness probes are answered before anything else runs.
    consistency.install(app)
    health.install(app)
    LOGGER.info("geoharbor serving %d collections", len(registry.collections))
    return app


def _install_platform(app: Flask, state: State) -> None:
    """The platform API (capabilities, rules, jobs, triggers) and the write hook that fires triggers."""
    for module in (rules, rule_jobs, triggers, processes):
        app.register_blueprint(module.blueprint)
    for prefix in ("/capabilities", "/rules", "/jobs", "/triggers"):
        errors.use_format(app, prefix, datasets.detail_error)

    def fire_triggers(provider: FeatureProvider, ids: list[Any]) -> None:
        """A committed write: start the runs of the triggers watching its collection."""
        for coll in state.registry.collections.values():
            if coll.provider is provider:
                rule_runs.fire(state.registry, state.jobs, coll.id, ids)
                return

    WRITE_HOOKS.append(fire_triggers)

    if state.jobs.embedded:
        scheduler: list[Any] = []
        starting = threading.Lock()

        @app.before_request
        def run_schedules() -> None:
            """Embedded mode: scheduled work (triggers, harvests) starts from each serving
            process (its first request, so commands that only build the app never start it)."""
            if not scheduler:
                with starting:
                    if not scheduler:
                        scheduler.append(schedules.start_embedded(state.registry, state.jobs))
