-- Evidence bundles served from the fleet (issue 14): a record's bundle (SPEC §14.5), asked of
-- the gateway that countersigned it and verified before it is kept here, so the next request
-- is served without the gateway. A bundle stays valid once made (its checkpoint never changes),
-- so the first one verified is kept, never replaced.
CREATE TABLE bundles (
    device     text NOT NULL,
    counter    bigint NOT NULL,
    gateway    text NOT NULL,  -- the gateway that answered
    bundle     bytea NOT NULL,  -- the bundle file's bytes, as the gateway sent them
    fetched_ms bigint NOT NULL,
    PRIMARY KEY (device, counter)
);
