-- The outbox: one row per recorded Add, published to RabbitMQ by the relay.

-- The identity of this outbox database. Message ids are (source, id), so they
-- stay unique even if the database is dropped and recreated.
CREATE TABLE outbox_source (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    source    uuid    NOT NULL
);
INSERT INTO outbox_source (source) VALUES (gen_random_uuid());

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    a            bigint NOT NULL,
    b            bigint NOT NULL,
    sum          bigint NOT NULL CHECK (sum = a + b),
    -- Optional idempotency key of the Add; NULL when the caller gave none.
    request_id   text UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set only after the broker confirmed the message.
    published_at timestamptz
);

-- What the relay claims: unpublished rows in id order.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
-- What the purge deletes: published rows past retention.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
