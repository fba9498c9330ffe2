"""`sealink fleet serve`: the fleet's read-only JSON API for downstream systems (issue 14).

Every request carries `Authorization: Bearer <token>` (`sealink fleet tokens add`); without a
valid, unrevoked one the answer is 401 and nothing else, whatever the path. Lists are keyset
paged (_query.py): `limit` (at most 1000) and the `next` cursor of the page before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sealink.errors import FleetError
from sealink.fleet import _query
from sealink.fleet._store import Store

__all__ = ["build_api"]

_DEFAULT_LIMIT = 100


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


def build_api(store: Store) -> Starlette:
    """The API's app, reading through the store's connection pool."""

    def endpoint(handler: Callable[[Request, _query.Conn], JSONResponse]) -> Any:
        # A sync endpoint: Starlette runs it in its thread pool, as psycopg's pool is sync.
        def guarded(request: Request) -> JSONResponse:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            with store.pool.connection() as conn:
                if scheme.lower() != "bearer" or not token or not _query.token_ok(conn, token):
                    return JSONResponse(
                        {"error": "unauthorized"},
                        status_code=401,
                        headers={"www-authenticate": "Bearer"},
                    )
                try:
                    return handler(request, conn)
                except _BadRequest as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)

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
            return JSONResponse({"error": "no such device"}, status_code=404)
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
        return JSONResponse({"error": "not found"}, status_code=404)

    return Starlette(
        routes=[
            Route("/v1/records", endpoint(records)),
            Route("/v1/devices/{device}", endpoint(device)),
            Route("/v1/alarms", endpoint(alarms)),
            Route("/v1/permits", endpoint(permits)),
            # Any other path behind the token too: without one, not even which paths exist.
            Route("/{path:path}", endpoint(unknown)),
        ]
    )
