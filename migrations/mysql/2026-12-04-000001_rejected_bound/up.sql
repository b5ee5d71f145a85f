-- Rejected requests are bounded per channel: the newest `inbox.keep_rejected` are kept, and the
-- rest deleted as new ones arrive. This index finds a channel's rejected rows newest first
-- without reading the verified notifications around them (MySQL has no partial index, so it
-- holds every row).
--
-- MySQL commits each ALTER on its own: the step is skipped when information_schema shows it
-- done, so a start stopped half-way is finished by the next.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'notifications' AND INDEX_NAME = 'notifications_rejected'), 'DO 0',
    "ALTER TABLE notifications ADD KEY notifications_rejected (channel, outcome, id)");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;
