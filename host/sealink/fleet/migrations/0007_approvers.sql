-- Fleet approver keys (SPEC §11.7): the approvers the fleet issues to every gateway, each
-- with its one key for good, and every change of it on the record (who, when, why). An
-- approver is `active` from `sealink fleet approvers add` until `revoke`, which is final: the
-- name is not issued again, so on every gateway a name means one key.
CREATE TABLE approvers (
    name        text PRIMARY KEY,
    public_key  bytea NOT NULL,
    actions     text[] NOT NULL,
    state       text NOT NULL CHECK (state IN ('active', 'revoked')),
    reason      text NOT NULL,
    since_ms    bigint NOT NULL,
    -- The seq of its last message (strictly increasing per approver, so a gateway refuses an
    -- older one put back) and that message, retained on the broker and republished by
    -- `sealink fleet run` until the broker acknowledged it.
    seq         bigint NOT NULL,
    message     bytea NOT NULL,
    published   boolean NOT NULL DEFAULT false
);

CREATE TABLE approver_states (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL REFERENCES approvers (name),
    state     text NOT NULL,
    reason    text NOT NULL,
    by_whom   text NOT NULL,
    time_ms   bigint NOT NULL,
    seq       bigint NOT NULL
);
CREATE INDEX approver_states_name ON approver_states (name, id);
