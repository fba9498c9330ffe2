-- Seal moves (SPEC §11.6 placements): the gateway a seal is assigned to by `sealink fleet
-- devices move`, and where it stood when it was moved (the fleet held its records
-- 1..placed_counter, chained; placed_head is record placed_counter's hash). Every later
-- registry message of the seal carries them, so a gateway that reconnects learns the seal's
-- place from whichever message is retained.
ALTER TABLE devices ADD COLUMN gateway text;
ALTER TABLE devices ADD COLUMN placed_counter bigint;
ALTER TABLE devices ADD COLUMN placed_head bytea;

-- Each move on the record beside each state change: to which gateway, at which counter.
ALTER TABLE device_states ADD COLUMN gateway text;
ALTER TABLE device_states ADD COLUMN counter bigint;
