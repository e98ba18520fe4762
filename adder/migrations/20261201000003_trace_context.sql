-- Trace context (W3C traceparent text), only while tracing is on; NULL
-- otherwise, which costs a row a null bit and nothing more.
-- outbox.traceparent: the context of the Add that recorded the row, which
-- the relay's "publish batch" span links to.
-- outbox_batch.traceparent: that publish span's own context, sent in the
-- AMQP header of every part; a batch published again sends the same one.
ALTER TABLE outbox ADD COLUMN traceparent text;
ALTER TABLE outbox_batch ADD COLUMN traceparent text;
