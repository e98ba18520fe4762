-- A cut in time linear in its batch, whatever the size of its pair or the
-- age of the oldest transaction on the server. The same batches as before
-- (a pair's rows by id, `max_rows` at a time), found another way:
--
-- * A pair's members are the rows visible in `hi` whose transaction either
--   was in progress at `lo` (one of `lo`'s xip) or started after it (xid at
--   least `lo`'s xmax). Looked up that way through the xid index, a pair
--   costs its own rows; the older form (xid from `lo`'s xmin) also read every
--   row inserted since the oldest transaction still open at `lo` began, in
--   any database of the server.
-- * When a pair is opened, its smallest and largest member id and its row
--   count are taken once and kept in the cursor. Each batch then walks the
--   primary key from where the last one stopped, up to the pair's largest
--   id, and stops after `max_rows` members: O(batch), where reading the whole
--   pair for every batch made draining a backlog of N rows O(N^2 / max_rows).
--
-- `pair_rows` and `pair_taken` also let `pending()` count the rows of the
-- current pair not yet cut, which it did not see before.

ALTER TABLE outbox_cursor ADD COLUMN pair_min_id bigint;
ALTER TABLE outbox_cursor ADD COLUMN pair_max_id bigint;
ALTER TABLE outbox_cursor ADD COLUMN pair_rows bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox_cursor ADD COLUMN pair_taken bigint NOT NULL DEFAULT 0;

-- The members of the pair (`lo`, `hi`): their smallest and largest id and
-- how many, through the xid index (the transactions in progress at `lo`
-- one by one, then the xids `lo` had not handed out yet). The planner cannot
-- know how few rows those xids hold (the range's upper end is a run-time
-- value), and would rather scan the whole table: it is not given the choice
-- (nor JIT compilation, which the cost of that refusal would bring on).
CREATE FUNCTION tally_pair_span(lo pg_snapshot, hi pg_snapshot,
    OUT min_id bigint, OUT max_id bigint, OUT row_count bigint)
LANGUAGE sql STABLE
SET enable_seqscan = off SET enable_bitmapscan = on SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
    SELECT min(o.id), max(o.id), count(*) FROM outbox o
     WHERE (o.xid = ANY (ARRAY(SELECT pg_snapshot_xip(lo)))
            OR (o.xid >= pg_snapshot_xmax(lo) AND o.xid < pg_snapshot_xmax(hi)))
       AND pg_visible_in_snapshot(o.xid, hi)
$$;

CREATE OR REPLACE FUNCTION tally_cut(max_rows bigint, part_rows integer,
    OUT b_source uuid, OUT b_id bigint, OUT b_lo text, OUT b_hi text,
    OUT b_rows bigint, OUT b_first_id bigint, OUT b_last_id bigint,
    OUT r_ids bigint[], OUT r_sums bigint[], OUT r_created_us bigint[])
LANGUAGE plpgsql
-- The walk below must be the primary key's, in order, stopping after
-- `max_rows`: a table whose statistics still say it is small (a backlog
-- that grew since the last ANALYZE) would otherwise be read whole.
SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off AS $$
DECLARE
    cur outbox_cursor%ROWTYPE;
    pair_lo pg_snapshot;
    pair_hi pg_snapshot;
    pair_after bigint;
    span record;
    taken_before bigint;
    span_total numeric;
BEGIN
    SELECT * INTO cur FROM outbox_cursor FOR UPDATE;
    pair_lo := cur.lo;
    pair_hi := cur.hi;
    pair_after := cur.after_id;
    taken_before := cur.pair_taken;
    SELECT cur.pair_min_id AS min_id, cur.pair_max_id AS max_id, cur.pair_rows AS row_count INTO span;
    IF NOT cur.pair_done AND span.max_id IS NULL THEN
        -- A pair opened before this migration: its span, once.
        SELECT * INTO span FROM tally_pair_span(pair_lo, pair_hi);
        SELECT count(*) INTO taken_before FROM outbox o
         WHERE o.id >= span.min_id AND o.id <= pair_after
           AND pg_visible_in_snapshot(o.xid, pair_hi) AND NOT pg_visible_in_snapshot(o.xid, pair_lo);
    END IF;
    IF cur.pair_done OR span.max_id IS NULL OR pair_after >= span.max_id THEN
        -- The pair is used up: open the pair (hi, now).
        pair_lo := pair_hi;
        pair_hi := pg_current_snapshot();
        pair_after := 0;
        taken_before := 0;
        SELECT * INTO span FROM tally_pair_span(pair_lo, pair_hi);
        IF span.row_count = 0 THEN
            -- Nothing new: the caller gets a row of NULLs and the cursor stays.
            RETURN;
        END IF;
    END IF;
    -- The next rows of the pair by id, walking the primary key from where
    -- the last batch stopped. The membership test has no condition the xid
    -- index could serve, and the function allows no sequential or bitmap
    -- scan, so the planner cannot trade this walk for a read of the pair.
    WITH taken AS (
        SELECT o.id, o.sum, o.created_at FROM outbox o
         WHERE o.id > greatest(pair_after, span.min_id - 1) AND o.id <= span.max_id
           AND pg_visible_in_snapshot(o.xid, pair_hi) AND NOT pg_visible_in_snapshot(o.xid, pair_lo)
         ORDER BY o.id LIMIT max_rows
    )
    SELECT count(*), min(t.id), max(t.id), sum(t.sum),
           array_agg(t.id ORDER BY t.id), array_agg(t.sum ORDER BY t.id),
           array_agg((extract(epoch FROM t.created_at) * 1000000)::bigint ORDER BY t.id)
      INTO b_rows, b_first_id, b_last_id, span_total, r_ids, r_sums, r_created_us
      FROM taken t;
    IF b_rows = 0 THEN
        -- The pair's span names a member above `after`: it can only be gone
        -- if someone deleted outbox rows that were never published.
        RAISE EXCEPTION 'outbox rows of the open snapshot pair were deleted before they were cut (ids % to %)',
            greatest(pair_after, span.min_id - 1) + 1, span.max_id;
    END IF;
    b_source := cur.source;
    b_id := cur.batch + 1;
    b_lo := pair_lo::text;
    b_hi := pair_hi::text;
    INSERT INTO outbox_batch (source, id, lo, hi, pack, rows, total, first_id, last_id)
        VALUES (b_source, b_id, pair_lo, pair_hi, part_rows, b_rows, span_total, b_first_id, b_last_id);
    UPDATE outbox_cursor SET batch = b_id, lo = pair_lo, hi = pair_hi, after_id = b_last_id,
        pair_done = b_last_id >= span.max_id, pair_min_id = span.min_id, pair_max_id = span.max_id,
        pair_rows = span.row_count, pair_taken = taken_before + b_rows;
END
$$;
