DROP TABLE console_sessions;
DROP INDEX notifications_first_seen;
DROP INDEX notifications_anomaly;
ALTER TABLE notifications DROP COLUMN resolution_note, DROP COLUMN resolved_at,
    DROP COLUMN resolved_by, DROP COLUMN resolution;
