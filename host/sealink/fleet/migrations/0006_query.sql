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
