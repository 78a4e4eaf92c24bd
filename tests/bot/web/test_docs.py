"""/docs (issue 15, finding 15): Swagger UI from a package, served by the app under a CSP
(no CDN: it works offline and nobody else's script runs), and the OpenAPI schema's
bearer scheme behind its Authorize button."""

from __future__ import annotations

import re

import httpx

from tests.conftest import make_settings
from tests.server import serve

TIMEOUT = 10.0


async def test_docs_load_nothing_from_elsewhere(sqlite_url: str) -> None:
    async with serve(make_settings(sqlite_url)) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            page = await http.get("/docs")
            urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assets = {url: await http.get(url) for url in urls}
            redoc = await http.get("/redoc")
            missing = await http.get("/docs/static/..%2F..%2Fconfig.py")
    assert page.status_code == 200
    assert urls and all(url.startswith("/docs/static/") for url in urls), urls
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    for url, response in assets.items():
        assert response.status_code == 200, url
        assert response.headers["x-content-type-options"] == "nosniff"
    bundle = assets["/docs/static/swagger-ui-bundle.js"]
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 500_000  # Swagger UI itself, not a loader from a CDN
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp  # no other host
    assert redoc.status_code == 404  # ReDoc would come from a CDN: not offered
    assert missing.status_code == 404


async def test_openapi_has_the_bearer_scheme_on_every_agent_route(sqlite_url: str) -> None:
    async with serve(make_settings(sqlite_url)) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            schema = (await http.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    api = {
        (path, method): op
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if path.startswith("/api/v1/") or path.startswith("/agent/api/")
    }
    # signing in is the one agent route without a token: it is how the console gets one
    public = {("/api/v1/auth/login", "post")}
    assert public <= set(api) and len(api) > 30
    for where, op in api.items():
        assert op.get("security") == ([{name: []}] if where not in public else None), where
    assert "security" not in schema["paths"]["/healthz"]["get"]
