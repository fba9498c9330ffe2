-- The fleet ledger, first schema (issue 14). Applied once by `sealink fleet migrate`, recorded
-- in schema_migrations. Times are Unix milliseconds (bigint), as in the gateway's ledger.

-- A gateway and the Ed25519 public keys (raw, 32 bytes) pinned for it: a record counts only
-- if one of them countersigned it.
CREATE TABLE gateways (
    id          text PRIMARY KEY,
    pinned_keys bytea[] NOT NULL,
    added_ms    bigint NOT NULL
);

-- A seal as the fleet knows it: its chip's public key (X || Y) when the registry has it.
CREATE TABLE devices (
    id            text PRIMARY KEY,
    seal_key      bytea CHECK (seal_key IS NULL OR length(seal_key) = 64),
    key_source    text,
    first_seen_ms bigint NOT NULL
);

-- One row per (device, counter): the first countersigned record that verified. A second,
-- different record for the same key is a fork (below), never an update.
CREATE TABLE records (
    device        text NOT NULL,
    counter       bigint NOT NULL CHECK (counter >= 1),
    gateway       text NOT NULL,
    received_ms   bigint NOT NULL,
    stored_ms     bigint NOT NULL,
    stored_by     text NOT NULL,  -- the fleet instance whose transaction stored it
    cose          bytea NOT NULL,
    record_hash   bytea NOT NULL,
    prev          bytea NOT NULL,
    kind          integer NOT NULL,
    permit        bigint NOT NULL,
    operator      bigint NOT NULL,
    time_s        numeric(20) NOT NULL,  -- a uint of the seal's (SPEC §4): up to 2^64 - 1
    -- true: the seal's signature verified; NULL: the registry has no key for the seal yet.
    seal_verified boolean,
    -- true/false: prev is/is not SHA-256 of counter - 1's record; NULL: that one is not held.
    chain_ok      boolean,
    PRIMARY KEY (device, counter)
);
CREATE INDEX records_received ON records (received_ms);
CREATE INDEX records_gateway ON records (gateway, received_ms);

-- Other records for a (device, counter) already held: kept as evidence, alarmed.
CREATE TABLE forks (
    id          bigserial PRIMARY KEY,
    device      text NOT NULL,
    counter     bigint NOT NULL,
    gateway     text NOT NULL,
    received_ms bigint NOT NULL,
    stored_ms   bigint NOT NULL,
    cose        bytea NOT NULL,
    record_hash bytea NOT NULL,
    UNIQUE (device, counter, record_hash)
);

-- Messages that did not verify (a forged record, an unsigned alarm), with their bytes.
CREATE TABLE rejections (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL,
    payload     bytea NOT NULL,
    payload_sha bytea NOT NULL UNIQUE,
    stored_ms   bigint NOT NULL
);

-- What the fleet raised (source 'fleet': a fork, a chain break, a rejection, a split view) and
-- what gateways signed on their alarms topics (source 'gateway'). dedupe makes a redelivered
-- message, or the same finding by two instances, one alarm.
CREATE TABLE alarms (
    id        bigserial PRIMARY KEY,
    time_ms   bigint NOT NULL,
    source    text NOT NULL CHECK (source IN ('fleet', 'gateway')),
    gateway   text,
    device    text,
    reason    text NOT NULL,
    detail    jsonb NOT NULL,
    dedupe    text NOT NULL UNIQUE
);

-- Each gateway's signed checkpoints (SPEC §14.2), verified under its pinned key.
CREATE TABLE checkpoints (
    gateway     text NOT NULL,
    size        bigint NOT NULL,
    root        bytea NOT NULL,
    note        text NOT NULL,
    received_ms bigint NOT NULL,
    PRIMARY KEY (gateway, size)
);

-- Counters missing per device, across all gateways: before the first record held, and between
-- any two held. A view: always what the records say, whatever order they arrived in.
CREATE VIEW gaps AS
    SELECT device, first, last FROM (
        SELECT device,
               lag(counter, 1, 0::bigint) OVER w + 1 AS first,
               counter - 1 AS last
        FROM records
        WINDOW w AS (PARTITION BY device ORDER BY counter)
    ) spans
    WHERE last >= first;
