DROP TABLE console_sessions;
DROP INDEX notifications_first_seen;
DROP INDEX notifications_anomaly;
ALTER TABLE notifications DROP COLUMN resolution_note;
ALTER TABLE notifications DROP COLUMN resolved_at;
ALTER TABLE notifications DROP COLUMN resolved_by;
ALTER TABLE notifications DROP COLUMN resolution;
