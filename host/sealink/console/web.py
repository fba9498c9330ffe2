"""The console's web application: Starlette routes, Jinja2 pages, Server-Sent Events.

Every page but the login needs a session; every POST needs the session's CSRF token; what a
role may do is checked here, on the server, whatever the page showed. The live model is the
feed's (sealink.console.feed); this module only renders it and records what users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from sealink.console.actions import Actions
from sealink.console.auth import Throttle, check_password, random_token
from sealink.console.feed import Alarm, Feed, Health, Impression, Update, kind_name
from sealink.console.fleetapi import FleetApi
from sealink.console.roles import role_at_least
from sealink.console.store import Account, RequestRow, Store

__all__ = ["Console", "Held", "guarded", "login_routes", "view_routes"]

_HERE = Path(__file__).parent
_PING_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
_QUEUE_KEEP = 999  # events a slow page may lag behind; it gets a resync past that
_REPLAY = 2000  # events kept for pages that connect late or reconnect
_Handler = Callable[[Request], Awaitable[Response]]
_Event = tuple[int, str, str]  # id, SSE event name, data (a rendered row)


def _sse(item: _Event) -> str:
    number, event, data = item
    lines = "".join(f"data: {line}\n" for line in data.splitlines())
    return f"id: {number}\nevent: {event}\n{lines}\n"


def _time_ms(ms: Any) -> str:
    if not isinstance(ms, int) or ms <= 0:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _time_s(s: Any) -> str:
    return _time_ms(s * 1000) if isinstance(s, int) and s > 0 else "unset"


def _kind(kind: Any) -> str:
    """A record's kind by name; the fleet's JSON gives it as a number."""
    return kind_name(kind) if isinstance(kind, int) else "?"


@dataclass(frozen=True)
class Held:
    device: str
    gateway: str
    since_ms: int
    why: str  # the alarm that quarantined it, or "status"


class Console:
    """What the routes share: the feed, the store, the templates, the SSE listeners."""

    def __init__(self, feed: Feed, store: Store) -> None:
        self.feed = feed
        self.store = store
        self.actions: Actions | None = None  # the approval path (None: read-only)
        self.fleet: FleetApi | None = None  # the fleet ledger's query API (None: not linked)
        self.throttle = Throttle()
        self.env = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self.env.filters["ms"] = _time_ms
        self.env.filters["s"] = _time_s
        self.env.filters["kind"] = _kind
        self._listeners: set[asyncio.Queue[_Event | None]] = set()  # None: the end
        # The latest events, numbered: a page asks for those after the one it was drawn at,
        # so nothing between its rendering and its stream's start (or a reconnect) is lost.
        self.last_id = 0
        self._recent: deque[_Event] = deque(maxlen=_REPLAY)

    # the feed's sink: store first, then tell the pages ------------------------------------------

    def on_update(self, update: Update) -> None:
        if isinstance(update, Impression):
            self.store.add_record(update)
            self._broadcast("impression", self.fragment("_impression.html", r=update, csrf=""))
        elif isinstance(update, Alarm):
            self.store.add_alarm(update)
            fragment = self.fragment("_alarm.html", a=update, by=None, at=None, csrf="")
            self._broadcast("alarm", fragment)
            if update.quarantine:
                self._held_changed(update.device)
        elif isinstance(update, Health):
            self._broadcast("health", self.fragment("_device.html", d=update))
            self._held_changed(update.device)

    def on_result(self, row: RequestRow) -> None:
        fragment = self.fragment("_request.html", q=row, csrf="", user_role="approver")
        self._broadcast("request", fragment)
        if row.action == "release":
            self._held_changed(row.device)

    def held(self) -> list[Held]:
        """The seals held in quarantine (SPEC §5.8): those whose signed status says so, and
        those with an alarm of a quarantine transition that no later status, nor a release
        the gateway confirmed, has lifted (a status follows only the seal's next STATUS)."""
        alarms: dict[str, Alarm] = {}
        for alarm, _, _ in self.store.alarms():  # newest first
            if alarm.quarantine and not alarm.device.startswith("gateway/"):
                alarms.setdefault(alarm.device, alarm)  # not a seal's: nothing to release
        devices = set(alarms) | {d.device for d in self.feed.devices.values() if d.quarantined}
        found = (self._held_one(device, alarms.get(device)) for device in sorted(devices))
        return [h for h in found if h is not None]

    def _held_one(self, device: str, alarm: Alarm | None) -> Held | None:
        health = self.feed.devices.get(device)
        if health is not None and health.quarantined:
            since = alarm.time_ms if alarm is not None else health.time_ms
            return Held(device, health.gateway, since, alarm.what if alarm else "status")
        if alarm is None or (health is not None and health.time_ms > alarm.time_ms):
            return None
        released = [
            r
            for r in self.store.requests(("release",))
            if r.device == device and r.state == "done" and (r.updated_ms or 0) > alarm.time_ms
        ]
        return None if released else Held(device, alarm.gateway, alarm.time_ms, alarm.what)

    def _held_changed(self, device: str) -> None:
        held = {h.device: h for h in self.held()}.get(device)
        # Who may release is the page's to know: the form goes to all, the server checks the
        # role when it is posted.
        fragment = self.fragment("_held.html", device=device, h=held, csrf="", user_role="approver")
        self._broadcast("held", fragment)

    def gateway_of(self, device: str) -> str | None:
        """The gateway that last reported `device` (its status, else a record of it)."""
        health = self.feed.devices.get(device)
        if health is not None:
            return health.gateway
        records = self.store.records(device, None, None, limit=1)
        return records[0].gateway if records else None

    def known(self) -> list[str]:
        """Every device a followed gateway reported."""
        return sorted(self.feed.devices)

    def close_streams(self) -> None:
        """End every event stream (the console is stopping): a stream never ends by itself,
        and one cut by the server's shutdown timeout would end in an error."""
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _broadcast(self, event: str, data: str) -> None:
        self.last_id += 1
        item = (self.last_id, event, data)
        self._recent.append(item)
        for queue in self._listeners:
            if queue.qsize() < _QUEUE_KEEP:  # room left for close_streams' None
                queue.put_nowait(item)

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    def _missed(self, after: int) -> list[_Event] | None:
        """The events after `after`, or None if some of them are no longer kept."""
        if after >= self.last_id:
            return []
        if not self._recent or self._recent[0][0] > after + 1:
            return None
        return [e for e in self._recent if e[0] > after]

    async def stream(self, after: int) -> AsyncIterator[str]:
        queue: asyncio.Queue[_Event | None] = asyncio.Queue(1000)
        self._listeners.add(queue)
        try:
            missed = self._missed(after)
            if missed is None:  # too far behind: the page draws itself again
                yield "event: resync\ndata: \n\n"
                return
            yield ": connected\n\n"
            sent = after
            for old in missed:
                sent = old[0]
                yield _sse(old)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), _PING_S)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if item is None:
                    return
                if item[0] > sent:  # those replayed above may be queued too
                    sent = item[0]
                    yield _sse(item)
        finally:
            self._listeners.discard(queue)

    # pages -------------------------------------------------------------------------------------

    def page(self, request: Request, name: str, user: Account, **context: Any) -> HTMLResponse:
        body = self.env.get_template(name).render(
            user=user,
            csrf=request.session.get("csrf", ""),
            path=request.url.path,
            after=self.last_id,
            fleet_linked=self.fleet is not None,
            **context,
        )
        return HTMLResponse(body)


