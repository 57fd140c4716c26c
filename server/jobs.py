"""Background work: jobs deferred by any process, run by ``geoharbor worker`` or in-process.

A job is two things. Its *record* (store kind ``job``, key = a uuid, the job's public
id) says what it is and what it is doing: ``kind`` (the task), ``args``, ``state``
(PENDING, RUNNING, COMPLETE, FAILED), ``progress`` (done / total), ``message``,
``result``, ``owner``, ``worker`` and epoch times ``created_at``, ``started_at``,
``finished_at``, ``heartbeat``. Any process answers "what is job X doing" from the
store alone. Its *execution* depends on the store:

* PostgreSQL store: :meth:`Jobs.defer` enqueues the job id on procrastinate, on the
  store's database; ``geoharbor worker`` processes (on any host; ``geoharbor serve``
  starts ``jobs.workers`` of them next to gunicorn) run it. Web workers never run jobs.
* SQLite store (embedded mode, single host): the same task function runs in a thread
  of the process that deferred it. A server restart loses the jobs it was running;
  the next start marks them FAILED (below).

A task function takes a :class:`JobContext` and the job's arguments and returns a
JSON result. The context reports progress and keeps a heartbeat (a thread touches
the record every ``jobs.heartbeat_s`` seconds while the task runs), so a worker that
died (SIGKILL, lost host) is told from a slow one: a job RUNNING with a heartbeat
older than ``jobs.lost_after_s`` is marked FAILED ("worker lost") by :meth:`Jobs.reap`,
which runs at each worker's start, as a periodic procrastinate task, and at the start
of an embedded server. Lost jobs are not retried: a load that died has rolled back
(its staging table is dropped by the periodic ``cleanup_staging``), and the client
decides whether to run it again. procrastinate's own row of such a job is failed by
the same periodic task (its worker heartbeat went stale), so it is not retried either.
Hosts' clocks must agree (NTP) to well under ``lost_after_s``.

Whoever follows a job live (``GET /jobs/<id>/stream``, server/streams.py) reads the
events each change publishes on channel ``job:<id>`` (:mod:`providers.events`): its
state changes, its progress (as often as it is written) and the lines a task writes
with :meth:`JobContext.log`. Publishing is best effort: an event that cannot be
stored is logged and the job goes on; its record stays the reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
from procrastinate.jobs import Status

from providers import events
from providers.errors import Conflict, InvalidQuery, NotFound, ProviderError, Unavailable
from providers.store import Record, Store

LOGGER = logging.getLogger(__name__)

KIND = "job"
PENDING, RUNNING, COMPLETE, FAILED = "PENDING", "RUNNING", "COMPLETE", "FAILED"
#: A job its owner cancelled: it never started, or stopped at its next progress report.
CANCELLED = "CANCELLED"
#: The kind of the records asking a job to stop (key: the job id). A record of its own, so
#: that the runner, which rewrites the job record whole, cannot overwrite the request.
CANCEL_KIND = "job_cancel"


class Cancelled(Exception):
    """Raised in a running task, at a progress report, when its job has been cancelled."""


#: procrastinate queue of geoharbor's jobs (its periodic tasks use the default queue).
QUEUE = "geoharbor"
#: Advisory lock (class, key) serialising the creation of procrastinate's schema ("jb").
SCHEMA_LOCK = (0x6A62, 1)
#: Progress is written at most this often (seconds); a heartbeat is written regardless.
PROGRESS_EVERY = 0.5

#: A task: (context, **args) -> JSON result.
TaskFunction = Callable[..., dict[str, Any] | None]
TASKS: dict[str, TaskFunction] = {}


def task(name: str) -> Callable[[TaskFunction], TaskFunction]:
    """Register a task function under ``name``: what :meth:`Jobs.defer` names and workers run."""

    def register(func: TaskFunction) -> TaskFunction:
        TASKS[name] = func
        return func

    return register


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def channel(job_id: str) -> str:
    """The event channel of a job (see :mod:`providers.events`)."""
    return f"job:{job_id}"


#: The longest log line a job publishes; longer ones are cut.
MAX_LOG_LINE = 10_000


def announce(store: Store, job_id: str, event_type: str, **fields: Any) -> None:
    """Publish an event (``status``, ``progress``, ``log``) of job ``job_id``; never raises."""
    body = {"type": event_type, "job_id": job_id, "time": time.time(), **fields}
    try:
        events.publish(store, channel(job_id), body)
    except Exception as exc:  # noqa: BLE001 - a follower's loss must never fail the job
        LOGGER.warning("job %s: %s event not published: %s", job_id, event_type, exc)


class JobContext:
    """A running job's handle on its record: progress, heartbeat, final state.

    The record is rewritten whole by the one process running the job; the heartbeat
    thread and the task share it under a lock.
    """

    def __init__(self, store: Store, record: Record, registry: Any, heartbeat_s: float) -> None:
        self.store = store
        self.registry = registry
        self.id: str = record.key or str(record.id)
        self._rid = record.id
        self._body = dict(record.body)
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._written = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"job-{self.id}-heartbeat", daemon=True)

    @property
    def args(self) -> dict[str, Any]:
        return dict(self._body.get("args") or {})

    def _write(self, **changes: Any) -> None:
        with self._lock:
            self._body.update(changes, heartbeat=time.time())
            self.store.update(KIND, self._rid, self._body, key=self.id)
            self._written = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._write()
            except ProviderError as exc:  # the store is down: the next beat may get through
                LOGGER.warning("job %s: heartbeat not written: %s", self.id, exc.message)

    def _announce(self, event_type: str, **fields: Any) -> None:
        announce(self.store, self.id, event_type, **fields)

    def start(self) -> None:
        now = time.time()
        self._write(state=RUNNING, started_at=now, worker=_worker_name())
        self._announce("status", state=RUNNING, message=self._body.get("message", ""), worker=_worker_name())
        self._thread.start()

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        """Report ``done`` of ``total`` (features, steps ...); written and published at most every
        half second."""
        if done < total and time.monotonic() - self._written < PROGRESS_EVERY:
            self._body["progress"] = {"done": done, "total": total}
            return
        changes: dict[str, Any] = {"progress": {"done": done, "total": total}}
        if message is not None:
            changes["message"] = message
        self._write(**changes)
        self._announce("progress", **changes)
        if self.store.find(CANCEL_KIND, self.id) is not None:
            raise Cancelled(f"job {self.id} was cancelled")

    def log(self, message: str, level: str = "info") -> None:
        """A line of the job's log, for whoever follows the job live (not kept in its record)."""
        number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        LOGGER.log(number, "job %s: %s", self.id, message)
        self._announce("log", level=level, message=str(message)[:MAX_LOG_LINE])

    def finish(self, state: str, message: str, result: dict[str, Any] | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._write(state=state, message=message, result=result, finished_at=time.time())
        self._announce(
            "status", state=state, message=message, result=result, progress=self._body.get("progress")
        )


def run_job(store: Store, registry: Any, job_id: str, heartbeat_s: float) -> None:
    """Run the job ``job_id`` here and record how it ends; the body both runners share.

    A job that is no longer PENDING (done, or failed as lost) is not run again.
    Errors end the job FAILED with their message and are raised again, so that
    procrastinate counts the failure too.
    """
    record = store.find(KIND, job_id)
    if record is None:
        LOGGER.warning("job %s has no record: skipped", job_id)
        return
    if record.body.get("state") != PENDING:
        LOGGER.info("job %s is %s: not run again", job_id, record.body.get("state"))
        return
    func = TASKS.get(record.body.get("kind", ""))
    context = JobContext(store, record, registry, heartbeat_s)
    if func is None:
        context.finish(FAILED, f"unknown task {record.body.get('kind')!r}")
        return
    if store.find(CANCEL_KIND, job_id) is not None:
        context.finish(CANCELLED, "cancelled before it started")
        return
    context.start()
    try:
        result = func(context, **context.args)
    except Cancelled:
        context.finish(CANCELLED, "cancelled while running")
        return
    except ProviderError as exc:
        context.finish(FAILED, exc.message)
        raise
    except BaseException as exc:
        context.finish(FAILED, f"internal error: {type(exc).__name__}: {str(exc)[:500]}")
        raise
    context.finish(COMPLETE, "done", result)


# -- deferring and reading ---------------------------------------------------------------------
class Jobs:
    """Deferring jobs and reading their state, from any geoharbor process (the State's queue)."""

    def __init__(self, config: dict[str, Any], registry: Any) -> None:
        self.config = config
        self.registry = registry
        self.store: Store = registry.store
        self.settings: dict[str, Any] = config["jobs"]
        self.embedded = "source" not in config["store"]
        self._app: procrastinate.App | None = None
        self._opened_pid: int | None = None
        self._lock = threading.Lock()
        if self.embedded:
            self.reap()  # jobs this host was running when it stopped

    @property
    def url(self) -> str:
        return self.config["sources"][self.config["store"]["source"]]["url"]

    def _queue(self) -> procrastinate.App:
        """procrastinate, opened once per process (a pool must not cross a fork).

        Its tables are made first if no worker made them yet: a web host may take a job
        before any worker has started (hosts and workers start in any order).
        """
        with self._lock:
            if self._app is None or self._opened_pid != os.getpid():
                spec = self.config["sources"][self.config["store"]["source"]]
                apply_schema(spec.get("direct_url", spec["url"]), spec.get("prepare_threshold", 5))
                self._app = queue_app(self.config, pool_max=2).open()
                self._opened_pid = os.getpid()
            return self._app

    def _record(self, name: str, args: dict[str, Any] | None, owner: Any, runner: str) -> Record:
        """A PENDING job record of task ``name``."""
        if name not in TASKS:
            raise InvalidQuery(f"unknown task {name[:100]!r}")
        now = time.time()
        body = {
            "kind": name,
            "args": args or {},
            "state": PENDING,
            "progress": {"done": 0, "total": 0},
            "message": "",
            "result": None,
            "owner": owner,
            "worker": None,
            "runner": runner,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "heartbeat": now,
        }
        record = self.store.insert(KIND, body, key=str(uuid.uuid4()))
        announce(self.store, str(record.key), "status", state=PENDING, message="", task=name)
        return record

    def defer(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        owner: Any = None,
        before: Callable[[str], None] | None = None,
    ) -> str:
        """Record a PENDING job of task ``name`` and have it run; returns its id (a uuid).

        ``before`` is called with the id once the job is recorded and before it can
        start: the place to note the job where its outcome will be looked for.
        """
        record = self._record(name, args, owner, "thread" if self.embedded else "queue")
        job_id, body = str(record.key), record.body
        if before is not None:
            before(job_id)
        try:
            if self.embedded:
                threading.Thread(
                    target=self._run_here, args=(job_id,), name=f"job-{job_id}", daemon=True
                ).start()
            else:
                self._queue().configure_task(name=name, queue=QUEUE).defer(job=job_id)
        except Exception as exc:
            self.store.update(
                KIND, record.id, {**body, "state": FAILED, "message": f"not queued: {exc}"}, key=job_id
            )
            announce(self.store, job_id, "status", state=FAILED, message=f"not queued: {exc}")
            raise Unavailable(f"the job queue is unavailable: {exc}") from exc
        return job_id

    def run_now(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        owner: Any = None,
        before: Callable[[str], None] | None = None,
    ) -> str:
        """Record a job of task ``name`` and run it in this thread (a request that waits for it).

        The same record, heartbeat and lost-runner rule as a queued job: a process killed
        while running it leaves the job to be marked FAILED. Returns the job's id once it
        has ended; how it ended is in its record. ``before`` as for :meth:`defer`.
        """
        record = self._record(name, args, owner, "inline")
        if before is not None:
            before(str(record.key))
        self._run_here(str(record.key))
        return str(record.key)

    def _run_here(self, job_id: str) -> None:
        try:
            run_job(self.store, self.registry, job_id, self.settings["heartbeat_s"])
        except Exception:  # noqa: BLE001 - recorded in the job; a thread has nobody to raise to
            LOGGER.exception("job %s failed", job_id)

    def get(self, job_id: str) -> Record:
        record = self.store.find(KIND, job_id)
        if record is None:
            raise NotFound(f"job {job_id[:100]!r} not found")
        return record

    def cancel(self, job_id: str) -> Record:
        """Ask job ``job_id`` to stop: a waiting job never starts (CANCELLED at once), a running
        one stops at its next progress report. Returns the job record as it is now."""
        record = self.get(job_id)
        if record.body.get("state") not in (PENDING, RUNNING):
            return record
        try:
            self.store.insert(CANCEL_KIND, {"at": time.time()}, key=job_id)
        except Conflict:
            pass  # asked already
        if record.body.get("state") == PENDING:
            body = {**record.body, "state": CANCELLED, "finished_at": time.time(), "message": "cancelled"}
            record = self.store.update(KIND, record.id, body, key=record.key)
            announce(self.store, job_id, "status", state=CANCELLED, message="cancelled")
        return record

    def reap(self) -> list[str]:
        """Mark FAILED the jobs whose runner died: RUNNING (or, in-process, PENDING) with a
        heartbeat older than ``jobs.lost_after_s``; returns their ids."""
        limit = time.time() - self.settings["lost_after_s"]
        lost = []
        for record in self.store.list(KIND):
            body = record.body
            watched = body.get("state") == RUNNING or (
                body.get("state") == PENDING and body.get("runner") == "thread"
            )
            if not watched or (body.get("heartbeat") or 0) >= limit:
                continue
            silent = time.time() - (body.get("heartbeat") or 0)
            body = {**body, "state": FAILED, "finished_at": time.time()}
            body["message"] = f"worker lost: no heartbeat for {silent:.0f} s"
            self.store.update(KIND, record.id, body, key=record.key)
            lost.append(record.key or str(record.id))
            announce(self.store, lost[-1], "status", state=FAILED, message=body["message"])
        if lost:
            LOGGER.warning("jobs failed as lost: %s", ", ".join(lost))
        return lost

    def close(self) -> None:
        if self._app is not None and self._opened_pid == os.getpid():
            self._app.close()
        self._app = None


# -- procrastinate -------------------------------------------------------------------------------
def queue_app(config: dict[str, Any], pool_max: int = 4, direct: bool = False) -> procrastinate.App:
    """The procrastinate App on the store's database, with geoharbor's tasks and periodic tasks.

    ``direct``: a worker's, which LISTENs for new jobs, so it connects past any transaction
    pooler (the source's ``direct_url``); deferring jobs works through the pooler. Either
    way the source's ``prepare_threshold`` holds (None for pgbouncer in transaction mode).
    """
    spec = config["sources"][config["store"]["source"]]
    url = spec.get("direct_url", spec["url"]) if direct else spec["url"]
    connector = procrastinate.PsycopgConnector(
        conninfo=url,
        min_size=1,
        max_size=pool_max,
        kwargs={"prepare_threshold": spec.get("prepare_threshold", 5)},
    )
    app = procrastinate.App(connector=connector)
    for name in TASKS:
        app.task(name=name, queue=QUEUE, pass_context=True)(_queued(name))
    lost_after = config["jobs"]["lost_after_s"]
    every = max(1, min(59, int(lost_after // 2)))
    app.periodic(cron=f"* * * * * */{every}")(app.task(name="reap_lost_jobs", pass_context=True)(_reap))
    app.periodic(cron="*/10 * * * *")(app.task(name="cleanup_staging", pass_context=True)(_cleanup_staging))
    app.periodic(cron="* * * * * */15")(app.task(name="fire_schedules", pass_context=True)(_fire_schedules))
    return app


def _queued(name: str) -> Callable[..., None]:
    def run(context: procrastinate.JobContext, job: str) -> None:
        runtime: Jobs = context.additional_context["jobs"]
        run_job(runtime.store, runtime.registry, job, runtime.settings["heartbeat_s"])

    run.__name__ = name
    return run


async def _reap(context: procrastinate.JobContext, timestamp: int) -> None:
    """Fail lost jobs: our records, then procrastinate's rows of workers that stopped beating."""
    runtime: Jobs = context.additional_context["jobs"]
    await asyncio.to_thread(runtime.reap)
    manager = context.app.job_manager
    stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=runtime.settings["lost_after_s"])
    for job in stalled:
        LOGGER.warning("procrastinate job %s (%s) failed: its worker is lost", job.id, job.task_name)
        await manager.finish_job(job, status=Status.FAILED, delete_job=False)


def _cleanup_staging(context: procrastinate.JobContext, timestamp: int) -> None:
    """Drop the staging tables of loads that died, in every PostGIS source."""
    from providers.load_postgis import cleanup_staging
    from providers.postgis import PostGISDatabase

    runtime: Jobs = context.additional_context["jobs"]
    for name, source in runtime.registry.sources.items():
        if isinstance(source, PostGISDatabase) and name not in runtime.registry.source_errors:
            dropped = cleanup_staging(source)
            if dropped:
                LOGGER.info("dropped abandoned staging tables: %s", ", ".join(dropped))


def _fire_schedules(context: procrastinate.JobContext, timestamp: int) -> None:
    """Start the scheduled work whose time has come (one periodic task for all hosts)."""
    from server.schedules import fire_due

    runtime: Jobs = context.additional_context["jobs"]
    fire_due(runtime.registry, runtime, float(timestamp))


def apply_schema(url: str, prepare_threshold: int | None = 5) -> bool:
    """Create procrastinate's tables on the store's database unless they exist; True if made.

    Under an advisory lock, so that workers starting together on several hosts do not
    race. An existing schema is left alone: after a procrastinate upgrade, apply its
    migrations (``procrastinate schema --migrations-path``) before starting workers.
    """
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=prepare_threshold) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", SCHEMA_LOCK)
            try:
                if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is not None:  # type: ignore[index]
                    return False
                with conn.transaction():
                    conn.execute(procrastinate.schema.SchemaManager.get_schema())
                return True
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", SCHEMA_LOCK)
    except psycopg.Error as exc:
        raise Unavailable(f"cannot prepare the job queue: {exc}") from exc


def run_worker(
    config: dict[str, Any], concurrency: int | None = None, queues: list[str] | None = None
) -> None:
    """Run a procrastinate worker for geoharbor's tasks until SIGINT/SIGTERM (``geoharbor worker``)."""
    from server import geonode_commands, geonode_harvest, imports  # noqa: F401 - register their tasks
    from server.registry import Registry

    if "source" not in config["store"]:
        raise InvalidQuery("the store is a SQLite file (embedded mode): jobs run in the server process")
    settings = config["jobs"]
    spec = config["sources"][config["store"]["source"]]
    # A session advisory lock: past any transaction pooler.
    apply_schema(spec.get("direct_url", spec["url"]), spec.get("prepare_threshold", 5))
    registry = Registry(config)
    jobs = Jobs(config, registry)
    try:
        jobs.reap()
        width = concurrency or settings["concurrency"]
        app = queue_app(config, pool_max=width + 3, direct=True)
        app.run_worker(
            queues=queues,
            concurrency=width,
            name=f"geoharbor-{_worker_name()}",
            additional_context={"jobs": jobs},
            update_heartbeat_interval=settings["heartbeat_s"],
            stalled_worker_timeout=settings["lost_after_s"],
            delete_jobs="successful",
        )
    finally:
        jobs.close()
        registry.close()


# -- tasks ---------------------------------------------------------------------------------------
@task("load_layer")
def load_layer(
    job: JobContext,
    *,
    path: str,
    layer: str | None = None,
    source: str | None = None,
    table: str | None = None,
    srs: str | None = None,
    title: str | None = None,
    collection: str | None = None,
) -> dict[str, Any]:
    """Load a file's layer into a new table (``providers.loader.load``, CREATE) and publish it.

    The table appears whole or not at all; if publishing fails, the new table is
    dropped, so a failed job leaves nothing behind.
    """
    from providers import loader
    from server.publish import publish_loaded

    registry = job.registry
    source = source or registry.config["store"]["tables"]
    if source not in registry.sources or source in registry.source_errors:
        raise InvalidQuery(f"no usable source named {str(source)[:100]!r}")
    target = registry.sources[source]
    job.log(f"loading {os.path.basename(path)} into source {source!r}")
    result = loader.load(path, layer, target, table, loader.Mode.CREATE, progress=job.progress, srs=srs)
    record = publish_loaded(registry, source, result, loader.Mode.CREATE, title=title, collection=collection)
    job.log(f"published collection {record.key!r}: {result.features} features in table {result.table}")
    return {
        "collection": record.key,
        "layer_id": record.id,
        "table": result.table,
        "features": result.features,
        "srid": result.srid,
        "geometry_type": result.geometry_type,
    }
