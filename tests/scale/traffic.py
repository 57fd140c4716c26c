"""Mixed load on a geoharbor deployment, every call written down, and the checks on what was seen.

Each client is a thread with its own ``requests.Session``: it keeps the cookies the server
sets (the consistent-read cookie of its writes) and sends them back, as a browser does.
*Writers* create features in a patch of open ocean (:data:`REGION`, where Natural Earth has
no point) and edit their own features with ``PATCH`` + ``If-Match``; every write carries a
unique ``marker`` and a ``version`` one above the version it edits. Between writes they
read their features back (by id, by bbox, as a vector tile). *Readers* never write: they
read countries (items, vector tiles) and the region, and so may be served by the replica.

What is checked afterwards (:func:`consistency_violations`): a read made after the client's
own write must show every feature at least at the version of every write answered before
that write was sent (they happened before it, so any state that holds the client's write
holds them), and the client's own writes answered before the read. A write whose answer
was lost (its host was killed) is *uncertain*: its marker may or may not be stored, and the
writer reads the feature again before its next edit.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import mapbox_vector_tile
import mercantile
import requests

#: Where the writers put their features: open Atlantic, inside one z7 tile.
REGION = (-30.0, 30.0, -29.0, 31.0)
POINTS_TILE = mercantile.tile(-29.5, 30.5, 7)
#: Features a writer creates before it only edits them.
OWN_FEATURES = 6
TIMEOUT = 30
#: A client's pause between requests (seconds): this 2-core machine also runs the servers.
THINK_S = (0.05, 0.15)
GEOJSON = {"Content-Type": "application/geo+json"}
#: Countries' tiles (every tile at zooms 1-3) and items queries the load draws from.
COUNTRY_TILES = [t for z in (1, 2, 3) for t in mercantile.tiles(-180, -85, 180, 85, z)]


@dataclass
class Call:
    """One request as its client saw it."""

    client: int
    kind: str
    method: str
    path: str
    sent: float
    ended: float = 0.0
    status: int | None = None  # None: no answer (connection reset, timeout)
    error: str | None = None
    served_by: str | None = None
    expected: bool = True  # the status was one this call may answer

    @property
    def failed(self) -> bool:
        return self.status is None or not self.expected


@dataclass
class Write:
    """A create or an edit, with the version and marker it writes."""

    call: Call
    kind: str  # create | update
    marker: str
    version: int
    fid: int | None = None

    @property
    def acked(self) -> bool:
        return self.call.status is not None and 200 <= self.call.status < 300

    @property
    def uncertain(self) -> bool:
        """No answer, or the balancer's 5xx: the write may have been applied or not."""
        return self.call.status is None or self.call.status >= 500


@dataclass
class Observation:
    """The versions of the writers' features one read returned."""

    call: Call
    seen: dict[int, int]
    #: Whether the read lists every feature of the region (a tile, a bbox query): a feature
    #: that must be seen and is not is then stale too.
    complete: bool
    only: int | None = None  # a read of one feature by id


@dataclass
class Own:
    """What a writer knows of one of its features."""

    fid: int
    version: int
    etag: str | None
    uncertain: bool = False


@dataclass
class Ledger:
    """Every call, write and observation of a run (appended from the clients' threads)."""

    #: When the run began (monotonic): times are printed from it.
    start: float = field(default_factory=time.monotonic)
    calls: list[Call] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Call | Write | Observation) -> None:
        with self.lock:
            if isinstance(item, Call):
                self.calls.append(item)
            elif isinstance(item, Write):
                self.writes.append(item)
            else:
                self.observations.append(item)


