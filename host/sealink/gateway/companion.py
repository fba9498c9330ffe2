"""A countersigned record's decoded JSON companion: `<prefix>/<device>/events/json`, SPEC §11.2.

Integrations (Node-RED, Home Assistant) read it without CBOR or COSE; it is not signed and
says so. It is a pure function of the record's events row (its wire payload, its COSE and
when it was received), so the ledger can drop it once published and rebuild it byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import cbor2
from sealproto import messages

__all__ = ["COMPANION_NOTE", "companion_body", "kind_name"]

COMPANION_NOTE = (
    "derived from the countersigned record on the events topic; that COSE_Sign1 is the "
    "evidence, this message is not signed"
)

# Record kinds (SPEC §4.1) by their SPEC names: the sealproto constants KIND_<NAME>, lower-cased.
_KINDS = {
    value: name[5:].lower() for name, value in vars(messages).items() if name.startswith("KIND_")
}


def kind_name(kind: int) -> str:
    """A record kind's name (SPEC §4.1); one this gateway does not know as `kind<n>`."""
    return _KINDS.get(kind, f"kind{kind}")


def companion_body(
    device: str, gateway: str, payload: bytes, cose: bytes, received_ms: int
) -> bytes:
    """The companion's JSON (UTF-8, keys sorted, no spaces) of a record the gateway accepted:
    `payload` its EVENT wire bytes, `cose` the COSE_Sign1 of SPEC §11.1 made of them."""
    # Checked field by field when the machine accepted it (SPEC §4.1): only read here, with
    # cbor2's C decoder, cheaper on this hot path than sealproto's checking one.
    event = cbor2.loads(payload)
    body: dict[str, Any] = {
        "device": device,
        "gateway": gateway,
        "counter": event[messages.EV_COUNTER],
        "kind": event[messages.EV_KIND],
        "kind_name": kind_name(event[messages.EV_KIND]),
        "permit": event[messages.EV_PERMIT],
        "operator": event[messages.EV_OPERATOR],
        "time_s": event[messages.EV_TIME],
        "boot_id": event[messages.EV_BOOT],
        "uptime_ms": event[messages.EV_UPTIME],
        "received_ms": received_ms,
        "record_sha256": hashlib.sha256(payload).hexdigest(),
        "cose_sha256": hashlib.sha256(cose).hexdigest(),
        "derived": True,
        "note": COMPANION_NOTE,
    }
    if messages.EV_CAUSE in event:
        body["cause"] = event[messages.EV_CAUSE]
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
