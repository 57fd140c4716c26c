"""A typed Python client of every geoharbor API family, on httpx.

>>> from geoharbor.client import Client
>>> with Client("http://127.0.0.1:5000", api_key="...") as gh:
...     job = gh.run_and_wait("countries", [gh.create_rule("centres", "centroid", {})["id"]])

Datasets (upload, list, features, export), capabilities, rules, jobs (``run_and_wait``,
downloads, their live event stream), triggers, the importer, OGC API - Features items
(iterated across pages by their ``next`` links, written through Part 4) and tile URLs.
Every failure answer raises :class:`GeoharborError` with the status and the server's
message, whatever the API family's error format.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

#: Job statuses after which a job does not change any more.
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class GeoharborError(Exception):
    """A request the server refused or failed: ``status`` and the server's own message."""

    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(f"{status} {message} ({url})")
        self.status = status
        self.message = message
        self.url = url


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its id (for resuming) and its JSON data."""

    id: str | None
    data: dict[str, Any]


class Client:
    """A geoharbor server at ``base_url``; ``api_key`` is sent as ``X-API-Key`` when given."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise GeoharborError(response.status_code, _message(response), str(response.url))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    def _download(self, path: str, target: str | Path, params: Mapping[str, Any] | None = None) -> Path:
        target = Path(target)
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise GeoharborError(response.status_code, _message(response), str(response.url))
            with open(target, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    # -- datasets ------------------------------------------------------------------------------
    def upload_dataset(self, *paths: str | Path) -> dict[str, Any]:
        """Upload one file, or the parts of one (a Shapefile's .shp, .shx, .dbf, .prj ...)."""
        files = [("file", (Path(p).name, Path(p).read_bytes())) for p in paths]
        return self._json("POST", "/datasets/upload", files=files)

    def datasets(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return self._json("GET", "/datasets", params={"limit": limit, "offset": offset})

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    def dataset_features(
        self,
        dataset_id: str,
        layer: str,
        limit: int = 100,
        offset: int = 0,
        bbox: Iterable[float] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if bbox is not None:
            params["bbox"] = ",".join(str(v) for v in bbox)
        return self._json("GET", f"/api/portal/datasets/{dataset_id}/layers/{layer}/features", params=params)

    def export_dataset(self, dataset_id: str, fmt: str, target: str | Path, layer: str | None = None) -> Path:
        """Write the dataset (a layer of it) as ``fmt`` (gpkg, geojson, fgb, parquet, shp) to ``target``."""
        params = {"format": fmt, **({"layer": layer} if layer else {})}
        return self._download(f"/datasets/{dataset_id}/export", target, params)

    # -- capabilities and rules -------------------------------------------------------------------
    def capabilities(self) -> list[dict[str, Any]]:
        return self._json("GET", "/capabilities")

    def capability(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/capabilities/{name}")

    def create_rule(
        self, name: str, capability: str, config: Mapping[str, Any], enabled: bool = True
    ) -> dict[str, Any]:
        body = {"name": name, "capability": capability, "config": dict(config), "enabled": enabled}
        return self._json("POST", "/rules", json=body)

    def rules(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of rules: ``items``, ``total``, ``limit``, ``offset``."""
        return self._json("GET", "/rules", params={"limit": limit, "offset": offset})

    def rule(self, rule_id: str) -> dict[str, Any]:
        return self._json("GET", f"/rules/{rule_id}")

    def update_rule(self, rule_id: str, **changes: Any) -> dict[str, Any]:
        return self._json("PATCH", f"/rules/{rule_id}", json=changes)

    def delete_rule(self, rule_id: str) -> None:
        self._request("DELETE", f"/rules/{rule_id}")

    def validate_rules(self, rules: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """The dry run of a batch: ``valid`` and each rule's ``errors``; nothing is saved."""
        return self._json("POST", "/rules/validate", json=[dict(r) for r in rules])

    # -- jobs -------------------------------------------------------------------------------------------
    def submit_job(
        self, dataset_id: str, rule_ids: Iterable[str], name: str | None = None, output: str | None = None
    ) -> dict[str, Any]:
        parameters: dict[str, Any] = {"rule_ids": list(rule_ids)}
        if output:
            parameters["output"] = output
        return self._json(
            "POST", "/jobs", json={"name": name, "dataset_id": dataset_id, "parameters": parameters}
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._json("GET", "/jobs", params=params)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def wait_for_job(self, job_id: str, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
        """The job once it has ended (COMPLETED, FAILED or CANCELLED); TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll)

    def run_and_wait(
        self,
        dataset_id: str,
        rule_ids: Iterable[str],
        name: str | None = None,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Submit a job and wait for it; GeoharborError(422) if it fails, with its error."""
        job = self.wait_for_job(self.submit_job(dataset_id, rule_ids, name)["id"], timeout)
        if job["status"] != "COMPLETED":
            raise GeoharborError(422, f"job {job['id']} {job['status']}: {job.get('error')}", self.base_url)
        return job

    def download_job(self, job_id: str, target: str | Path, fmt: str = "gpkg") -> Path:
        """The job's result collection as a file: gpkg, geojson, fgb or parquet."""
        return self._download(f"/jobs/{job_id}/download", target, {"f": fmt})

    def job_events(self, job_id: str) -> Iterator[Event]:
        """The job's log lines and status changes as they happen, until its final state."""
        return self._events(f"/jobs/{job_id}/events")

    def evaluations(self) -> Iterator[Event]:
        """Rule and trigger evaluations as they happen (until the caller stops iterating)."""
        return self._events("/triggers/eval-stream")

    def _events(self, path: str) -> Iterator[Event]:
        """Server-sent events of ``path``, resumed with ``Last-Event-ID`` when the connection drops."""
        last: str | None = None
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            try:
                with self.http.stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(30.0, read=60.0)
                ) as response:
                    if response.status_code == 204:
                        return  # the stream has ended for good
                    if response.status_code >= 400:
                        response.read()
                        raise GeoharborError(response.status_code, _message(response), str(response.url))
                    for event in _parse_events(response.iter_lines()):
                        last = event.id or last
                        yield event
                    return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout):
                time.sleep(0.5)  # reconnect and resume after ``last``

    # -- triggers ------------------------------------------------------------------------------------
    def create_trigger(
        self,
        name: str,
        rule_id: str,
        dataset_id: str,
        trigger_type: str = "DATA_CHANGED",
        output: str | None = None,
        schedule: str | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "event": "DATA_CHANGED",
            "trigger_type": trigger_type,
            "rule_id": rule_id,
            "dataset_id": dataset_id,
            "enabled": enabled,
            **({"output": output} if output else {}),
            **({"schedule": schedule} if schedule else {}),
        }
        return self._json("POST", "/triggers", json=body)

    def triggers(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self._json("GET", "/triggers", params={"limit": limit, "offset": offset})

    def trigger(self, trigger_id: str) -> dict[str, Any]:
        return self._json("GET", f"/triggers/{trigger_id}")

    def wait_for_trigger(
        self, trigger_id: str, fired_before: int = 0, timeout: float = 120.0, poll: float = 0.3
    ) -> dict[str, Any]:
        """The trigger once it has fired more than ``fired_before`` times (its ``last_job`` is the run)."""
        deadline = time.monotonic() + timeout
        while True:
            trigger = self.trigger(trigger_id)
            if trigger["fired"] > fired_before and trigger.get("last_job"):
                return trigger
            if time.monotonic() > deadline:
                raise TimeoutError(f"trigger {trigger_id} did not fire within {timeout:g} s")
            time.sleep(poll)

    def update_trigger(self, trigger_id: str, **changes: Any) -> dict[str, Any]:
        return self._json("PATCH", f"/triggers/{trigger_id}", json=changes)

    def enable_trigger(self, trigger_id: str, enabled: bool = True) -> dict[str, Any]:
        return self._json("POST", f"/triggers/{trigger_id}/{'enable' if enabled else 'disable'}")

    def delete_trigger(self, trigger_id: str) -> None:
        self._request("DELETE", f"/triggers/{trigger_id}")

    # -- importer ----------------------------------------------------------------------------------------
    def import_file(
        self, path: str | Path, store: str | None = None, layer_name: str | None = None
    ) -> dict[str, Any]:
        """Import a file (zips unpacked) through ``/imports`` and run it; the import once finished."""
        body = {"import": {"targetStore": {"dataStore": {"name": store}}} if store else {}}
        imported = self._json("POST", "/imports", json=body)["import"]
        path = Path(path)
        made = self._json(
            "POST", f"/imports/{imported['id']}/tasks", files=[(path.name, (path.name, path.read_bytes()))]
        )
        tasks = [made["task"]] if "task" in made else made["tasks"]
        if layer_name is not None:
            self._json(
                "PUT",
                f"/imports/{imported['id']}/tasks/{tasks[0]['id']}/layer",
                json={"layer": {"name": layer_name}},
            )
        self._request("POST", f"/imports/{imported['id']}")
        return self._json("GET", f"/imports/{imported['id']}")["import"]

    # -- OGC API - Features and Tiles -----------------------------------------------------------------------
    def collections(self) -> list[dict[str, Any]]:
        return self._json("GET", "/collections", params={"f": "json"})["collections"]

    def collection(self, collection_id: str) -> dict[str, Any]:
        return self._json("GET", f"/collections/{collection_id}", params={"f": "json"})

    def items(self, collection_id: str, page_size: int = 1000, **params: Any) -> Iterator[dict[str, Any]]:
        """Every feature matching ``params`` (bbox, filter, properties ...), page after page."""
        url: str | None = f"/collections/{collection_id}/items"
        query: dict[str, Any] | None = {"limit": page_size, **params}
        while url is not None:
            page = self._json("GET", url, params=query)
            yield from page["features"]
            url = next((link["href"] for link in page.get("links", []) if link.get("rel") == "next"), None)
            query = None  # the next link carries the whole query

    def feature(self, collection_id: str, feature_id: Any) -> dict[str, Any]:
        return self._json("GET", f"/collections/{collection_id}/items/{feature_id}")

    def create_feature(self, collection_id: str, feature: Mapping[str, Any]) -> str:
        """Add a feature (OGC Part 4); its new id."""
        response = self._request(
            "POST",
            f"/collections/{collection_id}/items",
            json=dict(feature),
            headers={"Content-Type": "application/geo+json"},
        )
        return response.headers["Location"].rstrip("/").rpartition("/")[2]

    def update_feature(self, collection_id: str, feature_id: Any, changes: Mapping[str, Any]) -> None:
        """Change some properties (and the geometry) of a feature (PATCH)."""
        self._request(
            "PATCH",
            f"/collections/{collection_id}/items/{feature_id}",
            json=dict(changes),
            headers={"Content-Type": "application/geo+json"},
        )

    def delete_feature(self, collection_id: str, feature_id: Any) -> None:
        self._request("DELETE", f"/collections/{collection_id}/items/{feature_id}")

    def tile_url(self, collection_id: str, tms: str = "WebMercatorQuad") -> str:
        """The ``{z}/{x}/{y}`` URL template MapLibre and OpenLayers take (from the TileJSON)."""
        return self.tilejson(collection_id, tms)["tiles"][0]

    def tilejson(self, collection_id: str, tms: str = "WebMercatorQuad") -> dict[str, Any]:
        return self._json("GET", f"/collections/{collection_id}/tiles/{tms}/tilejson.json")

    def tile(self, collection_id: str, z: int, x: int, y: int, tms: str = "WebMercatorQuad") -> bytes:
        """One Mapbox Vector Tile (empty bytes for an empty tile)."""
        response = self._request("GET", f"/collections/{collection_id}/tiles/{tms}/{z}/{y}/{x}")
        return response.content


def _message(response: httpx.Response) -> str:
    """The server's message in any of its error formats (OGC, {"detail"}, {"errors"}, REST, MapFish)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "description", "msg", "error"):
            if isinstance(body.get(key), str):
                return body[key]
        if isinstance(body.get("errors"), list) and body["errors"]:
            return "; ".join(str(e) for e in body["errors"])
    return str(body)[:500]


def _parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """EventSource parsing: ``id:`` and ``data:`` fields, dispatched at a blank line; comments skipped."""
    import json

    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(event_id, json.loads("\n".join(data)))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = value
            elif field == "data":
                data.append(value)
