"""The OpenAPI pages ``/docs`` (Swagger UI) and ``/redoc``, served without a CDN.

Research and education only; not a medical device.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which fails offline (and leaks the
page visit). Here they load the same files from this server: from the ``fastapi-offline``
package (a project dependency, which ships ``swagger-ui-bundle.js``, ``swagger-ui.css`` and
``redoc.standalone.js``), or from a folder named by ``docs.assets_dir`` in conf/serve.yaml
(e.g. npm's ``swagger-ui-dist/``). Without either, ``/docs`` is a short page that says what to
install, and ``/openapi.json`` (the schema itself) works regardless.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
REDOC_FILE = "redoc.standalone.js"
PACKAGE = "fastapi_offline"
INSTALL = "pip install fastapi-offline==1.7.7"


def packaged_assets() -> Path | None:
    """The static folder of the installed ``fastapi-offline`` package, if any."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


def find_assets(assets_dir: str | Path | None = None) -> Path | None:
    """The folder holding Swagger UI's files: ``assets_dir`` if given, else the package's."""
    folder = Path(assets_dir).expanduser() if assets_dir else packaged_assets()
    if folder is None or not all((folder / name).is_file() for name in SWAGGER_FILES):
        return None
    return folder


def missing_assets_message(assets_dir: str | Path | None = None) -> str:
    """One line saying what ``/docs`` needs (it never loads scripts from a CDN)."""
    where = (
        f"docs.assets_dir={assets_dir} does not hold {' and '.join(SWAGGER_FILES)}"
        if assets_dir
        else f"the {PACKAGE.replace('_', '-')} package is not installed"
    )
    return (
        f"The interactive API docs need Swagger UI's files, which this server serves itself "
        f"(never from a CDN), and {where}: run `{INSTALL}`, or point docs.assets_dir at a "
        "folder holding them (such as npm's swagger-ui-dist). The schema is at /openapi.json."
    )


def add_api_docs(app: FastAPI, assets_dir: str | Path | None = None) -> Path | None:
    """Routes ``/docs`` and ``/redoc`` on ``app`` (created with ``docs_url=None,
    redoc_url=None``); returns the assets folder in use (None: the pages say what is missing)."""
    folder = find_assets(assets_dir)
    title = app.title
    if folder is None:
        page = _missing_page(title, missing_assets_message(assets_dir))

        @app.get("/docs", include_in_schema=False)
        @app.get("/redoc", include_in_schema=False)
        async def docs_missing() -> HTMLResponse:
            return HTMLResponse(page)

        return None

    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    # "data:," is an empty icon: without a favicon file the page requests nothing else.
    favicon = f"{ASSETS_URL}/favicon.png" if (folder / "favicon.png").is_file() else "data:,"
    has_redoc = (folder / REDOC_FILE).is_file()

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_URL}/{SWAGGER_FILES[0]}",
            swagger_css_url=f"{ASSETS_URL}/{SWAGGER_FILES[1]}",
            swagger_favicon_url=favicon,
            # Swagger UI's default validator badge is an image from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        if not has_redoc:
            message = f"{folder} has no {REDOC_FILE}: use /docs, or /openapi.json."
            return HTMLResponse(_missing_page(title, message))
        return get_redoc_html(
            openapi_url=str(app.openapi_url),
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/{REDOC_FILE}",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    return folder


def _missing_page(title: str, message: str) -> str:
    """A self-contained page (no scripts, no external links) with ``message``."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} - API docs</title></head><body>"
        f"<h1>API docs</h1><p id='docs-missing'>{html.escape(message)}</p>"
        "<p><a href='/openapi.json'>/openapi.json</a> · <a href='/'>the web page</a></p>"
        "</body></html>"
    )
