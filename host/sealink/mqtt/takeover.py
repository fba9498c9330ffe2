"""Who else holds the gateway's MQTT identity, and how long to wait before connecting again.

Decisions only (the publisher feeds it what happened and does what it says), SPEC §11.4:
- an MQTT 5 broker that disconnects us with reason 0x8E (Session taken over);
- Mosquitto 2.0 (measured, 2.0.11) sends no DISCONNECT on a takeover: it closes the socket and
  publishes our last will. A takeover by a client that starts clean also discards our session,
  so a close by the broker followed by a CONNACK without the session we asked to resume, on
  the first attempt (the broker never went away), is a takeover;
- another gateway with our id and key: a status on our own status topic signed since this run
  began, from an instance that is not ours.
After either, the reconnect waits a jittered, growing delay (1 s doubling to 60 s), and any
connection that ends within `STABLE_S` of its start does not reset the backoff: two gateways
with one id meet at most once a minute, not ten times a second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["STABLE_S", "TAKEN_OVER", "Incident", "TakeoverWatch"]

TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: Session taken over
STABLE_S = 10.0
_TAKEOVER_MIN_S = 1.0
_TAKEOVER_MAX_S = 60.0


@dataclass(frozen=True)
class Incident:
    """An alarm's `reason` (SPEC §11.2) and what to say about it."""

    reason: str  # "session_taken_over" or "duplicate_gateway_id"
    detail: str


class TakeoverWatch:
    def __init__(
        self,
        client_id: str,
        instance: str,
        min_s: float,
        max_s: float,
        *,
        resumes: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.client_id = client_id
        self.instance = instance
        self._min_s = min_s
        self._max_s = max_s
        self._resumes = resumes
        self._rng = rng or random.Random()
        self._delay_s = min_s
        self._incident_delay_s = 0.0
        self._up_since: float | None = None
        self._closed_by_broker = False
        self._had_session = False
        self._attempts = 0

    @property
    def backing_off(self) -> bool:
        """An incident's delay is in force (until a connection lasts `STABLE_S`)."""
        return self._incident_delay_s > 0

    def attempt(self) -> None:
        """A connect is about to be tried."""
        self._attempts += 1

    def connected(self, now_s: float, session_present: bool) -> Incident | None:
        """A CONNACK accepted us (we always ask to resume the session)."""
        incident = None
        # On the first attempt: after a broker restart, the attempts while it was down failed.
        if (
            self._closed_by_broker
            and self._had_session
            and not session_present
            and self._attempts == 1
        ):
            incident = self._incident(
                "session_taken_over",
                f"the broker closed our connection and then had no session for client id "
                f"{self.client_id}: another client connected with it",
            )
        self._closed_by_broker = False
        self._attempts = 0
        # With a session expiry of 0 the broker keeps nothing to resume: no session proves nothing.
        self._had_session = self._resumes
        self._up_since = now_s
        return incident

    def disconnected(
        self, now_s: float, server_reason: int | None, by_broker: bool
    ) -> Incident | None:
        """An established connection ended: `server_reason` is the broker's DISCONNECT reason
        code (None: none came); `by_broker` when the broker closed it without being refused
        a publish (neither our close nor a network error)."""
        up_since, self._up_since = self._up_since, None
        if up_since is not None and now_s - up_since >= STABLE_S:
            self._delay_s = self._min_s
            self._incident_delay_s = 0.0
        if server_reason == TAKEN_OVER:
            return self._incident(
                "session_taken_over",
                f"the broker disconnected us: another client connected with client id "
                f"{self.client_id} (reason 0x8E, Session taken over)",
            )
        self._closed_by_broker = by_broker and server_reason is None
        return None

    def own_status(
        self, fields: dict[str, Any] | None, body: dict[str, Any] | None
    ) -> Incident | None:
        """A message on our own gateway status topic: `fields` its signed payload if our key
        signed it for this topic (None: not ours), `body` its JSON body if it was signed after
        this run's first status (an earlier run's retained will is no duplicate)."""
        if fields is None or body is None:
            return None
        # Its "online", or the last will the broker published when we took the client id
        # back from it: either way it ran while we did.
        instance = body.get("instance")
        if instance not in (None, self.instance):
            return self._incident(
                "duplicate_gateway_id",
                f"another gateway with this gateway id and key is running (instance {instance}, "
                f"state {body.get('state')}, client id {self.client_id}); stop one of them",
            )
        return None

    def _incident(self, reason: str, detail: str) -> Incident:
        self._incident_delay_s = min(
            max(self._incident_delay_s * 2, _TAKEOVER_MIN_S), _TAKEOVER_MAX_S
        )
        return Incident(reason, detail)

    def next_delay(self) -> float:
        """The wait before the next connect (after a failed attempt or a lost connection),
        jittered so that two gateways backing off from each other drift apart. After an
        incident it is that incident's delay, held until a connection proves stable."""
        if self._incident_delay_s:
            delay = self._incident_delay_s
        else:
            delay = self._delay_s
            self._delay_s = min(self._delay_s * 2, self._max_s)
        return delay * self._rng.uniform(0.5, 1.0)
