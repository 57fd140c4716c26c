"""GeoNode's *execution requests*: the record a client polls while asynchronous work runs.

GeoNode answers an upload, a harvest or a management command with an ``execution_id``
and lets the client poll ``/api/v2/executionrequest/{id}`` until ``status`` is
``finished`` or ``failed``. Here an execution request is a store record (kind
``execution_request``, key = the execution id, a uuid) that points at what really
does the work: an import (:mod:`server.imports`, whose task runs as a job) or a job
(:mod:`server.jobs`). Its status is read from that, so any worker answers it the same,
and written back into the record once it is final, so a finished request costs one read.

Statuses are GeoNode's: ``ready`` (waiting for a worker), ``running``, ``finished``,
``failed``. ``output_params.resources`` lists the catalogue resources the work made,
``[{"id": pk, ...}]``: the pk of a dataset is its layer record id (the catalogue's
stable pk for stored layers).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from providers.errors import NotFound
from providers.store import Record, Store
from server import jobs
from server.imports import COMPLETE, Imports

KIND = "execution_request"
READY, RUNNING, FINISHED, FAILED = "ready", "running", "finished", "failed"
FINAL = frozenset({FINISHED, FAILED})

#: Job states -> execution request statuses.
JOB_STATUS = {
    jobs.PENDING: READY,
    jobs.RUNNING: RUNNING,
    jobs.COMPLETE: FINISHED,
    jobs.FAILED: FAILED,
    jobs.CANCELLED: FAILED,
}


def iso(epoch: float | None) -> str | None:
    """An epoch time as GeoNode writes dates (ISO 8601, UTC)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z") if epoch else None


class Executions:
    """Execution request records and the state of the work behind them."""

    def __init__(self, registry: Any, queue: jobs.Jobs) -> None:
        self.registry = registry
        self.jobs = queue
        self.store: Store = registry.store

    def create(
        self,
        func_name: str,
        name: str,
        owner: int | None,
        input_params: dict[str, Any],
        *,
        import_id: int | None = None,
        job_id: str | None = None,
        source: str = "upload",
    ) -> Record:
        """A new request following import ``import_id`` or job ``job_id``."""
        now = time.time()
        body = {
            "func_name": func_name,
            "name": name,
            "owner": owner,
            "source": source,
            "input_params": input_params,
            "output_params": {},
            "status": READY,
            "log": None,
            "import_id": import_id,
            "job_id": job_id,
            "created": now,
            "last_updated": now,
            "finished": None,
        }
        return self.store.insert(KIND, body, key=str(uuid.uuid4()))

    def attach(self, record: Record, *, import_id: int | None = None, job_id: str | None = None) -> Record:
        """Point a request at the import or job started for it (once it has an id)."""
        body = dict(record.body)
        if import_id is not None:
            body["import_id"] = import_id
        if job_id is not None:
            body["job_id"] = job_id
        return self.store.update(KIND, record.id, body, key=record.key)

    def fail(self, record: Record, message: str) -> Record:
        """End a request whose work could not even start."""
        now = time.time()
        body = {**record.body, "status": FAILED, "log": message, "finished": now, "last_updated": now}
        return self.store.update(KIND, record.id, body, key=record.key)

    def get(self, exec_id: str) -> Record:
        record = self.store.find(KIND, exec_id)
        if record is None:
            raise NotFound(f"execution request {exec_id[:100]!r} not found")
        return self.refresh(record)

    def list(self) -> list[Record]:
        """Every request, newest first, with the status of its work as it is now."""
        records = sorted(self.store.list(KIND), key=lambda r: r.created, reverse=True)
        return [self.refresh(r) for r in records]

    def running(self, owner: int | None, func_name: str) -> int:
        """How many requests of ``func_name`` of ``owner`` are not final (the parallelism limit)."""
        count = 0
        for record in self.store.list(KIND):
            body = record.body
            if body.get("owner") == owner and body.get("func_name") == func_name:
                if body.get("status") not in FINAL and self.refresh(record).body["status"] not in FINAL:
                    count += 1
        return count

    # -- status from the work ------------------------------------------------------------
    def refresh(self, record: Record) -> Record:
        """The record with the status of its import or job; written when it changed."""
        body = record.body
        if body.get("status") in FINAL:
            return record
        if body.get("import_id") is not None:
            status, log, output = self._import_status(int(body["import_id"]))
        elif body.get("job_id"):
            status, log, output = self._job_status(str(body["job_id"]))
        else:
            return record
        if status == body.get("status") and output == body.get("output_params"):
            return record
        body = {**body, "status": status, "log": log, "output_params": output, "last_updated": time.time()}
        if status in FINAL:
            body["finished"] = time.time()
        return self.store.update(KIND, record.id, body, key=record.key)

    def _import_status(self, import_id: int) -> tuple[str, str | None, dict[str, Any]]:
        try:
            imported = Imports(self.registry, self.jobs).get(import_id)
        except NotFound:
            return FAILED, f"import {import_id} was deleted", {}
        body = imported.body
        tasks = body.get("tasks") or []
        resources = [_resource(t["result"]) for t in tasks if t.get("result")]
        output = {"resources": resources} if resources else {}
        if body.get("phase") in ("init", "running"):
            job = self.store.find(jobs.KIND, body["job"]) if body.get("job") else None
            waiting = job is not None and job.body.get("state") == jobs.PENDING
            return READY if waiting else RUNNING, None, output
        messages = "; ".join(f"{t['layer']['name']}: {t['message']}" for t in tasks if t.get("message"))
        if any(t["state"] == COMPLETE for t in tasks):
            return FINISHED, messages or None, output
        return FAILED, messages or body.get("message") or "nothing was imported", output

    def _job_status(self, job_id: str) -> tuple[str, str | None, dict[str, Any]]:
        record = self.store.find(jobs.KIND, job_id)
        if record is None:
            return FAILED, f"job {job_id} is gone", {}
        body = record.body
        status = JOB_STATUS.get(body.get("state", ""), RUNNING)
        result = body.get("result") or {}
        output = {"resources": result["resources"]} if result.get("resources") else {}
        if result:
            output["result"] = result
        return status, body.get("message") if status == FAILED else None, output


def _resource(result: dict[str, Any]) -> dict[str, Any]:
    """A published import result as GeoNode's ``output_params.resources`` entry."""
    pk = result["layer_id"]
    return {
        "id": pk,
        "alternate": result["collection"],
        "detail_url": f"/api/v2/datasets/{pk}",
        "features": result.get("features"),
    }


def view(record: Record, base: str) -> dict[str, Any]:
    """A request as GeoNode's ExecutionRequest serializer shows it."""
    body = record.body
    exec_id = str(record.key)
    return {
        "exec_id": exec_id,
        "user": body.get("owner"),
        "status": body["status"],
        "func_name": body["func_name"],
        "name": body["name"],
        "source": body.get("source"),
        "created": iso(body.get("created")),
        "finished": iso(body.get("finished")),
        "last_updated": iso(body.get("last_updated")),
        "input_params": body.get("input_params") or {},
        "output_params": body.get("output_params") or {},
        "log": body.get("log"),
        "step": body["status"],
        "link": f"{base}/api/v2/executionrequest/{exec_id}",
        "status_url": f"{base}/api/v2/resource-service/execution-status/{exec_id}",
    }