class Client(threading.Thread):
    """One user of the service: a writer, or a reader that never writes."""

    def __init__(self, index: int, base: str, ledger: Ledger, writer: bool, stop: threading.Event, seed: int):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.base = base
        self.ledger = ledger
        self.writer = writer
        self.stop = stop
        self.random = random.Random(seed * 1000 + index)
        self.session = requests.Session()
        self.own: list[Own] = []
        self.crashed: BaseException | None = None
        #: Whether a write of this client is waiting for its answer right now.
        self.writing = False

    # -- requests ------------------------------------------------------------------------------
    def call(
        self, kind: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> tuple[Call, requests.Response | None]:
        record = Call(self.index, kind, method, path, time.monotonic())
        response = None
        self.writing = method not in ("GET", "HEAD")
        try:
            response = self.session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
            record.status = response.status_code
            record.served_by = response.headers.get("X-Served-By")
            record.expected = response.status_code in ok
            if not record.expected:
                record.error = response.text[:300]
        except requests.RequestException as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
            record.expected = False
        self.writing = False
        record.ended = time.monotonic()
        self.ledger.add(record)
        return record, response

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                time.sleep(self.random.uniform(*THINK_S))
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.crashed = exc

    def step(self) -> None:
        if not self.writer:
            self.random.choice(
                [self.countries_items, self.countries_tile, self.region_items, self.region_tile]
            )()
            return
        if len(self.own) < OWN_FEATURES:
            self.create()
            return
        roll = self.random.random()
        if roll < 0.30:
            self.edit(self.random.choice(self.own))
        elif roll < 0.45:
            self.read_own(self.random.choice(self.own))
        elif roll < 0.60:
            self.region_tile()
        elif roll < 0.70:
            self.region_items()
        elif roll < 0.85:
            self.countries_items()
        else:
            self.countries_tile()

    # -- writes --------------------------------------------------------------------------------
    def create(self) -> None:
        marker = uuid.uuid4().hex
        lon = self.random.uniform(REGION[0] + 0.05, REGION[2] - 0.05)
        lat = self.random.uniform(REGION[1] + 0.05, REGION[3] - 0.05)
        feature = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [round(lon, 5), round(lat, 5)]},
            "properties": {
                "name": f"load {self.index}",
                "version": 1,
                "marker": marker,
                "client": self.index,
            },
        }
        call, response = self.call(
            "create", "POST", "/collections/points/items", ok=(201,), json=feature, headers=GEOJSON
        )
        write = Write(call, "create", marker, 1)
        if response is not None and call.status == 201:
            write.fid = int(response.headers["Location"].rstrip("/").rpartition("/")[2])
            self.own.append(Own(write.fid, 1, response.headers.get("ETag")))
        self.ledger.add(write)

    def edit(self, own: Own) -> None:
        if own.uncertain and not self.read_own(own):
            return
        marker = uuid.uuid4().hex
        patch = {"type": "Feature", "properties": {"version": own.version + 1, "marker": marker}}
        headers = {**GEOJSON, "If-Match": own.etag or "*"}
        # 412 is the right answer only when an earlier edit's fate is unknown to this writer.
        ok = (200, 412) if own.uncertain else (200,)
        call, response = self.call(
            "update", "PATCH", f"/collections/points/items/{own.fid}", ok=ok, json=patch, headers=headers
        )
        write = Write(call, "update", marker, own.version + 1, own.fid)
        self.ledger.add(write)
        if response is not None and call.status == 200:
            own.version, own.etag, own.uncertain = own.version + 1, response.headers.get("ETag"), False
        else:
            own.uncertain = True

    # -- reads of the writers' features ----------------------------------------------------------
    def read_own(self, own: Own) -> bool:
        call, response = self.call("item", "GET", f"/collections/points/items/{own.fid}")
        if response is None or call.status != 200:
            return False
        props = response.json()["properties"]
        self.ledger.add(Observation(call, {own.fid: int(props["version"])}, complete=False, only=own.fid))
        if props["version"] < own.version:
            return False  # stale: the check reports it; editing from it would only get 412
        own.version, own.etag, own.uncertain = int(props["version"]), response.headers.get("ETag"), False
        return True

    def region_items(self) -> None:
        bbox = ",".join(str(v) for v in REGION)
        call, response = self.call("items-region", "GET", f"/collections/points/items?bbox={bbox}&limit=1000")
        if response is not None and call.status == 200:
            body = response.json()
            seen = {int(f["id"]): int(f["properties"]["version"]) for f in body["features"]}
            self.ledger.add(Observation(call, seen, complete=True))

    def region_tile(self) -> None:
        t = POINTS_TILE
        call, response = self.call(
            "tile-region",
            "GET",
            f"/collections/points/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}",
            ok=(200, 204),
        )
        if response is not None and call.status in (200, 204):
            self.ledger.add(Observation(call, tile_versions(response.content), complete=True))

    # -- reads of the real data ------------------------------------------------------------------
    def countries_items(self) -> None:
        if self.random.random() < 0.5:
            path = f"/collections/countries/items?limit=10&offset={self.random.randrange(0, 170)}"
        else:
            lon, lat = self.random.uniform(-170, 150), self.random.uniform(-60, 60)
            path = f"/collections/countries/items?bbox={lon},{lat},{lon + 20},{lat + 15}&limit=50"
        self.call("items", "GET", path)

    def countries_tile(self) -> None:
        t = self.random.choice(COUNTRY_TILES)
        self.call(
            "tile", "GET", f"/collections/countries/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}", ok=(200, 204)
        )


