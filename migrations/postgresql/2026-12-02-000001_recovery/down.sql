DROP TABLE provider_cursors;
ALTER TABLE notifications DROP COLUMN source;
DROP INDEX orders_pending;
ALTER TABLE orders DROP COLUMN query_attempts, DROP COLUMN next_query_at;
