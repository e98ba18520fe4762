-- The adders' list of outbox databases as every database records it: each
-- database gets a `member` id of its own (random, kept for life, replicated
-- and restored with its rows), and `members` holds the ids of the list's
-- databases in DATABASE_URL order, written by the first adder that opened
-- all of them (or by a reshard). An adder takes Adds with a request id on a
-- database only while that database's recorded list agrees with its own:
-- position and count alone cannot tell another database in the same slot,
-- or an adder forgotten during a reshard.
ALTER TABLE outbox_position
    ADD COLUMN member  uuid   NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN members uuid[] CHECK (cardinality(members) = databases);
