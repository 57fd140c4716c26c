"""The HTML pages in a real browser (Debian's headless Chromium): rendered, linked, readable."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium")

    def dump(url: str) -> str:
        result = subprocess.run(
            [*chromium, "--disable-gpu", f"--user-data-dir={profile}", "--dump-dom", url],
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
