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


def build_app(console: Console, secret: str, *, lifespan: Any = None) -> Starlette:
    routes: list[Route | Mount] = [
        *login_routes(console),
        *view_routes(console),
        *action_routes(console),
    ]
    routes.append(Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"))
    middleware = [
        Middleware(
            SessionMiddleware,  # signed cookie, HttpOnly; SameSite=Strict keeps other sites out
            secret_key=secret,
            session_cookie="sealink_console",
            max_age=_SESSION_S,
            same_site="strict",
        )
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
