"""Server-Sent Events: a job's live log and state, and rule and trigger evaluations as they happen.

``GET /jobs/<id>/stream`` (and ``/jobs/<id>/events``, the SDK's name) follows one job
record of :mod:`server.jobs`: its state changes, progress and log lines, published on
channel ``job:<id>`` by whichever process runs it (:mod:`providers.events` carries them
across processes and hosts). It starts with the job's first stored event, so a client
that connects late still reads the whole log, and ends once the job's final state is
sent. ``GET /rules/eval-stream`` and ``/triggers/eval-stream`` follow channel
``evaluations`` from the moment they connect, until the client leaves.

The wire format is the EventSource one: ``retry:`` first, then every event as ``id:``
and one ``data:`` line of JSON with a ``type`` (``status``, ``progress``, ``log`` ...).
Events carry no ``event:`` name, so ``EventSource.onmessage`` receives them all. A
comment line is sent every ``HEARTBEAT_S`` seconds, which keeps proxies from closing
an idle stream and tells the server soon when the client is gone. A client that
reconnects sends ``Last-Event-ID`` (or ``?lastEventId=``, for clients that cannot set
headers) and resumes after that event; reconnecting to a job stream that has ended
answers 204, which tells an EventSource to stop reconnecting.

Each open stream holds a thread of its gunicorn worker for as long as it is open, so
``geoharbor serve`` runs gthread workers with ``server.threads`` threads for ordinary
requests plus ``MAX_STREAMS`` for streams (see server/cli.py). Ordinary requests are
kept to ``server.threads`` at once in a process (what they had before streams
existed), so streams never take their threads, and past ``MAX_STREAMS`` open streams
a process answers 503 ``{"detail": ...}`` rather than queueing a stream behind others.
On SIGTERM the streams of the worker end within a second, so a graceful stop does
not wait for clients that never leave; their last frame repeats ``retry:`` (with a
comment saying the server stops), and the client reconnects, through the load
balancer, to a worker that goes on, resuming after its ``Last-Event-ID``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request

from providers import events
from providers.errors import InvalidQuery, Unavailable
from providers.events import Event
from providers.store import Record, Store
from server import jobs, owned
from server.auth import current_identity, require_scope
from server.tiles import _client_gone as client_gone

blueprint = Blueprint("streams", __name__)

#: Open streams a process serves at once (gunicorn gets this many threads more than server.threads).
MAX_STREAMS = 16
#: Seconds between heartbeat comments of an idle stream.
HEARTBEAT_S = 5.0
#: How long an EventSource waits before reconnecting (milliseconds), sent as ``retry:``.
RETRY_MS = 3000
#: The longest a stream waits without looking at the shutdown flag (seconds).
SLICE_S = 1.0
#: How long a job stream waits for the final event of a job whose record has just ended (seconds).
FINAL_GRACE_S = 2.0
#: The channel of rule and trigger evaluations.
EVALUATIONS = "evaluations"
#: Set when the worker process is asked to stop: every stream then ends.
SHUTDOWN = threading.Event()

#: A job cancelled by its owner (the platform API's jobs) ends in this state.
CANCELLED = "CANCELLED"
#: The job states of the record (server/jobs.py) as the GISPulse text names them.
STATUS_WORDS = {
    jobs.PENDING: "PENDING",
    jobs.RUNNING: "RUNNING",
    jobs.COMPLETE: "COMPLETED",
    jobs.FAILED: "FAILED",
    CANCELLED: "CANCELLED",
}
FINAL_STATES = frozenset({jobs.COMPLETE, jobs.FAILED, CANCELLED})
STREAM_ENDPOINTS = frozenset(
    {"streams.job_stream", "streams.rule_evaluations", "streams.trigger_evaluations"}
)


@dataclass(slots=True)
class Settings:
    """How this process streams: its bound on open streams and the timings."""

    max_streams: int
    heartbeat_s: float
    retry_ms: int
    slots: threading.BoundedSemaphore


def install(app: Flask) -> None:
    """Register the routes and keep ordinary requests to ``server.threads`` at once per process.

    The bound and timings are read from ``server.max_streams``, ``server.stream_heartbeat_s``
    and ``server.stream_retry_ms`` when the configuration has them, else the defaults above.
    """
    server = app.config["GEOHARBOR"]["server"]
    bound = max_streams(app.config["GEOHARBOR"])
    settings = Settings(
        max_streams=bound,
        heartbeat_s=float(server.get("stream_heartbeat_s", HEARTBEAT_S)),
        retry_ms=int(server.get("stream_retry_ms", RETRY_MS)),
        slots=threading.BoundedSemaphore(bound),
    )
    app.extensions["geoharbor.streams"] = settings
    app.register_blueprint(blueprint)
    ordinary = threading.BoundedSemaphore(max(1, int(server["threads"])))

    def take_thread() -> None:
        if request.endpoint not in STREAM_ENDPOINTS:
            ordinary.acquire()
            g.ordinary_slot = True

    def give_thread_back(_exc: BaseException | None) -> None:
        if g.pop("ordinary_slot", False):
            ordinary.release()

    app.before_request_funcs.setdefault(None, []).insert(0, take_thread)
    app.teardown_request(give_thread_back)


def max_streams(config: dict[str, Any]) -> int:
    """The per-process bound on open streams of a configuration (server/cli.py sizes gunicorn by it)."""
    return int(config["server"].get("max_streams", MAX_STREAMS))


def publish(channel: str, event: dict[str, Any]) -> int:
    """Publish ``event`` on ``channel`` from a request (rule and trigger evaluations); its id."""
    return events.publish(_store(), channel, event)


def _store() -> Store:
    return current_app.extensions["geoharbor"].registry.store


def _settings() -> Settings:
    return current_app.extensions["geoharbor.streams"]


# -- the wire format -----------------------------------------------------------------------------
def _frame(event_id: int, data: dict[str, Any]) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event_id, orjson.dumps(data, default=str))


HEARTBEAT = b": keep-alive\n\n"


def _last_event_id() -> int | None:
    """Where a reconnecting client resumes: ``Last-Event-ID``, else ``?lastEventId=``; None when new."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.args.get("lastEventId", request.args.get("last_event_id"))
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidQuery(f"Last-Event-ID must be an event id (an integer), not {raw[:40]!r}") from None
    if value < 0:
        raise InvalidQuery("Last-Event-ID must not be negative")
    return value


