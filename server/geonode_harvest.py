"""GeoNode's harvesters: remote services whose resources become datasets of this server.

A harvester (store record, kind ``harvester``; its id is the record's) names a remote
of one of three types (:mod:`providers.harvest_sources`): ``ogcapi-features``,
``wfs`` or ``ogcapi-records``. Its *harvestable resources* are what the remote offers,
read from it when asked (``GET .../harvestable-resources``, or ``PATCH`` the harvester
with ``{"status": "updating-harvestable-resources"}``) and kept in the record with the
client's choice of which to harvest (``PATCH .../harvestable-resources`` with
``[{"unique_identifier", "should_be_harvested"}]``).

Harvesting (``PATCH`` the harvester with ``{"status": "harvesting-resources"}``, as
GeoNode's client does, or ``POST .../harvest``) starts a *harvesting session*
(record kind ``harvesting_session``) run as a ``harvest`` job (:mod:`server.jobs`):

* a WFS feature type becomes a remote WFS layer, published lazily by the existing
  remote-layer machinery (described, not copied: reads go to the remote);
* an OGC API - Features collection, or a record whose links name one, is copied:
  its features are fetched into a GeoJSON file and loaded by the loader into the
  store's table source, then published (:func:`server.publish.publish_loaded`); a
  second harvest replaces that table's rows.

With ``scheduling_enabled`` a harvester also harvests on its own, as GeoNode's scheduler
does: a session starts ``harvesting_session_update_frequency`` minutes (default 60) after
the last one started, at once when there was none, and never beside a running one
(:func:`fire_harvests`, run by :mod:`server.schedules`).

The session's status follows GeoNode (``pending``, ``on-going``, ``finished-all-ok``,
``finished-some-failed``, ``finished-all-failed``); an execution request follows its
job too, so ``/api/v2/executionrequest/{id}`` can be polled as for an upload. Only
admins manage harvesters: a harvester makes this server call the URL it names.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from providers import harvest_sources, loader
from providers.errors import Conflict, InvalidData, NotFound, ProviderError
from providers.store import Record, Store
from providers.tables import tables_of
from providers.wfs_http import check_url
from server import bodies, datasets, errors, owned, schedules
from server.auth import current_identity, require_admin
from server.geonode import listing
from server.geonode_executions import Executions, iso
from server.jobs import JobContext, task
from server.links import base_url
from server.publish import publish_loaded
from server.registry import COLLECTION_ID
from server.responses import json_response

LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("geonode_harvest", __name__)

PREFIX = "/api/v2"
KIND, SESSION_KIND = "harvester", "harvesting_session"
READY, UPDATING, HARVESTING = "ready", "updating-harvestable-resources", "harvesting-resources"
#: Session statuses (GeoNode's).
PENDING, ONGOING = "pending", "on-going"
ALL_OK, SOME_FAILED, ALL_FAILED = "finished-all-ok", "finished-some-failed", "finished-all-failed"
FINAL = frozenset({ALL_OK, SOME_FAILED, ALL_FAILED})
#: The most features one copied collection may bring.
MAX_FEATURES = 1_000_000
EDITABLE = (
    "name",
    "remote_url",
    "harvester_type",
    "harvester_type_specific_configuration",
    "default_owner",
    "scheduling_enabled",
    "harvesting_session_update_frequency",
)
#: GeoNode's default minutes between two scheduled sessions, and our largest (a year).
FREQUENCY_DEFAULT, FREQUENCY_MAX = 60, 525_600


def install(app: Flask) -> None:
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    for path in ("/harvesters", "/harvesting-sessions"):
        errors.use_format(app, PREFIX + path, datasets.detail_error)


def _state() -> Any:
    return current_app.extensions["geoharbor"]


def _store() -> Store:
    return _state().registry.store


def _admin() -> None:
    require_admin(current_identity(), "manage harvesters")


def _harvester(hid: int) -> Record:
    try:
        return _store().get(KIND, hid)
    except NotFound:
        raise NotFound(f"harvester {hid} not found") from None


# -- representations -------------------------------------------------------------------------------
def _sessions(store: Store, hid: int | None = None) -> list[Record]:
    found = [s for s in store.list(SESSION_KIND) if hid is None or s.body.get("harvester") == hid]
    return [_refresh_session(store, s) for s in found]


def _refresh_session(store: Store, record: Record) -> Record:
    """A session whose job ended without writing its end (a worker lost) is ended from the job."""
    body = record.body
    if body["status"] in FINAL or not body.get("job_id"):
        return record
    job = store.find("job", body["job_id"])
    state = job.body.get("state") if job else "FAILED"
    if state in ("PENDING", "RUNNING"):
        return record
    if state == "COMPLETE":
        return store.get(SESSION_KIND, record.id)  # the job wrote the end itself
    body = {**body, "status": ALL_FAILED, "ended": time.time()}
    body["message"] = (job.body.get("message") if job else None) or "the harvest's job was lost"
    return store.update(SESSION_KIND, record.id, body)


def harvester_view(record: Record) -> dict[str, Any]:
    body = record.body
    running = any(s.body["status"] not in FINAL for s in _sessions(_store(), record.id))
    base = base_url()
    resources = body.get("resources") or []
    return {
        "id": record.id,
        "name": body["name"],
        "status": HARVESTING if running else READY,
        "remote_url": body["remote_url"],
        "harvester_type": body["harvester_type"],
        "harvester_type_specific_configuration": body.get("harvester_type_specific_configuration") or {},
        "default_owner": body.get("default_owner"),
        "scheduling_enabled": bool(body.get("scheduling_enabled")),
        "harvesting_session_update_frequency": _frequency(body),
        "remote_available": body.get("remote_available"),
        "last_checked_availability": iso(body.get("last_checked")),
        "last_updated": iso(record.modified),
        "num_harvestable_resources": len(resources),
        "links": {
            "harvestable_resources": f"{base}{PREFIX}/harvesters/{record.id}/harvestable-resources",
            "self": f"{base}{PREFIX}/harvesters/{record.id}",
        },
    }


def _frequency(body: dict[str, Any]) -> Any:
    """Minutes between two scheduled sessions of a harvester (its body)."""
    return body.get("harvesting_session_update_frequency", FREQUENCY_DEFAULT)


def session_view(record: Record) -> dict[str, Any]:
    body = record.body
    results = body.get("results") or []
    return {
        "id": record.id,
        "harvester": body["harvester"],
        "status": body["status"],
        "started": iso(body.get("started")),
        "updated": iso(record.modified),
        "ended": iso(body.get("ended")),
        "records_to_harvest": body.get("records_to_harvest", 0),
        "records_harvested": sum(1 for r in results if r["succeeded"]),
        "total_records_found": body.get("records_to_harvest", 0),
        "execution_id": body.get("execution_id"),
        "message": body.get("message"),
        "results": results,
    }


# -- harvesters ---------------------------------------------------------------------------------------
def _checked(spec: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A harvester body from a client's fields (all of them to create, some to change)."""
    unknown = set(spec) - {*EDITABLE, "id", "status", "links"}
    if unknown:
        raise InvalidData(f"a harvester has no field {', '.join(sorted(unknown))[:200]}")
    body = dict(current or {"resources": [], "remote_available": None, "last_checked": None})
    for name in EDITABLE:
        if name in spec:
            body[name] = spec[name]
    if not isinstance(body.get("name"), str) or not body["name"].strip() or len(body["name"]) > 255:
        raise InvalidData("name is required: a text of at most 255 characters")
    body["remote_url"] = check_url(body.get("remote_url"))
    kind = body.get("harvester_type")
    if kind not in harvest_sources.TYPES:
        raise InvalidData(f"harvester_type must be one of {', '.join(harvest_sources.TYPES)}")
    config = body.get("harvester_type_specific_configuration") or {}
    if not isinstance(config, dict):
        raise InvalidData("harvester_type_specific_configuration must be an object")
    body["harvester_type_specific_configuration"] = config
    if not isinstance(body.get("scheduling_enabled", False), bool):
        raise InvalidData("scheduling_enabled must be true or false")
    frequency = _frequency(body)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or not 1 <= frequency <= FREQUENCY_MAX:
        raise InvalidData(
            f"harvesting_session_update_frequency must be whole minutes from 1 to {FREQUENCY_MAX}"
        )
    if current is not None and (
        current.get("remote_url") != body["remote_url"] or current.get("harvester_type") != kind
    ):
        body["resources"] = []  # another remote: what the old one offered means nothing here
    return body


