"""Run the console: the feed, the store and the web app on one event loop, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from sealink.console.actions import Actions
from sealink.console.app import build_app
from sealink.console.auth import load_secret
from sealink.console.config import ConsoleConfig, ConsoleError
from sealink.console.feed import Feed
from sealink.console.fleetapi import FleetApi
from sealink.console.store import Store
from sealink.console.web import Console

__all__ = ["serve"]

log = logging.getLogger("sealink.console")

_GRACE_S = 2  # open event streams never end by themselves: shutdown closes them after this


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the open event streams when told to stop."""

    def __init__(self, console: Console, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._console = console

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler: the streams are ended from the event loop itself.
        asyncio.get_running_loop().call_soon_threadsafe(self._console.close_streams)


def _bound(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so the URL (port 0: the one the
    kernel chose) is known at once; connections made meanwhile wait in its backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConsoleError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


async def serve(config: ConsoleConfig, on_listening: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM; `on_listening` gets the URL once the socket is bound."""
    secret = load_secret(config.secret_key_file)
    store = Store(config.database)
    console = Console(Feed(config.mqtt, config.gateway_keys(), config.client_id), store)
    console.feed.add_sink(console.on_update)
    if config.approver is not None:
        console.actions = Actions(config, store, console.on_result)
    else:
        log.warning("no approver key: the console is read-only (no permits, releases, bundles)")
    if config.fleet is not None:
        console.fleet = FleetApi(config.fleet)
        log.info("records from the fleet ledger", extra={"fields": {"url": config.fleet.url}})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(console.feed)
            if console.actions is not None:
                await stack.enter_async_context(console.actions)
            yield

    try:
        host, port = config.listen
        server = _Server(
            console,
            uvicorn.Config(
                build_app(console, secret, lifespan=lifespan, https_only=config.scheme == "https"),
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=_GRACE_S,
                # None: plain HTTP (config.py checked the pair and the key's mode)
                ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file,
            ),
        )
        sock = _bound(host, port)
        on_listening(f"{config.scheme}://{host}:{sock.getsockname()[1]}")
        await server.serve(sockets=[sock])
    finally:
        store.close()
