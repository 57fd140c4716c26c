"""Configuration: ${ENV} substitution and errors that name the key at fault."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.config import ConfigError, load, validate


def test_env_substitution_and_defaults(monkeypatch):
    monkeypatch.setenv("GH_TEST_URL", "postgresql:///x")
    config = validate(
        {
            "sources": {
                "db": {"type": "postgis", "url": "${GH_TEST_URL}", "pool_max": 3},
                "files": {"type": "geopackage", "path": "${GH_TEST_MISSING:-demo.gpkg}"},
            },
        }
    )
    assert config["sources"]["db"]["url"] == "postgresql:///x"
    assert config["sources"]["files"]["path"] == "demo.gpkg"
    assert config["server"]["limit_default"] == 100 and config["server"]["limit_max"] == 10_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"sources": {"db": {"type": "postgis", "url": "${GH_TEST_UNSET_VAR}"}}},
            "sources.db.url: environment variable GH_TEST_UNSET_VAR is not set",
        ),
        ({"sources": {"db": {"type": "postgis"}}}, "sources.db"),
        (
            {"sources": {"db": {"type": "oracle", "url": "x"}}},
            "type must be postgis or geopackage (databases, files) or wfs",
        ),
        ({"server": {"workers": 0}}, "server.workers"),
        ({"server": {"limit_default": 500, "limit_max": 100}}, "server.limit_default"),
        ({"server": {"bogus": 1}}, "server: Additional properties are not allowed ('bogus'"),
        (
            {"collections": {"x": {"source": "none", "table": "t"}}},
            "collections.x.source: no source named 'none'",
        ),
        (
            {
                "sources": {"g": {"type": "geopackage", "path": "a.gpkg"}},
                "collections": {"x": {"source": "g"}},
            },
            "collections.x: a geopackage collection needs 'layer'",
        ),
        ({"collections": {"bad id!": {"source": "g"}}}, "collections"),
    ],
)
def test_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert message in str(err.value)


def test_yaml_errors(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yml")


def test_cli_reports_config_errors(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("server:\n  workers: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.workers" in result.stderr


PG = {"type": "postgis", "url": "postgresql:///x"}
GPKG = {"type": "geopackage", "path": "/srv/data/demo.gpkg"}


@pytest.mark.parametrize(
    ("sources", "store", "expected"),
    [
        ({"files": GPKG, "db": PG}, {}, {"source": "db", "tables": "db"}),
        ({"files": GPKG}, {}, {"path": "/srv/data/geoharbor-state.sqlite", "tables": "files"}),
        ({"files": GPKG, "db": PG}, {"path": "/tmp/s.sqlite"}, {"path": "/tmp/s.sqlite", "tables": "files"}),
        ({"files": GPKG, "db": PG}, {"tables": "files"}, {"source": "db", "tables": "files"}),
    ],
)
def test_the_store_defaults_to_the_database_else_beside_the_geopackage(sources, store, expected):
    assert validate({"sources": sources, "store": store})["store"] == expected


@pytest.mark.parametrize(
    ("sources", "store", "message"),
    [
        ({"files": GPKG}, {"source": "files"}, "store.source: 'files' is not a postgis source"),
        ({"db": PG}, {"source": "db", "path": "/tmp/s"}, "not both"),
        ({"db": PG}, {"tables": "nowhere"}, "store.tables: no source named 'nowhere'"),
        ({}, {}, "set store.path"),
    ],
)
def test_store_mistakes_name_the_key(sources, store, message):
    with pytest.raises(ConfigError, match=message):
        validate({"sources": sources, "store": store})
