DROP TABLE provider_cursors;
ALTER TABLE notifications DROP CONSTRAINT notifications_source_check, DROP COLUMN source;
ALTER TABLE orders DROP KEY orders_pending, DROP COLUMN query_attempts, DROP COLUMN next_query_at;