@blueprint.route("/harvesters", methods=["GET"])
def list_harvesters() -> Response:
    _admin()
    return listing("harvesters", [harvester_view(r) for r in _store().list(KIND)])


@blueprint.route("/harvesters", methods=["POST"])
def create_harvester() -> Response:
    _admin()
    spec = bodies.json_body()
    spec = spec.get("harvester", spec) if isinstance(spec, dict) else spec
    if not isinstance(spec, dict):
        raise InvalidData('the body must be a harvester object: {"name", "remote_url", "harvester_type"}')
    body = _checked(spec)
    body.setdefault("default_owner", owned.owner())
    record = _store().insert(KIND, body)
    return json_response({"harvester": harvester_view(record)}, 201)


@blueprint.route("/harvesters/<int:hid>", methods=["GET"])
def get_harvester(hid: int) -> Response:
    _admin()
    return json_response({"harvester": harvester_view(_harvester(hid))})


@blueprint.route("/harvesters/<int:hid>", methods=["PUT", "PATCH"])
def update_harvester(hid: int) -> Response:
    """Change a harvester, or act on it by its ``status`` as GeoNode's client does."""
    _admin()
    record = _harvester(hid)
    spec = bodies.json_body()
    spec = spec.get("harvester", spec) if isinstance(spec, dict) else spec
    if not isinstance(spec, dict):
        raise InvalidData("the body must be a harvester object")
    wanted = spec.get("status")
    fields = {k: v for k, v in spec.items() if k != "status"}
    if fields:
        record = _store().update(KIND, record.id, _checked(fields, record.body))
    if wanted == UPDATING:
        record = refresh_resources(_store(), record)
    elif wanted == HARVESTING:
        _start_for_caller(record)
    elif wanted not in (None, READY):
        raise InvalidData(f"status can be set to {UPDATING} or {HARVESTING}")
    return json_response({"harvester": harvester_view(_harvester(hid))})


