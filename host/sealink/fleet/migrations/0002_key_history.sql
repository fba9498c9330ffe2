-- Gateway key rotation (SPEC §14.7): the keys of a gateway's history, walked from its pinned
-- key over the transitions it publishes retained on <prefix>/gateway/<id>/keys. NULL: only
-- the pinned keys are known.
ALTER TABLE gateways ADD COLUMN history_keys bytea[];
