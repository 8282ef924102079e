"""``/docs`` and ``/redoc`` load Swagger UI / ReDoc from the server itself, never from a CDN;
without the files they say what to install, and ``/openapi.json`` works either way."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from derm_exp.service.api_docs import ASSETS_URL, SWAGGER_FILES, find_assets, packaged_assets
from derm_exp.service.app import ServiceSettings, create_app


def _client(loaded, assets_dir: Path | None) -> TestClient:
    settings = ServiceSettings(docs_assets_dir=str(assets_dir) if assets_dir else None)
    return TestClient(create_app(loaded, settings))


def _external_urls(page: str) -> list[str]:
    """Every src/href of the page that leaves the server."""
    return [u for u in re.findall(r'(?:src|href)="([^"]+)"', page) if "//" in u]


def test_docs_pages_load_their_assets_from_the_server(loaded, tmp_path: Path) -> None:
    files = {"swagger-ui-bundle.js": "/* ui */", "swagger-ui.css": "/* css */"}
    files["redoc.standalone.js"] = "/* redoc */"
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    client = _client(loaded, tmp_path)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    assert f'src="{ASSETS_URL}/swagger-ui-bundle.js"' in docs.text
    assert f'href="{ASSETS_URL}/swagger-ui.css"' in docs.text
    assert _external_urls(docs.text) == []
    redoc = client.get("/redoc")
    assert f'src="{ASSETS_URL}/redoc.standalone.js"' in redoc.text
    assert _external_urls(redoc.text) == [] and "fonts.googleapis" not in redoc.text
    for name, text in files.items():
        assert client.get(f"{ASSETS_URL}/{name}").text == text
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_without_the_assets_docs_say_what_they_need(loaded, tmp_path: Path) -> None:
    (tmp_path / "swagger-ui.css").write_text("/* only half of it */")
    client = _client(loaded, tmp_path)
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200 and "id='docs-missing'" in page.text
        assert "swagger-ui-bundle.js" in page.text
        assert "/openapi.json" in page.text and "<script" not in page.text
    assert client.get(f"{ASSETS_URL}/swagger-ui.css").status_code == 404
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert find_assets(tmp_path) is None


def test_the_packaged_assets_are_found_when_installed(loaded) -> None:
    """fastapi-offline is a dependency (pyproject.toml): with CI set it must be installed."""
    folder = packaged_assets()
    if folder is None:
        message = "fastapi-offline is not installed (pip install -e .)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert find_assets() == folder
    client = _client(loaded, None)
    assert f'src="{ASSETS_URL}/{SWAGGER_FILES[0]}"' in client.get("/docs").text
    bundle = client.get(f"{ASSETS_URL}/{SWAGGER_FILES[0]}")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
