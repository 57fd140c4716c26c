"""A real WFS server for the tests: Debian's MapServer (``mapserv``) behind a small CGI runner.

The runner is an HTTP server on loopback that hands each request to ``mapserv`` as
a CGI program (``REQUEST_METHOD``, ``QUERY_STRING``, the body on standard input) and
sends its answer back, so geoharbor talks to MapServer's own WFS 2.0.0 / 1.1.0
implementation: its capabilities, DescribeFeatureType, GetFeature in GML or GeoJSON,
FES filters, paging, sorting and reprojection.

The mapfile publishes two tables of the tests' PostGIS database (Natural Earth, see
``conftest.py``): ``countries`` (polygons, GeoJSON output offered, with a copy of
``id`` as the GeoJSON feature id: GDAL moves that column out of the properties) and
``country_points`` (points, GML only). MapServer reads them with SQL, so its counts
(``resultType=hits``) are exact; it sorts their columns as text, though.

For the fault tests the runner can be told to misbehave (:attr:`MapServerWFS.mode`):
``slow`` sleeps before answering, ``exception`` renames the requested feature type so
that MapServer itself answers with an OWS ExceptionReport, ``garbage`` answers 200 with
broken XML; :meth:`MapServerWFS.stop` leaves the port refusing connections. Every
request is counted (:attr:`MapServerWFS.requests`) so tests can tell a cached answer
from a fetched one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

MAPSERV = shutil.which("mapserv") or "/usr/lib/cgi-bin/mapserv"

MAPFILE = """MAP
  NAME "geoharbor_test"
  EXTENT -180 -90 180 90
  UNITS DD
  PROJECTION "init=epsg:4326" END
  WEB
    METADATA
      "ows_title" "geoharbor test WFS"
      "ows_onlineresource" "{url}?"
      "ows_srs" "EPSG:4326 EPSG:3857 EPSG:2154"
      "ows_enable_request" "*"
      "wfs_maxfeatures" "1000"
    END
  END
  OUTPUTFORMAT
    NAME "geojson"
    DRIVER "OGR/GEOJSON"
    MIMETYPE "application/json; subtype=geojson"
    FORMATOPTION "STORAGE=stream"
    FORMATOPTION "FORM=SIMPLE"
    FORMATOPTION "LCO:RFC7946=NO"
    FORMATOPTION "LCO:ID_FIELD=feature_id"
  END
  LAYER
    NAME "countries"
    TYPE POLYGON
    STATUS ON
    CONNECTIONTYPE POSTGIS
    CONNECTION "{pg}"
    DATA "geom FROM (SELECT *, id AS feature_id FROM countries) AS t USING UNIQUE id USING SRID=4326"
    PROJECTION "init=epsg:4326" END
    METADATA
      "wfs_title" "Natural Earth countries"
      "wfs_srs" "EPSG:4326 EPSG:3857 EPSG:2154"
      "wfs_getfeature_formatlist" "geojson"
      "gml_include_items" "all"
      "gml_featureid" "feature_id"
      "gml_types" "auto"
      "wfs_use_default_extent_for_getfeature" "false"
    END
  END
  LAYER
    NAME "country_points"
    TYPE POINT
    STATUS ON
    CONNECTIONTYPE POSTGIS
    CONNECTION "{pg}"
    DATA "geom FROM country_points USING UNIQUE id USING SRID=4326"
    PROJECTION "init=epsg:4326" END
    METADATA
      "wfs_title" "A point in each country"
      "wfs_srs" "EPSG:4326 EPSG:3857"
      "gml_include_items" "all"
      "gml_featureid" "id"
      "gml_types" "auto"
    END
  END
END
"""

CONFIG = """CONFIG
  ENV
    MS_MAPFILE "{mapfile}"
  END
END
"""

#: Answered in ``garbage`` mode: a 200 whose XML breaks off.
GARBAGE = b'<?xml version="1.0"?>\n<wfs:FeatureCollection xmlns:wfs="http://www.opengis.net/wfs/2.0"><broken'


class MapServerWFS:
    """MapServer's WFS on ``url`` (127.0.0.1, a free port), serving the files in ``workdir``."""

    def __init__(self, workdir: Path, port: int, libpq: str) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}/wfs"
        self.mapfile = workdir / "wfs.map"
        self.mapfile.write_text(MAPFILE.format(url=self.url, pg=libpq))
        self.config = workdir / "mapserver.conf"
        self.config.write_text(CONFIG.format(mapfile=self.mapfile))
        #: normal, slow, exception or garbage.
        self.mode = "normal"
        #: Seconds a ``slow`` answer waits.
        self.delay = 5.0
        #: Every request as (method, query string, body), in order.
        self.requests: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        #: Connections being served (kept alive between requests), closed by :meth:`stop`.
        self._connections: set[socket.socket] = set()
        self.start()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"wfs": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="mapserver-wfs", daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket and every open connection: the port then refuses (remote down)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            open_now, self._connections = self._connections, set()
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    # -- what it answers ----------------------------------------------------------------------
    def count(self, request: str | None = None) -> int:
        """How many requests it received (of the WFS ``request`` type, when given)."""
        with self._lock:
            found = list(self.requests)
        if request is None:
            return len(found)
        pattern = re.compile(rf"(^|&)request={request}(&|$)", re.IGNORECASE)
        return sum(1 for _, qs, body in found if pattern.search(qs) or request.encode() in body[:400])

    def run(
        self, method: str, query: str, body: bytes, content_type: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Run ``mapserv`` once as a CGI program; its status, headers and body."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MAPSERVER_CONFIG_FILE": str(self.config),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.port),
            "SCRIPT_NAME": "/wfs",
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": content_type,
        }
        done = subprocess.run([MAPSERV], input=body, env=env, capture_output=True, timeout=60, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not payload and b"\n\n" in head:
            head, _, payload = done.stdout.partition(b"\n\n")
        headers: dict[str, str] = {}
        status = 200
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return status, headers, payload


def _mangle(query: str) -> str:
    """The same request for a feature type MapServer does not have (it answers an ExceptionReport)."""
    pairs = [
        (k, "no_such_layer" if k.lower() in ("typename", "typenames") else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return urlencode(pairs)


class _Handler(BaseHTTPRequestHandler):
    wfs: MapServerWFS
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.wfs._lock:
            self.wfs._connections.add(self.connection)

    def finish(self) -> None:
        with self.wfs._lock:
            self.wfs._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # shut down under it by stop()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the tests read :attr:`MapServerWFS.requests` instead."""

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def _answer(self, method: str) -> None:
        wfs = self.wfs
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with wfs._lock:
            wfs.requests.append((method, query, body))
        mode = wfs.mode
        if mode == "slow":
            time.sleep(wfs.delay)
        if mode == "garbage":
            self._send(200, {"Content-Type": "text/xml; subtype=gml/3.2.1"}, GARBAGE)
            return
        if path != "/wfs":
            self._send(404, {"Content-Type": "text/plain"}, b"not found")
            return
        if mode == "exception":
            query = _mangle(query)
            body = body.replace(b'typeNames="', b'typeNames="no_such_layer_').replace(
                b'typeName="', b'typeName="no_such_layer_'
            )
        try:
            status, headers, payload = wfs.run(method, query, body, self.headers.get("Content-Type", ""))
        except (OSError, subprocess.SubprocessError) as exc:
            self._send(500, {"Content-Type": "text/plain"}, str(exc).encode())
            return
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer
