"""geoharbor's configuration: one YAML file, ``${ENV}`` substitution, checked at start.

The file is validated against a JSON Schema so a mistake is reported as the key that
is wrong and what is wrong with it, before anything is served.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from providers.records import COLLECTION_ID as RECORDS_COLLECTION

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


#: Who may read and edit a configured collection once keys exist (see server/auth.py).
_ACCESS: dict[str, Any] = {
    "public": {"type": "boolean", "description": "anyone may read (default true)"},
    "readers": {"type": "array", "items": {"type": "string"}, "description": "role names that may read"},
    "editors": {"type": "array", "items": {"type": "string"}, "description": "role names that may edit"},
}

#: A rate: "<count>/<second|minute|hour|day>", e.g. "120/minute".
RATE_PATTERN = r"^[1-9][0-9]*/(second|minute|hour|day)$"

_COLLECTION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source"],
    "properties": {
        "source": {"type": "string", "description": "name of an entry of `sources`"},
        "table": {"type": "string", "description": "PostGIS table or view, `schema.table` or `table`"},
        "layer": {"type": "string", "description": "GeoPackage layer"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "id_column": {"type": "string"},
        "geometry_column": {"type": "string"},
        "time_column": {"type": "string"},
        "properties": {"type": "array", "items": {"type": "string"}},
        "editable": {"type": "boolean"},
        "count": {"enum": ["exact", "estimate", "auto", "none"]},
        "crs": {"type": "array", "items": {"type": ["string", "integer"]}},
        **_ACCESS,
        "tiles": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "minzoom": {"type": "integer", "minimum": 0, "maximum": 30},
                "maxzoom": {"type": "integer", "minimum": 0, "maximum": 30},
                "extent": {"type": "integer", "minimum": 256, "maximum": 65536},
                "buffer": {"type": "integer", "minimum": 0, "maximum": 4096},
                "max_features": {"type": "integer", "minimum": 1},
                "simplify": {"type": "boolean"},
            },
        },
    },
}

#: How geoharbor reaches a remote WFS (providers.wfs_http.RemoteOptions), for the ``wfs``
#: section (every remote WFS, e.g. those registered with POST /datasets/ogc) and a wfs source.
_REMOTE: dict[str, Any] = {
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "to connect, and between reads"},
    "deadline_s": {"type": "number", "exclusiveMinimum": 0, "description": "for a whole answer"},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "backoff_s": {"type": "number", "minimum": 0},
    "cache_ttl_s": {"type": "number", "minimum": 0},
    "cache_mb": {"type": "number", "minimum": 0},
    "failures": {"type": "integer", "minimum": 1, "description": "failures in a row that open the circuit"},
    "reset_s": {"type": "number", "exclusiveMinimum": 0, "description": "how long an open circuit refuses"},
    "max_response_mb": {"type": "number", "exclusiveMinimum": 0},
    "max_features": {"type": "integer", "minimum": 1, "description": "fetched at most to filter here"},
    "count": {"enum": ["exact", "none"], "description": "numberMatched from resultType=hits, or none"},
}

_SERVER_TILES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cache_mb": {"type": "integer", "minimum": 0},
        "max_age": {"type": "integer", "minimum": 0},
        "empty": {"enum": ["204", "mvt"]},
        "gzip_min_bytes": {"type": "integer", "minimum": 0},
    },
}

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "server": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bind": {"type": "string", "pattern": r"^[^:\s]*:\d+$|^unix:"},
                "workers": {"type": "integer", "minimum": 1, "maximum": 256},
                "threads": {"type": "integer", "minimum": 1, "maximum": 256},
                "max_streams": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "open event streams per process",
                },
                "stream_heartbeat_s": {"type": "number", "exclusiveMinimum": 0},
                "stream_retry_ms": {"type": "integer", "minimum": 0},
                "timeout": {"type": "integer", "minimum": 1},
                "url": {"type": ["string", "null"], "pattern": r"^https?://"},
                "title": {"type": "string"},
                "description": {"type": "string"},
                "limit_default": {"type": "integer", "minimum": 1},
                "limit_max": {"type": "integer", "minimum": 1},
                "cors_origins": {"type": "array", "items": {"type": "string"}},
                "trust_proxy_headers": {"type": "boolean"},
                "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                "crs": {"type": "array", "items": {"type": ["string", "integer"]}},
                "tiles": _SERVER_TILES,
            },
        },
        "sources": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["type"],
                "oneOf": [
                    {
                        "additionalProperties": False,
                        "required": ["type", "url"],
                        "properties": {
                            "type": {"const": "postgis"},
                            "url": {"type": "string", "minLength": 1},
                            "read_url": {
                                "type": "string",
                                "minLength": 1,
                                "description": "a streaming replica: reads of GET/HEAD requests go there",
                            },
                            "direct_url": {
                                "type": "string",
                                "minLength": 1,
                                "description": "url goes through a transaction pooler (pgbouncer): "
                                "LISTEN, loads and the job worker connect here, bypassing it",
                            },
                            "pool_min": {"type": "integer", "minimum": 0},
                            "pool_max": {"type": "integer", "minimum": 1},
                            "prepare_threshold": {"type": ["integer", "null"], "minimum": 0},
                            "statement_timeout_ms": {"type": "integer", "minimum": 0},
                            "publish_schemas": {"type": "array", "items": {"type": "string"}},
                            "exclude": {"type": "array", "items": {"type": "string"}},
                            "editable": {"type": "boolean"},
                            "count": {"enum": ["exact", "estimate", "auto", "none"]},
                            "exact_count_below": {"type": "integer", "minimum": 0},
                            **_ACCESS,
                        },
                    },
                    {
                        "additionalProperties": False,
                        "required": ["type", "path"],
                        "properties": {
                            "type": {"const": "geopackage"},
                            "path": {"type": "string", "minLength": 1},
                            "publish": {"type": "boolean"},
                            "exclude": {"type": "array", "items": {"type": "string"}},
                            "editable": {"type": "boolean"},
                            "count": {"enum": ["exact", "estimate", "auto", "none"]},
                            **_ACCESS,
                        },
                    },
                    {
                        "additionalProperties": False,
                        "required": ["type", "url"],
                        "properties": {
                            "type": {"const": "wfs"},
                            "url": {"type": "string", "pattern": r"^https?://"},
                            "version": {"enum": ["2.0.0", "1.1.0"]},
                            **_REMOTE,
                            **_ACCESS,
                        },
                    },
                ],
            },
        },
        "wfs": {
            "type": "object",
            "additionalProperties": False,
            "description": "how remote WFS services are reached (each wfs source may override)",
            "properties": _REMOTE,
        },
        "store": {
            "type": "object",
            "additionalProperties": False,
            "description": "where geoharbor keeps its own records (layers, maps, ...)",
            "properties": {
                "source": {"type": "string", "description": "a postgis source: schema geoharbor of its DB"},
                "path": {"type": "string", "minLength": 1, "description": "a SQLite file (embedded mode)"},
                "tables": {"type": "string", "description": "the source where the REST API creates tables"},
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "api_key": {"type": "string", "description": "master key (admin); empty for none"},
                "rate_limit": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "anonymous": {"type": "string", "pattern": RATE_PATTERN},
                        "key": {"type": "string", "pattern": RATE_PATTERN},
                    },
                },
                "audit": {"type": "boolean"},
            },
        },
        "rest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "prefix": {"type": "string", "pattern": r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_]$"},
                "perpage_max": {"type": "integer", "minimum": 1},
            },
        },
        "mapfish": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "prefix": {"type": "string", "pattern": r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_]$"},
                "limit_max": {"type": "integer", "minimum": 1},
            },
        },
        "datasets": {
            "type": "object",
            "additionalProperties": False,
            "description": "uploaded files (the datasets API)",
            "properties": {
                "path": {"type": "string", "minLength": 1, "description": "directory of the uploaded files"},
                "max_upload_mb": {"type": "number", "exclusiveMinimum": 0},
                "max_unpacked_mb": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "catalogue": {
            "type": "object",
            "additionalProperties": False,
            "description": "the catalogue (GeoNode API v2 under /api/v2, OGC API - Records)",
            "properties": {
                "upload_max_mb": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "largest uploads/upload (default: datasets.max_upload_mb)",
                },
                "upload_parallel_max": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "uploads one user may have running at once",
                },
                "document_max_mb": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "largest document",
                },
            },
        },
        "sql": {
            "type": "object",
            "additionalProperties": False,
            "description": "the SQL console (POST /api/portal/sql/execute)",
            "properties": {
                "max_rows": {"type": "integer", "minimum": 1},
                "timeout_ms": {"type": "integer", "minimum": 1},
            },
        },
        "imports": {
            "type": "object",
            "additionalProperties": False,
            "description": "the importer (GeoServer importer REST API)",
            "properties": {
                "prefix": {"type": "string", "pattern": r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_]$"},
                "path": {"type": "string", "minLength": 1, "description": "directory of imported files"},
                "roots": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "server directories admins may import files from by path",
                },
                "remote_timeout_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "jobs": {
            "type": "object",
            "additionalProperties": False,
            "description": "background work (server/jobs.py)",
            "properties": {
                "workers": {"type": "integer", "minimum": 0, "description": "worker processes serve starts"},
                "concurrency": {"type": "integer", "minimum": 1, "description": "jobs at once per worker"},
                "trigger_depth": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "trigger runs started by trigger runs, at most (then the cascade stops)",
                },
                "heartbeat_s": {"type": "number", "exclusiveMinimum": 0},
                "lost_after_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "collections": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"},
            "additionalProperties": _COLLECTION,
        },
    },
}

DEFAULTS: dict[str, Any] = {
    "bind": "127.0.0.1:5000",
    "workers": 2,
    "threads": 1,
    "timeout": 60,
    "url": None,
    "title": "geoharbor",
    "description": "Geodata published with OGC API - Features",
    "limit_default": 100,
    "limit_max": 10_000,
    "cors_origins": ["*"],
    "trust_proxy_headers": False,
    "log_level": "INFO",
    "crs": [],
    "tiles": {},
}
TILE_DEFAULTS: dict[str, Any] = {"cache_mb": 64, "max_age": 0, "empty": "204", "gzip_min_bytes": 512}
REST_DEFAULTS: dict[str, Any] = {"prefix": "/rest/1", "perpage_max": 1000}
MAPFISH_DEFAULTS: dict[str, Any] = {"prefix": "/mapfish", "limit_max": 10_000}
DATASETS_DEFAULTS: dict[str, Any] = {"max_upload_mb": 2048, "max_unpacked_mb": 8192}
SQL_DEFAULTS: dict[str, Any] = {"max_rows": 10_000, "timeout_ms": 10_000}
CATALOGUE_DEFAULTS: dict[str, Any] = {"upload_parallel_max": 5, "document_max_mb": 50}
IMPORTS_DEFAULTS: dict[str, Any] = {"prefix": "/imports", "roots": [], "remote_timeout_s": 30}
JOBS_DEFAULTS: dict[str, Any] = {
    "workers": 1,
    "concurrency": 1,
    "heartbeat_s": 5,
    "lost_after_s": 60,
    "trigger_depth": 3,
}
COLLECTION_TILE_DEFAULTS: dict[str, Any] = {
    "minzoom": 0,
    "maxzoom": 22,
    "extent": 4096,
    "buffer": 64,
    "max_features": 10_000,
    "simplify": True,
}


def _substitute(value: Any, path: str) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string, recursively."""
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None:
                if default is None:
                    raise ConfigError(f"{path}: environment variable {name} is not set")
                return default
            return found

        return _ENV.sub(repl, value)
    return value


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a parsed configuration and fill defaults; raises ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("(top level): expected a mapping of server, sources, collections")
    raw = _substitute(raw, "")
    validator = jsonschema.Draft202012Validator(_SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        messages = []
        for error in errors[:10]:
            if error.validator == "oneOf" and isinstance(error.instance, dict):
                kind = error.instance.get("type")
                best = [e for e in error.context or [] if kind is None or "const" not in e.schema]
                detail = best[0].message if best else error.message
                if kind not in ("postgis", "geopackage", "wfs"):
                    detail = f"type must be postgis or geopackage (databases, files) or wfs, not {kind!r}"
                messages.append(f"{_where(error)}: {detail}")
            else:
                messages.append(f"{_where(error)}: {error.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))
    config = {
        "server": {**DEFAULTS, **raw.get("server", {})},
        "sources": raw.get("sources", {}),
        "collections": raw.get("collections", {}),
        "store": dict(raw.get("store", {})),
        "auth": {"api_key": "", "rate_limit": {}, "audit": True, **raw.get("auth", {})},
        "rest": {**REST_DEFAULTS, **raw.get("rest", {})},
        "mapfish": {**MAPFISH_DEFAULTS, **raw.get("mapfish", {})},
        "jobs": {**JOBS_DEFAULTS, **raw.get("jobs", {})},
        "wfs": dict(raw.get("wfs", {})),
        "imports": {**IMPORTS_DEFAULTS, **raw.get("imports", {})},
        "sql": {**SQL_DEFAULTS, **raw.get("sql", {})},
        "catalogue": {**CATALOGUE_DEFAULTS, **raw.get("catalogue", {})},
    }
    if RECORDS_COLLECTION in config["collections"]:
        raise ConfigError(f"collections.{RECORDS_COLLECTION}: the name of the catalogue's records collection")
    for name, coll in config["collections"].items():
        source = config["sources"].get(coll["source"])
        if source is None:
            raise ConfigError(f"collections.{name}.source: no source named {coll['source']!r}")
        key = "table" if source["type"] == "postgis" else "layer"
        if key not in coll:
            raise ConfigError(f"collections.{name}: a {source['type']} collection needs '{key}'")
    server = config["server"]
    server["tiles"] = {**TILE_DEFAULTS, **server["tiles"]}
    for coll in config["collections"].values():
        coll["tiles"] = {**COLLECTION_TILE_DEFAULTS, **coll.get("tiles", {})}
    if server["limit_default"] > server["limit_max"]:
        raise ConfigError("server.limit_default: must not exceed server.limit_max")
    _check_store(config)
    config["datasets"] = _datasets(raw.get("datasets", {}), config["store"])
    return config


def _datasets(raw: dict[str, Any], store: dict[str, Any]) -> dict[str, Any]:
    """Uploaded files live next to the store: beside its SQLite file, else in ``data/datasets``
    (relative paths are made relative to the config file by :func:`load`)."""
    datasets = {**DATASETS_DEFAULTS, **raw}
    if "path" not in datasets:
        beside_store = "path" in store
        datasets["path"] = str(Path(store["path"]).parent / "datasets") if beside_store else "data/datasets"
    return datasets


def _check_store(config: dict[str, Any]) -> None:
    """Name the store's place: a PostGIS source, or a SQLite file (embedded mode).

    Without a ``store`` section the first PostGIS source holds the records; with none,
    a SQLite file next to the first GeoPackage. ``store.tables`` (where the REST API
    creates tables) defaults to the store's source, else the first GeoPackage.
    """
    store, sources = config["store"], config["sources"]
    postgis = [n for n, s in sources.items() if s["type"] == "postgis"]
    geopackages = [n for n, s in sources.items() if s["type"] == "geopackage"]
    if "source" in store and "path" in store:
        raise ConfigError("store: give either source (PostgreSQL) or path (SQLite), not both")
    if "source" in store:
        found = sources.get(store["source"])
        if found is None or found["type"] != "postgis":
            raise ConfigError(f"store.source: {store['source']!r} is not a postgis source")
    elif "path" not in store:
        if postgis:
            store["source"] = postgis[0]
        elif geopackages:
            store["path"] = str(Path(sources[geopackages[0]]["path"]).parent / "geoharbor-state.sqlite")
        else:
            raise ConfigError("store: no postgis or geopackage source; set store.path to a SQLite file")
    if "tables" in store:
        if store["tables"] not in sources:
            raise ConfigError(f"store.tables: no source named {store['tables']!r}")
    elif "source" in store:
        store["tables"] = store["source"]
    elif geopackages:
        store["tables"] = geopackages[0]


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, substitute and validate the YAML file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    config = validate(raw)
    # Relative GeoPackage paths are relative to the config file, not the working directory.
    for source in config["sources"].values():
        if source["type"] == "geopackage" and not os.path.isabs(source["path"]):
            source["path"] = str((file.parent / source["path"]).resolve())
    store = config["store"]
    if "path" in store and not os.path.isabs(store["path"]):
        store["path"] = str((file.parent / store["path"]).resolve())
    datasets = config["datasets"]
    if not os.path.isabs(datasets["path"]):
        datasets["path"] = str((file.parent / datasets["path"]).resolve())
    imports = config["imports"]
    if "path" in imports and not os.path.isabs(imports["path"]):
        imports["path"] = str((file.parent / imports["path"]).resolve())
    imports["roots"] = [str((file.parent / root).resolve()) for root in imports["roots"]]
    return config
