"""Import sessions: the importer's model, from data to tasks to published layers.

An *import* is a store record (kind ``import``, key = its number as text) holding the
whole tree the importer API shows: its data, target store, default transforms and its
*tasks*. Each task is one layer of the data to write into a target source (PostGIS
or GeoPackage) with an update mode (CREATE, REPLACE, APPEND), a target layer (name,
title, srs) and a chain of transforms. Any process answers any request from the
record alone, so imports work the same behind several hosts.

Life of a task: its data is *analysed* when it is added and again whenever its
layer or transforms change (:func:`providers.loader.open_plan` with the transforms,
without reading the features): READY, or a state saying what is missing - NO_CRS (the
file does not say its CRS: set ``layer.srs``), NO_FORMAT (nothing spatial),
BAD_FORMAT (damaged), NO_BOUNDS. *Executing* the import loads every READY task
(:func:`providers.loader.load`, which writes all of a layer or nothing) and publishes
it (:func:`server.publish.publish_loaded`): items, tiles and the registry at once.

Execution always runs as a job (:mod:`server.jobs`), inline for a synchronous request
or queued for ``async=true``, so its progress and heartbeat live in the job record. An
import whose job died (a killed worker) is found on the next read: its running task
becomes ERROR with the job's message and the import COMPLETE_ERROR, never RUNNING for
ever; the load itself rolled back, so no partial layer exists.

Files sent to an import live under ``<datasets.path>/imports/<id>/`` and go with it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pyproj import CRS, Transformer

from providers import downloads, files, loader, transforms
from providers.errors import Conflict, Forbidden, InvalidData, NotFound, ProviderError
from providers.export import export
from providers.geopackage import GeoPackage
from providers.postgis import PostGISDatabase
from providers.store import Record, Store
from providers.tables import check_name, tables_of
from server import jobs, rule_runs
from server.jobs import JobContext, task
from server.publish import publish_loaded

LOGGER = logging.getLogger(__name__)

KIND = "import"
#: The record keeping the next import number (key ``next``).
SEQUENCE_KIND = "import_sequence"

# Task states.
PENDING, READY, RUNNING, COMPLETE, ERROR = "PENDING", "READY", "RUNNING", "COMPLETE", "ERROR"
NO_CRS, NO_BOUNDS, NO_FORMAT, BAD_FORMAT = "NO_CRS", "NO_BOUNDS", "NO_FORMAT", "BAD_FORMAT"
# Import states besides those.
INIT, INIT_ERROR, COMPLETE_ERROR = "INIT", "INIT_ERROR", "COMPLETE_ERROR"

UPDATE_MODES = ("CREATE", "REPLACE", "APPEND")
DATA_TYPES = ("file", "directory", "remote", "database")
#: GDAL driver -> the format name importer clients know.
FORMAT_NAMES = {
    "ESRI Shapefile": "Shapefile",
    "GPKG": "GeoPackage",
    "GeoJSON": "GeoJSON",
    "GeoJSONSeq": "GeoJSON",
    "FlatGeobuf": "FlatGeobuf",
    "CSV": "CSV",
    "KML": "KML",
    "LIBKML": "KML",
    "GPX": "GPX",
    "GML": "GML",
    "Parquet": "GeoParquet",
}
STORE_TYPES = {"postgis": "PostGIS", "geopackage": "GeoPackage"}
#: Features a table of a database import may hold (it is copied through a temporary file).
DATABASE_MAX_FEATURES = 50_000_000


class Imports:
    """The importer's operations on import records; HTTP lives in :mod:`server.importer`."""

    def __init__(self, registry: Any, queue: jobs.Jobs) -> None:
        self.registry = registry
        self.jobs = queue
        self.store: Store = registry.store
        config = registry.config
        self.settings: dict[str, Any] = config["imports"]
        datasets = config["datasets"]
        self.root = Path(self.settings.get("path") or Path(datasets["path"]) / "imports")
        self.max_upload = int(datasets["max_upload_mb"] * (1 << 20))
        self.max_unpacked = int(datasets["max_unpacked_mb"] * (1 << 20))

    # -- records ---------------------------------------------------------------------------
    def directory(self, import_id: int) -> Path:
        return self.root / str(import_id)

    def list(self) -> list[Record]:
        records = sorted(self.store.list(KIND), key=lambda r: int(r.key or 0))
        return [self.reconcile(r) for r in records]

    def get(self, import_id: int) -> Record:
        record = self.store.find(KIND, str(import_id))
        if record is None:
            raise NotFound(f"import {import_id} not found")
        return self.reconcile(record)

    def save(self, record: Record, body: dict[str, Any]) -> Record:
        body["updated"] = time.time()
        return self.store.update(KIND, record.id, body, key=record.key)

    def create(self, spec: dict[str, Any], owner: int | None, proposed: int | None = None) -> Record:
        """A new import from the client's ``import`` object; its data is scanned later (:meth:`init`)."""
        if not isinstance(spec, dict):
            raise InvalidData('the body must be an object: {"import": {...}}')
        data = spec.get("data")
        if data is not None and not isinstance(data, dict):
            raise InvalidData("import.data must be an object")
        kind = str((data or {}).get("type") or "file").lower()
        if kind not in DATA_TYPES:
            raise InvalidData(f"unknown data type {kind[:40]!r}: use {', '.join(DATA_TYPES)}")
        source = self._target_source(spec.get("targetStore"))
        defaults = [transforms.parse(t).to_json() for t in _list(spec.get("transforms"), "import.transforms")]
        body = {
            "owner": owner,
            "phase": None,
            "message": None,
            "job": None,
            "targetWorkspace": spec.get("targetWorkspace"),
            "source": source,
            "data": dict(data) if data else None,
            "transforms": defaults,
            "tasks": [],
            "next_task": 0,
            "created": time.time(),
            "updated": time.time(),
        }
        return self._insert(body, proposed)

    def _insert(self, body: dict[str, Any], proposed: int | None) -> Record:
        """Insert under the next free number (or ``proposed`` when ahead of it)."""
        sequence = self.store.find(SEQUENCE_KIND, "next")
        following = int(sequence.body["next"]) if sequence else 0
        number = proposed if proposed is not None and proposed > following else following
        for _ in range(1000):
            try:
                record = self.store.insert(KIND, body, key=str(number))
                break
            except Conflict:
                number += 1
        else:
            raise Conflict("no free import number")
        nxt = {"next": number + 1}
        try:
            if sequence is None:
                self.store.insert(SEQUENCE_KIND, nxt, key="next")
            elif int(sequence.body["next"]) <= number:
                self.store.update(SEQUENCE_KIND, sequence.id, nxt, key="next")
        except Conflict:
            pass  # another process wrote it first: its number is as good, duplicates still conflict
        return record

    def delete(self, import_id: int) -> None:
        record = self.get(import_id)
        if record.body.get("phase") in ("init", "running"):
            raise Conflict(f"import {import_id} is running: delete it once it has finished")
        self.store.delete(KIND, record.id)
        shutil.rmtree(self.directory(import_id), ignore_errors=True)

    def _target_source(self, target: Any) -> str:
        """The configured source a ``targetStore`` names (default: where tables are created)."""
        default = self.registry.config["store"].get("tables")
        name = None
        if target is not None:
            if not isinstance(target, dict):
                raise InvalidData('targetStore must be an object: {"dataStore": {"name": ...}}')
            store = target.get("dataStore") or target.get("store") or target
            name = store.get("name") if isinstance(store, dict) else None
        name = name or default
        if not isinstance(name, str) or name not in self.registry.sources:
            known = ", ".join(s for s in self.registry.sources if self._kind(s) in STORE_TYPES)
            raise InvalidData(f"no target store named {str(name)[:100]!r}; the stores are: {known}")
        if self._kind(name) not in STORE_TYPES:
            raise InvalidData(f"store {name!r} cannot be written: imports go to PostGIS or GeoPackage")
        if name in self.registry.source_errors:
            raise InvalidData(f"store {name!r} is unavailable: {self.registry.source_errors[name]}")
        return name

    def _kind(self, source: str) -> str:
        return self.registry.config["sources"][source]["type"]

    def store_json(self, source: str) -> dict[str, Any]:
        return {"name": source, "type": STORE_TYPES.get(self._kind(source), self._kind(source))}

    # -- state -------------------------------------------------------------------------------
    @staticmethod
    def state(body: dict[str, Any]) -> str:
        """The import's state: its phase while it runs, else what its tasks say."""
        phase = body.get("phase")
        if phase == "init":
            return INIT
        if phase == "init_error":
            return INIT_ERROR
        if phase == "running":
            return RUNNING
        states = [t["state"] for t in body["tasks"]]
        if not states:
            return PENDING
        if all(s == COMPLETE for s in states):
            return COMPLETE
        if ERROR in states and all(s in (COMPLETE, ERROR) for s in states):
            return COMPLETE_ERROR
        if all(s in (READY, COMPLETE, ERROR) for s in states):
            return READY
        return PENDING

    def reconcile(self, record: Record) -> Record:
        """The record, with the outcome of a job that died while running it written in."""
        body = record.body
        if body.get("phase") not in ("init", "running") or not body.get("job"):
            return record
        job = self.store.find(jobs.KIND, body["job"])
        if job is not None and job.body.get("state") in (jobs.PENDING, jobs.RUNNING):
            stale = time.time() - (job.body.get("heartbeat") or 0) > self.jobs.settings["lost_after_s"]
            if not stale or job.body.get("runner") == "queue" and job.body.get("state") == jobs.PENDING:
                return record  # alive, or waiting for a worker
            self.jobs.reap()
            job = self.store.find(jobs.KIND, body["job"])
        if job is not None and job.body.get("state") in (jobs.PENDING, jobs.RUNNING):
            return record
        # The job ended without finishing the import (its worker died): say so.
        message = (job.body.get("message") if job else None) or "the import's job was lost"
        body = dict(body)
        for t in body["tasks"]:
            if t["state"] == RUNNING:
                t.update(state=ERROR, message=message)
        body["phase"] = "init_error" if body["phase"] == "init" else None
        body["message"] = message
        return self.save(record, body)

    # -- tasks from data ----------------------------------------------------------------------
    def server_path(self, path: Path) -> Path:
        """``path`` resolved, if it lies under one of the configured ``imports.roots``.

        Only admins may name server-side files (the HTTP layer checks that); the roots
        keep even them to the directories the operator meant to share.
        """
        resolved = path.resolve()
        for root in self.settings["roots"]:
            base = Path(root).resolve()
            if resolved == base or base in resolved.parents:
                if not resolved.exists():
                    raise NotFound(f"no file or directory {str(path)[:200]!r}")
                return resolved
        raise Forbidden(f"{str(path)[:200]!r} is not under a directory imports may read (imports.roots)")

    def init(self, record: Record) -> Record:
        """Create the tasks of the import's own data (a file, directory, remote URL or database)."""
        body = dict(record.body)
        data = body.get("data") or {}
        kind = str(data.get("type") or "file").lower()
        new: list[dict[str, Any]] = []
        if kind == "remote":
            location = data.get("location") or data.get("url")
            if not isinstance(location, str):
                raise InvalidData("remote data needs a location (an http, https or ftp URL)")
            target = self._fresh_directory(record)
            downloads.download(
                location,
                target,
                self.max_unpacked,
                float(self.settings["remote_timeout_s"]),
                data.get("username"),
                data.get("password"),
            )
            new = self._tasks_of_directory(body, target, public=None)
        elif kind in ("file", "directory"):
            location = data.get("file") if kind == "file" else data.get("location") or data.get("file")
            if isinstance(location, str) and Path(location).is_absolute():
                path = self.server_path(Path(location))
                if path.is_dir():
                    new = self._tasks_of_directory(body, path, public=str(path))
                else:
                    new = self._tasks_of_files(body, path.parent, [path.name], public=str(path.parent))
            # a bare name (or none): the files come later, uploaded as tasks
        elif kind == "database":
            new = self._tasks_of_database(body, data)
        else:
            raise InvalidData(f"unknown data type {kind[:40]!r}: use file, directory, remote or database")
        body["tasks"] = body["tasks"] + new
        if body.get("data"):
            body["data"] = {**body["data"], "type": kind}
        return self.save(record, body)

    def add_uploads(self, record: Record, parts: Iterable[tuple[str, IO[bytes]]]) -> tuple[Record, list[int]]:
        """Tasks for uploaded files (a zip is a directory; a Shapefile's parts are one task)."""
        return self._add_fetched(record, lambda target: files.save_parts(parts, target, self.max_unpacked))

    def add_path(self, record: Record, path: Path) -> tuple[Record, list[int]]:
        """Tasks for a server-side file or directory (already checked by the caller)."""
        self._check_editable(record)
        body = dict(record.body)
        if path.is_dir():
            new = self._tasks_of_directory(body, path, public=str(path))
        else:
            new = self._tasks_of_files(body, path.parent, [path.name], public=str(path.parent))
        body["tasks"] = body["tasks"] + new
        return self.save(record, body), [t["id"] for t in new]

    def add_remote(self, record: Record, url: str) -> tuple[Record, list[int]]:
        """Tasks for a file the server fetches from ``url``."""
        timeout = float(self.settings["remote_timeout_s"])
        return self._add_fetched(
            record, lambda target: downloads.download(url, target, self.max_unpacked, timeout)
        )

    def _add_fetched(self, record: Record, fetch: Callable[[Path], Any]) -> tuple[Record, list[int]]:
        """Tasks for the files ``fetch`` puts into a fresh directory of the import (removed on failure)."""
        self._check_editable(record)
        target = self._fresh_directory(record)
        try:
            fetch(target)
            body = dict(record.body)
            new = self._tasks_of_directory(body, target, public=None)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        body["tasks"] = body["tasks"] + new
        return self.save(record, body), [t["id"] for t in new]

    def _fresh_directory(self, record: Record) -> Path:
        base = self.directory(int(record.key or 0))
        base.mkdir(parents=True, exist_ok=True)
        n = 0
        while (base / f"data{n}").exists():
            n += 1
        return base / f"data{n}"

    def _tasks_of_directory(
        self, body: dict[str, Any], directory: Path, public: str | None
    ) -> list[dict[str, Any]]:
        try:
            found = files.detect(directory)
        except InvalidData as exc:  # nothing spatial (NO_FORMAT), or a damaged file (BAD_FORMAT)
            names = sorted(p.name for p in directory.rglob("*") if p.is_file())
            data = {
                "type": "file",
                "format": None,
                "file": names[0] if names else None,
                "dir": str(directory),
            }
            state = NO_FORMAT if isinstance(exc, files.NoSpatialData) else BAD_FORMAT
            return [self._new_task(body, data, state=state, message=exc.message)]
        return [
            self._file_task(body, directory, spatial, layer, public)
            for spatial in found
            for layer in spatial.layers
        ]

    def _tasks_of_files(
        self, body: dict[str, Any], directory: Path, names: list[str], public: str | None
    ) -> list[dict[str, Any]]:
        """Tasks for named files of a directory (a Shapefile and its sidecars are one)."""
        out = []
        for name in names:
            path = directory / name
            if not path.is_file():
                raise NotFound(f"no file {name[:200]!r}")
            try:
                spatial = loader.describe_file(path)
            except InvalidData as exc:
                out.append(
                    self._new_task(
                        body,
                        {"type": "file", "format": None, "file": name, "dir": str(directory)},
                        state=BAD_FORMAT,
                        message=exc.message,
                    )
                )
                continue
            out += [self._file_task(body, directory, spatial, layer, public) for layer in spatial.layers]
        return out

    def _file_task(
        self,
        body: dict[str, Any],
        directory: Path,
        spatial: files.SpatialFile,
        layer: files.Layer,
        public: str | None,
    ) -> dict[str, Any]:
        file = directory / layer.file
        stem = file.stem
        data: dict[str, Any] = {
            "type": "file",
            "format": FORMAT_NAMES.get(spatial.driver, spatial.driver),
            "file": layer.file,
            "layer": layer.source_layer,
            "dir": str(directory),
        }
        if public is not None:
            data["location"] = public
        if spatial.driver == "ESRI Shapefile":
            siblings = sorted(p.name for p in file.parent.iterdir() if p.stem == stem and p != file)
            prj = next((n for n in siblings if n.lower().endswith(".prj")), None)
            data["prj"] = prj
            data["other"] = [n for n in siblings if n != prj]
        task = self._new_task(body, data, name=layer.name)
        return self.analyse(task)

    def _tasks_of_database(self, body: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
        """A task per table of a configured source (``source``; ``tables`` or ``table`` to pick)."""
        source = data.get("source") or data.get("database") or data.get("name")
        if not isinstance(source, str) or source not in self.registry.sources:
            raise InvalidData(
                f"database data needs the name of a configured source (source), not {str(source)[:100]!r}"
            )
        if self._kind(source) not in STORE_TYPES or source in self.registry.source_errors:
            raise InvalidData(f"source {source!r} is not a database this server can read tables of")
        tables = tables_of(self.registry.sources[source], source)
        wanted = data.get("tables") or ([data["table"]] if data.get("table") else None)
        names = tables.names(spatial=True)
        if wanted is not None:
            wanted = _list(wanted, "data.tables")
            missing = [str(w) for w in wanted if w not in names]
            if missing:
                raise NotFound(f"no spatial table {', '.join(missing[:5])} in source {source!r}")
            names = [str(w) for w in wanted]
        out = []
        for name in names:
            task = self._new_task(
                body,
                {"type": "table", "name": name, "format": STORE_TYPES[self._kind(source)], "source": source},
                name=name,
            )
            out.append(self.analyse(task))
        return out

    def _new_task(
        self,
        body: dict[str, Any],
        data: dict[str, Any],
        name: str | None = None,
        state: str = PENDING,
        message: str | None = None,
    ) -> dict[str, Any]:
        task_id = body["next_task"]
        body["next_task"] = task_id + 1
        table = loader.default_table(name) if name else f"import_{task_id}"
        return {
            "id": task_id,
            "state": state,
            "message": message,
            "updateMode": "CREATE",
            "data": data,
            "source": body["source"],
            "layer": {
                "name": table,
                "title": name or table,
                "originalName": name,
                "nativeName": name,
                "srs": None,
                "srs_given": False,
            },
            "transforms": list(body.get("transforms") or []),
            "result": None,
        }

    # -- analysis -------------------------------------------------------------------------------
    def analyse(self, task: dict[str, Any]) -> dict[str, Any]:
        """The task with its layer described and its state: READY or what is missing."""
        if task["data"].get("format") is None and task["state"] in (NO_FORMAT, BAD_FORMAT):
            return task
        task = {**task, "layer": dict(task["layer"]), "message": None}
        layer = task["layer"]
        chain = [transforms.parse(t) for t in task["transforms"]]
        srs = layer["srs"] if layer.get("srs_given") else None
        made = any(t.type == "AttributesToPointGeometryTransform" for t in chain)
        try:
            with self._source_file(task) as (path, source_layer):
                try:
                    with loader.open_plan(path, source_layer, srs, transforms=chain) as plan:
                        layer["srs"] = f"EPSG:{plan.srid}"
                        layer["attributes"] = [
                            {"name": "geom", "binding": transforms.geometry_binding(plan.geometry_type)},
                            *(
                                {"name": c.name, "binding": transforms.JAVA_BINDINGS[c.kind]}
                                for c in plan.columns
                            ),
                        ]
                        layer["bbox"] = _bbox(path, source_layer, plan.srid, chain)
                        task["total"] = plan.total
                except loader.NoCRS as exc:
                    task.update(state=NO_CRS, message=exc.message)
                    layer.update(srs=None, attributes=layer.get("attributes") or [])
                    layer["bbox"] = _bbox(path, source_layer, None, chain)
                    return task
        except (InvalidData, NotFound) as exc:
            task.update(state=BAD_FORMAT, message=exc.message)
            layer.setdefault("attributes", [])
            layer.setdefault("bbox", None)
            return task
        if task["state"] in (RUNNING, COMPLETE):
            return task
        if layer["bbox"] is None and task.get("total") and not made:
            task.update(state=NO_BOUNDS, message="the extent of the data could not be computed")
        else:
            task["state"] = READY
        return task

    def _source_file(self, task: dict[str, Any]) -> Any:
        """(path, layer) GDAL reads a task's data from: the file, or a copy of a database table."""
        data = task["data"]
        if data["type"] == "table":
            return _table_copy(self.registry, data["source"], data["name"])
        return _given_file(Path(data["dir"]) / data["file"], data.get("layer"))

    # -- changes ---------------------------------------------------------------------------------
    def _check_editable(self, record: Record) -> None:
        if record.body.get("phase") in ("init", "running"):
            raise Conflict(f"import {record.key} is running: change it once it has finished")

    def find_task(self, record: Record, task_id: int) -> dict[str, Any]:
        for t in record.body["tasks"]:
            if t["id"] == task_id:
                return t
        raise NotFound(f"task {task_id} of import {record.key} not found")

    def update_task(
        self, record: Record, task_id: int, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> tuple[Record, dict[str, Any]]:
        """Apply ``change`` to a task (not while it runs or once complete), analyse it again, store it."""
        self._check_editable(record)
        current = self.find_task(record, task_id)
        if current["state"] == COMPLETE:
            raise Conflict(f"task {task_id} is complete: create a new task to import again")
        updated = self.analyse(change(_copy_task(current)))
        body = dict(record.body)
        body["tasks"] = [updated if t["id"] == task_id else t for t in body["tasks"]]
        return self.save(record, body), updated

    def delete_task(self, record: Record, task_id: int) -> Record:
        self._check_editable(record)
        self.find_task(record, task_id)
        body = dict(record.body)
        body["tasks"] = [t for t in body["tasks"] if t["id"] != task_id]
        return self.save(record, body)

    def patch_task(self, task: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """A task with a client's partial task document applied (updateMode, layer, target, transforms)."""
        unknown = set(changes) - {
            "updateMode",
            "layer",
            "target",
            "transformChain",
            "transforms",
            "id",
            "href",
            "state",
            "data",
            "progress",
            "source",
        }
        if unknown:
            raise InvalidData(f"a task cannot change {', '.join(sorted(unknown))}")
        if "updateMode" in changes:
            mode = str(changes["updateMode"]).upper()
            if mode not in UPDATE_MODES:
                raise InvalidData(f"updateMode must be one of {', '.join(UPDATE_MODES)}, not {mode[:20]!r}")
            task["updateMode"] = mode
        if "layer" in changes:
            task = self.patch_layer(task, changes["layer"])
        if "target" in changes:
            task["source"] = self._target_source(changes["target"])
        chain = changes.get("transformChain")
        if chain is not None:
            if not isinstance(chain, dict):
                raise InvalidData('transformChain must be an object: {"type": "vector", "transforms": [...]}')
            task["transforms"] = [
                transforms.parse(t).to_json()
                for t in _list(chain.get("transforms"), "transformChain.transforms")
            ]
        if "transforms" in changes:
            task["transforms"] = [
                transforms.parse(t).to_json() for t in _list(changes["transforms"], "transforms")
            ]
        source = changes.get("data", {}).get("charset") if isinstance(changes.get("data"), dict) else None
        if source:
            task["data"] = {**task["data"], "charset": str(source)[:40]}
        return task

    def patch_layer(self, task: dict[str, Any], changes: Any) -> dict[str, Any]:
        """A task with a partial layer applied: name, title, srs, attributes (type changes)."""
        if not isinstance(changes, dict):
            raise InvalidData("layer must be an object")
        layer = task["layer"]
        if "name" in changes:
            layer["name"] = check_name(changes["name"])
        if "title" in changes:
            if not isinstance(changes["title"], str):
                raise InvalidData("layer.title must be a string")
            layer["title"] = changes["title"][:500]
        if "srs" in changes:
            srs = changes["srs"]
            if srs is None:
                layer.update(srs=None, srs_given=False)
            else:
                if not isinstance(srs, str | int):
                    raise InvalidData("layer.srs must be a CRS name such as EPSG:4326")
                text = f"EPSG:{srs}" if str(srs).isdigit() else str(srs)
                try:
                    code = CRS.from_user_input(text).to_epsg(min_confidence=70)
                except Exception as exc:  # noqa: BLE001 - pyproj raises CRSError and others
                    raise InvalidData(f"layer.srs: unknown CRS {text[:100]!r}") from exc
                if code is None:
                    raise InvalidData(f"layer.srs: {text[:100]!r} matches no EPSG code")
                layer.update(srs=f"EPSG:{code}", srs_given=True)
        if "attributes" in changes:
            task["transforms"] = task["transforms"] + self._remaps(layer, changes["attributes"])
        return task

    @staticmethod
    def _remaps(layer: dict[str, Any], attributes: Any) -> list[dict[str, Any]]:
        """Attribute type changes, as the AttributeRemapTransforms that make them."""
        current = {a["name"]: a["binding"] for a in layer.get("attributes") or []}
        out = []
        for attribute in _list(attributes, "layer.attributes"):
            if not isinstance(attribute, dict) or not isinstance(attribute.get("name"), str):
                raise InvalidData("each attribute needs a name and a binding")
            name, binding = attribute["name"], attribute.get("binding")
            if name not in current:
                raise InvalidData(f"the layer has no attribute {name[:100]!r}")
            if binding and binding != current[name] and not current[name].startswith("org.locationtech"):
                out.append(
                    transforms.parse(
                        {"type": "AttributeRemapTransform", "field": name, "target": binding}
                    ).to_json()
                )
        return out

    # -- execution -------------------------------------------------------------------------------
    def start(self, record: Record, phase: str) -> Record:
        """Mark the import as running ``phase`` (init or running); Conflict when it already runs."""
        self._check_editable(record)
        if phase == "running" and not any(t["state"] == READY for t in record.body["tasks"]):
            states = ", ".join(f"{t['id']}: {t['state']}" for t in record.body["tasks"]) or "no task"
            raise InvalidData(f"import {record.key} has no task ready to run ({states})")
        body = dict(record.body)
        body.update(phase=phase, message=None, job=None)
        return self.save(record, body)

    def run(self, record: Record, init: bool, execute: bool, wait: bool) -> str:
        """Run the import's init and/or execution as a job: inline when ``wait``, else queued.

        The job's id is written into the import before the job can start, so a reader
        can always find the job whose death would leave the import unfinished.
        """
        key = str(record.key)

        def remember(job_id: str) -> None:
            current = self.store.find(KIND, key) or record
            self.save(current, {**current.body, "job": job_id})

        args = {"import_id": int(key), "init": init, "execute": execute}
        start = self.jobs.run_now if wait else self.jobs.defer
        return start("import", args, record.body.get("owner"), before=remember)

    def execute(self, import_id: int, job: JobContext) -> dict[str, Any]:
        """Load and publish every READY task; a failing task is ERROR, the others still run."""
        record = self.store.find(KIND, str(import_id))
        if record is None:
            raise NotFound(f"import {import_id} not found")
        done = []
        for task_id in [t["id"] for t in record.body["tasks"] if t["state"] == READY]:
            record = self._set_task(record, task_id, state=RUNNING, message=None)
            current = self.find_task(record, task_id)
            try:
                result = self._load(record, current, job)
                state, message = COMPLETE, None
            except ProviderError as exc:
                result, state, message = None, ERROR, exc.message
            except Exception as exc:  # noqa: BLE001 - recorded in the task; the import goes on
                LOGGER.exception("import %s task %s failed", import_id, task_id)
                result, state, message = None, ERROR, f"internal error: {type(exc).__name__}"
            record = self.store.find(KIND, str(import_id)) or record
            record = self._set_task(record, task_id, state=state, message=message, result=result)
            done.append({"task": task_id, "state": state})
        body = dict(record.body)
        body.update(phase=None)
        self.save(record, body)
        return {"import": import_id, "tasks": done}

    def _set_task(self, record: Record, task_id: int, **changes: Any) -> Record:
        body = dict(record.body)
        body["tasks"] = [{**t, **changes} if t["id"] == task_id else t for t in body["tasks"]]
        return self.save(record, body)

    def _load(self, record: Record, task: dict[str, Any], job: JobContext) -> dict[str, Any]:
        layer = task["layer"]
        source = task["source"]
        target = self.registry.sources[source]
        mode = loader.Mode(task["updateMode"].lower())
        chain = [transforms.parse(t) for t in task["transforms"]]
        srs = layer["srs"] if layer.get("srs_given") else None

        def progress(done: int, total: int) -> None:
            job.progress(done, total, f"task {task['id']}")

        with self._source_file(task) as (path, source_layer):
            result = loader.load(
                path, source_layer, target, layer["name"], mode, progress=progress, srs=srs, transforms=chain
            )
        published = publish_loaded(
            self.registry, source, result, mode, title=layer.get("title"), owner=record.body.get("owner")
        )
        rule_runs.fire(self.registry, self.jobs, published.key, None)  # a load changes the whole layer
        return {
            "collection": published.key,
            "layer_id": published.id,
            "table": result.table,
            "features": result.features,
            "srid": result.srid,
        }


# -- the job ---------------------------------------------------------------------------------------
@task("import")
def run_import(
    job: JobContext, *, import_id: int, init: bool = False, execute: bool = True
) -> dict[str, Any]:
    """An import's background part: fetch and scan its data (``init``), then run its tasks."""
    imports = Imports(job.registry, jobs.Jobs(job.registry.config, job.registry))
    record = imports.store.find(KIND, str(import_id))
    if record is None:
        raise NotFound(f"import {import_id} not found")
    if init:
        try:
            record = imports.init(record)
        except ProviderError as exc:
            body = dict(record.body)
            body.update(phase="init_error", message=exc.message)
            imports.save(record, body)
            raise
        body = dict(record.body)
        ready = any(t["state"] == READY for t in body["tasks"])
        body.update(phase="running" if execute and ready else None)
        record = imports.save(record, body)
        if not (execute and ready):
            return {"import": import_id, "tasks": []}
    return imports.execute(import_id, job)


# -- sources of task data --------------------------------------------------------------------------
class _given_file:
    """A file task's data: the file itself (nothing to clean up)."""

    def __init__(self, path: Path, layer: str | None) -> None:
        self.value = (path, layer)

    def __enter__(self) -> tuple[Path, str | None]:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


class _table_copy:
    """A database task's data: the table exported to a temporary GeoPackage GDAL reads.

    Read through the source's own provider, so a PostGIS table (whose driver GDAL lacks
    here) and a GeoPackage table (which GDAL must not open while this process holds it)
    both arrive as one file in the table's CRS.
    """

    def __init__(self, registry: Any, source: str, table: str) -> None:
        self.registry, self.source, self.table = registry, source, table
        self.directory: Path | None = None

    def __enter__(self) -> tuple[Path, str | None]:
        import tempfile

        from providers.base import Query

        target = self.registry.sources[self.source]
        if not isinstance(target, PostGISDatabase | GeoPackage):
            raise InvalidData(f"source {self.source!r} holds no tables to import")
        provider = tables_of(target, self.source).provider(self.table, editable=False)
        self.directory = Path(tempfile.mkdtemp(prefix="geoharbor-table-"))
        try:
            query = Query(crs=provider.schema.storage_crs)
            path = export(provider, query, "gpkg", self.directory, self.table, DATABASE_MAX_FEATURES)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        return path, None

    def __exit__(self, *exc: object) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _bbox(path: Path, layer: str | None, srid: int | None, chain: list[Any]) -> dict[str, Any] | None:
    """The layer's extent in its target CRS (the source's, reprojected when the chain does).

    ``srid`` None: the CRS is not known yet (NO_CRS); the extent is given in the data's
    own coordinates.
    """
    if any(t.type == "AttributesToPointGeometryTransform" for t in chain):
        return None  # the geometries exist only once the transform made them
    found, source = files.bounds(path, layer)
    if found is None:
        return None
    minx, miny, maxx, maxy = found
    target = f"EPSG:{srid}" if srid is not None else None
    if source and target and source != target:
        try:
            transformer = Transformer.from_crs(source, target, always_xy=True)
            minx, miny, maxx, maxy = transformer.transform_bounds(minx, miny, maxx, maxy)
        except Exception:  # noqa: BLE001 - an extent that cannot be reprojected is unknown
            return None
    return {"minx": minx, "miny": miny, "maxx": maxx, "maxy": maxy, "crs": target}


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidData(f"{what} must be a list")
    return value


def _copy_task(task: dict[str, Any]) -> dict[str, Any]:
    return {
        **task,
        "layer": dict(task["layer"]),
        "data": dict(task["data"]),
        "transforms": list(task["transforms"]),
    }