class _Stream:
    """The response body of one stream: holds its slot until the server closes it.

    The slot is released by :meth:`close` (which the WSGI server calls whatever
    happened, the client gone or the body ended), not in the generator: a generator
    closed before it started never runs its ``finally``.
    """

    def __init__(self, body: Iterator[bytes], slots: threading.BoundedSemaphore) -> None:
        self._body = body
        self._slots: threading.BoundedSemaphore | None = slots

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()  # type: ignore[attr-defined]
        finally:
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.release()


def _respond(body: Iterator[bytes]) -> Response:
    settings = _settings()
    if not settings.slots.acquire(blocking=False):
        raise Unavailable(
            f"this server process already serves {settings.max_streams} event streams; retry later"
        )
    response = Response(
        _Stream(body, settings.slots),  # type: ignore[arg-type]
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        },
    )
    return response


def _opening(settings: Settings, what: str) -> bytes:
    return b"retry: %d\n: %s\n\n" % (settings.retry_ms, what.encode())


def _closing(settings: Settings) -> bytes:
    """The last frame of a stream ended because its worker stops: when to reconnect (to
    another worker or host behind the load balancer), and why, as a comment."""
    return b"retry: %d\n: server stopping, reconnect\n\n" % settings.retry_ms


def _going_on(gone: Callable[[], bool] | None) -> bool:
    """Whether a stream goes on: the worker is not stopping and the client is still there.

    The client's socket is looked at every slice: a client that left frees its slot
    within a second, not at the next heartbeat that fails to be written.
    """
    return not SHUTDOWN.is_set() and not (gone is not None and gone())


def _wait_slices(
    subscription: events.Subscription, settings: Settings, beat_at: float
) -> tuple[list[Event], float, bytes | None]:
    """Wait for events up to the next heartbeat, a slice at a time; (events, next beat, heartbeat)."""
    found = subscription.next(min(SLICE_S, max(0.0, beat_at - time.monotonic())))
    now = time.monotonic()
    if found:
        return found, now + settings.heartbeat_s, None
    if now >= beat_at:
        return [], now + settings.heartbeat_s, HEARTBEAT
    return [], beat_at, None


# -- jobs ----------------------------------------------------------------------------------------
def _job(job_id: str) -> Record:
    """The job record the caller may read (the owned-records rule); 404 otherwise."""
    return owned.find(jobs.KIND, job_id, "read", f"job {job_id[:100]}")


def _job_data(event: Event) -> dict[str, Any]:
    data = dict(event.body)
    if data.get("type") == "status" and data.get("state") in STATUS_WORDS:
        data["status"] = STATUS_WORDS[data["state"]]
    return data


def _is_final(data: dict[str, Any]) -> bool:
    return data.get("type") == "status" and data.get("state") in FINAL_STATES


def _record_status(record: Record) -> dict[str, Any]:
    """A status event made from the record, for a job whose final event is not in the bus."""
    body = record.body
    return {
        "type": "status",
        "job_id": record.key,
        "time": body.get("finished_at") or time.time(),
        "state": body.get("state"),
        "status": STATUS_WORDS.get(body.get("state", ""), body.get("state")),
        "message": body.get("message", ""),
        "result": body.get("result"),
        "progress": body.get("progress"),
    }


