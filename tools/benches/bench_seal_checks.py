"""What checking a record as the seal's costs the gateway, per record (SPEC §4.1, §5.4).

    .venv/bin/python tools/bench.py seal_checks

On one core, the checks a new record gets in the link machine, each timed alone over the same
records: the seal signature (SealKey.verify: OpenSSL's P-256 ECDSA through `cryptography`), the
seal digest taken from the wire bytes (fastpath.seal_digest), the link MAC
(fastpath.device_mac_ok) and the strict decode (fastpath.decode_event). Medians of ROUNDS
rounds; `verify_share` is the signature's part of the four. The ingest bench shows what it
does to events per second with everything else around it.

And the other way: what signing an ACK's STORED statement (SPEC §5.11) costs, per signature,
median of SIGNS, with the acknowledgement key as a PEM file (P256Key) and inside a TPM
(TpmKey on swtpm over loopback TCP: a hardware TPM is slower, and is not measured here).

    {"bench": "seal_checks", "verify_us": ..., "digest_us": ..., "mac_us": ..., ...}
    {"bench": "ack_sign", "pem_us": ..., "tpm_us": ..., "tpm": "swtpm", "signs": ...}
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORDS = 2000
SIGNS = 200
ROUNDS = int(os.environ.get("SEALINK_BENCH_ROUNDS", "7"))


def _per_record_us(check: Callable[[bytes], object], records: list[bytes]) -> float:
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for payload in records:
            check(payload)
        rounds.append((time.perf_counter() - start) / len(records) * 1e6)
    return statistics.median(rounds)


def _per_sign_us(sign: Callable[[bytes], bytes], digest: bytes) -> float:
    times = []
    for _ in range(SIGNS):
        start = time.perf_counter()
        sign(digest)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def _ack_sign() -> dict[str, Any]:
    from sealink.crypto.p256 import P256Key
    from sealink.crypto.tpmkey import TpmKey
    from sealink_sim.swtpm import SwTpm
    from sealproto import auth

    digest = auth.stored_digest("seal-bench", 17, os.urandom(32))
    with tempfile.TemporaryDirectory() as work, SwTpm(Path(work) / "tpm") as tpm:
        key = TpmKey.create(tpm.tcti, Path(work) / "ack.key", "acknowledgement key")
        with key:
            tpm_us = _per_sign_us(key.sign, digest)
    return {
        "bench": "ack_sign",
        "pem_us": round(_per_sign_us(P256Key.generate().sign, digest), 1),
        "tpm_us": round(tpm_us, 1),
        "tpm": "swtpm",
        "signs": SIGNS,
    }


def run() -> list[dict[str, Any]]:
    from sealink.crypto.sealkey import SealKey
    from sealink.gateway.fastpath import decode_event, device_mac_ok, seal_digest
    from sealink_sim.simdevice import SimChip, make_event
    from sealproto import auth, messages

    device_key = os.urandom(32)
    chip = SimChip.of(device_key)
    records, prev = [], auth.GENESIS
    for counter in range(1, RECORDS + 1):
        payload = make_event(device_key, counter, prev, chip=chip, uptime_ms=2_592_000_000)
        records.append(payload)
        prev = auth.record_hash(payload)
    key = SealKey(chip.public)
    signed = {p: (seal_digest(p), messages.decode(p)[messages.EV_SIG]) for p in records}

    def verify(payload: bytes) -> None:
        if not key.verify(*signed[payload]):
            raise RuntimeError("a genuine record failed its seal signature")

    figures = {
        "verify_us": _per_record_us(verify, records),
        "digest_us": _per_record_us(seal_digest, records),
        "mac_us": _per_record_us(lambda p: device_mac_ok(p, device_key), records),
        "decode_us": _per_record_us(decode_event, records),
    }
    total = sum(figures.values())
    return [
        {
            "bench": "seal_checks",
            "records": RECORDS,
            **{name: round(us, 2) for name, us in figures.items()},
            "verify_share": round(figures["verify_us"] / total, 3),
            "verifies_per_core_per_s": round(1e6 / figures["verify_us"]),
            "rounds": ROUNDS,
        },
        _ack_sign(),
    ]
