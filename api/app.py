"""The HTTP API and the control-tower page (FastAPI on uvicorn, async psycopg with a pool).

``/v1/...`` needs ``Authorization: Bearer <token>`` (``fleetstream token add``): no token
or an unknown or revoked one is 401, a viewer's write is 403, and every request sees its
token's tenant only (``api/tenancy.py``). ``/`` is the page, ``/healthz``, ``/readyz`` and
``/metrics`` are for operators (no token), ``/openapi.json`` describes it all (the
interactive docs pages are off: they load scripts from a CDN).
"""

# no "from __future__ import annotations": FastAPI reads the handlers' annotations, which name
# dependencies defined inside create_app

import asyncio
import gzip
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, Field

from api import queries
from api.health import metrics_text, readiness
from api.live import ChangeHub, stream_events
from api.roads import roads_payload
from api.tenancy import TenantDatabase
from api.tokens import Principal
from core.plan import Plan, PlanError
from core.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("fleetstream.api")

STATIC = Path(__file__).parent / "static"
VEHICLE_ID = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TRACK_POINTS = 20_000
MAX_ROWS = 1000
_bearer = HTTPBearer(auto_error=False, description="a token from `fleetstream token add TENANT`")


class AssignBody(BaseModel):
    owner: str = Field(min_length=1, max_length=100, description="who handles it")


class CommentBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class CloseBody(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, f"{name}: give a time zone, e.g. 2026-11-23T08:00:00Z")
    return value


