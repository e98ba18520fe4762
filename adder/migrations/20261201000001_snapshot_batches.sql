-- Snapshot batches (PgQ's design): a row is never touched again once it is
-- inserted. It records the transaction that inserted it; the relay cuts
-- batches between two transaction snapshots, numbers them densely per
-- source, and publishes each batch in parts. The ledger deduplicates on
-- (source, batch, part), so no id is ever a gap it must give up.

-- The transaction that inserted the row. Rows from before this migration have
-- none: they are "legacy" rows, published row by row as before (published_at).
ALTER TABLE outbox ADD COLUMN xid xid8;
ALTER TABLE outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX outbox_xid ON outbox (xid);

-- Legacy rows still to publish; new rows (xid set) never enter this index.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_legacy_unpublished ON outbox (id) WHERE published_at IS NULL AND xid IS NULL;
DROP INDEX outbox_published_at;
CREATE INDEX outbox_legacy_published ON outbox (published_at) WHERE xid IS NULL AND published_at IS NOT NULL;

-- Where this database stands: a restored, copied or promoted database is a
-- different identity (system identifier, database oid, WAL timeline), and the
-- relay then continues under a new source, so no new batch can reuse a batch
-- number the ledger already counted.
ALTER TABLE outbox_source ADD COLUMN system_id text;
ALTER TABLE outbox_source ADD COLUMN db_oid bigint;
ALTER TABLE outbox_source ADD COLUMN timeline bigint;

-- Every source this database has published under, for `totaler verify`, with
-- what retention has purged of it (batches up to purged_through).
CREATE TABLE outbox_sources (
    source          uuid        PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    system_id       text,
    db_oid          bigint,
    timeline        bigint,
    purged_through  bigint      NOT NULL DEFAULT 0,
    purged_rows     bigint      NOT NULL DEFAULT 0,
    purged_total    numeric     NOT NULL DEFAULT 0
);
INSERT INTO outbox_sources (source) SELECT source FROM outbox_source;

-- One row per cut batch: the rows with ids first_id..last_id inserted by
-- transactions visible in `hi` and not in `lo`, in id order, published in
-- parts of `pack` rows. Written
-- once when cut; confirmed_at is set once the broker confirmed every part.
CREATE TABLE outbox_batch (
    source       uuid        NOT NULL REFERENCES outbox_sources (source),
    id           bigint      NOT NULL CHECK (id >= 1),
    lo           pg_snapshot NOT NULL,
    hi           pg_snapshot NOT NULL,
    pack         integer     NOT NULL CHECK (pack >= 1),
    rows         bigint      NOT NULL CHECK (rows >= 1),
    total        numeric     NOT NULL,
    first_id     bigint      NOT NULL,
    last_id      bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    confirmed_at timestamptz,
    PRIMARY KEY (source, id)
);
CREATE INDEX outbox_batch_unconfirmed ON outbox_batch (source, id) WHERE confirmed_at IS NULL;

-- The cursor: the newest batch, the snapshot pair it was cut from and the
-- last row id batched from that pair (a pair with more rows than a batch may
-- hold gives several batches). The next batch takes the pair's remaining
-- rows, or, when none remain, opens the pair (hi, now). It starts at a
-- snapshot taken now: every row from before (xid NULL) is a legacy row;
-- every row after has a transaction this snapshot does not see.
CREATE TABLE outbox_cursor (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    source    uuid        NOT NULL,
    batch     bigint      NOT NULL,
    lo        pg_snapshot NOT NULL,
    hi        pg_snapshot NOT NULL,
    after_id  bigint      NOT NULL
);
INSERT INTO outbox_cursor (source, batch, lo, hi, after_id)
    SELECT source, 0, pg_current_snapshot(), pg_current_snapshot(), 0 FROM outbox_source;