def _user(console: Console, request: Request) -> Account | None:
    """The session's account, looked up again each time: a disabled account is out at once,
    and a session ended by logout (its id deleted) is out even if its cookie was copied."""
    sid = request.session.get("sid")
    name = console.store.session_user(sid) if isinstance(sid, str) else None
    account = console.store.account(name) if name is not None else None
    return account if account is not None and not account.disabled else None


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _checked_form(request: Request) -> dict[str, str] | None:
    """The POSTed form if it carries the session's CSRF token, else None."""
    form = await request.form()
    token = form.get("csrf")
    expected = request.session.get("csrf")
    if not isinstance(token, str) or not isinstance(expected, str):
        return None
    if not secrets.compare_digest(token, expected):
        return None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _refused(console: Console, user: str, action: str, why: str, status: int) -> Response:
    console.store.audit(user, action, "", "refused", why)
    return HTMLResponse(f"<h1>Refused</h1><p>{why}</p>", status_code=status)


def guarded(
    console: Console, role: str, action: str | None = None
) -> Callable[[Callable[[Request, Account, dict[str, str]], Awaitable[Response]]], _Handler]:
    """A route that needs a session whose role is at least `role`; a POST also needs the CSRF
    token (its form goes to the handler). `action` names it on the audit trail if refused."""

    def wrap(fn: Callable[[Request, Account, dict[str, str]], Awaitable[Response]]) -> _Handler:
        async def handler(request: Request) -> Response:
            user = _user(console, request)
            if user is None:
                if request.method == "POST":
                    return _refused(console, "-", action or "post", "not logged in", 403)
                return RedirectResponse("/login", status_code=303)
            form: dict[str, str] = {}
            if request.method == "POST":
                checked = await _checked_form(request)
                if checked is None:
                    return _refused(console, user.name, action or "post", "no CSRF token", 403)
                form = checked
            if not role_at_least(user.role, role):
                why = f"needs role {role}, {user.name} is {user.role}"
                return _refused(console, user.name, action or request.url.path, why, 403)
            return await fn(request, user, form)

        return handler

    return wrap


