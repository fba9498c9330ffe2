"""A Mosquitto `acl_file` from a small roster of who is who on the broker (README.md here).

    python -m tools.mosquitto.acl roster.toml --out /etc/mosquitto/sealink.acl

Mosquitto's ACL knows users, not roles, and a seal's topics (`<prefix>/<device>/...`, SPEC
§11.2) do not name the gateway that serves it: no `pattern` line can say "gw-1 writes for its
own seals only". So every line here is for one user, with exact topics: a gateway writes its
own `gateway/<id>/` topics and those of the seals the roster gives it; a witness its requests,
cosignatures and alarms; a consumer reads only; an approver reads and writes the gateways'
request topics (SPEC §11.5), and only a gateway writes its results; a fleet reads everything
and writes its registry and approver messages (§11.6, §11.7) and its proof requests, and the
gateways read the former and answer the latter. A user who is not in the roster may do
nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealink.config import NAME_RE
from sealink.topics import FleetTopics, Topics, WitnessTopics, witness_name_problem

__all__ = ["Roster", "RosterError", "acl_text", "load_roster", "main"]

# Mosquitto reads `user <name>` up to the end of the line; a wildcard in a user name would
# also make it match others' topics through %u, so none of these.
_USER_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_ROLES = ("gateways", "witnesses", "consumers", "approvers", "fleets")


class RosterError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass(frozen=True)
class Gateway:
    id: str
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Witness:
    user: str
    name: str
    gateways: tuple[str, ...]


@dataclass(frozen=True)
class Fleet:
    user: str
    instances: tuple[str, ...]  # their [fleet] instance: client ids, proof reply topics
    bundles: bool  # `sealink fleet serve` asks the gateways for bundles ([serve] approver)


@dataclass(frozen=True)
class Roster:
    prefix: str
    gateways: tuple[Gateway, ...]
    witnesses: tuple[Witness, ...]
    consumers: tuple[str, ...]
    approvers: tuple[str, ...]
    fleets: tuple[Fleet, ...] = ()


def _strings(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RosterError(f"{where}.{key}", "must be a list of strings")
    return tuple(value)


def _user(name: str, where: str) -> str:
    if not _USER_RE.match(name):
        raise RosterError(where, f"{name!r}: a user name is 1..64 of A-Z a-z 0-9 . _ @ -")
    return name


def _gateway(raw: Any, where: str) -> Gateway:
    if not isinstance(raw, dict) or set(raw) - {"id", "devices"}:
        raise RosterError(where, "must be a table with id and devices")
    gateway_id = raw.get("id")
    if not isinstance(gateway_id, str) or not NAME_RE.match(gateway_id):
        raise RosterError(f"{where}.id", "must be a gateway id ([gateway] id of its config)")
    devices = _strings(raw, "devices", where)
    for device in devices:
        if not NAME_RE.match(device) or device == "gateway":
            raise RosterError(f"{where}.devices", f"{device!r} is not a device id")
    return Gateway(gateway_id, devices)


def _witness(raw: Any, where: str) -> Witness:
    if not isinstance(raw, dict) or set(raw) - {"user", "name", "gateways"}:
        raise RosterError(where, "must be a table with user, name and gateways")
    user, name = raw.get("user"), raw.get("name")
    if not isinstance(user, str) or not isinstance(name, str):
        raise RosterError(where, "user and name must be strings")
    problem = witness_name_problem(name)
    if problem is not None:
        raise RosterError(f"{where}.name", problem)
    return Witness(_user(user, f"{where}.user"), name, _strings(raw, "gateways", where))


def _fleet(raw: Any, where: str) -> Fleet:
    if not isinstance(raw, dict) or set(raw) - {"user", "instances", "bundles"}:
        raise RosterError(where, "must be a table with user, instances and bundles")
    user = raw.get("user")
    if not isinstance(user, str):
        raise RosterError(f"{where}.user", "must be a string")
    instances = _strings(raw, "instances", where) or (user,)
    for instance in instances:
        if not NAME_RE.match(instance):
            raise RosterError(f"{where}.instances", f"{instance!r} is not a [fleet] instance")
    bundles = raw.get("bundles", False)
    if not isinstance(bundles, bool):
        raise RosterError(f"{where}.bundles", "must be true or false")
    return Fleet(_user(user, f"{where}.user"), instances, bundles)


def parse_roster(data: Mapping[str, Any]) -> Roster:
    unknown = set(data) - {"prefix", *_ROLES}
    if unknown:
        raise RosterError(
            ", ".join(sorted(unknown)), f"unknown key (known: prefix, {', '.join(_ROLES)})"
        )
    prefix = data.get("prefix", "sealink")
    if (
        not isinstance(prefix, str)
        or not prefix
        or set(prefix) & set("+#\0")
        or prefix.endswith("/")
    ):
        raise RosterError("prefix", "must be the gateways' mqtt.prefix")
    raw_gateways, raw_witnesses = data.get("gateways", []), data.get("witnesses", [])
    raw_fleets = data.get("fleets", [])
    if not all(isinstance(raw, list) for raw in (raw_gateways, raw_witnesses, raw_fleets)):
        raise RosterError("", "gateways, witnesses and fleets are arrays of tables ([[gateways]])")
    roster = Roster(
        prefix,
        tuple(_gateway(g, f"gateways[{i}]") for i, g in enumerate(raw_gateways)),
        tuple(_witness(w, f"witnesses[{i}]") for i, w in enumerate(raw_witnesses)),
        tuple(_user(u, "consumers") for u in _strings(data, "consumers", "")),
        tuple(_user(u, "approvers") for u in _strings(data, "approvers", "")),
        tuple(_fleet(f, f"fleets[{i}]") for i, f in enumerate(raw_fleets)),
    )
    _check_unique(roster)
    return roster


def _check_unique(roster: Roster) -> None:
    """One role a user; one gateway a seal (the ACL decides who may speak for it)."""
    users = [g.id for g in roster.gateways] + [w.user for w in roster.witnesses]
    users += [*roster.consumers, *roster.approvers, *(f.user for f in roster.fleets)]
    for i, user in enumerate(users):
        if user in users[:i]:
            raise RosterError("", f"user {user!r} appears twice: one role a user")
    owner: dict[str, str] = {}
    for gateway in roster.gateways:
        for device in gateway.devices:
            if device in owner:
                raise RosterError(
                    "", f"device {device!r} is under {owner[device]} and {gateway.id}"
                )
            owner[device] = gateway.id
    known = {g.id for g in roster.gateways}
    for i, witness in enumerate(roster.witnesses):
        for gateway_id in witness.gateways:
            if gateway_id not in known:
                raise RosterError(f"witnesses[{i}].gateways", f"{gateway_id!r} is not in gateways")


def load_roster(path: Path) -> Roster:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RosterError(str(path), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RosterError(str(path), f"not valid TOML: {exc}") from None
    return parse_roster(data)


def _gateway_lines(roster: Roster, gateway: Gateway) -> Iterator[str]:
    topics = Topics(roster.prefix, gateway.id)
    yield f"# gateway {gateway.id}: its own topics and its seals' (SPEC §11.2)"
    yield f"user {gateway.id}"
    # It reads its own status back: another gateway with its id shows itself there (§11.4).
    yield f"topic readwrite {topics.gateway_status()}"
    for topic in (topics.alarms(None), topics.checkpoint(), topics.keys()):
        yield f"topic write {topic}"
    yield f"topic read {topics.proof_request()}"
    yield f"topic read {topics.cosignatures()}"
    yield f"topic read {topics.approval_request()}"
    # Its results go to `result/<approver>` or below (SPEC §11.5): the approver picks the level.
    yield f"topic write {topics.approval_result('#')}"
    for device in gateway.devices:
        for topic in (
            topics.events(device),
            topics.events_json(device),
            topics.alarms(device),
            topics.gaps(device),
            topics.status(device),
        ):
            yield f"topic write {topic}"
    for witness in roster.witnesses:
        if gateway.id in witness.gateways:
            reply = WitnessTopics(roster.prefix, witness.name).proof_response(gateway.id)
            yield f"topic write {reply}"
    if roster.fleets:  # the fleet's signed registry and approvers (SPEC §11.6, §11.7)
        fleet = FleetTopics(roster.prefix)
        yield f"topic read {fleet.registry('+')}"
        yield f"topic read {fleet.approver('+')}"
        for instance in (i for f in roster.fleets for i in f.instances):
            yield f"topic write {fleet.proof_response(instance, gateway.id)}"


def _witness_lines(roster: Roster, witness: Witness) -> Iterator[str]:
    own = WitnessTopics(roster.prefix, witness.name)
    yield f"# witness {witness.name}: it follows {', '.join(witness.gateways) or 'no gateway'}"
    yield f"user {witness.user}"
    for gateway_id in witness.gateways:
        topics = Topics(roster.prefix, gateway_id)
        yield f"topic read {topics.checkpoint()}"
        yield f"topic write {topics.proof_request()}"
        yield f"topic write {topics.cosignature(witness.name)}"
    yield f"topic read {own.proof_responses()}"
    yield f"topic write {own.alarms()}"


def _fleet_lines(roster: Roster, fleet: Fleet) -> Iterator[str]:
    topics, every = FleetTopics(roster.prefix), Topics(roster.prefix, "+")
    yield f"# fleet {fleet.user}: instances {', '.join(fleet.instances)} (SPEC §11.6)"
    yield f"user {fleet.user}"
    yield f"topic read {roster.prefix}/#"  # its shared subscriptions, and the retained topics
    yield f"topic write {topics.registry('+')}"
    yield f"topic write {topics.approver('+')}"
    yield f"topic write {every.proof_request()}"
    if fleet.bundles:  # signed requests as [serve] approver (SPEC §11.5 `bundle`)
        yield f"topic write {every.approval_request()}"


def acl_text(roster: Roster, source: str) -> str:
    lines = [
        f"# Generated by tools/mosquitto/acl.py from {source}; regenerate, do not edit.",
        "# Mosquitto acl_file: a user may do only what its lines say; anyone else, nothing.",
        "",
    ]
    for gateway in roster.gateways:
        lines += [*_gateway_lines(roster, gateway), ""]
    for witness in roster.witnesses:
        lines += [*_witness_lines(roster, witness), ""]
    for consumer in roster.consumers:
        lines += [f"# consumer {consumer}: reads everything, writes nothing", f"user {consumer}"]
        lines += [f"topic read {roster.prefix}/#", ""]
    for approver in roster.approvers:
        lines += [f"# approver {approver}: reads, writes requests (SPEC §11.5)", f"user {approver}"]
        requests = Topics(roster.prefix, "+").approval_request()
        lines += [f"topic read {roster.prefix}/#", f"topic write {requests}", ""]
    for fleet in roster.fleets:
        lines += [*_fleet_lines(roster, fleet), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acl.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("roster", type=Path, help="the roster (roster.example.toml shows one)")
    parser.add_argument("--out", type=Path, help="write the ACL here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = acl_text(load_roster(args.roster), args.roster.name)
    except RosterError as exc:
        print(f"acl.py: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text)
    except OSError as exc:
        print(f"acl.py: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(
        f"acl.py: wrote {args.out}; reload the broker: kill -HUP $(pidof mosquitto)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
