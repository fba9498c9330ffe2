"""The console's pages that change a seal or fetch its evidence (permits, quarantine release,
bundles), and the search over what it stored. Each action is checked for its role on the
server, sent on the approval path (`Actions`) and written to the audit trail with its outcome.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sealink.console.config import ConsoleError
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


def _int(form: dict[str, str], name: str, lo: int, hi: int, default: int | None = None) -> int:
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
    digest = form.get("document_sha256", "").strip().lower()
    if digest:
        if not _DIGEST_RE.match(digest):
            raise BadInput("document_sha256: 64 hex digits (the SHA-256 of the document)")
        fields["document_sha256"] = digest
    return fields


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


def action_routes(console: Console) -> list[Route]:
    return [*_permit_routes(console), *_evidence_routes(console)]
