"""``/docs`` without a CDN: Swagger UI's files come from the installed ``swagger-ui-bundle`` package.

FastAPI's default page loads its script and stylesheet from cdn.jsdelivr.net and its icon from
fastapi.tiangolo.com, so on a host without internet -- the setting the local base images exist for --
``/docs`` is blank. ReDoc has no packaged assets, so ``/redoc`` is off.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def install(app: FastAPI) -> None:
    from swagger_ui_bundle import swagger_ui_path  # a package lookup, no work at import time of the app

    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - docs",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png")
