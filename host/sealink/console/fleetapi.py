"""The console's client of the fleet ledger's query API (`sealink fleet serve`, issue 14).

The console asks on the server side, with the bearer token of [fleet] token_file: the browser
never holds the token. urllib.request from the standard library: the venv has no other HTTP
client, and the two GETs here need none. Its blocking calls run in a worker thread, never on
the event loop. Every way a request fails is a FleetProblem whose message a page shows as is.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from sealink.config import https_client_context
from sealink.console.config import ConsoleError, FleetLink
from sealink.mqtt.connection import connect_failure

__all__ = [
    "PAGE_LIMIT",
    "FleetAnswered",
    "FleetApi",
    "FleetProblem",
    "FleetTlsFailed",
    "FleetTokenRefused",
    "FleetUnreachable",
    "RecordsPage",
]

_MAX_BYTES = 32 * 1024 * 1024  # a page of 1000 records is ~2 MB; a bundle far less
PAGE_LIMIT = 50


class FleetProblem(ConsoleError):
    """The fleet ledger did not give what the console asked for."""


class FleetUnreachable(FleetProblem):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"the fleet ledger at {url} is unreachable: {why}")


class FleetTokenRefused(FleetProblem):
    def __init__(self, url: str) -> None:
        super().__init__(
            f"the fleet ledger at {url} refused the console's token (401): "
            "check [fleet] token_file (`sealink fleet tokens list` on the fleet)"
        )


class FleetTlsFailed(FleetProblem):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"no trusted TLS connection to the fleet ledger at {url}: {why} "
            "(does [fleet] ca_file hold the CA of its certificate?)"
        )


class FleetAnswered(FleetProblem):
    def __init__(self, url: str, status: int, why: str) -> None:
        self.status = status
        super().__init__(f"the fleet ledger at {url} answered {status}: {why}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects; following one would send the token to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class RecordsPage:
    items: list[dict[str, Any]]
    next: str | None  # the cursor of the page after; None: this one is the last


class FleetApi:
    def __init__(self, link: FleetLink) -> None:
        if link.token is None:
            raise ConsoleError("[fleet] was loaded without its token file")
        self._url = link.url
        self._token = link.token
        self._timeout_s = link.timeout_s
        handlers: list[urllib.request.BaseHandler] = [
            # No proxy from the environment either: the token goes to [fleet] url only.
            urllib.request.ProxyHandler({}),
            _NoRedirect(),
        ]
        if link.url.startswith("https://"):
            context = https_client_context(link.ca_file, "fleet")
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    async def records(
        self, query: dict[str, str | int], cursor: str | None, limit: int = PAGE_LIMIT
    ) -> RecordsPage:
        """One page of `GET /v1/records` for these filters, after `cursor`'s page."""
        params: dict[str, str | int] = {**query, "limit": limit}
        if cursor is not None:
            params["next"] = cursor
        body = await run_in_threadpool(self._get, "/v1/records", params)
        try:
            page = json.loads(body)
            items, after = page["items"], page["next"]
        except (ValueError, TypeError, KeyError):
            raise FleetAnswered(self._url, 200, "not a page of records") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise FleetAnswered(self._url, 200, "not a page of records")
        return RecordsPage(items, after if isinstance(after, str) else None)

    async def bundle(self, device: str, counter: int) -> bytes:
        """The evidence bundle file of record (device, counter), as the fleet serves it."""
        path = f"/v1/records/{urllib.parse.quote(device, safe='')}/{counter}/bundle"
        return await run_in_threadpool(self._get, path, {})

    def _get(self, path: str, params: dict[str, str | int]) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            f"{self._url}{path}{query}", headers={"Authorization": f"Bearer {self._token}"}
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                body = bytes(response.read(_MAX_BYTES + 1))
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except urllib.error.URLError as exc:  # connecting failed; its reason says how
            raise self._failure(exc.reason) from None
        except TimeoutError:
            raise FleetUnreachable(self._url, f"no answer within {self._timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # after connecting
            raise self._failure(exc) from None
        if len(body) > _MAX_BYTES:
            raise FleetAnswered(self._url, 200, f"an answer over {_MAX_BYTES} bytes")
        return body

    def _failure(self, reason: object) -> FleetProblem:
        if not isinstance(reason, BaseException):
            return FleetUnreachable(self._url, str(reason))
        if isinstance(reason, ssl.SSLError):
            return FleetTlsFailed(self._url, connect_failure(reason))
        return FleetUnreachable(self._url, connect_failure(reason))

    def _refusal(self, exc: urllib.error.HTTPError) -> FleetProblem:
        """An HTTP error answer, with the API's own words for it (`{"error": ...}`)."""
        with exc:  # its connection, closed
            if exc.code == 401:
                return FleetTokenRefused(self._url)
            try:
                why = json.loads(exc.read(64 * 1024))["error"]
            except (OSError, ValueError, TypeError, KeyError, http.client.HTTPException):
                why = exc.reason
        return FleetAnswered(self._url, exc.code, str(why))
