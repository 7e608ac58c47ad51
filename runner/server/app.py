"""The ASGI app of ``analysis serve``: routes, error shapes, and the life cycle of the job manager."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analysis.runner.server import analyses_api, jobs_api, schedules_api
from analysis.runner.server.config import ServerConfig
from analysis.runner.server.errors import ApiError, handle_api_error, handle_http_exception
from analysis.runner.server.inputs import caller, state
from analysis.runner.server.manager import JobManager
from analysis.runner.server.metrics import ServerMetrics
from analysis.runner.server.openapi import openapi_document
from analysis.runner.server.retention import ArtifactSweeper
from analysis.runner.server.schedules import Scheduler
from analysis.runner.server.store import Store, default_url, open_store

__all__ = ["Server", "create_app"]


@dataclass
class Server:
    """What the routes share: the config, the store, the job manager and the metrics."""

    config: ServerConfig
    root: Path
    store: Store
    manager: JobManager
    metrics: ServerMetrics


async def healthz(_request: Request) -> Response:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """GET /readyz: accepting jobs and the store answers."""
    server = state(request)
    try:
        with server.store.engine.connect() as db:
            db.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return JSONResponse({"status": "unavailable", "reason": f"store: {type(exc).__name__}"}, 503)
    if not server.manager.accepting:
        return JSONResponse({"status": "unavailable", "reason": "shutting down"}, 503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format (admin token: labels name every project)."""
    caller(request).require_admin()
    state(request).manager.refresh_metrics()
    return Response(state(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def openapi(_request: Request) -> Response:
    """GET /openapi.json."""
    return JSONResponse(openapi_document())


def _one_route_per_path(routes: list[Route]) -> list[Route]:
    """Merge routes that share a path, so a 405 lists every method of the path in ``Allow``."""
    by_path: dict[str, dict[str, Any]] = {}
    for route in routes:
        for method in route.methods or ("GET",):
            by_path.setdefault(route.path, {})[method] = route.endpoint
    merged = []
    for path, handlers in by_path.items():

        async def endpoint(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            response: Response = await handlers[request.method](request)
            return response

        merged.append(Route(path, endpoint, methods=list(handlers)))
    return merged


@contextlib.asynccontextmanager
async def remote_manager(
    store: Store, config: ServerConfig, metrics: ServerMetrics
) -> AsyncIterator[JobManager]:
    """A :class:`RemoteJobManager` with its procrastinate apps open, and the server's local worker."""
    from procrastinate import SyncPsycopgConnector

    from analysis.runner.server.local_worker import local_worker
    from analysis.runner.server.queue import conninfo, ensure_schema, open_app
    from analysis.runner.server.remote import RemoteJobManager

    url = config.db_url or ""
    app = open_app(url)
    sync_app = app.with_connector(SyncPsycopgConnector(conninfo=conninfo(url)))
    async with app.open_async():
        await ensure_schema(app)
        with sync_app.open():
            async with local_worker(store, config):
                yield RemoteJobManager(store, config, metrics, app, sync_app)


def create_app(config: ServerConfig) -> Starlette:
    """The server app for ``config``; the store opens and jobs recover when it starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        root = config.root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        store = open_store(config.db_url or default_url(root))
        server_metrics = ServerMetrics(store)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(store.close)
            if config.workers:
                manager: JobManager = await stack.enter_async_context(
                    remote_manager(store, config, server_metrics)
                )
            else:
                manager = JobManager(store, config, server_metrics)
            app.state.server = Server(config, root, store, manager, server_metrics)
            manager.start()
            scheduler = Scheduler(store, manager, config.schedule_tick_s)
            ticking = [asyncio.create_task(scheduler.run())]
            if config.artifact_ttl_s:
                ticking.append(asyncio.create_task(ArtifactSweeper(store, root, config.artifact_ttl_s).run()))
            try:
                yield
            finally:
                for task in ticking:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await manager.shutdown()

    routes: list[Route] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        *jobs_api.routes,
        *analyses_api.routes,
        *schedules_api.routes,
    ]
    return Starlette(
        routes=_one_route_per_path(routes),
        lifespan=lifespan,
        exception_handlers={ApiError: handle_api_error, HTTPException: handle_http_exception},
    )