@blueprint.route("/harvesters/<int:hid>", methods=["DELETE"])
def delete_harvester(hid: int) -> Response:
    """Forget a harvester (what it harvested stays published)."""
    _admin()
    record = _harvester(hid)
    sessions = _sessions(_store(), hid)
    if any(s.body["status"] not in FINAL for s in sessions):
        raise Conflict(f"harvester {hid} is harvesting: delete it once its session has ended")
    _store().delete(KIND, record.id)
    _forget_claims(_store(), sessions)
    return Response(status=204)


# -- harvestable resources ---------------------------------------------------------------------------
def refresh_resources(store: Store, record: Record) -> Record:
    """Ask the remote what it offers now; keep the choices and results of known resources."""
    body = dict(record.body)
    known = {r["unique_identifier"]: r for r in body.get("resources") or []}
    try:
        found = harvest_sources.list_resources(body["harvester_type"], body["remote_url"])
    except ProviderError:
        body.update(remote_available=False, last_checked=time.time())
        store.update(KIND, record.id, body)
        raise
    resources = []
    for remote in found:
        old = known.get(remote.unique_identifier, {})
        resources.append(
            {
                "unique_identifier": remote.unique_identifier,
                "title": remote.title,
                "abstract": remote.abstract,
                "keywords": remote.keywords,
                "remote_resource_type": remote.resource_type,
                "items_url": remote.items_url,
                "available": body["harvester_type"] == harvest_sources.WFS or remote.items_url is not None,
                "should_be_harvested": old.get("should_be_harvested", False),
                "geonode_resource": old.get("geonode_resource"),
                "alternate": old.get("alternate"),
                "last_harvesting_message": old.get("last_harvesting_message"),
                "last_harvesting_succeeded": old.get("last_harvesting_succeeded"),
                "last_refreshed": time.time(),
            }
        )
    body.update(resources=resources, remote_available=True, last_checked=time.time())
    return store.update(KIND, record.id, body)


def _resource_view(hid: int, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in resource.items() if k not in ("last_refreshed", "items_url")},
        "harvester": hid,
        "last_refreshed": iso(resource.get("last_refreshed")),
    }


