"""The HTML pages in a real browser (Debian's headless Chromium): rendered, linked, readable."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it)")
    profile = tmp_path_factory.mktemp("chromium")

    def dump(url: str) -> str:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    return dump


def test_pages_render_in_a_browser(base, backend, browser):
    landing = browser(f"{base}/?f=html")
    assert "geoharbor" in landing and f"{base}/collections" in landing
    collections = browser(f"{base}/collections?f=html")
    assert f"{backend}-countries" in collections
    page = browser(f"{base}/collections/{backend}-countries/items?f=html&limit=20&sortby=name")
    assert "Afghanistan" in page and "<table" in page
    assert f"{base}/collections/{backend}-countries/items?" in page  # paging links
    item = browser(f"{base}/collections/{backend}-countries/items/1?f=html")
    assert "pop_est" in item


def test_landing_page_embeds_the_map(base, browser):
    landing = browser(f"{base}/?f=html")
    assert f'src="{base}/map"' in landing
    assert "View the collections in this service" in landing