@blueprint.route("/jobs/<job_id>/stream")
@blueprint.route("/jobs/<job_id>/events", endpoint="job_stream")
def job_stream(job_id: str) -> Response:
    record = _job(job_id)
    store = _store()
    bus = events.bus_for(store)
    channel = jobs.channel(str(record.key))
    after = _last_event_id()
    if after is not None and record.body.get("state") in FINAL_STATES and not bus.read(channel, after, 1):
        return Response(status=204)  # the end was delivered: EventSource stops reconnecting
    settings = _settings()
    gone = client_gone()

    def body() -> Iterator[bytes]:
        yield _opening(settings, f"job {record.key}")
        with bus.subscribe(channel, after or 0) as subscription:
            beat_at = time.monotonic() + settings.heartbeat_s
            check_at = time.monotonic()
            while _going_on(gone):
                found, beat_at, beat = _wait_slices(subscription, settings, beat_at)
                for event in found:
                    data = _job_data(event)
                    yield _frame(event.id, data)
                    if _is_final(data):
                        return
                if beat is not None:
                    yield beat
                if not found and time.monotonic() >= check_at:
                    check_at = time.monotonic() + settings.heartbeat_s
                    ended = _ended(store, record, subscription)
                    if ended is not None:
                        yield from ended
                        return
            if SHUTDOWN.is_set():
                yield _closing(settings)

    return _respond(body())


def _ended(store: Store, record: Record, subscription: events.Subscription) -> list[bytes] | None:
    """The last frames of a job whose record has ended though its final event was not read, or None.

    The final event is published just after the record is written: wait a moment for
    it. A job whose event never comes (failed by someone who could not publish, or
    pruned) ends with a status made from its record, under the last id read.
    """
    current = store.find(jobs.KIND, str(record.key))
    if current is not None and current.body.get("state") not in FINAL_STATES:
        return None
    frames = []
    finished = (current.body.get("finished_at") if current else None) or 0
    grace = max(0.0, min(FINAL_GRACE_S, finished + FINAL_GRACE_S - time.time()))
    for event in subscription.next(grace):
        data = _job_data(event)
        frames.append(_frame(event.id, data))
        if _is_final(data):
            return frames
    if current is None:
        return [
            *frames,
            _frame(subscription.last, {"type": "status", "state": None, "message": "job deleted"}),
        ]
    return [*frames, _frame(subscription.last, _record_status(current))]


# -- evaluations ---------------------------------------------------------------------------------
def _evaluations(what: str) -> Response:
    """Channel ``evaluations`` from now on (or after ``Last-Event-ID``), until the client leaves."""
    require_scope(current_identity(), ("read", "write", "admin"), f"follow {what} evaluations")
    bus = events.bus_for(_store())
    after = _last_event_id()
    if after is None:
        after = bus.last_id(EVALUATIONS)  # "from now on" is when the request came, not the first read
    settings = _settings()
    gone = client_gone()

    def body() -> Iterator[bytes]:
        yield _opening(settings, f"{what} evaluations")
        with bus.subscribe(EVALUATIONS, after) as subscription:
            beat_at = time.monotonic() + settings.heartbeat_s
            while _going_on(gone):
                found, beat_at, beat = _wait_slices(subscription, settings, beat_at)
                for event in found:
                    yield _frame(event.id, event.body)
                if beat is not None:
                    yield beat
            if SHUTDOWN.is_set():
                yield _closing(settings)

    return _respond(body())


@blueprint.route("/rules/eval-stream")
def rule_evaluations() -> Response:
    return _evaluations("rule")


@blueprint.route("/triggers/eval-stream")
def trigger_evaluations() -> Response:
    return _evaluations("trigger")


# -- OpenAPI ------------------------------------------------------------------------------------
_DETAIL = {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetError"}}}
_STREAM = {
    "description": "Server-Sent Events: ``retry:``, then ``id:`` and one ``data:`` line of JSON per "
    "event; comment lines as heartbeats",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_RESUME = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event id (sent back by EventSource when it reconnects)",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "lastEventId",
        "in": "query",
        "required": False,
        "description": "The same, for clients that cannot set headers",
        "schema": {"type": "integer", "minimum": 0},
    },
]


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths of the stream routes (``prefix`` is empty: they live at the root)."""
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    busy = {"description": "This process serves as many streams as it may; retry later", "content": _DETAIL}
    paths: dict[str, Any] = {}
    for path, operation in (("stream", "jobStream"), ("events", "jobEvents")):
        paths[f"{prefix}/jobs/{{id}}/{path}"] = {
            "parameters": [job_id],
            "get": {
                "summary": "A job's state changes, progress and log lines as they happen; ends with its "
                "final state",
                "operationId": operation,
                "parameters": _RESUME,
                "responses": {
                    "200": _STREAM,
                    "204": {"description": "The job has ended and its last event was delivered"},
                    "400": {"description": "Last-Event-ID is not an event id", "content": _DETAIL},
                    "404": {"description": "No such job (or not the caller's)", "content": _DETAIL},
                    "503": busy,
                },
            },
        }
    for path, operation, what in (
        ("/rules/eval-stream", "ruleEvaluations", "Rule"),
        ("/triggers/eval-stream", "triggerEvaluations", "Trigger"),
    ):
        paths[f"{prefix}{path}"] = {
            "get": {
                "summary": f"{what} and rule evaluations from now on (or after Last-Event-ID)",
                "operationId": operation,
                "parameters": _RESUME,
                "responses": {
                    "200": _STREAM,
                    "401": {"description": "An API key is needed", "content": _DETAIL},
                    "503": busy,
                },
            }
        }
    return {"paths": paths}
