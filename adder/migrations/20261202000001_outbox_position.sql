-- Where this database stands in the adders' list of outbox databases
-- (DATABASE_URL): position `position` (from 1) of `databases`. A request id
-- is routed to the database at position hash(id) mod databases + 1, so every
-- adder must list the same databases in the same order, or a retried Add
-- could be recorded again on another database. Set by the first adder that
-- opens the database; an adder whose list places it elsewhere refuses to
-- start. Empty until then; one row at most.
CREATE TABLE outbox_position (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    position   integer     NOT NULL CHECK (position >= 1),
    databases  integer     NOT NULL CHECK (databases >= position),
    set_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