def create_app(settings: Settings) -> FastAPI:
    """The application for ``settings`` (the pool opens, and the live hub starts, with the app)."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.dsn(),
        min_size=1,
        max_size=settings.api_pool_size,
        open=False,
        timeout=10.0,
        kwargs=TenantDatabase.pool_kwargs(),
    )
    db = TenantDatabase(pool, settings.dsn())
    hub = ChangeHub(db, settings.dsn(), settings.api_sse_queue)
    closing = asyncio.Event()
    roads: dict[str, Any] = {}

    async def load_roads() -> None:
        if not settings.api_map_network:
            return
        try:
            roads["body"] = await asyncio.to_thread(
                roads_payload, settings.api_map_network, settings.state_dir / "cache"
            )
        except Exception as exc:  # the page works without a base map
            log.error("api: could not build the base map from %s: %s", settings.api_map_network, exc)
            roads["error"] = str(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=False)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(hub.run(stop), name="live-hub"), asyncio.create_task(load_roads())]
        log.info("api: serving on %s", settings.api_url())
        try:
            yield
        finally:
            closing.set()
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()

    app = FastAPI(
        title="fleetstream control tower",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.closing = closing
    app.state.hub = hub

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"database unavailable: {str(exc).strip()[:200]}"}, status_code=503)

    # ------------------------------------------------------------ who is asking

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        found = await db.principal(credentials.credentials)
        if found is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return found

    async def dispatcher(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.can_write:
            raise HTTPException(403, f"the {who.role} role may only read")
        return who

    Reader = Annotated[Principal, Depends(principal)]
    Writer = Annotated[Principal, Depends(dispatcher)]
    VehicleId = Annotated[str, PathParam(pattern=VEHICLE_ID)]

    # ------------------------------------------------------------ /v1: reading

    @app.get("/v1/me", tags=["v1"], summary="The token's tenant and role")
    async def me(who: Reader) -> dict[str, Any]:
        return {"tenant": who.tenant, "role": who.role, "name": who.name, "token_id": who.token_id}

    @app.get("/v1/vehicles", tags=["v1"], summary="Every vehicle with its current state (vehicle_current)")
    async def vehicles(who: Reader) -> list[dict[str, Any]]:
        async with db.session(who.tenant) as conn:
            return await queries.vehicles(conn, who.tenant)

    @app.get("/v1/vehicles/{vehicle}", tags=["v1"], summary="One vehicle's current state")
    async def vehicle(who: Reader, vehicle: VehicleId) -> dict[str, Any]:
        async with db.session(who.tenant) as conn:
            found = await queries.vehicle(conn, who.tenant, vehicle)
        if found is None:
            raise HTTPException(404, f"no vehicle {vehicle!r}")
        return found

    @app.get("/v1/vehicles/{vehicle}/track", tags=["v1"], summary="A vehicle's fixes between two times")
    async def track(
        who: Reader,
        vehicle: VehicleId,
        since: Annotated[datetime | None, Query(description="default: one hour before until")] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_POINTS)] = 5000,
    ) -> dict[str, Any]:
        end = _aware(until, "until") or datetime.now(UTC)
        start = _aware(since, "since") or end - timedelta(hours=1)
        if start >= end:
            raise HTTPException(422, "since must be before until")
        async with db.session(who.tenant) as conn:
            return await queries.track(conn, who.tenant, vehicle, start, end, limit)

    @app.get(
        "/v1/vehicles/{vehicle}/plan",
        tags=["v1"],
        summary="A vehicle's plan: stops, windows, live ETAs and on-time status",
    )
    async def plan(who: Reader, vehicle: VehicleId) -> dict[str, Any]:
        async with db.session(who.tenant) as conn:
            found = await queries.plan(conn, who.tenant, vehicle)
        if found is None:
            raise HTTPException(404, f"no plan for {vehicle!r}")
        return found

    @app.get("/v1/alerts", tags=["v1"], summary="Alerts, newest first")
    async def alerts(
        who: Reader,
        status: Annotated[str | None, Query(pattern="^(open|resolved|retracted)$")] = None,
        type: Annotated[str | None, Query(max_length=64)] = None,
        vehicle: Annotated[str | None, Query(pattern=VEHICLE_ID)] = None,
        since: Annotated[datetime | None, Query(description="alerts that started at or after")] = None,
        until: Annotated[datetime | None, Query(description="alerts that started before")] = None,
        exceptions: Annotated[bool, Query(description="only open alerts nobody closed")] = False,
        limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 200,
    ) -> list[dict[str, Any]]:
        async with db.session(who.tenant) as conn:
            return await queries.alerts(
                conn,
                who.tenant,
                status=status,
                type=type,
                vehicle=vehicle,
                since=_aware(since, "since"),
                until=_aware(until, "until"),
                exceptions=exceptions,
                limit=limit,
            )

    @app.get("/v1/alerts/{alert_id}", tags=["v1"], summary="One alert with its actions")
    async def alert(who: Reader, alert_id: UUID) -> dict[str, Any]:
        async with db.session(who.tenant) as conn:
            found = await queries.alert(conn, who.tenant, str(alert_id))
        if found is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return found

    @app.get("/v1/stop-events", tags=["v1"], summary="Arrivals and departures, newest first")
    async def stop_events(
        who: Reader,
        kind: Annotated[str | None, Query(pattern="^(arrival|departure)$")] = None,
        vehicle: Annotated[str | None, Query(pattern=VEHICLE_ID)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 200,
    ) -> list[dict[str, Any]]:
        async with db.session(who.tenant) as conn:
            return await queries.stop_events(
                conn,
                who.tenant,
                kind=kind,
                vehicle=vehicle,
                since=_aware(since, "since"),
                until=_aware(until, "until"),
                limit=limit,
            )

    @app.get(
        "/v1/kpis",
        tags=["v1"],
        summary="A day's KPIs: on-time rate, open exceptions, ETA accuracy by horizon, dwell by zone, alerts by type",
    )
    async def kpis(who: Reader, day: Annotated[date | None, Query(description="UTC day; default today")] = None) -> Any:
        start = datetime.combine(day or datetime.now(UTC).date(), time(0), UTC)
        async with db.session(who.tenant) as conn:
            return await queries.kpis(conn, who.tenant, start)

    @app.get("/v1/cells", tags=["v1"], summary="H3 cell aggregates over a time range (the map's hexagons)")
    async def cells(
        who: Reader,
        since: Annotated[datetime | None, Query(description="default: one hour before until")] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
    ) -> list[dict[str, Any]]:
        end = _aware(until, "until") or datetime.now(UTC)
        start = _aware(since, "since") or end - timedelta(hours=1)
        if start >= end or end - start > timedelta(days=31):
            raise HTTPException(422, "since must be before until, at most 31 days apart")
        async with db.session(who.tenant) as conn:
            return await queries.cells(conn, who.tenant, start, end)

    # ------------------------------------------------------------ /v1: writing (dispatcher)

    @app.post("/v1/plans", tags=["v1"], status_code=201, summary="Store a plan (dispatcher): the next version")
    async def post_plan(
        who: Writer, response: Response, body: Annotated[dict[str, Any], Body(description="one plan (core/plan.py)")]
    ) -> dict[str, Any]:
        body = {**body, "tenant": body.get("tenant", who.tenant)}
        if body["tenant"] != who.tenant:
            raise HTTPException(403, f"this token may store plans for tenant {who.tenant!r} only")
        body.setdefault("version", 0)
        try:
            new_plan = Plan.from_dict(body)
        except PlanError as exc:
            raise HTTPException(422, str(exc)) from None
        if not re.fullmatch(VEHICLE_ID, new_plan.vehicle):
            raise HTTPException(422, f"vehicle: {new_plan.vehicle!r} is not a valid id ([A-Za-z0-9_-], 1-64)")
        version, stored = await db.store_plan(who.tenant, new_plan)
        if not stored:
            response.status_code = 200
        return {"tenant": who.tenant, "vehicle": new_plan.vehicle, "version": version, "stored": stored}

    async def act(
        who: Principal, alert_id: UUID, action: str, owner: str | None = None, comment: str | None = None
    ) -> dict[str, Any]:
        try:
            async with db.session(who.tenant, write=True) as conn:
                return await queries.alert_action(conn, who.tenant, str(alert_id), action, who.actor, owner, comment)
        except queries.AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None

    @app.post("/v1/alerts/{alert_id}/acknowledge", tags=["v1"], summary="Acknowledge an alert (dispatcher)")
    async def acknowledge(who: Writer, alert_id: UUID) -> dict[str, Any]:
        return await act(who, alert_id, "acknowledge")

    @app.post("/v1/alerts/{alert_id}/assign", tags=["v1"], summary="Give an alert an owner (dispatcher)")
    async def assign(who: Writer, alert_id: UUID, body: AssignBody) -> dict[str, Any]:
        return await act(who, alert_id, "assign", owner=body.owner)

    @app.post("/v1/alerts/{alert_id}/comments", tags=["v1"], summary="Comment on an alert (dispatcher)")
    async def comment(who: Writer, alert_id: UUID, body: CommentBody) -> dict[str, Any]:
        return await act(who, alert_id, "comment", comment=body.text)

    @app.post("/v1/alerts/{alert_id}/close", tags=["v1"], summary="Close an alert: handled (dispatcher)")
    async def close(who: Writer, alert_id: UUID, body: CloseBody | None = None) -> dict[str, Any]:
        return await act(who, alert_id, "close", comment=body.comment if body else None)

    @app.post("/v1/alerts/{alert_id}/reopen", tags=["v1"], summary="Reopen a closed alert (dispatcher)")
    async def reopen(who: Writer, alert_id: UUID) -> dict[str, Any]:
        return await act(who, alert_id, "reopen")

    # ------------------------------------------------------------ /v1/stream

    @app.get(
        "/v1/stream",
        tags=["v1"],
        summary="Live updates (Server-Sent Events): alerts, stop events, ETAs, vehicles; resume with Last-Event-ID",
        response_class=StreamingResponse,
    )
    async def stream(request: Request, who: Reader, last_event_id: int | None = None) -> StreamingResponse:
        header = request.headers.get("last-event-id")
        if header is not None:
            try:
                last_event_id = int(header)
            except ValueError:
                raise HTTPException(422, "Last-Event-ID must be an integer (a rev)") from None
        token = request.headers["authorization"].split(" ", 1)[1].strip()

        async def still_allowed() -> bool:
            return await db.principal(token) is not None

        frames = stream_events(hub, who.tenant, last_event_id, still_allowed, closing)
        return StreamingResponse(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # ------------------------------------------------------------ operations

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Database, gateway shards and dataflow ready (503 with reasons)")
    async def readyz() -> JSONResponse:
        error = None
        try:
            await asyncio.wait_for(db.ping(), 3.0)
        except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
            error = str(exc).strip()[:200] or type(exc).__name__
        result = await asyncio.to_thread(readiness, settings, error)
        body = {"ready": result.ready, "reasons": result.reasons, "checks": result.checks}
        return JSONResponse(body, status_code=200 if result.ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics of every engine process")
    async def metrics() -> Response:
        text = await asyncio.to_thread(metrics_text, settings.metrics_dir)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/map/roads.geojson", include_in_schema=False)
    async def road_map(request: Request) -> Response:
        for _ in range(600):  # built at start, in a thread: wait for it (a cold build takes a while)
            if "body" in roads or "error" in roads or not settings.api_map_network:
                break
            await asyncio.sleep(0.1)
        if "body" not in roads:
            raise HTTPException(503, roads.get("error", "no base map configured (api_map_network)"))
        headers = {"Cache-Control": "max-age=3600", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(roads["body"], media_type="application/geo+json", headers=headers)
        return Response(gzip.decompress(roads["body"]), media_type="application/geo+json", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.api_web_dir.is_dir():
        app.mount("/vendor", StaticFiles(directory=settings.api_web_dir), name="vendor")
    else:
        log.warning("api: %s is missing (run scripts/bootstrap.sh): the page has no map library", settings.api_web_dir)
    return app
