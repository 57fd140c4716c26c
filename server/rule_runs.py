"""Running chains of rules on collections: the ``run_rules`` job, and the triggers that start it.

A run applies the capabilities of its rules, in order, to an input (a published
collection, or an uploaded dataset loaded first into a table nobody sees) and writes
the result as a table of the store's table source, published at once as a
collection (:func:`server.publish.publish_loaded`: items, tiles, registry). Inside
PostGIS the whole chain is one SQL statement (:mod:`providers.capabilities`); a trigger's
re-run replaces its output in the same transaction, keeping the ids.

Triggers fire from the write path itself: every committed
:meth:`~providers.base.FeatureProvider.write` (OGC Part 4, MapFish, REST) and every
load published by an import tells :func:`fire` which collection changed, and which
features. A trigger's run writes its output collection, which may itself be watched;
each run carries its depth, and past ``jobs.trigger_depth`` (default 3) the cascade stops (logged
and reported on the evaluations stream), so a trigger that feeds itself is never a
loop.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from croniter import croniter

from providers import capabilities, loader
from providers.base import FeatureProvider
from providers.errors import InvalidData, NotFound
from providers.tables import tables_of
from server import schedules
from server.jobs import JobContext, Jobs, task
from server.publish import publish_loaded, published_layer

LOGGER = logging.getLogger(__name__)

TRIGGER = "trigger"
RULE = "rule"


# -- inputs ----------------------------------------------------------------------------------------
@contextmanager
def input_provider(
    registry: Any, ref: str, layer: str | None = None
) -> Iterator[tuple[FeatureProvider, str]]:
    """The provider of what a run reads, and its name: a collection, or a dataset's layer.

    A dataset (an uploaded file, by uuid) is loaded into a table of the table source
    for the run and dropped after it: the capabilities run where the data is.
    """
    coll = registry.collections.get(ref)
    if coll is not None:
        yield coll.provider, ref
        return
    try:
        key = str(uuid.UUID(ref))
    except ValueError:
        raise NotFound(f"no collection or dataset {ref[:100]!r}") from None
    record = registry.store.find("dataset", key)
    if record is None:
        raise NotFound(f"no collection or dataset {ref[:100]!r}")
    layers = record.body["layers"]
    chosen = layers[0] if layer is None else next((la for la in layers if la["name"] == layer), None)
    if chosen is None:
        raise NotFound(f"dataset {key} has no layer {str(layer)[:100]!r}")
    source = registry.config["store"]["tables"]
    target = registry.sources[source]
    table = f"run_input_{uuid.uuid4().hex[:12]}"
    path = Path(registry.config["datasets"]["path"]) / key / chosen["file"]
    loader.load(path, chosen["source_layer"], target, table, loader.Mode.CREATE)
    tables = tables_of(target, source)
    try:
        yield tables.provider(table, editable=False), chosen["name"]
    finally:
        tables.drop(table)


def other_inputs(registry: Any, steps: list[capabilities.Step]) -> dict[str, FeatureProvider]:
    """The collections the rules' configurations name (``other`` ...), by id."""
    out = {}
    for step in steps:
        for key in capabilities.get(step.capability).inputs:
            ref = step.config.get(key)
            if isinstance(ref, str):
                coll = registry.collections.get(ref)
                if coll is None:
                    raise InvalidData(f"rule {step.capability}: {key}: no collection {ref[:100]!r}")
                out[ref] = coll.provider
    return out


def load_steps(store: Any, rule_ids: list[str]) -> list[capabilities.Step]:
    steps = []
    for rule_id in rule_ids:
        record = store.find(RULE, rule_id)
        if record is None:
            raise NotFound(f"rule {rule_id} no longer exists")
        config = capabilities.validate(record.body["capability"], record.body["config"])
        steps.append(capabilities.Step(record.body["capability"], config))
    return steps


# -- the job -----------------------------------------------------------------------------------------
@task("run_rules")
def run_rules(
    job: JobContext,
    *,
    input: str,  # noqa: A002 - the API's word
    rule_ids: list[str] | None = None,
    steps: list[dict[str, Any]] | None = None,
    output: str | None = None,
    name: str | None = None,
    title: str | None = None,
    layer: str | None = None,
    owner: int | None = None,
    trigger: str | None = None,
    depth: int = 0,
    ids: list[Any] | None = None,
) -> dict[str, Any]:
    """Apply ``rule_ids`` (stored rules) or ``steps`` (capability and configuration, as
    OGC processes give them) in order to ``input`` and publish the result (see the module doc).

    With ``ids`` (a DML trigger), only those input features are computed again, in
    the existing output. ``output`` names the result's table and collection; a run
    without one makes a new name; a trigger's run replaces its output.
    """
    registry = job.registry
    registry.sync()
    chain = load_steps(registry.store, rule_ids or []) + [
        capabilities.Step(s["capability"], capabilities.validate(s["capability"], s["config"]))
        for s in steps or []
    ]
    if not chain:
        raise InvalidData("nothing to run: no rule and no step")
    source = registry.config["store"]["tables"]
    target = registry.sources[source]
    with input_provider(registry, input, layer) as (provider, name):
        others = other_inputs(registry, chain)

        def progress(done: int, total: int) -> None:
            job.progress(done, total)

        if ids is not None and output is not None and output in registry.collections:
            table = _table_of(registry, output)
            written = capabilities.refresh(chain, provider, others, target, table, ids)
            result = {"collection": output, "features": written, "refreshed": len(ids)}
            fire(registry, Jobs(registry.config, registry), output, ids, depth)
            return result
        table = output or f"{_slug(name)}_{uuid.uuid4().hex[:6]}"
        replacing = output is not None and published_layer(registry, source, tables_of(target, source), table)
        mode = loader.Mode.REPLACE if replacing else loader.Mode.CREATE
        loaded = capabilities.run(chain, provider, others, target, table, progress, mode=mode)
    record = publish_loaded(registry, source, loaded, mode, title=title or name or table, owner=owner)
    fire(registry, Jobs(registry.config, registry), record.key, None, depth)
    return {
        "collection": record.key,
        "layer_id": record.id,
        "table": loaded.table,
        "features": loaded.features,
        "geometry_type": loaded.geometry_type,
        "srid": loaded.srid,
    }


