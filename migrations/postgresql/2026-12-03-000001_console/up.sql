-- The operator console: how a human resolved an anomaly, and who is logged in.

-- An anomaly (a notification kept for a human) is resolved once: dismissed, credited by hand
-- (a manual_credit ledger row keyed notification:<id>), or marked refunded to the buyer outside
-- payhook. Who, when and why are kept with it.
ALTER TABLE notifications
    ADD COLUMN resolution TEXT
        CHECK (resolution IN ('dismissed', 'credited', 'refunded_to_buyer')),
    ADD COLUMN resolved_by TEXT,
    ADD COLUMN resolved_at TIMESTAMP,
    ADD COLUMN resolution_note TEXT;
CREATE INDEX notifications_anomaly ON notifications (anomaly, resolution);
CREATE INDEX notifications_first_seen ON notifications (first_seen_at);

-- Console sessions, kept in the database so that every instance behind a balancer knows them
-- and a restart logs no one out. The id is stored only as its SHA-256.
CREATE TABLE console_sessions (
    id_hash    TEXT      NOT NULL PRIMARY KEY,
    csrf_token TEXT      NOT NULL,
    operator   TEXT      NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
