"""Run the real application under a real uvicorn server, in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from bot.config import Settings
from bot.runtime import Runtime
from bot.web.app import create_app

STARTUP_TIMEOUT = 60.0  # a wait, not a speed bound: start-up on a busy 2-core machine
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(
    settings: Settings | Runtime,
    *,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[str, Runtime]]:
    """`async with serve(make_settings(db_url)) as (base_url, runtime): ...`

    Starts `create_app(Runtime(settings))` (or the given runtime) on 127.0.0.1 and a free
    port, with the lifespan (so the runtime and its dispatcher start), and stops it again.
    `wrap` puts an ASGI layer between uvicorn and the app (to watch what the app reads).
    """
    runtime = settings if isinstance(settings, Runtime) else Runtime(settings)
    port = free_port()
    options: dict[str, Any] = {
        "lifespan": "on",
        "log_level": "warning",
        "ws_max_size": 1 << 20,
        "timeout_graceful_shutdown": 3,  # an open event stream must not hold shutdown
        "proxy_headers": False,  # as `cicbot serve`: the app trusts server.trusted_proxies
    }
    options.update(config)
    app: ASGIApp = create_app(runtime)
    server = uvicorn.Server(
        uvicorn.Config(wrap(app) if wrap else app, host="127.0.0.1", port=port, **options)
    )
    task = asyncio.create_task(server.serve(), name=f"uvicorn-{port}")
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not server.started:
                if task.done():  # start-up failed: surface its error
                    await task
                    raise RuntimeError("uvicorn exited during start-up")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", runtime
    finally:
        stopped = await _stop(server, task)
    if not stopped:
        raise RuntimeError(f"uvicorn (and the runtime) did not stop within {STOP_TIMEOUT} s")


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    server.should_exit = True
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await task
        return True
    except TimeoutError:
        server.force_exit = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
