-- The fleet as a checker of consistency (SPEC §14.6, issue 14): each gateway's checkpoints are
-- proved to extend one another, the witness's way. A gateway's verified head is its largest
-- checkpoint in state 'first' or 'proved' (derived, so there is one owner of the truth: the
-- rows). The consistency worker of any instance takes an 'unproved' row under the gateway's
-- advisory lock, asks the gateway for the proof (§14.6 "Proofs"), and records the outcome.
ALTER TABLE checkpoints ADD COLUMN time_ms bigint;  -- the note's sealink-time-ms (§14.2)
UPDATE checkpoints SET time_ms = substring(note from '\nsealink-time-ms ([0-9]+)\n')::bigint;
-- first: the gateway's first checkpoint, trusted on first use (a proof from size 0 proves
-- nothing: the empty tree is a prefix of every tree); proved: a consistency proof joins it to
-- the head (proved_from: the other size); rollback, bad_proof: alarmed, never the head.
ALTER TABLE checkpoints ADD COLUMN state text NOT NULL DEFAULT 'unproved'
    CHECK (state IN ('unproved', 'first', 'proved', 'rollback', 'bad_proof'));
ALTER TABLE checkpoints ADD COLUMN proved_from bigint;
ALTER TABLE checkpoints ADD COLUMN proof jsonb;     -- the gateway's reply, as evidence
ALTER TABLE checkpoints ADD COLUMN checked_ms bigint;
ALTER TABLE checkpoints ADD COLUMN checked_by text;  -- the fleet instance that judged it
-- A gateway that did not answer: its unproved rows wait until retry_ms (nothing is lost).
ALTER TABLE checkpoints ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN retry_ms bigint NOT NULL DEFAULT 0;
CREATE INDEX checkpoints_unproved ON checkpoints (gateway, size) WHERE state = 'unproved';
