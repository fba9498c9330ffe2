"""`sealink fleet serve`: the fleet's read-only JSON API for downstream systems (issue 14).

Every request carries `Authorization: Bearer <token>` (`sealink fleet tokens add`); without a
valid, unrevoked one the answer is 401 and nothing else, whatever the path. Lists are keyset
paged (_query.py): `limit` (at most 1000) and the `next` cursor of the page before.
A record's evidence bundle is served from the database, or asked of its gateway (_bundles.py):
404 no such record, 504 the gateway did not answer, 502 it refused or sent one that does not
verify (never kept), 503 the fleet has no approver key to ask with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sealink.errors import FleetError
from sealink.fleet import _query
from sealink.fleet._bundles import (
    BundleFetcher,
    BundleRefused,
    GatewaySilent,
    HeldRecord,
    check_bundle,
    held_record,
    keep_bundle,
)
from sealink.fleet._store import Store

__all__ = ["build_api"]

log = logging.getLogger("sealink.fleet")

_DEFAULT_LIMIT = 100
_BUNDLE_TYPE = "application/json"  # a bundle file is JSON (SPEC §14.5)


class _BadRequest(Exception):
    pass


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _BadRequest(f"{name}: an integer, got {value!r}") from None


def _limit(request: Request) -> int:
    limit = _int(request, "limit")
    if limit is None:
        return _DEFAULT_LIMIT
    if not 1 <= limit <= _query.PAGE_MAX:
        raise _BadRequest(f"limit: 1..{_query.PAGE_MAX}, got {limit}")
    return limit


def _after(request: Request, shape: tuple[type, ...]) -> list[Any] | None:
    cursor = request.query_params.get("next")
    if cursor is None:
        return None
    try:
        return _query.decode_cursor(cursor, shape)
    except FleetError as exc:
        raise _BadRequest(str(exc)) from None


def _page(page: _query.Page) -> JSONResponse:
    return JSONResponse({"items": page.items, "next": page.next})


def _authorized(request: Request, conn: _query.Conn) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and _query.token_ok(conn, token)


def _unauthorized() -> JSONResponse:
    return JSONResponse(
        {"error": "unauthorized"}, status_code=401, headers={"www-authenticate": "Bearer"}
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bundle_endpoint(store: Store, fetcher: BundleFetcher | None) -> Any:
    """GET /v1/records/{device}/{counter}/bundle: kept, else asked of the record's gateway."""

    def held(request: Request) -> HeldRecord | JSONResponse | None:
        with store.pool.connection() as conn:
            if not _authorized(request, conn):
                return _unauthorized()
            device, counter = request.path_params["device"], request.path_params["counter"]
            if counter >= 1 << 63:  # past a bigint: no record has it
                return None
            return held_record(conn, device, counter)

    def keep(device: str, counter: int, record: HeldRecord, data: bytes) -> None:
        check_bundle(data, device, counter, record)
        with store.pool.connection() as conn:
            keep_bundle(conn, device, counter, record.gateway, data)

    async def bundle(request: Request) -> Response:
        # Async: the wait for the gateway holds no thread; the database calls take one each.
        record = await run_in_threadpool(held, request)
        if isinstance(record, JSONResponse):
            return record
        if record is None:
            return _error(404, "no such record")
        if record.bundle is not None:
            return Response(record.bundle, media_type=_BUNDLE_TYPE)
        if fetcher is None:
            return _error(503, "bundles from the gateways are not configured: [serve] approver")
        device, counter = request.path_params["device"], request.path_params["counter"]
        try:
            data = await fetcher.fetch(record, device, counter)
            await run_in_threadpool(keep, device, counter, record, data)
        except GatewaySilent as exc:
            return _error(504, str(exc))
        except BundleRefused as exc:
            log.warning("bundle refused", extra={"fields": {"device": device, "why": str(exc)}})
            return _error(502, str(exc))
        return Response(data, media_type=_BUNDLE_TYPE)

    return bundle


def build_api(store: Store, fetcher: BundleFetcher | None = None) -> Starlette:
    """The API's app, reading through the store's connection pool; bundles not kept yet are
    asked of the gateways through `fetcher` (None: only the kept ones are served)."""

    def endpoint(handler: Callable[[Request, _query.Conn], JSONResponse]) -> Any:
        # A sync endpoint: Starlette runs it in its thread pool, as psycopg's pool is sync.
        def guarded(request: Request) -> JSONResponse:
            with store.pool.connection() as conn:
                if not _authorized(request, conn):
                    return _unauthorized()
                try:
                    return handler(request, conn)
                except _BadRequest as exc:
                    return _error(400, str(exc))

        return guarded

    def records(request: Request, conn: _query.Conn) -> JSONResponse:
        where = _query.RecordFilter(
            device=request.query_params.get("device"),
            org=request.query_params.get("org"),
            permit=_int(request, "permit"),
            document_sha256=request.query_params.get("document_sha256"),
            since_ms=_int(request, "since_ms"),
            until_ms=_int(request, "until_ms"),
        )
        after = _after(request, _query.record_cursor_shape(where))
        return _page(_query.records_page(conn, where, after, _limit(request)))

    def device(request: Request, conn: _query.Conn) -> JSONResponse:
        summary = _query.device_summary(conn, request.path_params["device"])
        if summary is None:
            return _error(404, "no such device")
        return JSONResponse(summary)

    def alarms(request: Request, conn: _query.Conn) -> JSONResponse:
        page = _query.alarms_page(
            conn,
            request.query_params.get("device"),
            _int(request, "since_ms"),
            _after(request, (int,)),
            _limit(request),
        )
        return _page(page)

    def permits(request: Request, conn: _query.Conn) -> JSONResponse:
        page = _query.permits_page(
            conn,
            request.query_params.get("device"),
            request.query_params.get("document_sha256"),
            _after(request, (str, int)),
            _limit(request),
        )
        return _page(page)

    def unknown(request: Request, conn: _query.Conn) -> JSONResponse:
        return _error(404, "not found")

    return Starlette(
        routes=[
            Route("/v1/records", endpoint(records)),
            Route("/v1/devices/{device}", endpoint(device)),
            Route("/v1/alarms", endpoint(alarms)),
            Route("/v1/permits", endpoint(permits)),
            Route("/v1/records/{device}/{counter:int}/bundle", _bundle_endpoint(store, fetcher)),
            # Any other path behind the token too: without one, not even which paths exist.
            Route("/{path:path}", endpoint(unknown)),
        ]
    )
