DROP TABLE console_sessions;
ALTER TABLE notifications DROP CONSTRAINT notifications_resolution_check,
    DROP KEY notifications_first_seen, DROP KEY notifications_anomaly,
    DROP COLUMN resolution_note, DROP COLUMN resolved_at, DROP COLUMN resolved_by,
    DROP COLUMN resolution;
