-- Recovery: pending orders are asked about at the provider on a schedule that each order
-- carries, and what a query found is kept in the inbox beside what notifications said.

-- When a pending order is next asked about (NULL: first_query_after_secs after it was created),
-- and how often it has been. An instance that claims an order moves next_query_at past the time
-- its query can take: that is its lease, and a crashed instance's lease simply runs out.
ALTER TABLE orders ADD COLUMN next_query_at TIMESTAMP;
ALTER TABLE orders ADD COLUMN query_attempts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'pending';

-- Where an inbox row came from: a provider's notification, or its answer to a query.
ALTER TABLE notifications
    ADD COLUMN source TEXT NOT NULL DEFAULT 'notify' CHECK (source IN ('notify', 'query'));

-- How far a channel's sweep of undelivered provider events has read (Stripe: an event id).
CREATE TABLE provider_cursors (
    channel    TEXT      NOT NULL PRIMARY KEY,
    read_up_to TEXT      NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
