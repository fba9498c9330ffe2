"""The console's ASGI application: its routes, static files and the session middleware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sealink.console.pages import action_routes
from sealink.console.web import Console, login_routes, view_routes

__all__ = ["build_app"]

_HERE = Path(__file__).parent
_SESSION_S = 8 * 3600


_HEADERS = [
    # Only this console's own scripts, styles and forms; never inside another site's frame.
    (
        b"content-security-policy",
        b"default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),  # pages hold what a logged-in user may see
]


class _SecurityHeaders:
    """Adds _HEADERS to every HTTP response (a pure ASGI middleware: SSE streams pass as is)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(
    console: Console, secret: str, *, lifespan: Any = None, https_only: bool = False
) -> Starlette:
    """`https_only`: served over TLS, so the session cookie is marked Secure (never sent in
    clear to a plain-HTTP URL of the same host)."""
    routes: list[Route | Mount] = [
        *login_routes(console),
        *view_routes(console),
        *action_routes(console),
    ]
    routes.append(Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"))
    middleware = [
        Middleware(_SecurityHeaders),
        Middleware(
            SessionMiddleware,  # signed cookie, HttpOnly; SameSite=Strict keeps other sites out
            secret_key=secret,
            session_cookie="sealink_console",
            max_age=_SESSION_S,
            same_site="strict",
            https_only=https_only,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
