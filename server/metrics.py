"""``GET /metrics``: what Prometheus scrapes, in its text format (``prometheus_client``).

* ``geoharbor_http_requests_total{method,route,status}``: requests answered, by URL rule
  (``/collections/<cid>/items``, not the path: a bounded set of labels);
* ``geoharbor_http_request_duration_seconds{method,route}``: time to answer (for a
  stream, until its body starts);
* ``geoharbor_tile_cache_total{result}``: vector tiles of cached collections served
  from this process's cache (``hit``) or built (``miss``);
* ``geoharbor_jobs{state}``: job records by state, read from the store at scrape time,
  so every process reports the same numbers;
* ``geoharbor_replica_up{source}``, ``geoharbor_replica_lag_seconds{source}`` and
  ``geoharbor_replica_lag_bytes{source}``: each PostGIS source's read replica, measured
  at scrape time.

Under gunicorn each worker has its own counters: ``geoharbor serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker starts, every worker
writes its values there, and a scrape answered by any worker adds them up
(``prometheus_client``'s multiprocess mode). A server run another way (the Flask test
client, one process) reports its own counters.

The endpoint is open like ``/health``: it tells route names and counts, no data.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from providers.errors import ProviderError
from providers.postgis import PostGISDatabase
from providers.store import Store
from server import jobs
from server.tile_fast_path import ANSWERED

#: The variable naming the directory where gunicorn workers write their values (set by server/cli.py).
LOGGER = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

blueprint = Blueprint("metrics", __name__)

REQUESTS = Counter(
    "geoharbor_http_requests", "HTTP requests answered, by URL rule and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "geoharbor_http_request_duration_seconds",
    "Time to answer a request (for a stream, until its body starts)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TILE_CACHE = Counter(
    "geoharbor_tile_cache",
    "Vector tiles served from the process's tile cache (hit) or built for it (miss)",
    ["result"],
)


# -- collecting ------------------------------------------------------------------------------------
class JobsCollector(Collector):
    """Job records by state, read from the store when scraped (one list of the job records)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "geoharbor_jobs", "Job records by state, read from the store", labels=["state"]
        )
        try:
            counts = collections.Counter(r.body.get("state") for r in self.store.list(jobs.KIND))
        except ProviderError:
            return  # the store is down: no job numbers rather than wrong ones
        for state in (jobs.PENDING, jobs.RUNNING, jobs.COMPLETE, jobs.FAILED):
            family.add_metric([state], counts.get(state, 0))
        yield family


class ReplicaCollector(Collector):
    """Each read replica's lag, measured when scraped (one read on the replica and one on
    the primary per replica): ``geoharbor_replica_up``, ``geoharbor_replica_lag_seconds``
    and ``geoharbor_replica_lag_bytes``, labelled by source."""

    def __init__(self, sources: dict[str, Any]) -> None:
        self.sources = sources

    def collect(self) -> Any:
        up = GaugeMetricFamily(
            "geoharbor_replica_up", "Whether the source's read replica answers", labels=["source"]
        )
        seconds = GaugeMetricFamily(
            "geoharbor_replica_lag_seconds",
            "Age of the last transaction the read replica replayed (0 when it replayed everything)",
            labels=["source"],
        )
        size = GaugeMetricFamily(
            "geoharbor_replica_lag_bytes",
            "WAL the read replica has not replayed yet, in bytes",
            labels=["source"],
        )
        found = False
        for name, source in self.sources.items():
            if not isinstance(source, PostGISDatabase) or source.replica is None:
                continue
            found = True
            status = source.replica_status() or {}
            up.add_metric([name], 1.0 if status.get("up") else 0.0)
            if status.get("lag_s") is not None:
                seconds.add_metric([name], float(status["lag_s"]))
            if status.get("lag_bytes") is not None:
                size.add_metric([name], float(status["lag_bytes"]))
        if found:
            yield from (up, seconds, size)


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "(no route)"


def _count_tile_cache(cache: Any) -> None:
    """Count a tile request's cache lookups that found a tile and the tiles it built and cached.

    Wraps the process's :class:`server.tiles.TileCache` ``get`` and ``put`` within Flask
    requests: a tile found then built again in the same request (a probe that missed) is
    counted once, as built. The gzip forms kept beside tiles are not tiles of their own
    and are not counted. Tiles answered before Flask are counted by their observer.
    """
    get: Callable[[tuple], Any] = cache.get
    put: Callable[[tuple, Any], None] = cache.put

    def counted_get(key: tuple) -> Any:
        found = get(key)
        if found is not None and key[-1] != "gzip" and has_request_context():
            g.setdefault("tiles_found", set()).add(key)
        return found

    def counted_put(key: tuple, tile: Any) -> None:
        put(key, tile)
        if key[-1] != "gzip" and has_request_context():
            g.setdefault("tiles_built", set()).add(key)

    cache.get = counted_get
    cache.put = counted_put


def _answered_before_flask(rule: str, status: int, seconds: float, layers: int) -> None:
    """A cached tile answered by server/tile_fast_path.py, where Flask's hooks do not run."""
    LATENCY.labels("GET", rule).observe(seconds)
    REQUESTS.labels("GET", rule, str(status)).inc()
    TILE_CACHE.labels("hit").inc(layers)


def install(app: Flask) -> None:
    """Time and count every request (those answered before Flask too), count the tile cache,
    and serve ``/metrics``."""
    app.register_blueprint(blueprint)
    _count_tile_cache(app.extensions["geoharbor"].tile_cache)
    app.extensions.setdefault(ANSWERED, []).append(_answered_before_flask)

    @app.before_request
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        try:
            _count(response)
        except OSError as exc:
            # Counting must never fail a request: the multiprocess directory may have gone
            # (cleaned from under a long-running server); make it again for the next one.
            LOGGER.warning("metrics not counted: %s", exc)
            if os.environ.get(MULTIPROC_ENV):
                os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)
        return response

    def _count(response: Response) -> None:
        route = _route()
        started = g.pop("metrics_started", None)
        if started is not None:
            LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        built: set = g.pop("tiles_built", set())
        found: set = g.pop("tiles_found", set())
        if built:
            TILE_CACHE.labels("miss").inc(len(built))
        if found - built:
            TILE_CACHE.labels("hit").inc(len(found - built))


@blueprint.route("/metrics")
def metrics() -> Response:
    store = current_app.extensions["geoharbor"].registry.store
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(JobsCollector(store))
    scraped.register(ReplicaCollector(current_app.extensions["geoharbor"].registry.sources))
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(scraped)
        text = generate_latest(scraped)
    else:
        text = generate_latest(REGISTRY) + generate_latest(scraped)
    return Response(text, headers={"Content-Type": CONTENT_TYPE_LATEST})