@blueprint.route("/harvesters/<int:hid>/harvestable-resources", methods=["GET"])
def harvestable_resources(hid: int) -> Response:
    _admin()
    record = _harvester(hid)
    if not record.body.get("resources") or request.args.get("refresh", "").lower() in ("1", "true"):
        record = refresh_resources(_store(), record)
    rows = [_resource_view(hid, r) for r in record.body["resources"]]
    return listing("harvestable_resources", rows)


@blueprint.route("/harvesters/<int:hid>/harvestable-resources", methods=["PATCH", "PUT"])
def choose_resources(hid: int) -> Response:
    """Which resources to harvest: ``[{"unique_identifier": ..., "should_be_harvested": bool}]``."""
    _admin()
    record = _harvester(hid)
    if not record.body.get("resources"):
        record = refresh_resources(_store(), record)
    choices = bodies.json_body()
    if isinstance(choices, dict):
        choices = choices.get("harvestable_resources", [choices])
    if not isinstance(choices, list):
        raise InvalidData('send [{"unique_identifier": ..., "should_be_harvested": true}, ...]')
    body = dict(record.body)
    by_id = {r["unique_identifier"]: dict(r) for r in body["resources"]}
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("should_be_harvested"), bool):
            raise InvalidData("each choice needs a unique_identifier and should_be_harvested (true or false)")
        uid = str(choice.get("unique_identifier"))
        if uid not in by_id:
            raise NotFound(f"harvester {hid} offers no resource {uid[:100]!r}")
        by_id[uid]["should_be_harvested"] = choice["should_be_harvested"]
    body["resources"] = [by_id[r["unique_identifier"]] for r in body["resources"]]
    record = _store().update(KIND, record.id, body)
    return json_response(
        [_resource_view(hid, r) for r in record.body["resources"] if r["unique_identifier"] in by_id]
    )


# -- sessions ----------------------------------------------------------------------------------------
def start_session(
    record: Record, registry: Any, jobs: Any, owner: int | None, claim: int | None = None
) -> Record:
    """A harvesting session of the chosen resources, run by a ``harvest`` job of ``owner``'s
    (``claim``: the schedule claim that started it, kept to be removed with it)."""
    store: Store = registry.store
    if any(s.body["status"] not in FINAL for s in _sessions(store, record.id)):
        raise Conflict(f"harvester {record.id} is already harvesting")
    chosen = [r for r in record.body.get("resources") or [] if r.get("should_be_harvested")]
    if not chosen:
        raise InvalidData("no harvestable resource is chosen: PATCH harvestable-resources first")
    session = store.insert(
        SESSION_KIND,
        {
            "harvester": record.id,
            "status": PENDING,
            "started": time.time(),
            "ended": None,
            "records_to_harvest": len(chosen),
            "results": [],
            "job_id": None,
            "execution_id": None,
            "message": None,
            "claim": claim,
        },
    )
    executions = Executions(registry, jobs)
    execution = executions.create(
        "harvest",
        record.body["name"],
        owner,
        {"harvester": record.id, "session": session.id},
        source="harvester",
    )

    def remember(job_id: str) -> None:
        current = store.get(SESSION_KIND, session.id)
        store.update(
            SESSION_KIND, session.id, {**current.body, "job_id": job_id, "execution_id": execution.key}
        )
        executions.attach(execution, job_id=job_id)

    try:
        jobs.defer("harvest", {"harvester_id": record.id, "session_id": session.id}, owner, before=remember)
    except ProviderError as exc:  # the queue is down: end the session rather than leave it pending
        current = store.get(SESSION_KIND, session.id)
        store.update(
            SESSION_KIND,
            session.id,
            {**current.body, "status": ALL_FAILED, "ended": time.time(), "message": exc.message},
        )
        executions.fail(store.get(execution.kind, execution.id), exc.message)
        raise
    return store.get(SESSION_KIND, session.id)


def _start_for_caller(record: Record) -> Record:
    """A session the calling admin asked for (a PATCH of the status, or POST .../harvest)."""
    state = _state()
    return start_session(record, state.registry, state.jobs, owned.owner())


