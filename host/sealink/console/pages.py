"""The console's pages that change a seal or fetch its evidence (permits, quarantine release,
bundles), the search over what it stored, and the Records page over the fleet ledger
([fleet], `FleetApi`). Each action is checked for its role on the server, sent on the approval
path (`Actions`) or to the fleet, and written to the audit trail with its outcome.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sealink.config import NAME_RE
from sealink.console.config import ConsoleError
from sealink.console.fleetapi import FleetProblem
from sealink.console.store import Account
from sealink.console.web import Console, guarded
from sealink.errors import SealinkError

__all__ = ["action_routes"]

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_CLOCK_SKEW_S = 60  # a permit starts this much before now: the seal's clock may lag
_MAX_COUNT = 1000
_MAX_MINUTES = 7 * 24 * 60


class BadInput(ConsoleError):
    """A form field that is not what the action takes; the message names it."""


def _int(form: Mapping[str, str], name: str, lo: int, hi: int, default: int | None = None) -> int:
    text = form.get(name, "").strip()
    if not text and default is not None:
        return default
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise BadInput(f"{name}: a whole number {lo}..{hi}, got {text!r}")
    return int(text)


def _permit_fields(form: dict[str, str]) -> dict[str, Any]:
    now = int(time.time())
    fields: dict[str, Any] = {
        "count": _int(form, "count", 1, _MAX_COUNT),
        "not_before_s": now - _CLOCK_SKEW_S,
        "not_after_s": now + 60 * _int(form, "minutes", 1, _MAX_MINUTES, 60),
        "operator": _int(form, "operator", 0, 2**32 - 1, 0),
    }
    digest = _document(form)
    if digest is not None:
        fields["document_sha256"] = digest
    return fields


def _document(form: Mapping[str, str]) -> str | None:
    """The form's document_sha256 (lower case), if it gives one."""
    digest = form.get("document_sha256", "").strip().lower()
    if not digest:
        return None
    if not _DIGEST_RE.match(digest):
        raise BadInput("document_sha256: 64 hex digits (the SHA-256 of the document)")
    return digest


def _device(console: Console, form: dict[str, str]) -> tuple[str, str]:
    """The device a form names and the gateway that reports it."""
    device = form.get("device", "").strip()
    if not device:
        raise BadInput("device: missing")
    gateway = console.gateway_of(device)
    if gateway is None:
        raise BadInput(f"device: {device!r} is not a seal any followed gateway reports")
    return device, gateway


async def _act(
    console: Console, user: Account, action: str, form: dict[str, str], fields: Any
) -> Response:
    """Send one request and audit it; the page shows its results as they come (SSE)."""
    device, gateway = _device(console, form)
    if console.actions is None:
        raise ConsoleError("this console has no approver key: it cannot change seals")
    request = await console.actions.request(gateway, action, device, user.name, **fields)
    console.store.audit(user.name, action, f"{device}@{gateway}", "sent", f"request {request}")
    return RedirectResponse("/permits" if action in ("permit", "revoke") else "/quarantine", 303)