def login_routes(console: Console) -> list[Route]:
    async def login_page(request: Request) -> Response:
        request.session.setdefault("csrf", random_token())
        html = console.env.get_template("login.html").render(
            csrf=request.session["csrf"], error=request.query_params.get("error")
        )
        return HTMLResponse(html)

    async def login(request: Request) -> Response:
        form = await _checked_form(request)
        if form is None:
            return _refused(console, "-", "login", "no CSRF token", 403)
        name, password = form.get("name", ""), form.get("password", "")
        if console.throttle.blocked(name, _client(request)):
            console.store.audit(name, "login", _client(request), "refused", "throttled")
            return RedirectResponse("/login?error=throttled", status_code=303)
        account = console.store.account(name)
        if not check_password(console.store, account, password):
            console.throttle.failed(name, _client(request))
            console.store.audit(name, "login", _client(request), "failed", "wrong name or password")
            return RedirectResponse("/login?error=wrong", status_code=303)
        console.throttle.succeeded(name)
        request.session.clear()  # a new session on each login: no fixation of an old one
        sid = random_token()
        console.store.add_session(sid, name)
        request.session.update({"sid": sid, "csrf": random_token(), "at": int(time.time())})
        console.store.audit(name, "login", _client(request), "ok")
        return RedirectResponse("/", status_code=303)

    @guarded(console, "viewer", "logout")
    async def logout(request: Request, user: Account, form: dict[str, str]) -> Response:
        console.store.audit(user.name, "logout", _client(request), "ok")
        console.store.end_session(str(request.session.get("sid")))
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def view_routes(console: Console) -> list[Route]:
    @guarded(console, "viewer")
    async def impressions(request: Request, user: Account, form: dict[str, str]) -> Response:
        rows = console.store.records(None, None, None, limit=200)
        return console.page(request, "impressions.html", user, records=rows)

    @guarded(console, "viewer")
    async def alarms(request: Request, user: Account, form: dict[str, str]) -> Response:
        return console.page(request, "alarms.html", user, alarms=console.store.alarms())

    @guarded(console, "viewer")
    async def devices(request: Request, user: Account, form: dict[str, str]) -> Response:
        rows = sorted(console.feed.devices.values(), key=lambda d: d.device)
        gateways = sorted(console.feed.gateways.values(), key=lambda g: g.gateway)
        return console.page(request, "devices.html", user, devices=rows, gateways=gateways)

    @guarded(console, "viewer")
    async def stream(request: Request, user: Account, form: dict[str, str]) -> Response:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        # A reconnecting EventSource says the last id it got; a new one, the page's own.
        last = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        after = int(last) if last.isdigit() else 0
        body = console.stream(after)
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    @guarded(console, "operator", "ack")
    async def ack(request: Request, user: Account, form: dict[str, str]) -> Response:
        key = form.get("key", "")
        done = console.store.ack(key, user.name)
        console.store.audit(
            user.name,
            "ack",
            key,
            "ok" if done else "failed",
            "" if done else "no such unacknowledged alarm",
        )
        return RedirectResponse("/alarms", status_code=303)

    return [
        Route("/", impressions),
        Route("/alarms", alarms),
        Route("/alarms/ack", ack, methods=["POST"]),
        Route("/devices", devices),
        Route("/stream", stream),
    ]
