-- The query surface for downstream systems (issue 14, `sealink fleet serve`): each seal's
-- organisation, the API's bearer tokens, and the indexes its keyset-paged queries walk (a
-- province holds millions of records: every page starts from the last key served, never OFFSET).
ALTER TABLE devices ADD COLUMN org text;
CREATE INDEX devices_org ON devices (org, id);

-- Records by permit, in the (device, counter) order every records page is served in.
CREATE INDEX records_permit ON records (permit, device, counter);

-- Alarms of a seal, paged by id.
CREATE INDEX alarms_device ON alarms (device, id);

-- Only the SHA-256 of a token is kept: the database's content never authenticates anyone.
CREATE TABLE api_tokens (
    name         text PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_ms   bigint NOT NULL,
    revoked_ms   bigint
);

-- Each permit's document (issue 14: records "by permit, by document hash"), from the gateways'
-- signed approval results (SPEC §11.5). Results are redelivered: the states seen are a set.
-- A result naming another document for a held (device, permit) is alarmed, never stored over it.
CREATE TABLE permits (
    device          text NOT NULL,
    permit          bigint NOT NULL,
    document_sha256 text NOT NULL,
    gateway         text NOT NULL,
    approver        text NOT NULL,
    requested_by    text,
    count           bigint,
    states          text[] NOT NULL,
    first_ms        bigint NOT NULL,
    PRIMARY KEY (device, permit)
);
CREATE INDEX permits_document ON permits (document_sha256, device, permit);