def _failed(console: Console, user: Account, action: str, exc: SealinkError) -> Response:
    console.store.audit(user.name, action, "", "failed", str(exc))
    return HTMLResponse(f"<h1>Not done</h1><p id='why'>{_escape(str(exc))}</p>", 400)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(text: str | None) -> int | None:
    """A datetime-local field (UTC) as Unix milliseconds."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise BadInput(f"time: not YYYY-MM-DDTHH:MM, got {text!r}") from None
    return int(moment.timestamp() * 1000)


def _permit_routes(console: Console) -> list[Route]:
    @guarded(console, "viewer")
    async def permits(request: Request, user: Account, form: dict[str, str]) -> Response:
        rows = console.store.requests(("permit", "revoke"))
        return console.page(request, "permits.html", user, requests=rows, devices=console.known())

    @guarded(console, "approver", "permit")
    async def issue(request: Request, user: Account, form: dict[str, str]) -> Response:
        try:
            return await _act(console, user, "permit", form, _permit_fields(form))
        except SealinkError as exc:
            return _failed(console, user, "permit", exc)

    @guarded(console, "approver", "revoke")
    async def revoke(request: Request, user: Account, form: dict[str, str]) -> Response:
        try:
            fields = {"permit": _int(form, "permit", 1, 2**32 - 1)}
            return await _act(console, user, "revoke", form, fields)
        except SealinkError as exc:
            return _failed(console, user, "revoke", exc)

    return [
        Route("/permits", permits),
        Route("/permits/issue", issue, methods=["POST"]),
        Route("/permits/revoke", revoke, methods=["POST"]),
    ]


def _evidence_routes(console: Console) -> list[Route]:
    @guarded(console, "viewer")
    async def quarantine(request: Request, user: Account, form: dict[str, str]) -> Response:
        held = console.held()
        alarms = [(a, by, at) for a, by, at in console.store.alarms() if a.quarantine]
        rows = console.store.requests(("release",))
        return console.page(
            request, "quarantine.html", user, held=held, alarms=alarms, requests=rows
        )

    @guarded(console, "approver", "release")
    async def release(request: Request, user: Account, form: dict[str, str]) -> Response:
        note = form.get("note", "").strip()
        try:
            if not 1 <= len(note) <= 256:
                raise BadInput("note: why the seal is released, 1..256 characters")
            return await _act(console, user, "release", form, {"note": note})
        except SealinkError as exc:
            return _failed(console, user, "release", exc)

    @guarded(console, "operator", "bundle")
    async def bundle(request: Request, user: Account, form: dict[str, str]) -> Response:
        try:
            device, gateway = _device(console, form)
            counter = _int(form, "counter", 1, 2**32 - 1)
            if console.actions is None:
                raise ConsoleError("this console has no approver key: it cannot ask for bundles")
            data = await console.actions.bundle(gateway, device, counter, user.name)
        except SealinkError as exc:
            return _failed(console, user, "bundle", exc)
        console.store.audit(user.name, "bundle", f"{device}#{counter}@{gateway}", "ok")
        name = f"{device}-{counter}.bundle"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @guarded(console, "viewer")
    async def search(request: Request, user: Account, form: dict[str, str]) -> Response:
        q = request.query_params
        device = q.get("device", "").strip() or None
        try:
            rows = console.store.records(device, _when(q.get("since")), _when(q.get("until")))
        except BadInput as exc:
            return console.page(request, "search.html", user, records=[], error=str(exc), q=q)
        return console.page(request, "search.html", user, records=rows, error=None, q=q)

    return [
        Route("/quarantine", quarantine),
        Route("/quarantine/release", release, methods=["POST"]),
        Route("/bundle", bundle, methods=["POST"]),
        Route("/search", search),
    ]


def _fleet_query(q: Mapping[str, str]) -> dict[str, str | int]:
    """The Records form's filters as `/v1/records` takes them (empty fields: no filter)."""
    query: dict[str, str | int] = {}
    device = q.get("device", "").strip()
    if device:
        query["device"] = _seal(device)
    org = q.get("org", "").strip()
    if org:
        query["org"] = org
    if q.get("permit", "").strip():
        query["permit"] = _int(q, "permit", 0, 2**32 - 1)
    digest = _document(q)
    if digest is not None:
        query["document_sha256"] = digest
    for field, key in (("since", "since_ms"), ("until", "until_ms")):
        moment = _when(q.get(field))
        if moment is not None:
            query[key] = moment
    return query


def _seal(device: str) -> str:
    if not NAME_RE.match(device):
        raise BadInput(f"device: 1..32 of A-Z a-z 0-9 . _ -, got {device!r}")
    return device


def _records_page(
    console: Console, request: Request, user: Account, status: int = 200, **context: Any
) -> Response:
    context = {
        "records": [],
        "q": request.query_params,
        "next_page": None,
        "error": None,
        **context,
    }
    response = console.page(request, "records.html", user, **context)
    response.status_code = status
    return response


def _failed_status(exc: SealinkError) -> int:
    """502 Bad Gateway for what the fleet refused or could not give (the console answers for
    it); 400 for a form the console refused itself."""
    return 502 if isinstance(exc, FleetProblem) else 400


def _fleet_routes(console: Console) -> list[Route]:
    @guarded(console, "viewer")
    async def records(request: Request, user: Account, form: dict[str, str]) -> Response:
        q = request.query_params
        if console.fleet is None or not q:  # the form's first view: nothing asked yet
            return _records_page(console, request, user)
        try:
            page = await console.fleet.records(_fleet_query(q), q.get("next") or None)
        except SealinkError as exc:
            return _records_page(console, request, user, _failed_status(exc), error=str(exc))
        next_page = None
        if page.next is not None:
            kept = [(k, v) for k, v in q.multi_items() if k != "next"]
            next_page = f"/records?{urlencode([*kept, ('next', page.next)])}"
        return _records_page(console, request, user, records=page.items, next_page=next_page)

    @guarded(console, "operator", "bundle")
    async def bundle(request: Request, user: Account, form: dict[str, str]) -> Response:
        target = f"{form.get('device', '')}#{form.get('counter', '')}@fleet"
        try:
            if console.fleet is None:
                raise ConsoleError("this console is not connected to a fleet ledger ([fleet])")
            device = _seal(form.get("device", "").strip())
            counter = _int(form, "counter", 1, 2**63 - 1)
            data = await console.fleet.bundle(device, counter)
        except SealinkError as exc:
            console.store.audit(user.name, "bundle", target, "failed", str(exc))
            return _records_page(console, request, user, _failed_status(exc), error=str(exc))
        console.store.audit(user.name, "bundle", f"{device}#{counter}@fleet", "ok")
        name = f"{device}-{counter}.bundle.json"  # a device id needs no quoting (_seal)
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="application/json", headers=headers)

    return [
        Route("/records", records),
        Route("/records/bundle", bundle, methods=["POST"]),
    ]


def action_routes(console: Console) -> list[Route]:
    return [*_permit_routes(console), *_evidence_routes(console), *_fleet_routes(console)]
