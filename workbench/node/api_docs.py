"""The interactive API docs (Swagger UI) served from an installed package, not a CDN.

FastAPI's default ``/docs`` page loads Swagger UI's script and stylesheet from
a CDN, so it is blank on a machine without internet (a workshop room, an
air-gapped node, Binder behind a proxy). ``fastapi-offline`` ships those
assets in its wheel; we mount its ``static/`` folder and serve the page
pointing at it. The node and the aggregator both use this.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["DOCS_URL", "add_offline_docs"]

DOCS_URL = "/v1/docs"
STATIC_URL = "/v1/docs-static"


def _assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def add_offline_docs(app: FastAPI, title: str) -> None:
    """Serve Swagger UI at ``/v1/docs`` with its assets from ``/v1/docs-static`` (create the app with
    ``docs_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=_assets()), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/v1/openapi.json",
            title=f"{title}: API",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        )
