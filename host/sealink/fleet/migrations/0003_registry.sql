-- The fleet registry (SPEC §11.6): each seal's state as the fleet publishes it to every
-- gateway, and every change of it on the record (who, when, why). A seal is `active` until
-- `sealink fleet devices revoke`; `reinstate` makes it active again.
ALTER TABLE devices ADD COLUMN state text NOT NULL DEFAULT 'active'
    CHECK (state IN ('active', 'revoked'));
-- The seq of the seal's last registry message (strictly increasing per seal, so a gateway
-- refuses an older one put back) and that message, retained on the broker and republished
-- by `sealink fleet run` until the broker acknowledged it.
ALTER TABLE devices ADD COLUMN registry_seq bigint;
ALTER TABLE devices ADD COLUMN registry_message bytea;
ALTER TABLE devices ADD COLUMN registry_published boolean NOT NULL DEFAULT true;

CREATE TABLE device_states (
    id        bigserial PRIMARY KEY,
    device    text NOT NULL REFERENCES devices (id),
    state     text NOT NULL,
    reason    text NOT NULL,
    by_whom   text NOT NULL,
    time_ms   bigint NOT NULL,
    seq       bigint NOT NULL
);
CREATE INDEX device_states_device ON device_states (device, id);
