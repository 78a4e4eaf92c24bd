"""What every webhook endpoint does before it parses anything."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response


async def read_bounded(request: Request, limit: int) -> bytes | Response:
    """The raw body, or the error to answer: 400 for a malformed Content-Length, 413 when
    it (or, without one, the streamed body) exceeds `limit` — never read whole first."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            return Response(status_code=400)
        if int(length) > limit:
            return Response(status_code=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return Response(status_code=413)
    return bytes(body)
