-- The operator console: how a human resolved an anomaly, and who is logged in.
--
-- MySQL commits each ALTER on its own: each step is skipped when information_schema shows it
-- done, so a start stopped half-way is finished by the next.

-- An anomaly (a notification kept for a human) is resolved once: dismissed, credited by hand
-- (a manual_credit ledger row keyed notification:<id>), or marked refunded to the buyer outside
-- payhook. Who, when and why are kept with it.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'notifications' AND COLUMN_NAME = 'resolution'), 'DO 0',
    "ALTER TABLE notifications
        ADD COLUMN resolution VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
        ADD COLUMN resolved_by VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
        ADD COLUMN resolved_at DATETIME(6) NULL,
        ADD COLUMN resolution_note TEXT NULL,
        ADD CONSTRAINT notifications_resolution_check
            CHECK (resolution IN ('dismissed', 'credited', 'refunded_to_buyer')),
        ADD KEY notifications_anomaly (anomaly, resolution),
        ADD KEY notifications_first_seen (first_seen_at)");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Console sessions, kept in the database so that every instance behind a balancer knows them
-- and a restart logs no one out. The id is stored only as its SHA-256.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash    VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    csrf_token VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    operator   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at DATETIME(6)  NOT NULL,
    expires_at DATETIME(6)  NOT NULL,
    KEY console_sessions_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
