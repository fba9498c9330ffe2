"""The fleet ledger (issue 14): every gateway's records, verified, in one PostgreSQL database.

    config = load_config("fleet.toml")
    with Store(config.database) as store:
        migrate_database(store)
        FleetService(config, store).start()

Records are verified by the independent verifier (`sealink_verify.record`), stored
idempotently on (device, counter), forks kept and alarmed, the chain judged whichever order
records arrive in, and each MQTT message acknowledged only after its transaction committed.
Each gateway's checkpoints are proved to extend one another (SPEC §14.6), by a thread of
their own (_consistency.py) that asks the gateway for the consistency proofs.
"""

from sealink.fleet._approvers import (
    ApproverChange,
    FleetApprover,
    add_approver,
    approvers,
    mark_approver_published,
    revoke_approver,
)
from sealink.fleet._config import FleetConfig, load_config
from sealink.fleet._registry import (
    Enrolling,
    RegistryChange,
    change_state,
    enrol,
    enrolling,
    enrolling_if_authority,
    mark_published,
    move,
    publish,
)
from sealink.fleet._schema import migrate, migrations
from sealink.fleet._service import FleetService, Inbound
from sealink.fleet._store import (
    Batch,
    GatewayAlarm,
    Rejection,
    SignedCheckpoint,
    Store,
    StoreOutcome,
)

__all__ = [
    "ApproverChange",
    "Batch",
    "Enrolling",
    "FleetApprover",
    "FleetConfig",
    "FleetService",
    "GatewayAlarm",
    "Inbound",
    "RegistryChange",
    "Rejection",
    "SignedCheckpoint",
    "Store",
    "StoreOutcome",
    "add_approver",
    "approvers",
    "change_state",
    "enrol",
    "enrolling",
    "enrolling_if_authority",
    "load_config",
    "mark_approver_published",
    "mark_published",
    "migrate",
    "migrations",
    "move",
    "publish",
    "revoke_approver",
]