def fire_harvests(registry: Any, jobs: Any, now: float) -> list[int]:
    """Start a session of each scheduled harvester whose time has come; the sessions' ids.

    GeoNode's rule: the next session starts ``harvesting_session_update_frequency``
    minutes after the last one started, at once when there was none; none starts
    beside a running one, nor for a harvester with nothing chosen. The due time is
    claimed by the last start, so two processes seeing it due start one session.
    """
    store: Store = registry.store
    started = []
    for record in store.list(KIND):
        body = record.body
        if not body.get("scheduling_enabled"):
            continue
        if not any(r.get("should_be_harvested") for r in body.get("resources") or []):
            continue
        sessions = _sessions(store, record.id)
        if any(s.body["status"] not in FINAL for s in sessions):
            continue
        last = max((s.body.get("started") or s.created for s in sessions), default=None)
        if last is not None and last + 60 * _frequency(body) > now:
            continue
        slot = f"harvester {record.id} after {'none' if last is None else f'{last:.3f}'}"
        claimed = schedules.claim(store, slot, {"harvester": record.id, "due": now})
        if claimed is None:
            continue  # another process started this one
        try:
            session = start_session(record, registry, jobs, body.get("default_owner"), claimed.id)
        except (Conflict, ProviderError) as exc:
            LOGGER.warning("scheduled harvest of harvester %s not started: %s", record.id, exc)
            continue
        _forget_claims(store, sessions)  # their slots are past: nobody can contest them now
        started.append(session.id)
    return started


def _forget_claims(store: Store, sessions: list[Record]) -> None:
    """Remove the schedule claims that started ``sessions``."""
    for session in sessions:
        if session.body.get("claim") is not None:
            with suppress(NotFound):
                store.delete(schedules.SCHEDULE_CLAIM, session.body["claim"])


@blueprint.route("/harvesters/<int:hid>/harvest", methods=["POST"])
def harvest(hid: int) -> Response:
    """Start a session at once (GeoNode's client PATCHes the harvester's status instead)."""
    _admin()
    session = _start_for_caller(_harvester(hid))
    return json_response({"harvesting_session": session_view(session)}, 201)


@blueprint.route("/harvesting-sessions", methods=["GET"])
def list_sessions() -> Response:
    _admin()
    rows = sorted(_sessions(_store()), key=lambda s: s.id, reverse=True)
    return listing("harvesting_sessions", [session_view(s) for s in rows])


@blueprint.route("/harvesting-sessions/<int:sid>", methods=["GET"])
def get_session(sid: int) -> Response:
    _admin()
    try:
        record = _refresh_session(_store(), _store().get(SESSION_KIND, sid))
    except NotFound:
        raise NotFound(f"harvesting session {sid} not found") from None
    return json_response({"harvesting_session": session_view(record)})


# -- the job ----------------------------------------------------------------------------------------
@task("harvest")
def run_harvest(job: JobContext, *, harvester_id: int, session_id: int) -> dict[str, Any]:
    """Harvest the chosen resources of a harvester, one after the other; a failure is noted, not fatal."""
    registry = job.registry
    store: Store = registry.store
    harvester = store.get(KIND, harvester_id)
    session = store.get(SESSION_KIND, session_id)
    store.update(SESSION_KIND, session.id, {**session.body, "status": ONGOING})
    chosen = [r for r in harvester.body.get("resources") or [] if r.get("should_be_harvested")]
    work = Path(registry.config["datasets"]["path"]) / "harvests" / str(session_id)
    results: list[dict[str, Any]] = []
    try:
        for number, resource in enumerate(chosen):
            job.progress(number, len(chosen), f"harvesting {resource['unique_identifier']}")
            try:
                record = _harvest_one(registry, harvester, resource, work)
                result = {
                    "unique_identifier": resource["unique_identifier"],
                    "succeeded": True,
                    "message": None,
                    "id": record.id,
                    "alternate": record.key,
                }
            except ProviderError as exc:
                result = {
                    "unique_identifier": resource["unique_identifier"],
                    "succeeded": False,
                    "message": exc.message,
                }
            results.append(result)
            outcome = "harvested" if result["succeeded"] else result["message"]
            job.log(f"{resource['unique_identifier']}: {outcome}")
            session = store.get(SESSION_KIND, session_id)
            store.update(SESSION_KIND, session.id, {**session.body, "results": results})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remember_results(store, harvester_id, results)
    ok = sum(1 for r in results if r["succeeded"])
    status = ALL_OK if ok == len(results) else ALL_FAILED if ok == 0 else SOME_FAILED
    session = store.get(SESSION_KIND, session_id)
    store.update(
        SESSION_KIND, session.id, {**session.body, "status": status, "results": results, "ended": time.time()}
    )
    job.progress(len(chosen), len(chosen))
    return {
        "session": session_id,
        "status": status,
        "resources": [{"id": r["id"], "alternate": r["alternate"]} for r in results if r["succeeded"]],
    }


