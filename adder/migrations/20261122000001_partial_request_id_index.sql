-- Most Adds carry no request id. A unique index over only the rows that have
-- one spares every other row an index entry on insert and on the relay's
-- UPDATE of published_at (which writes a new row version, so new entries in
-- every index the row is in).
ALTER TABLE outbox DROP CONSTRAINT outbox_request_id_key;
CREATE UNIQUE INDEX outbox_request_id ON outbox (request_id) WHERE request_id IS NOT NULL;
