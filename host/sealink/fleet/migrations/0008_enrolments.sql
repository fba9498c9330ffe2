-- Enrolments the fleet issued (SPEC §5.11 certificates, §11.6 `enrolment`): with the
-- authority configured, each move and each `sealink fleet devices enrol` signs a certificate
-- enrolling the seal with its gateway's acknowledgement key. The seal's current one rides in
-- every later registry message beside its placement, so a gateway that reconnects finds it in
-- whichever message is retained; a move without the authority clears it (it was another
-- gateway's).
ALTER TABLE devices ADD COLUMN enrolment bytea;

-- Every certificate on the record: for which gateway and key, who, when, why. Serials rise
-- per seal (the seal refuses a lower one than it holds).
CREATE TABLE enrolments (
    device       text NOT NULL REFERENCES devices (id),
    serial       bigint NOT NULL,
    gateway      text NOT NULL,
    gateway_key  bytea NOT NULL,
    certificate  bytea NOT NULL,
    by_whom      text NOT NULL,
    reason       text NOT NULL,
    time_ms      bigint NOT NULL,
    seq          bigint NOT NULL,
    PRIMARY KEY (device, serial)
);