def _remember_results(store: Store, harvester_id: int, results: list[dict[str, Any]]) -> None:
    """Write each resource's last outcome (and the dataset it became) into the harvester."""
    try:
        harvester = store.get(KIND, harvester_id)
    except NotFound:
        return  # deleted meanwhile
    outcome = {r["unique_identifier"]: r for r in results}
    body = dict(harvester.body)
    resources = []
    for resource in body.get("resources") or []:
        found = outcome.get(resource["unique_identifier"])
        if found is not None:
            resource = {
                **resource,
                "last_harvesting_succeeded": found["succeeded"],
                "last_harvesting_message": found["message"],
                "geonode_resource": found.get("id", resource.get("geonode_resource")),
                "alternate": found.get("alternate", resource.get("alternate")),
            }
        resources.append(resource)
    body["resources"] = resources
    store.update(KIND, harvester.id, body)


def _harvest_one(registry: Any, harvester: Record, resource: dict[str, Any], work: Path) -> Record:
    """Publish one remote resource; returns its layer record (whose id is the dataset's pk)."""
    body = harvester.body
    owner = body.get("default_owner")
    previous = resource.get("geonode_resource")
    existing = _layer(registry.store, previous)
    if body["harvester_type"] == harvest_sources.WFS:
        if existing is not None:
            return existing  # a remote layer reads the remote live: nothing to bring up to date
        remote = registry.describe_remote(body["remote_url"], resource["unique_identifier"])
        title = resource.get("title") or remote.title or remote.local_name
        return registry.create_layer(
            {
                "service": "wfs",
                "collection": _free_id(registry, remote.local_name),
                "name": title,
                "title": title,
                "description": resource.get("abstract") or remote.abstract or "",
                "url": remote.url,
                "layer": remote.type_name,
                "version": remote.version,
                "remote": remote.to_json(),
                "editable": False,
                "owner": owner,
                "harvester": harvester.id,
            }
        )
    if not resource.get("items_url"):
        raise InvalidData("this record names no OGC API - Features items to harvest")
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{re.sub(r'[^A-Za-z0-9_]+', '_', resource['unique_identifier'])[:60] or 'harvest'}.geojson"
    max_bytes = int(registry.config["datasets"]["max_unpacked_mb"] * (1 << 20))
    if harvest_sources.fetch_features(resource["items_url"], path, MAX_FEATURES, max_bytes) == 0:
        raise InvalidData("the remote collection holds no feature")
    source = registry.config["store"].get("tables")
    if source not in registry.sources or source in registry.source_errors:
        raise InvalidData("no table source to copy harvested data into (store.tables)")
    if existing is not None and existing.body.get("source") == source:
        table, mode = existing.body.get("table") or existing.body.get("layer"), loader.Mode.REPLACE
    else:
        tables = set(tables_of(registry.sources[source], source).names())
        table = _free_id(registry, loader.default_table(resource["unique_identifier"]), tables)
        mode = loader.Mode.CREATE
    result = loader.load(path, None, registry.sources[source], table, mode)
    return publish_loaded(registry, source, result, mode, title=resource.get("title"), owner=owner)


def _layer(store: Store, layer_id: Any) -> Record | None:
    if not isinstance(layer_id, int):
        return None
    try:
        return store.get("layer", layer_id)
    except NotFound:
        return None


def _free_id(registry: Any, name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A collection id (and table name) from ``name`` that no collection (nor ``taken``) has yet."""
    base = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:56] or "harvested"
    if not base[0].isalpha():
        base = f"h_{base}"[:56]
    for candidate in (base, *(f"{base}_{n}" for n in range(2, 1000))):
        if (
            candidate not in registry.collections
            and candidate not in taken
            and COLLECTION_ID.match(candidate)
        ):
            return candidate
    raise Conflict(f"no free collection id for {name[:100]!r}")