def _table_of(registry: Any, collection: str) -> str:
    layer = registry.store.find("layer", collection)
    if layer is None:
        raise NotFound(f"output collection {collection!r} is not a layer geoharbor made")
    body = layer.body
    return str(body.get("table") or body.get("layer") or body.get("name"))


def _slug(name: str) -> str:
    text = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    return (text or "result")[:40]


# -- triggers -------------------------------------------------------------------------------------------
def fire(registry: Any, queue: Jobs, collection: str, ids: list[Any] | None, depth: int = 0) -> list[str]:
    """Start the runs of the enabled triggers watching ``collection``; returns their job ids.

    ``ids`` are the features a write changed (None: the whole collection changed, a
    load). DML triggers need them; DATA_CHANGED triggers run on everything.
    """
    started = []
    for record in registry.store.list(TRIGGER):
        body = record.body
        if not body.get("enabled") or body.get("collection") != collection:
            continue
        kind = body["trigger_type"]
        if kind not in ("DATA_CHANGED", "DML"):
            continue
        if depth >= registry.config["jobs"]["trigger_depth"]:
            LOGGER.warning(
                "trigger %s not fired on %s: cascade depth %d reached", record.key, collection, depth
            )
            evaluation(registry, record.key, collection, "stopped", f"cascade depth {depth} reached")
            continue
        args = {
            "input": collection,
            "rule_ids": [body["rule_id"]],
            "output": body["output"],
            "owner": body.get("owner"),
            "trigger": record.key,
            "depth": depth + 1,
            "ids": [str(i) for i in ids] if kind == "DML" and ids is not None else None,
        }
        job_id = queue.defer("run_rules", args, body.get("owner"))
        registry.store.update(
            TRIGGER,
            record.id,
            {**body, "fired": body.get("fired", 0) + 1, "last_fired_at": time.time(), "last_job": job_id},
            key=record.key,
        )
        evaluation(registry, record.key, collection, "fired", f"job {job_id}")
        started.append(job_id)
    return started


def fire_schedules(registry: Any, queue: Jobs, now: float) -> list[str]:
    """Start the runs of the enabled SCHEDULE triggers whose cron time has come since they
    last fired (or were made); returns the job ids.

    Run by :func:`server.schedules.fire_due`; a cron time is claimed first, so two
    processes that see the same time due start one run, not two.
    """
    started = []
    store = registry.store
    for record in store.list(TRIGGER):
        body = record.body
        if not body.get("enabled") or body.get("trigger_type") != "SCHEDULE":
            continue
        since = datetime.fromtimestamp(body.get("last_fired_at") or record.created, UTC)
        due = croniter(body["schedule"], since).get_next(float)
        if due > now:
            continue
        claimed = schedules.claim(store, f"{record.id}@{due:.0f}", {"trigger": record.key, "due": due})
        if claimed is None:
            continue  # another process fired this time
        previous = body.get("last_claim")
        args = {
            "input": body["collection"],
            "rule_ids": [body["rule_id"]],
            "output": body["output"],
            "owner": body.get("owner"),
            "trigger": record.key,
            "depth": 1,
        }
        job_id = queue.defer("run_rules", args, body.get("owner"))
        store.update(
            TRIGGER,
            record.id,
            {
                **body,
                "fired": body.get("fired", 0) + 1,
                "last_fired_at": now,
                "last_job": job_id,
                "last_claim": claimed.id,
            },
            key=record.key,
        )
        if previous is not None:
            with suppress(NotFound):  # the claim before this one can no longer be contested
                store.delete(schedules.SCHEDULE_CLAIM, previous)
        evaluation(
            registry, record.key, body["collection"], "fired", f"schedule {body['schedule']}: job {job_id}"
        )
        started.append(job_id)
    return started


def evaluation(registry: Any, trigger: str, collection: str, outcome: str, detail: str) -> None:
    """Report a trigger evaluation on the evaluations stream (when the event bus is there)."""
    try:
        from providers import events
    except ImportError:  # pragma: no cover - the bus is part of the server
        return
    events.publish(
        registry.store,
        "evaluations",
        {
            "trigger": trigger,
            "collection": collection,
            "outcome": outcome,
            "detail": detail,
            "at": time.time(),
        },
    )
