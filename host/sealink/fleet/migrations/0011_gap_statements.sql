-- Gateways' gap statements (SPEC §11.2 `gaps`, §11.6 "Gap statements at the fleet"): a
-- gateway's signed word that counters first..last of a seal have no record there, declared
-- lost by an operator (`sealink devices adopt`), or, with head (record last's hash), placed
-- there by the fleet's move. Kept with their COSE bytes, each once however often delivered;
-- the fleet's records are judged against them in the transaction that stores either.
CREATE TABLE gap_statements (
    id          bigserial PRIMARY KEY,
    device      text NOT NULL,
    gateway     text NOT NULL,  -- whose pinned key (or key of its history) signed it
    first       bigint NOT NULL CHECK (first >= 1),
    last        bigint NOT NULL CHECK (last >= first),
    adopted_ms  bigint NOT NULL,
    operator    text NOT NULL,
    note        text NOT NULL,
    head        bytea CHECK (head IS NULL OR length(head) = 32),
    cose        bytea NOT NULL,
    cose_sha256 bytea NOT NULL UNIQUE,
    stored_ms   bigint NOT NULL,
    stored_by   text NOT NULL  -- the fleet instance whose transaction stored it
);
CREATE INDEX gap_statements_device ON gap_statements (device, first);
