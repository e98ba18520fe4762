-- Legacy rows (recorded before snapshot batches, published row by row) that
-- retention purges: their count and sum, kept with the source legacy rows
-- are published and audited under (the oldest of `outbox_sources`), as
-- `purged_rows` and `purged_total` keep those of purged batches. With them
-- `totaler verify` still checks the total after the rows are gone.
--
-- Legacy rows an older adder purged before this migration were counted
-- nowhere: `verify` cannot know their sum, and reports them as a warning
-- when the ledger's legacy rows exceed what the outbox accounts for.
ALTER TABLE outbox_sources ADD COLUMN purged_legacy_rows bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox_sources ADD COLUMN purged_legacy_total numeric NOT NULL DEFAULT 0;