def tile_versions(data: bytes) -> dict[int, int]:
    """Feature id -> ``version`` of the writers' features in a points tile (its only layer)."""
    if not data:
        return {}
    out = {}
    for layer in mapbox_vector_tile.decode(data).values():
        for feature in layer["features"]:
            props = feature["properties"]
            if props.get("marker") is not None:
                out[int(feature["id"])] = int(props["version"])
    return out


# -- the checks ---------------------------------------------------------------------------------------
def consistency_violations(ledger: Ledger) -> list[str]:
    """Reads that missed a write they must see (see the module doc); empty when none did."""
    acked = sorted((w for w in ledger.writes if w.acked and w.fid is not None), key=lambda w: w.call.ended)
    by_client: dict[int, list[Write]] = {}
    for w in acked:
        by_client.setdefault(w.call.client, []).append(w)
    out = []
    for obs in ledger.observations:
        mine = [w for w in by_client.get(obs.call.client, []) if w.call.ended < obs.call.sent]
        if not mine:
            continue  # a client that has not written yet may be served an older state
        horizon = mine[-1].call.sent
        need: dict[int, Write] = {}
        for w in acked:
            before = w.call.ended < horizon or (
                w.call.client == obs.call.client and w.call.ended < obs.call.sent
            )
            if before and (obs.only is None or w.fid == obs.only):
                if w.fid not in need or w.version > need[w.fid].version:
                    need[w.fid] = w
        for fid, w in need.items():
            got = obs.seen.get(fid)
            if got is None and not obs.complete:
                continue
            if got is None or got < w.version:
                out.append(
                    f"client {obs.call.client} {obs.call.method} {obs.call.path} (served by "
                    f"{obs.call.served_by}) at +{obs.call.sent - ledger.start:.3f} s: feature {fid} "
                    f"{'missing' if got is None else f'at version {got}'}, but version {w.version} "
                    f"(client {w.call.client}) was answered at +{w.call.ended - ledger.start:.3f} s"
                )
    return out


def storage_violations(ledger: Ledger, history: list[tuple[int, str | None, int]]) -> list[str]:
    """Writes answered 2xx stored exactly once, uncertain ones at most once, nothing else stored;
    each feature's versions in the order written, one step at a time (no lost update)."""
    stored: dict[str, list[tuple[int, int]]] = {}
    for fid, marker, version in history:
        if marker is not None:
            stored.setdefault(marker, []).append((fid, version))
    out = []
    sent = {w.marker: w for w in ledger.writes}
    for w in ledger.writes:
        rows = stored.get(w.marker, [])
        if w.acked and len(rows) != 1:
            out.append(f"{w.kind} {w.marker} (answered {w.call.status}) stored {len(rows)} times")
        elif not w.acked and len(rows) > (1 if w.uncertain else 0):
            out.append(f"{w.kind} {w.marker} (answered {w.call.status}) stored {len(rows)} times")
        elif w.acked and w.fid is not None and rows and rows[0] != (w.fid, w.version):
            out.append(f"{w.kind} {w.marker}: stored as {rows[0]}, written as {(w.fid, w.version)}")
    out += [f"marker {m} stored but never sent" for m in stored if m not in sent]
    versions: dict[int, list[int]] = {}
    for fid, marker, version in history:
        if marker is not None:
            versions.setdefault(fid, []).append(version)
    for fid, seq in versions.items():
        if seq != list(range(1, len(seq) + 1)):
            out.append(f"feature {fid}: versions stored in the order {seq}")
    return out
