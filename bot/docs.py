"""The interactive API documentation at `/docs`: Swagger UI from the swagger-ui-py
package, served by the app itself (no CDN, works offline, the version pinned in
uv.lock), under a Content Security Policy that allows only this origin's scripts."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

SWAGGER = Path(swagger_ui.__file__).parent / "static"
OWN = Path(__file__).parent / "docs_static"
ASSETS = {  # the only files served under /docs/static/
    "swagger-ui-bundle.js": (SWAGGER, "text/javascript; charset=utf-8"),
    "swagger-ui.css": (SWAGGER, "text/css; charset=utf-8"),
    "favicon-32x32.png": (SWAGGER, "image/png"),
    "docs.js": (OWN, "text/javascript; charset=utf-8"),
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # Swagger UI sets style attributes in its markup
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs_page() -> HTMLResponse:
    return HTMLResponse((OWN / "docs.html").read_text("utf-8"), headers=HEADERS)


@router.get("/docs/static/{name}")
async def docs_asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        return Response(status_code=404)
    folder, media_type = found
    return FileResponse(
        folder / name,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
