-- Recovery: pending orders are asked about at the provider on a schedule that each order
-- carries, and what a query found is kept in the inbox beside what notifications said.
--
-- MySQL commits each ALTER on its own: each step is skipped when information_schema shows it
-- done, so a start stopped half-way is finished by the next.

-- When a pending order is next asked about (NULL: first_query_after_secs after it was created),
-- and how often it has been. An instance that claims an order moves next_query_at past the time
-- its query can take: that is its lease, and a crashed instance's lease simply runs out.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'orders' AND COLUMN_NAME = 'next_query_at'), 'DO 0',
    "ALTER TABLE orders
        ADD COLUMN next_query_at DATETIME(6) NULL,
        ADD COLUMN query_attempts BIGINT NOT NULL DEFAULT 0,
        ADD KEY orders_pending (status, created_at)");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Where an inbox row came from: a provider's notification, or its answer to a query.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'notifications' AND COLUMN_NAME = 'source'), 'DO 0',
    "ALTER TABLE notifications
        ADD COLUMN source VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
            DEFAULT 'notify',
        ADD CONSTRAINT notifications_source_check CHECK (source IN ('notify', 'query'))");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

-- How far a channel's sweep of undelivered provider events has read (Stripe: an event id).
CREATE TABLE IF NOT EXISTS provider_cursors (
    channel    VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    read_up_to VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    updated_at DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
