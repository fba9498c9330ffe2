"""The MQTT topics a gateway publishes to (protocol/SPEC.md §11.2), all under one prefix, those
of the witnesses that cosign its checkpoints (§14.6), and the fleet's (§11.6, §11.7)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "FleetTopics",
    "Topics",
    "WitnessTopics",
    "approver_name_problem",
    "witness_name_problem",
]

# A witness name is also the last levels of its topics: no wildcards, no empty level.
_WITNESS_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_WITNESS_NAME_MAX = 100


def witness_name_problem(name: str) -> str | None:
    """Why `name` cannot name a witness (None: it can). It is the witness key's name too."""
    if len(name) > _WITNESS_NAME_MAX or not _WITNESS_NAME_RE.match(name):
        return (
            f"{name!r}: a witness name is 1..{_WITNESS_NAME_MAX} characters of A-Z a-z 0-9 . _ - "
            "in levels separated by single '/'"
        )
    return None


# An approver's name is one topic level of its results (SPEC §11.5).
_APPROVER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def approver_name_problem(name: str) -> str | None:
    """Why `name` cannot name an approver (None: it can)."""
    if not _APPROVER_NAME_RE.match(name):
        return f"{name!r}: an approver name is 1..64 characters of A-Z a-z 0-9 . _ -"
    return None


@dataclass(frozen=True)
class Topics:
    prefix: str
    gateway_id: str

    def events(self, device: str) -> str:
        return f"{self.prefix}/{device}/events"

    def events_json(self, device: str) -> str:
        """The decoded, unsigned JSON companion of each record (SPEC §11.2): one level below
        `events`, so a `<prefix>/+/events` subscriber gets only the evidence."""
        return f"{self.prefix}/{device}/events/json"

    def status(self, device: str) -> str:
        return f"{self.prefix}/{device}/status"

    def alarms(self, device: str | None) -> str:
        """A device's alarms, or (device None) the gateway's own: inputs that no authenticated
        device can be blamed for."""
        if device is None:
            return f"{self.prefix}/gateway/{self.gateway_id}/alarms"
        return f"{self.prefix}/{device}/alarms"

    def gaps(self, device: str) -> str:
        """Countersigned statements of counters an operator declared lost (SPEC §5.8)."""
        return f"{self.prefix}/{device}/gaps"

    def gateway_status(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/status"

    def checkpoint(self) -> str:
        """The latest signed checkpoint of the gateway's transparency log (SPEC §14.2)."""
        return f"{self.prefix}/gateway/{self.gateway_id}/checkpoint"

    def keys(self) -> str:
        """The gateway's key history (SPEC §14.7), retained."""
        return f"{self.prefix}/gateway/{self.gateway_id}/keys"

    def proof_request(self) -> str:
        """Where witnesses ask the gateway for consistency proofs (MQTT 5 request/response)."""
        return f"{self.prefix}/gateway/{self.gateway_id}/proof/request"

    def cosignature(self, witness: str) -> str:
        """A witness's latest cosignature of this gateway's checkpoint, retained (SPEC §14.6)."""
        return f"{self.prefix}/gateway/{self.gateway_id}/cosignature/{witness}"

    def cosignatures(self) -> str:
        """Every witness's cosignature topic (a subscription filter)."""
        return f"{self.prefix}/gateway/{self.gateway_id}/cosignature/#"

    def approval_request(self) -> str:
        """Where approvers publish signed requests to this gateway (SPEC §11.5)."""
        return f"{self.prefix}/cmd/{self.gateway_id}/request"

    def approval_result(self, approver: str) -> str:
        """Where the gateway publishes an approver's results: the only response topic it
        accepts is this one or a level below it (SPEC §11.5)."""
        return f"{self.prefix}/cmd/{self.gateway_id}/result/{approver}"


@dataclass(frozen=True)
class WitnessTopics:
    """A witness's own topics: the replies to its proof requests, and its alarms."""

    prefix: str
    name: str

    def proof_response(self, gateway_id: str) -> str:
        return f"{self.prefix}/witness/{self.name}/proof/{gateway_id}"

    def proof_responses(self) -> str:
        return f"{self.prefix}/witness/{self.name}/proof/#"

    def alarms(self) -> str:
        return f"{self.prefix}/witness/{self.name}/alarms"


@dataclass(frozen=True)
class FleetTopics:
    """The fleet's: its signed, retained registry and approver messages, and the replies to one
    instance's consistency proof requests."""

    prefix: str

    def registry(self, device: str) -> str:
        return f"{self.prefix}/fleet/registry/{device}"

    def approver(self, name: str) -> str:
        return f"{self.prefix}/fleet/approvers/{name}"

    def proof_response(self, instance: str, gateway_id: str) -> str:
        return f"{self.prefix}/fleet/{instance}/proof/{gateway_id}"
